"""Live statistics: `BaseServer.statistics`, the kernel's byte counts, a pool's figures."""

from __future__ import annotations

import socket
import threading
from typing import ClassVar

import pytest
import trio

from trioserve import (
    DatagramRequestHandler,
    ForkingTCPServer,
    Statistics,
    StreamRequestHandler,
    SyncStreamRequestHandler,
    ThreadingTCPServer,
    ThreadingUDPServer,
    ThreadingUnixStreamServer,
)
from trioserve._frames import FrameBuffer, encode_frame
from trioserve._stats import DURATION_BUCKETS, Counters, WorkerStatistics, tcp_bytes
from trioserve.testing import connect, exchange_datagram, serving

from .helpers import PATIENCE, receive_exactly, receive_until_eof

REQUEST_SIZE = 1234
REPLY_SIZE = 56_789


class SizedHandler(StreamRequestHandler):
    """Reads exactly REQUEST_SIZE bytes, answers REPLY_SIZE bytes, then closes."""

    async def handle(self) -> None:
        await self.rfile.read(REQUEST_SIZE)
        await self.wfile.write(b"r" * REPLY_SIZE)


class FailingHandler(StreamRequestHandler):
    async def handle(self) -> None:
        raise RuntimeError("the handler fails")


class BlockingHandler(SyncStreamRequestHandler):
    """A sync handler that holds its thread until the test lets it go."""

    inside: ClassVar[threading.Event]
    release: ClassVar[threading.Event]

    def handle(self) -> None:
        type(self).inside.set()
        type(self).release.wait(PATIENCE)


class ReplyHandler(DatagramRequestHandler):
    async def handle(self) -> None:
        await self.wfile.write(b"ok")


def test_tcp_bytes_reads_the_kernels_counts_of_known_sizes() -> None:
    """The offsets into struct tcp_info are right on this kernel: known sizes come back."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        accepted, _ = listener.accept()
        with client, accepted:
            client.sendall(b"x" * 100_000)
            received = 0
            while received < 100_000:
                received += len(accepted.recv(65536))
            accepted.sendall(b"y" * 777)
            got = 0
            while got < 777:
                got += len(client.recv(65536))
            assert tcp_bytes(client) == (777, 100_000)
            assert tcp_bytes(accepted) == (100_000, 777)
            # The peer's end-of-file is not a byte (where the server reads: before its own
            # end-of-file, in CLOSE_WAIT).
            client.shutdown(socket.SHUT_WR)
            assert accepted.recv(1) == b""
            assert tcp_bytes(accepted) == (100_000, 777)


def test_tcp_bytes_is_none_for_what_is_not_tcp() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert tcp_bytes(left) is None
    assert tcp_bytes(left) is None  # closed


async def test_statistics_count_connections_and_bytes() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), SizedHandler) as server:
        before = server.statistics()
        assert before == Statistics(0, 0, 0, 0, 0, 0, before.duration_buckets, 0.0, ())
        async with serving(server):
            for _ in range(3):
                async with await connect(server) as client:
                    await client.send_all(b"q" * REQUEST_SIZE)
                    assert len(await receive_until_eof(client)) == REPLY_SIZE
        stats = server.statistics()
    assert stats.total_connections == 3
    assert stats.active_connections == 0
    assert stats.bytes_received == 3 * REQUEST_SIZE
    assert stats.bytes_sent == 3 * REPLY_SIZE
    assert stats.handler_errors == 0
    assert stats.workers == ()


async def test_statistics_show_active_connections_while_they_last(
    hold_handler: type[StreamRequestHandler],
) -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), hold_handler) as server:
        async with serving(server), await connect(server):
            await hold_handler.started.wait()  # type: ignore[attr-defined]
            stats = server.statistics()
            assert (stats.active_connections, stats.total_connections) == (1, 1)
        assert server.statistics().active_connections == 0


async def test_statistics_count_handler_errors(caplog: pytest.LogCaptureFixture) -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), FailingHandler) as server:
        async with serving(server):
            for _ in range(2):
                async with await connect(server) as client:
                    await receive_until_eof(client)
        assert server.statistics().handler_errors == 2


async def test_statistics_count_busy_threads_from_another_thread() -> None:
    class Handler(BlockingHandler):
        inside = threading.Event()
        release = threading.Event()

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        async with serving(server), await connect(server):
            await trio.to_thread.run_sync(Handler.inside.wait, PATIENCE)
            stats = await trio.to_thread.run_sync(server.statistics)
            Handler.release.set()
        assert stats.busy_threads == 1
        assert stats.active_connections == 1
        assert server.statistics().busy_threads == 0


async def test_unix_connections_are_counted_without_bytes(tmp_path: object) -> None:
    path = f"{tmp_path}/s.sock"
    with ThreadingUnixStreamServer(path, SizedHandler) as server:
        async with serving(server), await connect(server) as client:
            await client.send_all(b"q" * REQUEST_SIZE)
            await receive_exactly(client, REPLY_SIZE)
        stats = server.statistics()
    assert stats.total_connections == 1
    assert (stats.bytes_received, stats.bytes_sent) == (0, 0)


async def test_datagrams_count_their_packets() -> None:
    with ThreadingUDPServer(("127.0.0.1", 0), ReplyHandler) as server:
        async with serving(server):
            for _ in range(2):
                assert await exchange_datagram(server, b"12345") == b"ok"
        stats = server.statistics()
    assert stats.total_connections == 2
    assert stats.bytes_received == 10


async def test_duration_histogram_when_asked_for() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), SizedHandler) as plain:
        async with serving(plain), await connect(plain) as client:
            await client.send_all(b"q" * REQUEST_SIZE)
            await receive_until_eof(client)
        assert sum(plain.statistics().duration_buckets) == 0
    with ThreadingTCPServer(("127.0.0.1", 0), SizedHandler, duration_histogram=True) as timed:
        async with serving(timed), await connect(timed) as client:
            await client.send_all(b"q" * REQUEST_SIZE)
            await receive_until_eof(client)
        stats = timed.statistics()
    assert sum(stats.duration_buckets) == 1
    assert len(stats.duration_buckets) == len(DURATION_BUCKETS) + 1
    assert stats.duration_sum > 0


def test_a_pools_totals_keep_what_exited_workers_counted() -> None:
    counters = Counters()
    counters.worker_update(WorkerStatistics(pid=10, active_connections=2, total_connections=5))
    counters.worker_update(WorkerStatistics(pid=11, active_connections=1, total_connections=7))
    counters.worker_gone(10)
    stats = counters.snapshot(pid=1, busy_threads=0)
    assert stats.total_connections == 12
    assert stats.active_connections == 1  # the gone worker's connections are gone too
    assert [each.pid for each in stats.workers] == [11]


class PoolSizedHandler(SizedHandler):
    pass


async def test_a_pools_statistics_sum_its_workers() -> None:
    with ForkingTCPServer(("127.0.0.1", 0), PoolSizedHandler, max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            for _ in range(4):
                async with await connect(server) as client:
                    await client.send_all(b"q" * REQUEST_SIZE)
                    assert len(await receive_until_eof(client)) == REPLY_SIZE
            server.shutdown()
        # Each worker sends its last figures as it stops, before serve_forever returns.
        stats = server.statistics()
    assert stats.total_connections == 4
    assert stats.active_connections == 0
    assert stats.bytes_received == 4 * REQUEST_SIZE
    assert stats.bytes_sent == 4 * REPLY_SIZE
    assert stats.workers == ()  # none is left


def test_a_workers_figures_travel_in_a_stats_frame() -> None:
    figures = WorkerStatistics(pid=42, total_connections=3, duration_buckets=(1, 2))
    [message] = FrameBuffer().feed(encode_frame(("stats", figures)))
    assert message == ("stats", figures)
