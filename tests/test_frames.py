"""The process pool's frame protocol (`trioserve._frames`), with plain bytes."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioserve._frames import (
    HEADER,
    MAX_FRAME_SIZE,
    FrameBuffer,
    FrameError,
    WorkerSpec,
    encode_frame,
)

messages = st.lists(
    st.tuples(
        st.sampled_from(["ready", "log", "stop", "failed", "shutdown"]),
        st.one_of(st.none(), st.floats(allow_nan=False), st.text(), st.binary()),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(messages, st.data())
def test_messages_come_back_whole_however_the_bytes_are_cut(
    sent: list[tuple[object, ...]], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(message) for message in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    buffer = FrameBuffer()
    received: list[tuple[object, ...]] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        received.extend(buffer.feed(stream[start:cut]))
        start = cut
    assert received == sent
    assert buffer.pending == 0


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    frame = encode_frame(("stop", 1.5))
    buffer = FrameBuffer()
    assert list(buffer.feed(frame[:-1])) == []
    assert buffer.pending == len(frame) - 1
    assert list(buffer.feed(frame[-1:])) == [("stop", 1.5)]


def test_a_frame_too_large_is_refused_from_its_header_alone() -> None:
    with pytest.raises(FrameError, match="too large"):
        list(FrameBuffer().feed(HEADER.pack(MAX_FRAME_SIZE + 1)))


@pytest.mark.parametrize(
    "payload", [b"not a pickle", pickle.dumps(["a", "list"]), pickle.dumps(()), pickle.dumps((1,))]
)
def test_a_payload_that_is_not_a_message_is_refused(payload: bytes) -> None:
    with pytest.raises(FrameError):
        list(FrameBuffer().feed(HEADER.pack(len(payload)) + payload))


def test_a_worker_spec_round_trips() -> None:
    spec = WorkerSpec(dict, None, {"max_connections": 3}, {"greeting": "hi"})
    [(kind, data)] = list(FrameBuffer().feed(encode_frame(("spec", pickle.dumps(spec)))))
    assert kind == "spec"
    assert pickle.loads(data) == spec
