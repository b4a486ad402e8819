"""Hostile and careless clients, end to end: idle keep-alive, resets, descriptor exhaustion.

Each test uses tens of connections; the full-size figures (thousands) come from
``bench/hostile.py`` and are in docs/security.md.
"""

from __future__ import annotations

import functools
import gc
import http.server
import logging
import os
import resource
import socket
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import trioserve
from trioserve import HTTPServer, TCPServer, ThreadingHTTPServer, ThreadingTCPServer, _threads
from trioserve._sync import run_sync_handler
from trioserve._threads import running_handler_threads
from trioserve.testing import connect, serving

from .helpers import LineReader, receive_until_eof, trioserve_records

pytestmark = pytest.mark.usefixtures("fd_leak_check")

LOCALHOST = ("127.0.0.1", 0)
REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


class Hello(http.server.BaseHTTPRequestHandler):
    """An ``http.server`` handler as found in the wild: keep-alive, ``do_GET`` only."""

    protocol_version = "HTTP/1.1"
    finished: ClassVar[list[object]] = []

    def do_GET(self) -> None:
        body = b"hello " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def finish(self) -> None:
        super().finish()
        type(self).finished.append(self.client_address)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hello() -> type[Hello]:
    class Handler(Hello):
        finished: ClassVar[list[object]] = []

    return Handler


async def get(reader: LineReader, stream: trio.SocketStream, path: str = "/") -> bytes:
    """Send a GET for *path* on a keep-alive connection; return the answer's body."""
    await stream.send_all(b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % path.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    with trio.fail_after(reader.patience):
        while len(reader.buffer) < length:
            reader.buffer += await stream.receive_some()
    body, reader.buffer = reader.buffer[:length], reader.buffer[length:]
    return body


# -- idle keep-alive connections hold no thread ----------------------------------------------


async def test_idle_keep_alive_connections_hold_no_thread_and_leave_room_for_new_clients(
    hello: type[Hello],
) -> None:
    # Two threads for fifty keep-alive clients: each holds one only while it is answered.
    with ThreadingHTTPServer(LOCALHOST, hello, max_handler_threads=2) as server:
        async with serving(server):
            clients = [await connect(server) for _ in range(50)]
            readers = [LineReader(client) for client in clients]
            try:
                for number, (client, reader) in enumerate(zip(clients, readers, strict=True)):
                    assert await get(reader, client, f"/{number}") == b"hello /%d" % number
                # Fifty idle connections, and the two threads are free for a new client.
                async with await connect(server) as fresh:
                    assert await get(LineReader(fresh), fresh, "/new") == b"hello /new"
                # Every idle connection is still open, and served again.
                for client, reader in zip(clients, readers, strict=True):
                    assert await get(reader, client, "/again") == b"hello /again"
            finally:
                for client in clients:
                    await client.aclose()
    assert len(hello.finished) == 51  # finish() ran once per connection


async def test_pipelined_requests_are_answered_in_order(hello: type[Hello]) -> None:
    with ThreadingHTTPServer(LOCALHOST, hello) as server:
        async with serving(server), await connect(server) as client:
            reader = LineReader(client)
            await client.send_all(
                b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            answers = (await reader.rest()).split(b"\r\n\r\n")
            assert [answer[:7] for answer in answers[1:]] == [b"hello /"] * 3
            assert answers[-1] == b"hello /c"


async def test_a_first_request_there_at_accept_or_later_is_served_the_same(
    hello: type[Hello],
) -> None:
    with ThreadingHTTPServer(LOCALHOST, hello) as server:
        async with serving(server), await connect(server) as late:
            # This one waits for its first request in Trio, with no thread.
            await trio.testing.wait_all_tasks_blocked()
            assert running_handler_threads(server) == 0
            # Sent as the client connects: there before the server looks.
            early = socket.create_connection(server.server_address)
            early.sendall(b"GET /early HTTP/1.0\r\n\r\n")
            async with trio.SocketStream(trio.socket.from_stdlib_socket(early)) as early_stream:
                assert (await receive_until_eof(early_stream)).endswith(b"hello /early")
            assert await get(LineReader(late), late, "/late") == b"hello /late"
    assert len(hello.finished) == 2


@pytest.mark.parametrize("rbufsize", [0, 1024])
async def test_other_read_buffers_hold_no_thread_either(hello: type[Hello], rbufsize: int) -> None:
    class Buffered(hello):  # type: ignore[valid-type, misc]
        pass

    Buffered.rbufsize = rbufsize
    with ThreadingHTTPServer(LOCALHOST, Buffered, max_handler_threads=1) as server:
        async with (
            serving(server),
            await connect(server) as first,
            await connect(server) as second,
        ):
            for client in (first, second, first):
                assert await get(LineReader(client), client) == b"hello /"


async def test_an_idle_keep_alive_connection_is_closed_quietly_after_keep_alive_timeout(
    hello: type[Hello], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with ThreadingHTTPServer(LOCALHOST, hello, keep_alive_timeout=0.05) as server:
        async with serving(server), await connect(server) as client:
            reader = LineReader(client)
            assert await get(reader, client) == b"hello /"
            with trio.fail_after(5):
                assert await receive_until_eof(client) == b""  # closed by the server
    assert len(hello.finished) == 1
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


async def test_a_client_that_never_sends_a_request_is_closed_after_the_handler_timeout(
    hello: type[Hello],
) -> None:
    with ThreadingHTTPServer(LOCALHOST, hello, handler_timeout=0.05) as server:
        async with serving(server), await connect(server) as client:
            with trio.fail_after(5):
                assert await receive_until_eof(client) == b""
            assert running_handler_threads(server) == 0
    assert hello.finished == []  # no request, no handler: nothing to finish


async def test_simple_http_request_handler_partial_with_a_directory(tmp_path: Path) -> None:
    (tmp_path / "page.txt").write_bytes(b"the page")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with ThreadingHTTPServer(LOCALHOST, handler, max_handler_threads=1) as server:
        async with (
            serving(server),
            await connect(server) as first,
            await connect(server) as second,
        ):
            for client in (first, second, first):
                await client.send_all(b"GET /page.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            # HTTP/1.0 closes after one request; both were answered with one thread.
            assert (await receive_until_eof(second)).endswith(b"the page")
            assert (await receive_until_eof(first)).endswith(b"the page")


async def test_a_handler_with_its_own_handle_keeps_its_thread(hello: type[Hello]) -> None:
    calls: list[str] = []

    class OwnLoop(hello):  # type: ignore[valid-type, misc]
        def handle(self) -> None:
            calls.append("handle")
            super().handle()

    with ThreadingHTTPServer(LOCALHOST, OwnLoop) as server:
        async with serving(server), await connect(server) as client:
            reader = LineReader(client)
            assert await get(reader, client) == b"hello /"
            assert running_handler_threads(server) == 1  # idle, in its own loop
            assert await get(reader, client) == b"hello /"
    assert calls == ["handle"]


async def test_stopping_the_server_finishes_idle_keep_alive_connections(
    hello: type[Hello],
) -> None:
    with ThreadingHTTPServer(LOCALHOST, hello) as server:
        async with serving(server):
            clients = [await connect(server) for _ in range(10)]
            for client in clients:
                assert await get(LineReader(client), client) == b"hello /"
    try:
        assert len(hello.finished) == 10
        for client in clients:
            assert await receive_until_eof(client) == b""
    finally:
        for client in clients:
            await client.aclose()


async def test_a_keep_alive_connection_closes_after_its_request_once_the_server_stops(
    hello: type[Hello],
) -> None:
    class Stopping(hello):  # type: ignore[valid-type, misc]
        def do_GET(self) -> None:
            self.server.shutdown()  # from a handler thread: returns at once
            super().do_GET()

    with ThreadingHTTPServer(LOCALHOST, Stopping, shutdown_grace=30) as server:
        async with serving(server), await connect(server) as client:
            reader = LineReader(client)
            assert await get(reader, client) == b"hello /"
            with trio.fail_after(5):  # not shutdown_grace: it does not wait for a request
                assert await receive_until_eof(client) == b""
    assert len(hello.finished) == 1


def test_which_handlers_are_run_request_by_request(hello: type[Hello]) -> None:
    import socketserver
    import wsgiref.simple_server

    from trioserve._sync import keep_alive_handler

    class OwnInit(hello):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any) -> None:
            self.extra = 1
            super().__init__(*args)

    simple = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/")
    for eligible in (hello, http.server.SimpleHTTPRequestHandler, simple):
        assert keep_alive_handler(eligible) is not None, eligible
    others: tuple[object, ...] = (
        OwnInit,  # code of its own around the connection
        wsgiref.simple_server.WSGIRequestHandler,  # a handle of its own
        socketserver.StreamRequestHandler,
        trioserve.StreamRequestHandler,
        print,
    )
    for other in others:
        assert keep_alive_handler(other) is None, other


async def test_a_failing_request_is_reported_and_the_handler_finished(
    hello: type[Hello], caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(hello):  # type: ignore[valid-type, misc]
        def do_GET(self) -> None:
            if self.path == "/fail":
                raise RuntimeError("the handler failed on purpose")
            super().do_GET()

    with ThreadingHTTPServer(LOCALHOST, Failing) as server:
        async with serving(server), await connect(server) as client:
            reader = LineReader(client)
            assert await get(reader, client, "/ok") == b"hello /ok"
            await client.send_all(b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")
            assert await receive_until_eof(client) == b""
    assert len(hello.finished) == 1
    [error] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert error.levelno == logging.ERROR
    assert error.exc_info is not None
    assert "failed on purpose" in str(error.exc_info[1])


async def test_a_failing_setup_releases_the_threads_socket(hello: type[Hello]) -> None:
    class FailingSetup(hello):  # type: ignore[valid-type, misc]
        def setup(self) -> None:
            raise RuntimeError("setup failed on purpose")

    with ThreadingHTTPServer(LOCALHOST, FailingSetup) as server:
        async with serving(server), await connect(server) as client:
            await client.send_all(REQUEST)
            assert await receive_until_eof(client) == b""
    assert hello.finished == []  # as in socketserver: no finish() after a failed setup()


def traced_bytes() -> int:
    gc.collect()
    return sum(stat.size for stat in tracemalloc.take_snapshot().statistics("filename"))


async def raw_get(sock: trio.socket.SocketType) -> None:
    """One GET on a raw Trio socket (no stream object on the client side to count)."""
    await sock.send(REQUEST)
    answer = b""
    with trio.fail_after(30):
        while not answer.endswith(b"hello /"):
            chunk = await sock.recv(4096)
            assert chunk
            answer += chunk


async def test_an_idle_keep_alive_connection_costs_less_than_10_kib(hello: type[Hello]) -> None:
    with ThreadingHTTPServer(LOCALHOST, hello) as server:
        async with serving(server):
            address = server.server_address[:2]
            socks: list[trio.socket.SocketType] = []
            tracemalloc.start()
            try:
                # The first forty, idle, warm up what grows once (thread cache, tables);
                # the next forty are measured, created before the first snapshot.
                for _batch in ("warm-up", "measured"):
                    sockets = [trio.socket.socket() for _ in range(40)]
                    socks += sockets
                    before = traced_bytes()
                    for sock in sockets:
                        await sock.connect(address)
                        await raw_get(sock)
                await trio.testing.wait_all_tasks_blocked()
                per_connection = (traced_bytes() - before) / 40
            finally:
                tracemalloc.stop()
                for sock in socks:
                    sock.close()
    # (Under coverage, its tracer's own allocations are counted as well.)
    assert per_connection < (10 if sys.gettrace() is None else 12) * 1024, per_connection


# -- thread limits ---------------------------------------------------------------------------


def test_the_thread_bound_follows_max_connections_by_default() -> None:
    from trioserve._sync import thread_limit

    with ThreadingTCPServer(LOCALHOST, Hello, bind_and_activate=False) as server:
        assert server.max_handler_threads is None
        assert thread_limit(server) == server.max_connections == 10_000
    with ThreadingTCPServer(
        LOCALHOST, Hello, bind_and_activate=False, max_connections=7
    ) as server:
        assert thread_limit(server) == 7
    with ThreadingTCPServer(
        LOCALHOST, Hello, bind_and_activate=False, max_handler_threads=3
    ) as server:
        assert thread_limit(server) == 3
    with trioserve.ThreadingUDPServer(
        LOCALHOST, Hello, bind_and_activate=False, max_concurrent_datagrams=5
    ) as udp:
        assert thread_limit(udp) == 5


def test_http_handlers_run_request_by_request_have_256_threads_by_default() -> None:
    from trioserve._sync import REQUEST_THREADS, thread_limit

    assert REQUEST_THREADS == 256
    with ThreadingHTTPServer(LOCALHOST, Hello, bind_and_activate=False) as server:
        assert thread_limit(server, per_request=True) == 256
    with ThreadingHTTPServer(
        LOCALHOST, Hello, bind_and_activate=False, max_connections=7
    ) as server:
        assert thread_limit(server, per_request=True) == 7
    with ThreadingHTTPServer(
        LOCALHOST, Hello, bind_and_activate=False, max_handler_threads=1000
    ) as server:
        assert thread_limit(server, per_request=True) == 1000


class HeldUntilEOF(trioserve.SyncStreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


async def test_a_connection_waiting_for_a_thread_is_logged_once_then_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    with ThreadingTCPServer(LOCALHOST, HeldUntilEOF, max_handler_threads=1) as server:
        async with serving(server):
            first = await connect(server)
            await first.send_all(b"one\n")
            assert await LineReader(first).readline() == b"one\n"
            waiting = [await connect(server) for _ in range(3)]
            for client in waiting:
                await client.send_all(b"two\n")
            with trio.fail_after(5):
                while len(trioserve_records(caplog, logging.DEBUG)) < 3:
                    await trio.testing.wait_all_tasks_blocked()  # the three wait for it
            await first.aclose()
            for client in waiting:
                reader = LineReader(client)
                assert await reader.readline() == b"two\n"
                await client.aclose()
    [warning] = trioserve_records(caplog, logging.WARNING)
    assert warning.levelno == logging.WARNING
    assert "waits for a worker thread" in warning.getMessage()
    assert "max_handler_threads" in warning.getMessage()
    assert warning.exc_info is None


# -- out of descriptors ----------------------------------------------------------------------


@pytest.fixture
def descriptor_limit() -> Iterator[Any]:
    """Call it to set the soft descriptor limit at the lowest free descriptor; restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def exhaust() -> None:
        lowest_free = os.open(os.devnull, os.O_RDONLY)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))

    def restore() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    exhaust.restore = restore  # type: ignore[attr-defined]
    try:
        yield exhaust
    finally:
        restore()


@pytest.mark.parametrize("kind", ["stream", "datagram"])
async def test_at_the_descriptor_limit_a_sync_handler_needs_no_descriptor_of_its_own(
    kind: str,
    descriptor_limit: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    served: list[bytes] = []

    class Echo(trioserve.BaseRequestHandler):
        def handle(self) -> None:
            if kind == "stream":
                data = self.request.recv(100)
                self.request.sendall(data.upper())
                self.request.close()  # leaves the connection's descriptor open
            else:
                data, sock = self.request
                sock.sendto(data.upper(), self.client_address)
                sock.close()
            served.append(data)

    if kind == "stream":
        client_sock, server_sock = trio.socket.socketpair()
    else:
        server_sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client_sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await server_sock.bind(("127.0.0.1", 0))
        await client_sock.bind(("127.0.0.1", 0))
    try:
        with TCPServer(LOCALHOST, Echo, bind_and_activate=False) as server:
            for number in range(2):
                payload = b"ping %d" % number
                if kind == "stream":
                    await client_sock.send(payload)
                    request: Any = trio.SocketStream(server_sock)
                    address: Any = "peer"
                else:
                    request = (payload, server_sock)
                    address = client_sock.getsockname()
                descriptor_limit()
                try:
                    with trio.fail_after(5):
                        await run_sync_handler(Echo, request, address, server)
                finally:
                    descriptor_limit.restore()
                with trio.fail_after(5):
                    assert await client_sock.recv(100) == payload.upper()
            os.fstat(server_sock.fileno())  # still open
    finally:
        client_sock.close()
        server_sock.close()
    assert served == [b"ping 0", b"ping 1"]
    assert trioserve_records(caplog, logging.DEBUG) == []  # nothing to complain of


async def test_an_abandoned_thread_keeps_its_connections_descriptor_until_it_ends(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stuck = threading.Event()
    release = threading.Event()

    class Stuck(trioserve.BaseRequestHandler):
        def handle(self) -> None:
            stuck.set()
            release.wait(30)  # somewhere the server cannot reach

    released = threading.Event()
    original_release = _threads.ThreadSocket.release

    def release_and_tell(sock: _threads.ThreadSocket) -> None:
        original_release(sock)
        released.set()

    monkeypatch.setattr(_threads.ThreadSocket, "release", release_and_tell)
    client_sock, server_sock = trio.socket.socketpair()
    fd = server_sock.fileno()
    scope = trio.CancelScope()

    async def run(server: TCPServer) -> None:
        with scope:
            await run_sync_handler(Stuck, trio.SocketStream(server_sock), "p", server)

    try:
        with TCPServer(LOCALHOST, Stuck, bind_and_activate=False) as server:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, server)
                assert await trio.to_thread.run_sync(stuck.wait, 5)  # in the handler
                scope.cancel()  # abandoned ABANDON_AFTER later (virtual time)
            # The Trio side let go of the descriptor: the stuck thread owns it now.
            assert server_sock.fileno() == -1
            os.fstat(fd)
            release.set()
            # The thread closes it as it ends (the leak check of this module sees to it).
            assert await trio.to_thread.run_sync(released.wait, 5)
    finally:
        client_sock.close()
        server_sock.close()


# -- clients that reset ----------------------------------------------------------------------


async def test_clients_resetting_a_simple_http_server_log_nothing_above_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "big").write_bytes(b"x" * (4 << 20))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with ThreadingHTTPServer(LOCALHOST, handler) as server:
        async with serving(server):
            address = server.server_address[:2]
            for number in range(20):
                sock = trio.socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await sock.connect(address)
                if number % 2:  # mid-request: the head is not finished
                    await sock.send(b"GET /big HTTP/1.1\r\nHost: t\r\n")
                else:  # mid-response: the body is being sent
                    await sock.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
                    with trio.fail_after(30):
                        assert (await sock.recv(100)).startswith(b"HTTP/1.0 200")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                sock.close()  # a reset
            async with await connect(server) as client:  # and the server is fine
                await client.send_all(b"GET /missing HTTP/1.0\r\n\r\n")
                assert (await receive_until_eof(client)).startswith(b"HTTP/1.0 404")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    vanished = [r for r in trioserve_records(caplog, logging.DEBUG) if "reset" in r.getMessage()]
    assert vanished, "the resets are logged at debug level"
    # What reaches stderr is http.server's own log_message lines, and nothing of ours.
    for line in capfd.readouterr().err.splitlines():
        assert line.startswith("127.0.0.1 - - ["), line


# -- defaults of the HTTP servers ------------------------------------------------------------


def test_http_servers_have_timeouts_by_default() -> None:
    for server_class in (HTTPServer, ThreadingHTTPServer):
        assert server_class.handler_timeout == 60
        assert server_class.keep_alive_timeout == 75
    assert trioserve.TCPServer.handler_timeout is None  # the library's, as socketserver's
    with pytest.raises(ValueError, match="keep_alive_timeout"):
        ThreadingHTTPServer(LOCALHOST, Hello, bind_and_activate=False, keep_alive_timeout=-1)
    with ThreadingHTTPServer(
        LOCALHOST, Hello, bind_and_activate=False, keep_alive_timeout=None, handler_timeout=None
    ) as server:
        assert server.keep_alive_timeout is None
        assert server.handler_timeout is None


# -- memory a set of clients can pin ---------------------------------------------------------


class Lines(trioserve.StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            await self.wfile.write(line.upper())


async def test_clients_holding_unfinished_lines_share_one_budget_and_others_are_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from trioserve._buffer import INPUT_ALLOWANCE, input_budget

    unfinished = b"x" * 20_000  # 11,808 bytes past the allowance of its connection
    with ThreadingTCPServer(LOCALHOST, Lines, max_buffered_input=40_000) as server:
        budget = input_budget(server)
        assert budget is not None
        async with serving(server):
            hostile = [await connect(server) for _ in range(4)]
            try:
                for number, client in enumerate(hostile[:3], 1):
                    await client.send_all(unfinished)
                    with trio.fail_after(5):
                        expected = 40_000 - number * (len(unfinished) - INPUT_ALLOWANCE)
                        while budget.available != expected:
                            await trio.testing.wait_all_tasks_blocked()
                # The fourth finds 4,576 bytes left: refused, and disconnected.
                await hostile[3].send_all(unfinished)
                with trio.fail_after(5):
                    assert await receive_until_eof(hostile[3]) == b""
                # A client with ordinary lines is served all along.
                async with await connect(server) as client:
                    await client.send_all(b"hello\n")
                    assert await LineReader(client).readline() == b"HELLO\n"
                # The first three finish their lines and are served too.
                for client in hostile[:3]:
                    await client.send_all(b"\n")
                    assert await LineReader(client).readline() == unfinished.upper() + b"\n"
            finally:
                for client in hostile:
                    await client.aclose()
        assert budget.available == 40_000
    [refused] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "max_buffered_input" in refused.getMessage()


async def test_a_graceful_stop_closes_idle_keep_alive_connections_at_once(
    hello: type[Hello],
) -> None:
    with ThreadingHTTPServer(LOCALHOST, hello, shutdown_grace=30) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            clients = [await connect(server) for _ in range(3)]
            for client in clients:
                assert await get(LineReader(client), client) == b"hello /"
            with trio.fail_after(10):  # not the 30 s grace: idle connections go at once
                server.shutdown()
                await trio.testing.wait_all_tasks_blocked()
                for client in clients:
                    assert await receive_until_eof(client) == b""
    try:
        assert len(hello.finished) == 3
    finally:
        for client in clients:
            await client.aclose()


async def test_a_response_begun_while_the_server_drains_says_connection_close(
    hello: type[Hello],
) -> None:
    started = trio.Event()
    gate = threading.Event()
    token = trio.lowlevel.current_trio_token()

    class Waiting(hello):  # type: ignore[valid-type, misc]
        def do_GET(self) -> None:
            trio.from_thread.run_sync(started.set, trio_token=token)
            gate.wait(30)  # until the test has begun the drain
            super().do_GET()

    with ThreadingHTTPServer(LOCALHOST, Waiting, shutdown_grace=30) as server:
        async with serving(server), await connect(server) as client:
            await client.send_all(REQUEST)
            await started.wait()
            server.shutdown()
            gate.set()
            answer = await receive_until_eof(client)
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200")
    assert b"\r\nconnection: close" in head


async def test_a_connection_taken_over_by_the_drain_gets_its_first_request_answered(
    hello: type[Hello],
) -> None:
    gate = threading.Event()
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()

    class Holding(hello):  # type: ignore[valid-type, misc]
        def do_GET(self) -> None:
            if self.path == "/hold":
                trio.from_thread.run_sync(started.set, trio_token=token)
                gate.wait(30)
            super().do_GET()

    # One connection at a time: the second waits in the kernel's queue until the drain.
    with ThreadingHTTPServer(LOCALHOST, Holding, max_connections=1, shutdown_grace=30) as server:
        async with serving(server):
            holder = await connect(server)
            await holder.send_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            await started.wait()
            queued = await connect(server)
            await queued.send_all(REQUEST)
            server.shutdown()
            gate.set()
            answer = await receive_until_eof(queued)
            await receive_until_eof(holder)
            await holder.aclose()
            await queued.aclose()
    assert answer.startswith(b"HTTP/1.1 200"), answer


async def test_a_connection_whose_first_request_comes_after_the_drain_began_is_answered(
    hello: type[Hello],
) -> None:
    with ThreadingHTTPServer(LOCALHOST, hello, shutdown_grace=30) as server:
        async with serving(server), await connect(server) as client:
            await trio.testing.wait_all_tasks_blocked()  # accepted; waits for its request
            server.shutdown()
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(REQUEST)  # a balancer's request, a moment late
            answer = await receive_until_eof(client)
    assert answer.startswith(b"HTTP/1.1 200"), answer
