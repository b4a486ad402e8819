"""The paced socket paths (`trioserve._direct`): cancellation, fairness, errors, data."""

from __future__ import annotations

import array
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import pytest
import trio
import trio.testing

import trioserve._direct
from tests.helpers import receive_exactly
from trioserve import (
    AsyncReader,
    AsyncWriter,
    BrokenConnectionError,
    StreamRequestHandler,
    ThreadingTCPServer,
)
from trioserve._direct import TURN_BACKOFF, DirectSocket, PacedListener, direct
from trioserve.testing import serving


def stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    left, right = trio.socket.socketpair()
    return trio.SocketStream(left), trio.SocketStream(right)


def follows_pacing(turns: int, operations: int) -> bool:
    """Whether *turns* for others during *operations* quick ones follow the pacing rule.

    Every 8th operation yields (`YIELD_EVERY`); any rule from every 4th to every 16th
    passes, Trio's own (every one) and never yielding do not.
    """
    return operations // 16 - 1 <= turns <= operations // 4 + 1


async def turns_of_others_during(operation: Callable[[], Awaitable[object]], count: int) -> int:
    """Run *operation* *count* times; return how often a busy task got to run meanwhile."""
    turns = 0
    done = False

    async def other() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()  # let `other` start
        before = turns
        for _ in range(count):
            await operation()
        during = turns - before
        done = True
    return during


# -- DirectSocket ---------------------------------------------------------------------------


async def test_reads_that_find_data_waiting_yield_only_every_few_times() -> None:
    ours, peer = stream_pair()
    async with ours, peer:
        await peer.send_all(b"x" * 64)
        direct = DirectSocket(ours)

        async def read_one() -> None:
            assert await direct.receive_some(1) == b"x"

        turns = await turns_of_others_during(read_one, 64)
    # Trio's own stream would have yielded 64 times; every other task still ran.
    assert follows_pacing(turns, 64)


async def test_sends_that_complete_at_once_yield_only_every_few_times() -> None:
    ours, peer = stream_pair()
    async with ours, peer:
        direct = DirectSocket(ours)

        async def send_one() -> None:
            await direct.send_all(b"y")

        turns = await turns_of_others_during(send_one, 64)
        assert follows_pacing(turns, 64)
        assert await receive_exactly(peer, 64) == b"y" * 64


async def test_a_cancelled_read_raises_cancelled_and_leaves_the_data() -> None:
    ours, peer = stream_pair()
    async with ours, peer:
        await peer.send_all(b"kept")
        direct = DirectSocket(ours)
        with trio.CancelScope() as scope:
            scope.cancel()
            await direct.receive_some(10)
        assert scope.cancelled_caught
        assert await direct.receive_some(10) == b"kept"


async def test_a_cancelled_send_sends_nothing() -> None:
    ours, peer = stream_pair()
    async with ours, peer:
        direct = DirectSocket(ours)
        with trio.CancelScope() as scope:
            scope.cancel()
            await direct.send_all(b"never")
        assert scope.cancelled_caught
        await direct.send_all(b"only")
        await ours.send_eof()
        assert await receive_exactly(peer, 4) == b"only"
        assert await peer.receive_some(10) == b""


async def test_a_large_send_waits_for_the_peer_and_arrives_whole() -> None:
    ours, peer = stream_pair()
    data = bytes(range(256)) * 16384  # 4 MiB, far more than the socket buffers hold
    async with ours, peer:
        direct = DirectSocket(ours)
        received = bytearray()

        async def reader() -> None:
            while len(received) < len(data):
                received.extend(await peer.receive_some(65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await direct.send_all(data)
        assert received == data


async def test_a_second_sender_while_the_first_waits_is_busy() -> None:
    ours, peer = stream_pair()
    async with ours, peer:
        direct = DirectSocket(ours)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(direct.send_all, b"z" * (8 * 1024 * 1024))
            await trio.testing.wait_all_tasks_blocked()  # the first is waiting for room
            with pytest.raises(trio.BusyResourceError):
                await direct.send_all(b"interleaved")
            nursery.cancel_scope.cancel()


async def test_any_bytes_like_is_sent_as_its_bytes() -> None:
    ours, peer = stream_pair()
    numbers = array.array("i", range(10))
    async with ours, peer:
        direct = DirectSocket(ours)
        await direct.send_all(memoryview(numbers))
        await direct.send_all(memoryview(bytearray(b"tail")))
        expected = numbers.tobytes() + b"tail"
        assert await receive_exactly(peer, len(expected)) == expected


async def test_a_closed_stream_is_a_closed_resource_error() -> None:
    ours, peer = stream_pair()
    async with peer:
        direct = DirectSocket(ours)
        await ours.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await direct.receive_some(10)
        with pytest.raises(trio.ClosedResourceError):
            await direct.send_all(b"x")


async def test_closing_the_stream_wakes_a_waiting_reader() -> None:
    ours, peer = stream_pair()
    async with peer:
        direct = DirectSocket(ours)
        async with trio.open_nursery() as nursery:

            async def close_when_waiting() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await ours.aclose()

            nursery.start_soon(close_when_waiting)
            with pytest.raises(trio.ClosedResourceError):
                await direct.receive_some(10)


@pytest.fixture
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(accepted))
    async with stream:
        with client:
            yield stream, client


async def test_a_reset_from_the_peer_is_a_broken_connection_for_the_files(
    tcp_pair: tuple[trio.SocketStream, socket.socket],
) -> None:
    stream, client = tcp_pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # an RST, not a FIN
    reader = AsyncReader(stream)
    with pytest.raises(BrokenConnectionError):
        await reader.readline()
    with pytest.raises(trio.BrokenResourceError):
        await DirectSocket(stream).send_all(b"x")


async def test_files_over_a_socket_stream_read_and_write_like_bytesio(
    tcp_pair: tuple[trio.SocketStream, socket.socket],
) -> None:
    stream, client = tcp_pair
    client.sendall(b"one\ntwo\r\nthree")
    client.shutdown(socket.SHUT_WR)
    reader, writer = AsyncReader(stream), AsyncWriter(stream)
    assert [line async for line in reader] == [b"one\n", b"two\r\n", b"three"]
    assert await writer.write(b"answer") == 6
    await stream.send_eof()
    assert client.recv(100) == b"answer"


async def test_a_read_timeout_covers_a_real_socket(
    tcp_pair: tuple[trio.SocketStream, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    stream, client = tcp_pair
    client.sendall(b"no line end")
    reader = AsyncReader(stream, timeout=5)
    with pytest.raises(TimeoutError):
        await reader.readline()
    assert trio.current_time() == pytest.approx(5)


# -- PacedListener ---------------------------------------------------------------------------


async def test_a_burst_of_connections_is_accepted_several_per_turn() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    listener.setblocking(False)
    owner = trio.socket.from_stdlib_socket(listener)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(32)]
    accepted: list[trio.socket.SocketType] = []
    try:
        paced = PacedListener(listener, owner)

        async def accept_one() -> None:
            sock, address = await paced.accept()
            accepted.append(sock)
            assert address[0] == "127.0.0.1"

        turns = await turns_of_others_during(accept_one, 32)
        assert follows_pacing(turns, 32)
        assert {s.getpeername() for s in accepted} == {c.getsockname() for c in clients}
    finally:
        for sock in accepted:
            sock.close()
        for client in clients:
            client.close()
        owner.close()


async def test_a_cancelled_accept_leaves_the_connection_for_the_next() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    owner = trio.socket.from_stdlib_socket(listener)
    with owner, socket.create_connection(listener.getsockname()) as client:
        paced = PacedListener(listener, owner)
        with trio.CancelScope() as scope:
            scope.cancel()
            await paced.accept()
        assert scope.cancelled_caught
        sock, _ = await paced.accept()
        with sock:
            assert sock.getpeername() == client.getsockname()


async def test_queued_datagrams_are_received_several_per_turn() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    owner = trio.socket.from_stdlib_socket(server)
    with owner, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        for number in range(32):
            client.sendto(b"%d" % number, server.getsockname())
        paced = PacedListener(server, owner)
        received: list[bytes] = []

        async def receive_one() -> None:
            data, address = await paced.recvfrom(100)
            assert address == client.getsockname()
            received.append(data)

        turns = await turns_of_others_during(receive_one, 32)
        assert follows_pacing(turns, 32)
        assert received == [b"%d" % number for number in range(32)]


# -- what a server's clients see --------------------------------------------------------------


class KickingEcho(StreamRequestHandler):
    """Echoes lines and logs them in the order handled; ``kick`` runs at a b"kick" line."""

    log: ClassVar[list[bytes]] = []
    kick: ClassVar[Callable[[], None]]

    async def handle(self) -> None:
        async for line in self.rfile:
            if line == b"kick\n":
                type(self).kick()
            self.log.append(line)
            await self.wfile.write(line)


async def test_a_pipelining_client_does_not_hold_up_another() -> None:
    """Another client is answered within a few of one client's 4,000 pipelined lines."""
    lines = 4000
    with ThreadingTCPServer(("127.0.0.1", 0), KickingEcho) as server:
        async with serving(server):
            busy = socket.create_connection(server.server_address)
            other = socket.create_connection(server.server_address)
            with busy, other:
                await trio.testing.wait_all_tasks_blocked()  # both accepted and waiting
                # Sent from inside the busy handler, while it works through the lines:
                # the other handler can only see it if the busy one yields meanwhile.
                KickingEcho.log = []
                KickingEcho.kick = lambda: other.sendall(b"me too\n")
                busy.sendall(b"kick\n" + b"line\n" * lines)
                other_stream = trio.SocketStream(trio.socket.from_stdlib_socket(other.dup()))
                async with other_stream:
                    assert await receive_exactly(other_stream, 7) == b"me too\n"
                handled_before = KickingEcho.log.index(b"me too\n")
                assert handled_before <= 100  # not after all 4,000


# -- a connection's reader and writer: one DirectSocket -----------------------------------


async def answered(direct: DirectSocket, peer: trio.SocketStream) -> None:
    """Take a request the peer sent (the socket drained) and answer it: the next read waits."""
    await peer.send_all(b"request\n")
    assert await direct.receive_some(1024) == b"request\n"
    await direct.send_all(b"answer\n")
    assert await receive_exactly(peer, 7) == b"answer\n"


async def test_a_handlers_files_share_one_direct_socket(
    tcp_pair: tuple[trio.SocketStream, socket.socket],
) -> None:
    stream, _ = tcp_pair
    handler = StreamRequestHandler(stream, ("127.0.0.1", 1), None)  # type: ignore[arg-type]
    await handler.setup()
    shared = handler.rfile._stream  # what the files were given
    assert isinstance(shared, DirectSocket)
    assert handler.wfile._stream is shared
    assert direct(shared) is shared


async def test_a_read_after_an_answer_waits_then_gets_the_next_request() -> None:
    ours, peer = stream_pair()
    async with ours, peer:
        shared = DirectSocket(ours)
        received: list[bytes] = []

        async def read() -> None:
            received.append(await shared.receive_some(1024))

        for number in range(3):
            await answered(shared, peer)
            received.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                assert received == []  # waiting for the peer, not spinning
                await peer.send_all(b"next %d\n" % number)
            assert received == [b"next %d\n" % number]


async def test_a_read_after_an_answer_gets_bytes_already_there_in_order() -> None:
    ours, peer = stream_pair()
    async with ours, peer:
        shared = DirectSocket(ours)
        await answered(shared, peer)
        await peer.send_all(b"pipelined one\npipelined two\n")  # before the read
        got = bytearray()
        with trio.fail_after(5):
            while len(got) < 28:
                got += await shared.receive_some(10)
        assert got == b"pipelined one\npipelined two\n"


async def test_a_cancelled_read_after_an_answer_raises_cancelled_and_leaves_the_data() -> None:
    ours, peer = stream_pair()
    async with ours, peer:
        shared = DirectSocket(ours)
        await answered(shared, peer)
        await peer.send_all(b"kept")
        with trio.CancelScope() as scope:
            scope.cancel()
            await shared.receive_some(10)
        assert scope.cancelled_caught
        assert await shared.receive_some(10) == b"kept"


async def test_a_read_after_an_answer_on_a_closed_stream_is_a_closed_resource_error() -> None:
    ours, peer = stream_pair()
    async with peer:
        shared = DirectSocket(ours)
        await answered(shared, peer)
        await ours.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await shared.receive_some(10)


async def test_closing_the_stream_wakes_a_read_waiting_after_an_answer() -> None:
    ours, peer = stream_pair()
    async with peer:
        shared = DirectSocket(ours)
        await answered(shared, peer)
        async with trio.open_nursery() as nursery:

            async def close_when_waiting() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await ours.aclose()

            nursery.start_soon(close_when_waiting)
            with pytest.raises(trio.ClosedResourceError):
                await shared.receive_some(10)


class Counted:
    """Counts the turns (`checkpoint`) and socket waits (`wait_readable`) of `_direct`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.turns = 0
        self.waits = 0
        turn, wait = trio.lowlevel.checkpoint, trio.lowlevel.wait_readable

        async def counted_turn() -> None:
            self.turns += 1
            await turn()

        async def counted_wait(fd: int) -> None:
            self.waits += 1
            await wait(fd)

        monkeypatch.setattr(trioserve._direct, "checkpoint", counted_turn)
        monkeypatch.setattr(trioserve._direct, "wait_readable", counted_wait)


async def exchange(
    shared: DirectSocket, peer: trio.SocketStream, number: int, *, slow: bool
) -> None:
    """Answer, then read the next request: sent before the read, or (*slow*) once it waits."""
    request = b"request %d\n" % number
    await shared.send_all(b"answer\n")
    assert await receive_exactly(peer, 7) == b"answer\n"
    received: list[bytes] = []

    async def read() -> None:
        received.append(await shared.receive_some(1024))

    async with trio.open_nursery() as nursery:
        if not slow:
            await peer.send_all(request)  # the peer answered while others had their turn
        nursery.start_soon(read)
        if slow:
            await trio.testing.wait_all_tasks_blocked()
            assert received == []  # waiting for the peer, not spinning
            await peer.send_all(request)
    assert received == [request]


async def test_a_read_after_an_answer_lets_others_run_then_reads_without_a_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, peer = stream_pair()
    async with ours, peer:
        shared = DirectSocket(ours)
        await answered(shared, peer)
        await peer.send_all(b"next\n")  # the peer answers while the other tasks run
        counted = Counted(monkeypatch)
        assert await shared.receive_some(1024) == b"next\n"
        # A turn for the other tasks (a checkpoint), then the request, with no wait for
        # the socket.
        assert (counted.turns, counted.waits) == (1, 0)


@contextlib.asynccontextmanager
async def first_request_read() -> AsyncIterator[tuple[DirectSocket, trio.SocketStream]]:
    """A `DirectSocket` that has read a first request (the socket drained), and its peer."""
    ours, peer = stream_pair()
    async with ours, peer:
        shared = DirectSocket(ours)
        await peer.send_all(b"first\n")
        assert await shared.receive_some(1024) == b"first\n"
        yield shared, peer


async def test_a_slow_peer_costs_a_wasted_turn_only_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with first_request_read() as (shared, peer):
        counted = Counted(monkeypatch)
        for number in range(40):
            await exchange(shared, peer, number, slow=True)
        # Every read waited for the peer; a turn first was tried after the 1st, 2nd, 4th,
        # 8th, 16th and 32nd missed answer only (Trio's own stream would try every time).
        assert counted.waits == 40
        assert counted.turns == 5


async def test_a_peer_that_speeds_up_is_read_after_a_turn_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with first_request_read() as (shared, peer):
        for number in range(40):  # slow: the longest wait-first stretch
            await exchange(shared, peer, number, slow=True)
        counted = Counted(monkeypatch)
        for number in range(100):
            await exchange(shared, peer, number, slow=False)
        # At most TURN_BACKOFF reads wait for the socket first; then each takes a turn.
        assert counted.waits <= TURN_BACKOFF
        assert counted.turns >= 100 - TURN_BACKOFF
        before = counted.waits
        for number in range(20):
            await exchange(shared, peer, number, slow=False)
        assert counted.waits == before


async def test_a_read_that_filled_its_buffer_is_not_followed_by_a_wait() -> None:
    ours, peer = stream_pair()
    async with ours, peer:
        shared = DirectSocket(ours)
        await peer.send_all(b"x" * 100)
        assert await shared.receive_some(10) == b"x" * 10  # more may be waiting
        await shared.send_all(b"answer")

        async def read_one() -> None:
            assert await shared.receive_some(10) == b"x" * 10

        # Read at once, without a trip through the scheduler.
        assert await turns_of_others_during(read_one, 1) == 0


class LineEcho(StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            await self.wfile.write(line)


async def test_requests_one_by_one_then_pipelined_lose_no_byte() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), LineEcho) as server:
        async with serving(server):
            stream = await trio.open_tcp_stream(*server.server_address)
            async with stream:
                with trio.fail_after(30):
                    for number in range(200):  # request, answer, request...: a turn first
                        line = b"line %d\n" % number
                        await stream.send_all(line)
                        assert await receive_exactly(stream, len(line)) == line
                    lines = b"".join(b"pipelined %d\n" % n for n in range(2000))
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(stream.send_all, lines)
                        assert await receive_exactly(stream, len(lines)) == lines
