"""The server lifecycle: serve_forever, shutdown, cancellation, hooks, handle_request, errors."""

from __future__ import annotations

import functools
import logging
import socket
import socketserver
import sys
import threading
from typing import Any

import pytest
import trio
import trio.lowlevel
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
        async with trio.open_nursery() as nursery:
            # A long poll_interval: service_actions only after requests, not on the timer.
            await nursery.start(functools.partial(server.serve_forever, poll_interval=3600))
            assert await talk(server, b"hooks\n") == b"hooks\n"
            await trio.testing.wait_all_tasks_blocked()
            assert await talk(server, b"again\n") == b"again\n"
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    # The accept loop and the connection's task interleave; each keeps its own order.
    loop = [c for c in calls[2:] if c in ("get_request", "service_actions")]
    path = [c for c in calls[2:] if c not in ("get_request", "service_actions")]
    assert loop[:3] == ["get_request", "service_actions", "get_request"]
    path = path[: len(path) // 2]  # the first request's
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


# -- the lifecycle, written once -----------------------------------------------------------


async def test_a_handler_that_shuts_down_from_a_thread_stops_the_server() -> None:
    """shutdown() from a thread an async handler waits for returns at once (no deadlock)."""
    stopping = trio.Event()

    class Stopper(StreamRequestHandler):
        async def handle(self) -> None:
            await trio.to_thread.run_sync(self.server.shutdown)
            stopping.set()
            await self.wfile.write(b"bye\n")

    with ThreadingTCPServer(("127.0.0.1", 0), Stopper) as server:
        with trio.fail_after(10):  # a hang is the bug this guards against
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_forever)
                assert await talk(server, b"stop\n") == b"bye\n"
        assert stopping.is_set()
        assert not server.draining


async def test_shutdown_from_a_thread_outside_the_server_still_waits_for_it() -> None:
    finished: list[str] = []

    class Slow(StreamRequestHandler):
        async def handle(self) -> None:
            await self.rfile.readline()
            await trio.sleep(0.05)
            finished.append("handler")

    with ThreadingTCPServer(("127.0.0.1", 0), Slow) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            async with await trio.open_tcp_stream(*server.server_address) as client:
                await client.send_all(b"go\n")
                await trio.testing.wait_all_tasks_blocked()
                await trio.to_thread.run_sync(server.shutdown)
                # socketserver's promise: shutdown() returned after serve_forever did.
                assert finished == ["handler"]


async def test_service_actions_runs_every_poll_interval_while_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ticks: list[float] = []

    class Ticking(ThreadingTCPServer):
        def service_actions(self) -> None:
            ticks.append(trio.current_time())

    with Ticking(("127.0.0.1", 0), EchoLine) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(server.serve_forever, poll_interval=2.0))
            start = trio.current_time()
            await trio.sleep(7.0)
            nursery.cancel_scope.cancel()
    assert [round(t - start) for t in ticks] == [2, 4, 6]


async def test_service_actions_not_overridden_costs_no_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), EchoLine) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(server.serve_forever, poll_interval=0.01))
            await trio.testing.wait_all_tasks_blocked()
            # Nothing is scheduled: the clock has no deadline to jump to but the test's.
            assert trio.lowlevel.current_root_task() is not None
            assert nursery.cancel_scope.deadline == float("inf")
            with trio.move_on_after(100):
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("when", ["before", "during"])
async def test_a_hook_replaced_on_the_instance_is_called_before_or_during_serving(
    when: str,
) -> None:
    refused: list[Any] = []

    def refuse(request: Any, client_address: Any) -> bool:
        refused.append(client_address)
        return False

    with ThreadingTCPServer(("127.0.0.1", 0), EchoLine) as server:
        if when == "before":
            server.verify_request = refuse  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            if when == "during":
                assert await talk(server, b"first\n") == b"first\n"
                server.verify_request = refuse  # type: ignore[method-assign]
            assert await talk(server, b"refused\n") == b""
            nursery.cancel_scope.cancel()
    assert len(refused) == 1


def test_internal_names_do_not_collide_with_stdlib_classes_mixed_in() -> None:
    import http.server
    import logging.handlers  # noqa: F401
    import wsgiref.simple_server
    import xmlrpc.server

    stdlib = [
        xmlrpc.server.SimpleXMLRPCDispatcher,
        xmlrpc.server.SimpleXMLRPCRequestHandler,
        http.server.BaseHTTPRequestHandler,
        http.server.SimpleHTTPRequestHandler,
        wsgiref.simple_server.WSGIServer,
        wsgiref.simple_server.WSGIRequestHandler,
        socketserver.BaseServer,
        socketserver.StreamRequestHandler,
    ]
    theirs = {name for cls in stdlib for klass in cls.__mro__ for name in vars(klass)}
    ours: set[str] = set()
    for cls in (
        trioserve.ThreadingTCPServer,
        trioserve.ForkingUDPServer,
        trioserve.ThreadingHTTPServer,
        trioserve.StreamRequestHandler,
        trioserve.DatagramRequestHandler,
    ):
        for klass in cls.__mro__:
            if klass.__module__.startswith("trioserve"):
                ours.update(n for n in vars(klass) if n.startswith("_") and not n.startswith("__"))
    with ThreadingTCPServer(("127.0.0.1", 0), EchoLine) as server:
        ours.update(n for n in vars(server) if n.startswith("_"))
    assert ours & theirs == set()
    assert all(n.startswith("_trioserve") for n in ours), sorted(ours)


# -- outside Trio: blocking, as socketserver ---------------------------------------------


class SyncEcho(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def _ask_blocking(address: Any, line: bytes) -> bytes:
    with socket.create_connection(address[:2], timeout=30) as client:
        client.sendall(line)
        return client.makefile("rb").read()


def test_serve_forever_blocks_outside_trio_and_shutdown_from_another_thread_stops_it() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), SyncEcho) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            assert _ask_blocking(server.server_address, b"blocking\n") == b"blocking\n"
        finally:
            server.shutdown()
        thread.join(timeout=30)
        assert not thread.is_alive()


def test_handle_request_blocks_outside_trio_for_one_request() -> None:
    with TCPServer(("127.0.0.1", 0), SyncEcho) as server:
        answers: list[bytes] = []
        client = threading.Thread(
            target=lambda: answers.append(_ask_blocking(server.server_address, b"one\n"))
        )
        client.start()
        server.handle_request()  # no await: it serves one request, then returns
        client.join(timeout=30)
    assert answers == [b"one\n"]


def test_a_function_as_request_handler_class_runs_in_a_thread() -> None:
    def handler(request: socket.socket, client_address: Any, server: Any) -> None:
        request.sendall(b"from a function " + repr(type(request).__name__).encode() + b"\n")

    with TCPServer(("127.0.0.1", 0), handler) as server:
        answers: list[bytes] = []
        client = threading.Thread(
            target=lambda: answers.append(_ask_blocking(server.server_address, b""))
        )
        client.start()
        server.handle_request()
        client.join(timeout=30)
    assert answers == [b"from a function 'ThreadSocket'\n"]


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
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
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
                await trio.testing.wait_all_tasks_blocked()
                # The listening socket is closed at once: a balancer's next try goes elsewhere.
                with pytest.raises(OSError, match="failed"):
                    late = await connect(server)
                await quick.send_all(b"done\n")
                assert await receive_exactly(quick, 9) == b"finished\n"
            # serve_forever returned when the grace ran out and the stuck one was cancelled.
            assert trio.current_time() - start == pytest.approx(5)
            assert outcome == {"quick": "finished", "stuck": "cancelled"}
            assert sorted(started) == ["quick", "stuck"]  # the late one never got a handler
            cut = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
            assert len(cut) == 1
            assert "1 request cut short when the shutdown grace ran out" in cut[0]
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


# -- failure semantics, as socketserver's ------------------------------------------------


async def test_a_one_at_a_time_server_lets_the_request_that_shut_it_down_finish() -> None:
    class Bye(StreamRequestHandler):
        async def handle(self) -> None:
            await self.rfile.readline()
            self.server.shutdown()
            await (
                trio.lowlevel.checkpoint()
            )  # a checkpoint: the request is not cancelled by the stop
            await self.wfile.write(b"bye\n")

    with TCPServer(LOCALHOST, Bye) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            assert await talk(server, b"stop\n") == b"bye\n"


def test_server_close_from_another_thread_ends_serve_forever() -> None:
    with ThreadingTCPServer(LOCALHOST, SyncEcho) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        assert _ask_blocking(server.server_address, b"up\n") == b"up\n"
        server.server_close()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert server.socket.fileno() == -1


async def test_sys_exit_in_a_sync_handler_of_a_threading_server_ends_that_request_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reported: list[Any] = []
    # Reported as socketserver's ThreadingMixIn reports it: to threading.excepthook.
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(args.exc_type))

    class Exits(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            if self.rfile.readline() == b"exit\n":
                sys.exit(3)
            self.wfile.write(b"still here\n")

    with ThreadingTCPServer(LOCALHOST, Exits) as server:
        async with serving(server):
            assert await talk(server, b"exit\n") == b""
            assert await talk(server, b"hello\n") == b"still here\n"
    assert reported == [SystemExit]


async def test_a_handle_error_that_raises_is_logged_and_serving_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fails(StreamRequestHandler):
        async def handle(self) -> None:
            if await self.rfile.readline() == b"fail\n":
                raise RuntimeError("handler")
            await self.wfile.write(b"ok\n")

    class BadReporter(ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            raise ValueError("the reporter itself")

    with BadReporter(LOCALHOST, Fails) as server:
        async with serving(server):
            assert await talk(server, b"fail\n") == b""
            assert await talk(server, b"next\n") == b"ok\n"
    [record] = [r for r in caplog.records if "handle_error raised" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def _raise(error: BaseException) -> None:
    await trio.lowlevel.checkpoint()
    raise error


async def test_a_group_of_vanished_peer_errors_is_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Grouped(StreamRequestHandler):
        async def handle(self) -> None:
            await self.rfile.readline()
            async with trio.open_nursery() as nursery:  # two tasks whose peers vanish
                for error in (ConnectionResetError(), BrokenPipeError()):
                    nursery.start_soon(_raise, error)

    with ThreadingTCPServer(LOCALHOST, Grouped) as server:
        async with serving(server):
            assert await talk(server, b"x\n") == b""
    assert not [r for r in caplog.records if r.name == "trioserve" and r.levelno >= logging.INFO]


async def test_connections_waiting_in_the_kernel_at_shutdown_are_served_then_refused(
    hold_handler: type[HoldHandler],
) -> None:
    class Answer(StreamRequestHandler):
        async def handle(self) -> None:
            await self.wfile.write(b"answered\n")

    with ThreadingTCPServer(LOCALHOST, Answer, max_connections=1) as server:
        async with trio.open_nursery() as nursery:
            # One slot, taken by a request the server holds; the next waits in the kernel.
            gate = trio.Event()

            class Holding(StreamRequestHandler):
                async def handle(self) -> None:
                    hold_handler.started.set()
                    await gate.wait()

            server.RequestHandlerClass = Holding
            await nursery.start(server.serve_forever)
            holder = await connect(server)
            await hold_handler.started.wait()
            server.RequestHandlerClass = Answer
            waiting = await connect(server)
            await trio.testing.wait_all_tasks_blocked()
            server.shutdown()
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(OSError, match="failed"):
                await connect(server)
            gate.set()
            assert await receive_until_eof(waiting) == b"answered\n"
            await holder.aclose()
            await waiting.aclose()


async def test_serving_again_after_a_graceful_stop_listens_again() -> None:
    with ThreadingTCPServer(LOCALHOST, EchoLine) as server:
        address = server.server_address
        for _ in range(2):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_forever)
                assert await talk(server, b"again\n") == b"again\n"
                server.shutdown()
        assert server.server_address == address


def test_ctrl_c_around_trio_run_prints_a_short_traceback(tmp_path: Any) -> None:
    import os
    import signal
    import subprocess

    script = tmp_path / "serve.py"
    script.write_text(
        "import sys, trio, trioserve\n"
        "server = trioserve.ThreadingTCPServer(('127.0.0.1', 0), trioserve.EchoHandler)\n"
        "print(server.server_address[1], flush=True)\n"
        "trio.run(server.serve_forever)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        # An answer means the run is serving (its Ctrl-C handling installed).
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"up")
            client.shutdown(socket.SHUT_WR)  # the echo handler answers until end of file
            assert client.makefile("rb").read() == b"up"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    lines = stderr.decode().splitlines()
    assert lines[-1] == "KeyboardInterrupt"
    assert len(lines) <= 12, stderr.decode()  # socketserver: about 10
    assert "ExceptionGroup" not in stderr.decode()
    assert "BlockingIOError" not in stderr.decode()


class DrainAware(StreamRequestHandler):
    """The pattern of docs/shutdown.md: end between requests when the server drains."""

    async def handle(self) -> None:
        while not self.server.draining:
            line = None
            async with trio.open_nursery() as nursery:

                async def next_line() -> None:
                    nonlocal line
                    line = await self.rfile.readline()
                    nursery.cancel_scope.cancel()

                async def drained() -> None:
                    await self.server.wait_draining()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(next_line)
                nursery.start_soon(drained)
            if not line:
                return
            await self.wfile.write(line.upper())


async def test_a_drain_aware_handler_closes_an_idle_connection_at_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def draining(server: ThreadingTCPServer) -> bool:
        return server.draining

    with ThreadingTCPServer(LOCALHOST, DrainAware, shutdown_grace=30) as server:
        assert not draining(server)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            async with await connect(server) as client:
                await client.send_all(b"one\n")
                assert await receive_exactly(client, 4) == b"ONE\n"
                start = trio.current_time()
                server.shutdown()
                assert draining(server)
                assert await receive_until_eof(client) == b""
        assert trio.current_time() - start < 1  # not the 30 s grace
    assert not draining(server)
    assert not [r for r in caplog.records if "cut short" in r.getMessage()]


async def test_refused_requests_are_one_warning_a_minute_then_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Short(StreamRequestHandler):
        max_line_length = 8

        async def handle(self) -> None:
            await self.rfile.readline()

    caplog.set_level(logging.DEBUG, logger="trioserve")
    with ThreadingTCPServer(LOCALHOST, Short) as server:
        async with serving(server):
            for _ in range(3):
                assert await talk(server, b"far too long a line\n") == b""
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [r.levelno for r in refused] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
