"""BaseServer: options, policies, hooks and context managers."""

from __future__ import annotations

import functools
import socket
import socketserver
import threading
from typing import Any

import pytest
import trio
import trio.testing

import trioserve
from trioserve import Concurrency, StreamRequestHandler, TCPServer, ThreadingTCPServer

pytestmark = pytest.mark.usefixtures("fd_leak_check")


class EchoLine(StreamRequestHandler):
    async def handle(self) -> None:
        await self.wfile.write(await self.rfile.readline())


async def talk(server: TCPServer, line: bytes) -> bytes:
    async with await trio.open_tcp_stream(*server.server_address) as stream:
        await stream.send_all(line)
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
        return reply


def test_options_override_class_attributes_for_one_server() -> None:
    with TCPServer(("127.0.0.1", 0), EchoLine, timeout=2.5, request_queue_size=10) as server:
        assert server.timeout == 2.5
        assert server.request_queue_size == 10
    with TCPServer(("127.0.0.1", 0), EchoLine) as other:
        assert other.timeout is None
        assert other.request_queue_size == 4096


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"no_such_option": 1}, TypeError, "unexpected option 'no_such_option'"),
        ({"timeout": "5"}, TypeError, "timeout must be a number of seconds"),
        ({"timeout": -1}, ValueError, "timeout must be >= 0"),
        ({"max_connections": 0}, ValueError, "max_connections must be at least 1"),
        ({"max_connections": 2.5}, TypeError, "max_connections must be an int"),
        ({"allow_reuse_address": "yes"}, TypeError, "allow_reuse_address must be a bool"),
        ({"unix_socket_mode": 0o10000}, ValueError, "unix_socket_mode must be a file mode"),
    ],
)
def test_bad_options_fail_at_construction_naming_the_option(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        TCPServer(("127.0.0.1", 0), EchoLine, **options)


def test_handler_class_is_checked() -> None:
    with pytest.raises(TypeError, match="RequestHandlerClass must be a subclass"):
        TCPServer(("127.0.0.1", 0), object)


def test_mixin_order_does_not_matter() -> None:
    class MixinFirst(trioserve.ThreadingMixIn, TCPServer):
        pass

    class MixinLast(TCPServer, trioserve.ThreadingMixIn):
        pass

    assert MixinFirst.__mro__.index(TCPServer) > MixinFirst.__mro__.index(trioserve.NurseryMixIn)
    for cls in (MixinFirst, MixinLast, ThreadingTCPServer):
        with cls(("127.0.0.1", 0), EchoLine) as server:
            assert server.concurrency is Concurrency.NURSERY
    with TCPServer(("127.0.0.1", 0), EchoLine) as plain:
        assert plain.concurrency is Concurrency.SEQUENTIAL
    assert trioserve.ThreadingMixIn is trioserve.NurseryMixIn
    assert trioserve.ForkingMixIn is trioserve.ProcessPoolMixIn


def test_mixing_in_the_stdlib_threading_mixin_is_refused() -> None:
    with pytest.raises(TypeError, match=r"use trioserve\.ThreadingMixIn"):

        class Wrong(socketserver.ThreadingMixIn, TCPServer):  # type: ignore[misc]
            pass


async def test_async_context_manager_closes_the_socket() -> None:
    async with TCPServer(("127.0.0.1", 0), EchoLine) as server:
        fileno = server.fileno()
        assert fileno >= 0
    assert server.socket.fileno() == -1


def test_bind_and_activate_false_lets_the_caller_set_options_first() -> None:
    server = TCPServer(("127.0.0.1", 0), EchoLine, bind_and_activate=False)
    with server:
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        server.server_bind()
        server.server_activate()
        assert server.server_address[1] != 0
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


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
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            assert await talk(server, b"let me in\n") == b""
            nursery.cancel_scope.cancel()
    assert handled == []


async def test_handle_error_override_receives_the_request_and_the_exception() -> None:
    seen: list[tuple[str, str]] = []

    class Handler(StreamRequestHandler):
        async def handle(self) -> None:
            raise KeyError("boom")

    class Server(ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            import sys

            seen.append((type(request).__name__, repr(sys.exc_info()[1])))

    with Server(("127.0.0.1", 0), Handler) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            assert await talk(server, b"x\n") == b""
            assert await talk(server, b"y\n") == b""
            nursery.cancel_scope.cancel()
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
            client = await trio.open_tcp_stream(*server.server_address)
            await started.wait()
            nursery.cancel_scope.cancel()
        await client.aclose()
    assert not caplog.records


async def test_finish_runs_after_handle_raises() -> None:
    events: list[str] = []

    class Handler(StreamRequestHandler):
        async def setup(self) -> None:
            await super().setup()
            events.append("setup")

        async def handle(self) -> None:
            events.append("handle")
            raise RuntimeError("handler broke")

        async def finish(self) -> None:
            events.append("finish")
            await super().finish()

    class Quiet(TCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            events.append("handle_error")

    with Quiet(("127.0.0.1", 0), Handler) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            assert await talk(server, b"") == b""
            nursery.cancel_scope.cancel()
    assert events == ["setup", "handle", "finish", "handle_error"]


async def test_max_connections_stops_accepting_at_the_limit() -> None:
    entered = trio.Semaphore(0)
    release = trio.Event()

    class Handler(StreamRequestHandler):
        async def handle(self) -> None:
            entered.release()
            await release.wait()
            await self.wfile.write(b"served\n")

    with ThreadingTCPServer(("127.0.0.1", 0), Handler, max_connections=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            clients = [await trio.open_tcp_stream(*server.server_address) for _ in range(3)]
            await entered.acquire()
            await entered.acquire()
            await trio.testing.wait_all_tasks_blocked()
            # Two handlers run; the third connection waits in the kernel's backlog.
            assert entered.value == 0
            release.set()
            for client in clients:
                assert await client.receive_some() == b"served\n"
                await client.aclose()
            nursery.cancel_scope.cancel()


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
