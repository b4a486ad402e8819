from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserve._buffer import ReceiveBuffer


def test_take_line_waits_for_the_line_end() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"hel")
    assert buffer.take_line() is None
    buffer.feed(b"lo\nwor")
    assert buffer.take_line() == b"hello\n"
    assert buffer.take_line() is None
    assert buffer.take_all() == b"wor"


def test_take_line_with_limit_cuts_long_lines_into_pieces() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"abcdefg\nxy")
    assert buffer.take_line(3) == b"abc"
    assert buffer.take_line(3) == b"def"
    assert buffer.take_line(3) == b"g\n"
    assert buffer.take_line(3) is None
    assert buffer.take_line(0) == b""
    assert len(buffer) == 2


def test_take_returns_at_most_what_is_buffered() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"abc")
    assert buffer.take(2) == b"ab"
    assert buffer.take(5) == b"c"
    assert not buffer
    with pytest.raises(ValueError, match="count must be >= 0"):
        buffer.take(-1)


def test_line_too_long_only_without_a_line_end_in_reach() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"x" * 9)
    assert not buffer.line_too_long(10)
    buffer.feed(b"x")
    assert buffer.line_too_long(10)
    ok = ReceiveBuffer()
    ok.feed(b"x" * 9 + b"\n" + b"y" * 20)
    assert not ok.line_too_long(10)  # a 10-byte line, terminator included, fits


def test_scan_position_survives_consumption() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"ab")
    assert buffer.take_line() is None  # scanned up to 2
    assert buffer.take(1) == b"a"
    buffer.feed(b"\ncd\n")
    assert buffer.take_line() == b"b\n"
    assert buffer.take_line() == b"cd\n"


@given(
    data=st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"\n")),
    chunks=st.lists(st.integers(min_value=1, max_value=40), max_size=30),
    limits=st.lists(st.integers(min_value=-1, max_value=12), min_size=1, max_size=40),
)
def test_lines_match_bytesio_however_fed(
    data: bytes, chunks: list[int], limits: list[int]
) -> None:
    """Fed in any chunks, take_line(limit) cuts what io.BytesIO.readline(limit) cuts."""
    reference = io.BytesIO(data)
    buffer = ReceiveBuffer()
    remaining = memoryview(data)
    sizes = iter(chunks)
    for limit in limits:
        expected = reference.readline(limit)
        while True:
            line = buffer.take_line(limit)
            if line is not None:
                break
            if not remaining:
                line = buffer.take_all()
                break
            size = next(sizes, len(remaining))
            buffer.feed(remaining[:size])
            remaining = remaining[size:]
        assert line == expected
