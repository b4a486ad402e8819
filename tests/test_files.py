from __future__ import annotations

import io
import pickle
import socket
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trioserve import (
    AsyncReader,
    AsyncWriter,
    BrokenConnectionError,
    LineTooLongError,
    PeerTimeoutError,
)


class ChunkedStream(trio.abc.ReceiveStream):
    """Hands out *data* in pieces of the given sizes, then end of file."""

    def __init__(self, data: bytes, sizes: Sequence[int]) -> None:
        self._data = memoryview(data)
        self._sizes = list(sizes)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = self._sizes.pop(0) if self._sizes else len(self._data)
        size = min(size, max_bytes or size)
        piece, self._data = self._data[:size], self._data[size:]
        return bytes(piece)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


Op = tuple[str, int]
ops = st.lists(
    st.tuples(st.sampled_from(["read", "readline", "read1"]), st.integers(-1, 20)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"\n")),
    sizes=st.lists(st.integers(1, 30), max_size=20),
    operations=ops,
)
async def test_reader_matches_bytesio_however_the_peer_chunks(
    data: bytes, sizes: list[int], operations: list[Op]
) -> None:
    reader = AsyncReader(ChunkedStream(data, sizes), max_line_length=None)
    reference = io.BufferedReader(io.BytesIO(data))
    for name, arg in operations:
        if name == "read1":
            got = await reader.read1(arg)
            # read1 may return less than read; it returns something unless at EOF.
            want = reference.read(len(got))
            assert got == want
            if arg != 0 and not got:
                assert reference.read(1) == b""
            continue
        assert await getattr(reader, name)(arg) == getattr(reference, name)(arg)


@given(data=st.binary(max_size=200), sizes=st.lists(st.integers(1, 30), max_size=20))
async def test_iteration_and_readlines_match_bytesio(data: bytes, sizes: list[int]) -> None:
    lines = [line async for line in AsyncReader(ChunkedStream(data, sizes))]
    assert lines == io.BytesIO(data).readlines()
    reader = AsyncReader(ChunkedStream(data, sizes))
    assert await reader.readlines() == io.BytesIO(data).readlines()


async def test_readlines_hint_stops_after_enough_bytes() -> None:
    reader = AsyncReader(ChunkedStream(b"a\nbb\nccc\n", [2]))
    assert await reader.readlines(3) == [b"a\n", b"bb\n"]
    assert await reader.readline() == b"ccc\n"


async def test_readline_without_limit_stops_at_max_line_length_and_keeps_the_bytes() -> None:
    reader = AsyncReader(ChunkedStream(b"x" * 100 + b"\nnext\n", [7] * 30), max_line_length=32)
    with pytest.raises(LineTooLongError, match="32 bytes") as info:
        await reader.readline()
    assert info.value.max_line_length == 32
    assert str(info.value) == "no end of line within 32 bytes (max_line_length)"
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(copy), copy.max_line_length) == (str(info.value), 32)
    # Nothing was lost: the line can still be read in pieces, and the stream goes on.
    assert await reader.readline(64) == b"x" * 64
    assert await reader.readline(64) == b"x" * 36 + b"\n"
    assert await reader.readline() == b"next\n"


async def test_read_timeout_raises_timeout_error(autojump_clock: trio.testing.MockClock) -> None:
    client, server = trio.testing.memory_stream_pair()
    reader = AsyncReader(server, timeout=5)
    with pytest.raises(PeerTimeoutError, match="within 5 seconds") as info:
        await reader.readline()
    # Still the built-in TimeoutError (socket.timeout), as stdlib handlers expect.
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, socket.timeout)
    assert info.value.timeout == 5
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
    await client.send_all(b"late\n")
    assert await reader.readline() == b"late\n"


async def test_reading_a_closed_reader_is_a_value_error() -> None:
    reader = AsyncReader(ChunkedStream(b"abc", []))
    reader.close()
    assert reader.closed
    with pytest.raises(ValueError, match="closed file"):
        await reader.read()


class RecordingStream(trio.abc.SendStream):
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.sends.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_unbuffered_writer_sends_each_write_at_once() -> None:
    stream = RecordingStream()
    writer = AsyncWriter(stream)
    assert await writer.write(b"ab") == 2
    assert await writer.write(memoryview(b"cde")) == 3
    await writer.writelines([b"f", b"g"])
    assert stream.sends == [b"ab", b"cde", b"fg"]


async def test_buffered_writer_sends_when_full_or_flushed() -> None:
    stream = RecordingStream()
    writer = AsyncWriter(stream, bufsize=4)
    await writer.write(b"ab")
    assert stream.sends == []
    await writer.write(b"cd")
    assert stream.sends == [b"abcd"]
    await writer.write(b"e")
    await writer.flush()
    assert stream.sends == [b"abcd", b"e"]
    writer.close()
    with pytest.raises(ValueError, match="closed file"):
        await writer.write(b"x")


async def test_negative_bufsize_means_the_default_buffer_size() -> None:
    assert AsyncWriter(RecordingStream(), bufsize=-1).bufsize == io.DEFAULT_BUFFER_SIZE


async def test_write_to_a_vanished_peer_is_a_broken_connection_error() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.aclose()
    writer = AsyncWriter(server)
    with pytest.raises(BrokenConnectionError) as info:
        await writer.write(b"hello")
    # Both Trio code and ported socketserver code catch it.
    assert isinstance(info.value, trio.BrokenResourceError)
    assert isinstance(info.value, ConnectionError)


async def test_write_timeout_raises_timeout_error(autojump_clock: trio.testing.MockClock) -> None:
    client, _server = trio.testing.lockstep_stream_pair()
    writer = AsyncWriter(client, timeout=3)
    with pytest.raises(PeerTimeoutError, match="within 3 seconds"):
        await writer.write(b"nobody reads this")


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"\r\n", b"x", b"\n"]), max_size=80).map(b"".join),
    sizes=st.lists(st.integers(1, 30), max_size=20),
)
async def test_readuntil_cuts_at_each_separator_however_the_peer_chunks(
    data: bytes, sizes: list[int]
) -> None:
    reader = AsyncReader(ChunkedStream(data, sizes), max_line_length=None)
    expected = data.split(b"\r\n\r\n")
    pieces = [piece + b"\r\n\r\n" for piece in expected[:-1]]
    pieces += [expected[-1]] if expected[-1] else []
    got = []
    while piece := await reader.readuntil(b"\r\n\r\n"):
        got.append(piece)
    assert got == pieces  # the last one without a separator: the rest at end of file
    assert await reader.readuntil(b"\r\n\r\n") == b""


async def test_readuntil_stops_at_the_limit_and_keeps_the_bytes() -> None:
    stream = ChunkedStream(b"x" * 100 + b"\r\n\r\nrest", [7] * 30)
    reader = AsyncReader(stream, max_line_length=32, receive_size=1000)
    with pytest.raises(LineTooLongError, match="32 bytes") as info:
        await reader.readuntil(b"\r\n\r\n")
    assert info.value.max_line_length == 32
    assert info.value.separator == b"\r\n\r\n"
    assert str(info.value) == r"no separator b'\r\n\r\n' within 32 bytes"
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(copy), copy.max_line_length, copy.separator) == (str(info.value), 32, b"\r\n\r\n")
    assert len(reader._buffer) == 32  # never buffered past the limit
    with pytest.raises(LineTooLongError, match="50 bytes"):
        await reader.readuntil(b"\r\n\r\n", 50)
    assert await reader.readuntil(b"\r\n\r\n", 104) == b"x" * 100 + b"\r\n\r\n"
    assert await reader.readuntil(b"\r\n\r\n") == b"rest"
    with pytest.raises(ValueError, match="separator must not be empty"):
        await reader.readuntil(b"")


async def test_readuntil_timeout_covers_the_whole_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    reader = AsyncReader(server, timeout=5)

    async def drip() -> None:
        for _ in range(10):
            await client.send_all(b"x")
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drip)
        start = trio.current_time()
        with pytest.raises(TimeoutError):
            await reader.readuntil(b"\r\n")
        assert trio.current_time() - start == pytest.approx(5)
    await client.send_all(b"\r\n")
    assert await reader.readuntil(b"\r\n") == b"x" * 10 + b"\r\n"


# -- timeouts and limits on a memory stream --------------------------------------------------


async def test_a_line_dripped_under_the_timeout_per_byte_still_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server_end = trio.testing.memory_stream_pair()
    reader = AsyncReader(server_end, timeout=10)

    async def drip() -> None:
        for byte in b"GET / HTTP/1.1\r\n":  # one byte every 9 s: each under the timeout
            await client.send_all(bytes([byte]))
            await trio.sleep(9)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drip)
        start = trio.current_time()
        with pytest.raises(TimeoutError, match="within 10"):
            await reader.readline()
        # One timeout for the whole line, however it is dripped.
        assert trio.current_time() - start == pytest.approx(10)
        nursery.cancel_scope.cancel()


async def test_each_readline_gets_a_fresh_timeout_and_pieces_are_fine(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server_end = trio.testing.memory_stream_pair()
    reader = AsyncReader(server_end, timeout=10)

    async def talk() -> None:
        for piece in (b"first ", b"line\n", b"second", b" line\n"):
            await trio.sleep(4)
            await client.send_all(piece)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(talk)
        assert await reader.readline() == b"first line\n"  # 8 s, in two pieces
        assert await reader.readline() == b"second line\n"  # 8 s more: a new timeout


async def test_a_too_long_line_never_buffers_more_than_the_limit() -> None:
    client, server_end = trio.testing.memory_stream_pair()
    reader = AsyncReader(server_end, max_line_length=1000)
    await client.send_all(b"x" * 1_000_000)  # one chunk of a megabyte, no line end
    with pytest.raises(LineTooLongError) as info:
        await reader.readline()
    assert info.value.max_line_length == 1000
    # Exactly the limit was taken from the stream, and nothing of it was lost.
    assert await reader.read1() == b"x" * 1000
    assert len(await reader.read1()) > 0  # the rest is still in the stream


# -- the server's budget for unread input ----------------------------------------------------


async def test_readers_of_one_server_share_its_budget_for_unfinished_lines() -> None:
    from trioserve import InputBudgetError
    from trioserve._buffer import INPUT_ALLOWANCE, InputBudget

    budget = InputBudget(10_000)
    line = b"x" * (INPUT_ALLOWANCE + 6_000)
    half = len(line) // 2
    first = AsyncReader(ChunkedStream(line, [len(line)]), budget=budget)
    second = AsyncReader(ChunkedStream(line + b"\n", [half, half]), budget=budget)
    ordinary = AsyncReader(ChunkedStream(b"short\n" * 1000, [6000]), budget=budget)
    # The first holds an unfinished line: 5,999 bytes past its allowance, from the budget.
    assert await first.read1(1) == b"x"
    assert budget.available == 10_000 - (len(line) - 1 - INPUT_ALLOWANCE)
    # The second needs 6,000 too, and 4,001 are left: refused, its bytes kept.
    with pytest.raises(InputBudgetError, match="max_buffered_input"):
        await second.readline()
    # An ordinary client, within its allowance, is served all along.
    assert await ordinary.readline() == b"short\n"
    # Once the first is closed, the second gets its line, whole.
    first.close()
    assert await second.readline() == line + b"\n"
    assert budget.available == 10_000
    second.close()
    ordinary.close()
    assert budget.available == 10_000


async def test_a_reader_dropped_without_close_gives_its_budget_back() -> None:
    import gc

    from trioserve._buffer import INPUT_ALLOWANCE, InputBudget

    budget = InputBudget(100_000)
    reader = AsyncReader(
        ChunkedStream(b"y" * (INPUT_ALLOWANCE * 2), [INPUT_ALLOWANCE * 2]), budget=budget
    )
    assert await reader.read1(1) == b"y"
    assert budget.available < 100_000
    del reader
    gc.collect()
    assert budget.available == 100_000
