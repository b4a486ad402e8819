"""The server lifecycle: serve_forever, shutdown, cancellation, hooks, handle_request, errors."""

from __future__ import annotations

import logging
import socket
import sys
import threading
from typing import Any

import pytest
import trio
import trio.testing

import trioserve
from trioserve import (
    StreamRequestHandler,
    TCPServer,
    ThreadingTCPServer,
)
from trioserve.testing import connect, serving

from .helpers import (
    HoldHandler,
    UpperHandler,
    receive_exactly,
    receive_until_eof,
    roundtrip,
    trioserve_records,
)

LOCALHOST = ("127.0.0.1", 0)

pytestmark = pytest.mark.usefixtures("fd_leak_check")


class EchoLine(StreamRequestHandler):
    async def handle(self) -> None:
        await self.wfile.write(await self.rfile.readline())


async def talk(server: TCPServer, line: bytes) -> bytes:
    async with await connect(server) as stream:
        await stream.send_all(line)
        return await receive_until_eof(stream)


async def test_async_context_manager_closes_the_socket() -> None:
    async with TCPServer(("127.0.0.1", 0), EchoLine) as server:
        fileno = server.fileno()
        assert fileno >= 0
    assert server.socket.fileno() == -1


async def test_hooks_run_in_socketservers_order() -> None:
    calls: list[str] = []

    class Server(ThreadingTCPServer):
        def server_bind(self) -> None:
            calls.append("server_bind")
            super().server_bind()

        def server_activate(self) -> None:
            calls.append("server_activate")
            super().server_activate()

        async def get_request(self) -> tuple[Any, Any]:
            calls.append("get_request")
            return await super().get_request()

        def verify_request(self, request: Any, client_address: Any) -> bool:
            calls.append("verify_request")
            return True

        async def process_request(self, request: Any, client_address: Any) -> None:
            calls.append("process_request")
            await super().process_request(request, client_address)

        async def finish_request(self, request: Any, client_address: Any) -> None:
            calls.append("finish_request")
            await super().finish_request(request, client_address)

        async def shutdown_request(self, request: trio.abc.Stream) -> None:
            calls.append("shutdown_request")
            await super().shutdown_request(request)

        async def close_request(self, request: trio.abc.Stream) -> None:
            calls.append("close_request")
            await super().close_request(request)

        def service_actions(self) -> None:
            calls.append("service_actions")

    with Server(("127.0.0.1", 0), EchoLine) as server:
        assert calls == ["server_bind", "server_activate"]
        async with serving(server):
            assert await talk(server, b"hooks\n") == b"hooks\n"
            await trio.testing.wait_all_tasks_blocked()
    # The accept loop and the connection's task interleave; each keeps its own order.
    loop = [c for c in calls[2:] if c in ("get_request", "service_actions")]
    path = [c for c in calls[2:] if c not in ("get_request", "service_actions")]
    assert loop[:3] == ["get_request", "service_actions", "get_request"]
    assert path == [
        "verify_request",
        "process_request",
        "finish_request",
        "shutdown_request",
        "close_request",
    ]


async def test_verify_request_false_closes_without_running_the_handler() -> None:
    handled: list[Any] = []

    class Handler(EchoLine):
        async def handle(self) -> None:
            handled.append(self.client_address)

    class Picky(ThreadingTCPServer):
        async def verify_request(self, request: Any, client_address: Any) -> bool:
            await trio.lowlevel.checkpoint()  # hooks may be async def too
            return False

    with Picky(("127.0.0.1", 0), Handler) as server:
        async with serving(server):
            assert await talk(server, b"let me in\n") == b""
    assert handled == []


async def test_handle_error_override_receives_the_request_and_the_exception() -> None:
    seen: list[tuple[str, str]] = []

    class Handler(StreamRequestHandler):
        async def handle(self) -> None:
            raise KeyError("boom")

    class Server(ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:

            seen.append((type(request).__name__, repr(sys.exc_info()[1])))

    with Server(("127.0.0.1", 0), Handler) as server:
        async with serving(server):
            assert await talk(server, b"x\n") == b""
            assert await talk(server, b"y\n") == b""
    assert seen == [("SocketStream", "KeyError('boom')")] * 2


async def test_cancellation_is_never_reported_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = trio.Event()

    class Handler(StreamRequestHandler):
        async def handle(self) -> None:
            started.set()
            await trio.sleep_forever()

    with ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            client = await connect(server)
            await started.wait()
            nursery.cancel_scope.cancel()
        await client.aclose()
    assert not caplog.records


def test_ctrl_c_reaches_the_caller_of_trio_run_as_keyboard_interrupt() -> None:
    class Interrupting(StreamRequestHandler):
        async def handle(self) -> None:
            raise KeyboardInterrupt  # what Trio delivers to the serving task on Ctrl-C

    with ThreadingTCPServer(("127.0.0.1", 0), Interrupting) as server:
        client = threading.Thread(
            target=lambda: socket.create_connection(server.server_address, timeout=10).close()
        )
        client.start()
        # Not a BaseExceptionGroup: `except KeyboardInterrupt` around trio.run works.
        with pytest.raises(KeyboardInterrupt):
            trio.run(server.serve_forever)
        client.join(10)


# -- stopping: cancellation and shutdown -----------------------------------------------------


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


async def test_shutdown_drains_in_flight_handlers_then_cancels_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started: list[str] = []
    outcome: dict[str, str] = {}
    both_started = trio.Event()

    class Work(StreamRequestHandler):
        async def handle(self) -> None:
            name = (await self.rfile.readline()).strip().decode()
            started.append(name)
            if len(started) == 2:
                both_started.set()
            try:
                await self.rfile.readline()  # until the client says it is done
                await self.wfile.write(b"finished\n")
                outcome[name] = "finished"
            except trio.Cancelled:
                outcome[name] = "cancelled"
                raise

    server = ThreadingTCPServer(LOCALHOST, Work)
    assert server.shutdown_grace == 5.0  # the documented default
    with server:
        quick, stuck = await connect(server), await connect(server)
        late: trio.SocketStream | None = None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_forever)
                await quick.send_all(b"quick\n")
                await stuck.send_all(b"stuck\n")
                await both_started.wait()
                start = trio.current_time()
                server.shutdown()  # grace: shutdown_grace, 5 s
                late = await connect(server)  # the kernel still queues it; nobody accepts
                await late.send_all(b"late\n")
                await quick.send_all(b"done\n")
                assert await receive_exactly(quick, 9) == b"finished\n"
            # serve_forever returned when the grace ran out and the stuck one was cancelled.
            assert trio.current_time() - start == pytest.approx(5)
            assert outcome == {"quick": "finished", "stuck": "cancelled"}
            assert sorted(started) == ["quick", "stuck"]  # the late one never got a handler
            assert await receive_until_eof(stuck) == b""
        finally:
            for stream in (quick, stuck, late):
                if stream is not None:
                    await stream.aclose()


# -- handle_request --------------------------------------------------------------------------


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


# -- errors go to the log, each at its level -------------------------------------------------


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


async def test_a_timed_out_idle_client_is_one_info_line_not_an_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")

    class Lines(UpperHandler):
        timeout = 30

    async with (
        ThreadingTCPServer(LOCALHOST, Lines) as server,
        serving(server),
        await connect(server) as idle,
    ):
        peer = idle.socket.getsockname()
        assert await receive_until_eof(idle) == b""
    assert trioserve_records(caplog, logging.ERROR, exactly=True) == []
    assert trioserve_records(caplog, logging.WARNING, exactly=True) == []
    [info] = trioserve_records(caplog, logging.INFO, exactly=True)
    assert info.getMessage() == (f"{peer!r} timed out: the peer did not respond within 30 seconds")
    assert info.exc_info is None


async def test_a_timeout_error_of_the_handler_own_is_still_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Upstream(StreamRequestHandler):
        async def handle(self) -> None:
            raise TimeoutError("the upstream service did not answer")

    async with (
        ThreadingTCPServer(LOCALHOST, Upstream) as server,
        serving(server),
        await connect(server) as stream,
    ):
        await stream.send_all(b"hi\n")
        assert await receive_until_eof(stream) == b""
    [error] = trioserve_records(caplog, logging.ERROR, exactly=True)
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], TimeoutError)
    assert not isinstance(error.exc_info[1], trioserve.PeerTimeoutError)
    assert trioserve_records(caplog, logging.INFO, exactly=True) == []
