"""BaseServer: options, policies, hooks and context managers."""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import Any

import pytest
import trio
import trio.testing

import trioserve
from trioserve import Concurrency, StreamRequestHandler, TCPServer, ThreadingTCPServer
from trioserve.testing import connect, serving

from .helpers import receive_until_eof

pytestmark = pytest.mark.usefixtures("fd_leak_check")


class EchoLine(StreamRequestHandler):
    async def handle(self) -> None:
        await self.wfile.write(await self.rfile.readline())


async def talk(server: TCPServer, line: bytes) -> bytes:
    async with await connect(server) as stream:
        await stream.send_all(line)
        return await receive_until_eof(stream)


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
        TCPServer(("127.0.0.1", 0), object)  # type: ignore[arg-type]


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
            import sys

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
        async with serving(server):
            assert await talk(server, b"") == b""
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
        async with serving(server):
            clients = [await connect(server) for _ in range(3)]
            await entered.acquire()
            await entered.acquire()
            await trio.testing.wait_all_tasks_blocked()
            # Two handlers run; the third connection waits in the kernel's backlog.
            assert entered.value == 0
            release.set()
            for client in clients:
                assert await client.receive_some() == b"served\n"
                await client.aclose()


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
