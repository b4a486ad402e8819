"""Stream servers end to end, on real loopback and Unix sockets."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioserve
from trioserve import StreamRequestHandler, TCPServer, ThreadingTCPServer
from trioserve.testing import connect, serving

from .conftest import needs_ipv6
from .helpers import HoldHandler, receive_exactly, roundtrip

pytestmark = pytest.mark.usefixtures("fd_leak_check")


class UpperHandler(StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            await self.wfile.write(line.upper())


@pytest.mark.parametrize(
    ("server_class", "address"),
    [
        pytest.param(ThreadingTCPServer, ("127.0.0.1", 0), id="tcp4"),
        pytest.param(ThreadingTCPServer, ("::1", 0), id="tcp6", marks=needs_ipv6),
        pytest.param(trioserve.ThreadingUnixStreamServer, None, id="unix"),
        pytest.param(TCPServer, ("127.0.0.1", 0), id="tcp4-plain"),
    ],
)
async def test_echo_round_trip(
    server_class: type[TCPServer], address: Any, tmp_path: Path
) -> None:
    with server_class(address or str(tmp_path / "s.sock"), UpperHandler) as server:
        async with serving(server):
            assert await roundtrip(server, b"hello\nworld\n") == b"HELLO\nWORLD\n"


@needs_ipv6
async def test_ipv6_host_selects_af_inet6() -> None:
    with TCPServer(("::1", 0), UpperHandler) as server:
        assert server.address_family == socket.AF_INET6
        assert server.server_address[0] == "::1"
        assert len(server.server_address) == 4


async def test_port_zero_is_resolved_in_the_constructor_outside_trio() -> None:
    def build() -> tuple[Any, int]:
        with TCPServer(("127.0.0.1", 0), UpperHandler) as server:
            return server.server_address, server.fileno()

    address, fileno = await trio.to_thread.run_sync(build)
    assert address[0] == "127.0.0.1"
    assert address[1] > 0
    assert fileno >= 0


async def test_nursery_server_serves_fifty_clients_at_once() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), UpperHandler) as server:
        async with serving(server):
            streams = [await connect(server) for _ in range(50)]
            # All fifty are open at once; each is answered while the others stay open.
            for index, stream in enumerate(streams):
                await stream.send_all(b"client %d\n" % index)
            for index, stream in enumerate(reversed(streams)):
                number = 49 - index
                expected = b"CLIENT %d\n" % number
                assert await receive_exactly(stream, len(expected)) == expected
            for stream in streams:
                await stream.aclose()


async def test_plain_server_handles_one_connection_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with TCPServer(("127.0.0.1", 0), UpperHandler) as server:
        async with serving(server):
            first = await connect(server)
            second = await connect(server)
            await first.send_all(b"one\n")
            await second.send_all(b"two\n")
            assert await receive_exactly(first, 4) == b"ONE\n"
            # The second connection waits until the first is done.
            with trio.move_on_after(0.2) as waited:
                await second.receive_some(10)
            assert waited.cancelled_caught
            await first.aclose()
            assert await receive_exactly(second, 4) == b"TWO\n"
            await second.aclose()


async def test_cancelling_serve_forever_cancels_handlers_and_closes_connections(
    hold_handler: type[HoldHandler],
) -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), hold_handler) as server:
        client = await connect(server)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            await hold_handler.started.wait()
            nursery.cancel_scope.cancel()
        assert hold_handler.cancelled == ["cancelled"]
        # The server closed its end: the client sees EOF.
        assert await client.receive_some(10) == b""
        await client.aclose()
        # Nothing is left of the serving run: the server can serve again.
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            nursery.cancel_scope.cancel()


async def test_shutdown_from_a_task_stops_accepting_and_lets_handlers_finish() -> None:
    finished = trio.Event()
    release = trio.Event()

    class Handler(StreamRequestHandler):
        async def handle(self) -> None:
            await release.wait()
            await self.wfile.write(b"done\n")
            finished.set()

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        client = await connect(server)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            await trio.testing.wait_all_tasks_blocked()
            server.shutdown()  # returns at once; the handler is still running
            release.set()
        assert finished.is_set()
        assert await receive_exactly(client, 5) == b"done\n"
        await client.aclose()


async def test_shutdown_grace_zero_cancels_running_handlers(
    hold_handler: type[HoldHandler],
) -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), hold_handler) as server:
        client = await connect(server)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            await hold_handler.started.wait()
            server.shutdown(grace=0)
        assert hold_handler.cancelled == ["cancelled"]
        await client.aclose()


async def test_shutdown_grace_expires_then_cancels(
    hold_handler: type[HoldHandler], autojump_clock: trio.testing.MockClock
) -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), hold_handler, shutdown_grace=30) as server:
        client = await connect(server)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            await hold_handler.started.wait()
            start = trio.current_time()
            server.shutdown()
        assert trio.current_time() - start == pytest.approx(30)
        assert hold_handler.cancelled == ["cancelled"]
        await client.aclose()


def test_shutdown_from_another_thread_waits_for_serve_forever() -> None:
    handler_done = threading.Event()

    class Handler(UpperHandler):
        async def handle(self) -> None:
            try:
                await super().handle()
            finally:
                handler_done.set()

    server = ThreadingTCPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=trio.run, args=(server.serve_forever,))
    thread.start()
    with socket.create_connection(server.server_address, timeout=10) as client:
        client.sendall(b"ping\n")
        assert client.recv(10) == b"PING\n"
        # The connection stays open: the handler is still running when shutdown() comes.
        server.shutdown(grace=0)
        # socketserver's semantics: when shutdown() returns, serve_forever is done,
        # and so is every handler it ran.
        assert handler_done.is_set()
        assert client.recv(10) == b""
    thread.join(10)
    assert not thread.is_alive()
    server.server_close()


def test_shutdown_before_serving_does_not_hang_and_stops_the_next_serve() -> None:
    with TCPServer(("127.0.0.1", 0), UpperHandler) as server:
        server.shutdown()

        async def main() -> None:
            with trio.fail_after(10):  # only reached if serve_forever hangs
                await server.serve_forever()

        trio.run(main)


async def test_serving_twice_at_once_is_an_error() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), UpperHandler) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            with pytest.raises(RuntimeError, match="already serving"):
                await server.serve_forever()
            nursery.cancel_scope.cancel()


async def test_handle_request_serves_one_request() -> None:
    with TCPServer(("127.0.0.1", 0), UpperHandler) as server:
        async with trio.open_nursery() as nursery:

            async def client() -> None:
                assert await roundtrip(server, b"one\n") == b"ONE\n"

            nursery.start_soon(client)
            await server.handle_request()


async def test_handle_request_times_out_into_handle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timeouts: list[float] = []

    class Server(TCPServer):
        timeout = 7

        def handle_timeout(self) -> None:
            timeouts.append(trio.current_time())

    with Server(("127.0.0.1", 0), UpperHandler) as server:
        await server.handle_request()
    assert timeouts == [pytest.approx(7)]


class FailingHandler(StreamRequestHandler):
    async def handle(self) -> None:
        line = await self.rfile.readline()
        if line.startswith(b"fail"):
            raise RuntimeError("handler failed on purpose")
        await self.wfile.write(line.upper())


async def test_handler_exception_is_logged_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), FailingHandler) as server:
        async with serving(server):
            async with await connect(server) as bad:
                await bad.send_all(b"fail\n")
                assert await bad.receive_some(10) == b""  # closed, not hung
            assert await roundtrip(server, b"fine\n") == b"FINE\n"
    errors = [r for r in caplog.records if r.name == "trioserve" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "handler failed on purpose" in str(errors[0].exc_info[1])


async def test_client_that_vanishes_mid_line_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done = trio.Event()
    seen: list[bytes] = []

    class Handler(StreamRequestHandler):
        async def handle(self) -> None:
            try:
                seen.append(await self.rfile.readline())
            finally:
                done.set()

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        async with serving(server):
            async with await connect(server) as client:
                await client.send_all(b"half a li")
            await done.wait()
            assert seen == [b"half a li"]  # EOF ends the line; nothing is lost
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_client_reset_is_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    done = trio.Event()

    class Handler(StreamRequestHandler):
        async def handle(self) -> None:
            try:
                await self.rfile.readline()
                for _ in range(100):
                    await self.wfile.write(b"x" * 65536)
            finally:
                done.set()

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        async with serving(server):
            client = socket.create_connection(server.server_address)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            client.sendall(b"go\n")
            client.close()  # SO_LINGER 0: a reset
            await done.wait()
    records = [r for r in caplog.records if r.name == "trioserve"]
    assert [r.levelno for r in records] == [logging.DEBUG]
    assert "disconnected" in records[0].getMessage()


async def test_line_too_long_is_a_warning_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Handler(UpperHandler):
        max_line_length = 16

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        async with serving(server):
            async with await connect(server) as client:
                await client.send_all(b"y" * 100)
                assert await client.receive_some(10) == b""
            assert await roundtrip(server, b"short\n") == b"SHORT\n"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "max_line_length" in warnings[0].getMessage()


async def test_handler_timeout_disconnects_an_idle_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Handler(UpperHandler):
        timeout = 10

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        async with serving(server), await connect(server) as client:
            start = trio.current_time()
            assert await client.receive_some(10) == b""
            assert trio.current_time() - start == pytest.approx(10)


async def test_buffered_wfile_is_flushed_by_finish() -> None:
    class Handler(StreamRequestHandler):
        wbufsize = 1 << 20

        async def handle(self) -> None:
            await self.wfile.write(b"buffered ")
            await self.wfile.write(b"reply\n")

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        async with serving(server), await connect(server) as client:
            assert await receive_exactly(client, 15) == b"buffered reply\n"


async def test_from_socket_serves_on_an_already_listening_socket() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    with ThreadingTCPServer.from_socket(sock, UpperHandler) as server:
        assert server.server_address == sock.getsockname()
        assert server.fileno() == sock.fileno()
        async with serving(server):
            assert await roundtrip(server, b"adopted\n") == b"ADOPTED\n"
    assert sock.fileno() == -1  # the server owned it and closed it


async def test_from_socket_activates_a_bound_socket_and_rejects_wrong_ones() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with TCPServer.from_socket(sock, UpperHandler) as server:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert server.server_address == sock.getsockname()
    with socket.socket(type=socket.SOCK_DGRAM) as udp, pytest.raises(ValueError, match="type"):
        TCPServer.from_socket(udp, UpperHandler)
    with socket.socket() as unbound, pytest.raises(ValueError, match="bound socket"):
        TCPServer.from_socket(unbound, UpperHandler)
