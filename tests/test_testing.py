"""trioserve.testing: serving(), connect(), exchange_datagram(), run_handler()."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import trioserve
from trioserve import (
    BaseRequestHandler,
    SocketServer,
    StreamRequestHandler,
    TCPServer,
    ThreadingTCPServer,
)
from trioserve.testing import (
    connect,
    exchange_datagram,
    run_datagram_handler,
    run_handler,
    serving,
)

from .conftest import needs_ipv6
from .helpers import HoldHandler, receive_exactly

pytestmark = pytest.mark.usefixtures("fd_leak_check")


class UpperHandler(StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            await self.wfile.write(line.upper())


class SyncUpperHandler(socketserver.StreamRequestHandler):
    """A handler as ported from socketserver: it runs in a worker thread."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


class SyncRequestHandler(BaseRequestHandler):
    """A trioserve handler with a plain ``def handle``: it runs in a worker thread."""

    def handle(self) -> None:
        self.request.sendall(self.request.recv(1024).upper())


# -- serving() ----------------------------------------------------------------------------


async def test_serving_serves_in_the_block_and_cancels_handlers_on_exit(
    hold_handler: type[HoldHandler],
) -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), hold_handler) as server:
        async with serving(server) as served:
            assert served is server
            client = await connect(server)
            await hold_handler.started.wait()
        # Leaving the block cancelled the handler and closed the server's end ...
        assert hold_handler.cancelled == ["cancelled"]
        assert await client.receive_some(10) == b""
        await client.aclose()
        # ... but not the server, which serves again.
        async with serving(server), await connect(server) as again:
            await again.send_all(b"x")
            await hold_handler.started.wait()


async def test_serving_raises_the_blocks_exception_unwrapped() -> None:
    with TCPServer(("127.0.0.1", 0), UpperHandler) as server:
        with pytest.raises(ValueError, match="from the block"):
            async with serving(server):
                raise ValueError("from the block")
        # The server was stopped all the same.
        async with serving(server), await connect(server) as client:
            await client.send_all(b"ok\n")
            assert await receive_exactly(client, 3) == b"OK\n"


async def test_serving_a_server_that_is_serving_already_raises_its_error() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), UpperHandler) as server:
        async with serving(server):
            with pytest.raises(RuntimeError, match="already serving"):
                async with serving(server):
                    pytest.fail("the block ran for a server that never started")


async def test_serving_cancels_the_block_and_raises_when_the_server_crashes() -> None:
    class CrashingServer(ThreadingTCPServer):
        def service_actions(self) -> None:
            raise OSError("the server broke")

    async def block(server: ThreadingTCPServer) -> None:
        async with serving(server), await connect(server):
            with trio.fail_after(10):  # TooSlowError if the block is not cancelled
                await trio.sleep_forever()

    # As serve_forever raised it: from the nursery of its handlers.
    with (
        CrashingServer(("127.0.0.1", 0), UpperHandler) as server,
        pytest.RaisesGroup(pytest.RaisesExc(OSError, match="the server broke")),
    ):
        await block(server)


async def test_serving_does_not_count_client_connections_as_leaks() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), UpperHandler) as server:
        async with serving(server):
            client = await connect(server)  # left open on purpose
            await client.send_all(b"one\n")
            assert await receive_exactly(client, 4) == b"ONE\n"
        assert await client.receive_some(10) == b""
        await client.aclose()


async def test_serving_reports_a_file_descriptor_the_block_left_open() -> None:
    stray: list[socket.socket] = []

    async def block(server: TCPServer) -> None:
        async with serving(server):
            stray.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

    with TCPServer(("127.0.0.1", 0), UpperHandler) as server:
        try:
            with pytest.raises(AssertionError, match="left behind") as failure:
                await block(server)
            message = str(failure.value)
            assert f"1 file descriptor: fd {stray[0].fileno()} (socket:" in message
            assert repr(server) in message
        finally:
            for sock in stray:
                sock.close()


async def test_serving_reports_a_file_a_handler_left_open() -> None:
    opened: list[int] = []

    class Handler(StreamRequestHandler):
        async def handle(self) -> None:
            opened.append(os.open(os.devnull, os.O_RDONLY))
            await self.wfile.write(b"opened\n")

    async def block(server: ThreadingTCPServer) -> None:
        async with serving(server), await connect(server) as client:
            assert await receive_exactly(client, 7) == b"opened\n"

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        try:
            with pytest.raises(AssertionError, match=rf"fd \d+ \({os.devnull}\)"):
                await block(server)
        finally:
            for fd in opened:
                os.close(fd)
    assert len(opened) == 1


async def test_serving_reports_a_task_a_handler_left_running() -> None:
    async def background_job() -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as outer:

        class Handler(StreamRequestHandler):
            async def handle(self) -> None:
                outer.start_soon(background_job)
                await self.wfile.write(b"spawned\n")

        async def block(server: ThreadingTCPServer) -> None:
            async with serving(server), await connect(server) as client:
                assert await receive_exactly(client, 8) == b"spawned\n"

        with (
            ThreadingTCPServer(("127.0.0.1", 0), Handler) as server,
            pytest.raises(AssertionError, match=r"1 Trio task: .*background_job"),
        ):
            await block(server)
        outer.cancel_scope.cancel()


async def test_another_servers_tasks_are_its_own_but_a_server_left_serving_counts() -> None:
    with (
        trioserve.ThreadingUDPServer(("127.0.0.1", 0), DatagramUpper) as outer,
        trioserve.ThreadingUDPServer(("127.0.0.1", 0), DatagramUpper) as inner,
        trioserve.ThreadingUDPServer(("127.0.0.1", 0), DatagramUpper) as stray,
    ):
        async with serving(outer):
            async with serving(inner):
                # The outer server's request task, started now, waits for its next
                # request after this one: it is that server's, not this block's.
                assert await exchange_datagram(outer, b"outer") == b"OUTER"
                assert await exchange_datagram(inner, b"inner") == b"INNER"
            async with trio.open_nursery() as nursery:

                async def block() -> None:
                    async with serving(inner):
                        await nursery.start(stray.serve_forever)
                        assert await exchange_datagram(stray, b"stray") == b"STRAY"

                with pytest.raises(AssertionError, match=r"1 Trio task: .*serve_forever"):
                    await block()
                stray.shutdown()


async def test_serving_reports_a_thread_still_busy_and_not_idle_trio_workers() -> None:
    release = threading.Event()
    stray = threading.Thread(target=release.wait, args=(10,), name="stray-worker")

    async def block(server: ThreadingTCPServer) -> None:
        async with serving(server):
            # A worker thread that finished its job stays in Trio's cache: not a leak.
            await trio.to_thread.run_sync(lambda: None)
            stray.start()

    with ThreadingTCPServer(("127.0.0.1", 0), UpperHandler) as server:
        try:
            with pytest.raises(AssertionError, match=r"1 busy thread: stray-worker$"):
                await block(server)
        finally:
            release.set()
            if stray.is_alive():
                stray.join(10)
    assert not stray.is_alive()


async def test_serving_reports_a_sync_handler_thread_the_server_had_to_abandon(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    entered = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    class StuckHandler(BaseRequestHandler):
        def handle(self) -> None:
            entered.set()
            try:
                release.wait(30)  # deaf to the connection being shut down
            finally:
                finished.set()

    async def block(server: ThreadingTCPServer) -> None:
        async with serving(server), await connect(server):
            await trio.to_thread.run_sync(entered.wait, 10)

    with ThreadingTCPServer(("127.0.0.1", 0), StuckHandler) as server:
        try:
            with pytest.raises(AssertionError, match=r"1 busy thread: "):
                await block(server)
        finally:
            release.set()
            await trio.to_thread.run_sync(finished.wait, 10)
    assert finished.is_set()
    assert any(record.levelname == "ERROR" for record in caplog.records)


@pytest.mark.parametrize("handler", [SyncUpperHandler, SyncRequestHandler])
async def test_serving_accepts_sync_handlers_whose_threads_went_back_to_trio(
    handler: type[Any],
) -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), handler) as server:
        async with serving(server):
            for _ in range(3):
                async with await connect(server) as client:
                    await client.send_all(b"sync\n")
                    assert await receive_exactly(client, 5) == b"SYNC\n"


async def test_serving_skips_the_leak_check_when_asked() -> None:
    with TCPServer(("127.0.0.1", 0), UpperHandler) as server:
        async with serving(server, check_leaks=False):
            stray = socket.socket()
        stray.close()


async def test_serving_skips_the_leak_check_when_the_block_raised() -> None:
    stray: list[socket.socket] = []

    async def block(server: TCPServer) -> None:
        async with serving(server):
            stray.append(socket.socket())
            raise KeyError("the block's own error wins")

    with TCPServer(("127.0.0.1", 0), UpperHandler) as server, pytest.raises(KeyError):
        await block(server)
    stray[0].close()


async def test_serving_is_stopped_by_cancelling_an_outer_scope(
    hold_handler: type[HoldHandler],
) -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), hold_handler) as server:
        with trio.CancelScope() as scope:
            async with serving(server), await connect(server):
                await hold_handler.started.wait()
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert hold_handler.cancelled == ["cancelled"]


# -- connect() and exchange_datagram() -----------------------------------------------------


@pytest.mark.parametrize(
    ("server_class", "address"),
    [
        pytest.param(ThreadingTCPServer, ("127.0.0.1", 0), id="tcp4"),
        pytest.param(ThreadingTCPServer, ("0.0.0.0", 0), id="tcp4-wildcard"),
        pytest.param(ThreadingTCPServer, ("::1", 0), id="tcp6", marks=needs_ipv6),
        pytest.param(ThreadingTCPServer, ("::", 0), id="tcp6-wildcard", marks=needs_ipv6),
        pytest.param(trioserve.ThreadingUnixStreamServer, None, id="unix"),
    ],
)
async def test_connect_reaches_any_stream_server(
    server_class: type[TCPServer], address: Any, tmp_path: Path
) -> None:
    with server_class(address or str(tmp_path / "s.sock"), UpperHandler) as server:
        async with serving(server), await connect(server) as client:
            assert isinstance(client, trio.SocketStream)
            await client.send_all(b"hello\n")
            assert await receive_exactly(client, 6) == b"HELLO\n"


class DatagramSocketServer(SocketServer):
    """Only a bound datagram socket; the tests answer on it by hand."""

    socket_type: ClassVar[int] = socket.SOCK_DGRAM


class UnixDatagramSocketServer(DatagramSocketServer):
    address_family: int = socket.AF_UNIX


async def answer_upper(server: SocketServer, count: int) -> None:
    for _ in range(count):
        data, address = await server.socket.recvfrom(65536)
        await server.socket.sendto(data.upper(), address)


@pytest.mark.parametrize(
    ("server_class", "address"),
    [
        pytest.param(DatagramSocketServer, ("127.0.0.1", 0), id="udp4"),
        pytest.param(DatagramSocketServer, ("::1", 0), id="udp6", marks=needs_ipv6),
        pytest.param(UnixDatagramSocketServer, None, id="unix"),
    ],
)
async def test_exchange_datagram_returns_the_reply(
    server_class: type[SocketServer], address: Any, tmp_path: Path
) -> None:
    with server_class(address or str(tmp_path / "d.sock"), UpperHandler) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_upper, server, 2)
            assert await exchange_datagram(server, b"ping") == b"PING"
            assert await exchange_datagram(server, b"x" * 100, max_size=10) == b"X" * 10


@pytest.mark.skipif(
    not hasattr(trioserve, "ThreadingUDPServer"), reason="trioserve has no datagram servers yet"
)
async def test_exchange_datagram_with_a_udp_server() -> None:
    udp_server = getattr(trioserve, "ThreadingUDPServer")  # noqa: B009 - not typed yet
    datagram_handler = getattr(trioserve, "DatagramRequestHandler")  # noqa: B009

    class Handler(datagram_handler):  # type: ignore[misc,valid-type]
        async def handle(self) -> None:
            await self.wfile.write((await self.rfile.read()).upper())

    with udp_server(("127.0.0.1", 0), Handler) as server:
        async with serving(server):
            assert await exchange_datagram(server, b"over udp") == b"OVER UDP"


async def test_the_clients_refuse_the_wrong_kind_of_server() -> None:
    with (
        TCPServer(("127.0.0.1", 0), UpperHandler) as stream_server,
        pytest.raises(TypeError, match=r"needs a datagram server.*use connect"),
    ):
        await exchange_datagram(stream_server, b"x")
    with (
        DatagramSocketServer(("127.0.0.1", 0), UpperHandler) as datagram_server,
        pytest.raises(TypeError, match=r"needs a stream server.*use exchange_datagram"),
    ):
        await connect(datagram_server)


# -- run_handler() and run_datagram_handler() ---------------------------------------------


async def test_run_handler_returns_what_an_async_handler_wrote() -> None:
    assert await run_handler(UpperHandler, b"hello\nworld\n") == b"HELLO\nWORLD\n"
    assert await run_handler(UpperHandler) == b""


async def test_run_handler_sends_eof_after_the_client_bytes() -> None:
    class CountHandler(StreamRequestHandler):
        async def handle(self) -> None:
            data = await self.rfile.read()  # until EOF
            await self.wfile.write(b"%d bytes\n" % len(data))

    assert await run_handler(CountHandler, b"x" * 100_000) == b"100000 bytes\n"


async def test_run_handler_runs_sync_and_socketserver_handlers() -> None:
    assert await run_handler(SyncUpperHandler, b"a\nb\n") == b"A\nB\n"
    assert await run_handler(SyncRequestHandler, b"request\n") == b"REQUEST\n"


async def test_run_handler_gives_the_handler_its_address_and_server() -> None:
    seen: list[Any] = []

    class Handler(BaseRequestHandler):
        async def handle(self) -> None:
            seen.append((self.client_address, self.server))

    await run_handler(Handler)
    with TCPServer(("127.0.0.1", 0), Handler) as server:
        await run_handler(Handler, client_address=("192.0.2.1", 4242), server=server)
    (default_address, default_server), given = seen
    assert default_address == ("127.0.0.1", 0)
    assert isinstance(default_server, trioserve.BaseServer)
    assert default_server.server_address == "<memory>"
    assert given == (("192.0.2.1", 4242), server)


async def test_run_handler_raises_the_handlers_exception() -> None:
    class Failing(StreamRequestHandler):
        async def handle(self) -> None:
            await self.wfile.write(b"partial")
            raise LookupError("handler failed on purpose")

    with pytest.raises(LookupError, match="on purpose"):
        await run_handler(Failing, b"x")


async def test_run_handler_flushes_a_buffered_wfile() -> None:
    class Buffered(UpperHandler):
        wbufsize = 1 << 16

    assert await run_handler(Buffered, b"buffered\n") == b"BUFFERED\n"


class DatagramUpper(BaseRequestHandler):
    async def handle(self) -> None:
        data, sock = self.request
        for _ in range(data.count(b"!") + 1):
            await sock.sendto(data.upper(), self.client_address)


class SyncDatagramUpper(BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data.upper(), self.client_address)


async def test_run_datagram_handler_returns_every_reply_in_order() -> None:
    assert await run_datagram_handler(DatagramUpper, b"ping") == [b"PING"]
    assert await run_datagram_handler(DatagramUpper, b"!!") == [b"!!"] * 3


async def test_run_datagram_handler_returns_no_reply_as_an_empty_list() -> None:
    class Silent(BaseRequestHandler):
        async def handle(self) -> None:
            assert self.request[0] == b"quiet"

    assert await run_datagram_handler(Silent, b"quiet") == []


async def test_run_datagram_handler_runs_sync_handlers() -> None:
    assert await run_datagram_handler(SyncDatagramUpper, b"sync") == [b"SYNC"]


async def test_run_datagram_handler_raises_the_handlers_exception() -> None:
    class Failing(BaseRequestHandler):
        async def handle(self) -> None:
            raise LookupError("datagram handler failed")

    with pytest.raises(LookupError, match="datagram handler failed"):
        await run_datagram_handler(Failing, b"x")
