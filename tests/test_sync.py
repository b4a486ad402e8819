"""Sync handlers: plain-``def`` handlers and socketserver's own classes, in worker threads."""

from __future__ import annotations

import http.server
import io
import logging
import logging.handlers
import pickle
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.request
import wsgiref.simple_server
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

import trioserve
import trioserve.testing
from trioserve import (
    AsyncReader,
    BaseRequestHandler,
    StreamRequestHandler,
    StreamSocket,
    SyncReader,
    SyncStreamRequestHandler,
    SyncWriter,
    TCPServer,
    ThreadingTCPServer,
)
from trioserve._sync import run_sync_handler
from trioserve._threads import THREAD_NAME, running_handler_threads
from trioserve.testing import connect, serving

from .helpers import receive_exactly, receive_until_eof, reset, trioserve_records

if sys.version_info >= (3, 11):
    pass
else:
    pass

pytestmark = pytest.mark.usefixtures("fd_leak_check")

LOCALHOST = ("127.0.0.1", 0)


class UpperLines(StreamRequestHandler):
    """A ported socketserver handler: plain def, blocking rfile and wfile."""

    def handle(self) -> None:
        for line in self.rfile:  # type: ignore[attr-defined]  # sync files, typed async
            self.wfile.write(line.upper())  # type: ignore[unused-coroutine]


class RecvEcho(BaseRequestHandler):
    """socketserver's documentation example: recv and sendall on the request."""

    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data.upper())


@pytest.mark.parametrize("handler", [UpperLines, RecvEcho])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_sync_handler_serves_tcp_and_unix(
    handler: type[BaseRequestHandler], transport: str, tmp_path: Path
) -> None:
    server_class: type[TCPServer] = (
        ThreadingTCPServer if transport == "tcp" else trioserve.ThreadingUnixStreamServer
    )
    address: Any = LOCALHOST if transport == "tcp" else str(tmp_path / "s.sock")
    with server_class(address, handler) as server:
        async with serving(server), await connect(server) as stream:
            await stream.send_all(b"hello\nworld\n")
            assert await receive_exactly(stream, 12) == b"HELLO\nWORLD\n"
    assert running_handler_threads(server) == 0


async def test_sync_handler_runs_in_a_worker_thread_not_blocking_the_loop() -> None:
    release = threading.Event()
    threads: list[str] = []

    class Blocking(BaseRequestHandler):
        def handle(self) -> None:
            threads.append(threading.current_thread().name)
            self.request.sendall(b"waiting\n")
            release.wait(10)
            self.request.sendall(b"done\n")

    with ThreadingTCPServer(LOCALHOST, Blocking) as server:
        async with serving(server):
            first = await connect(server)
            second = await connect(server)
            # Both handlers block in their threads at once; the Trio loop still runs.
            assert await receive_exactly(first, 8) == b"waiting\n"
            assert await receive_exactly(second, 8) == b"waiting\n"
            release.set()
            assert await receive_exactly(first, 5) == b"done\n"
            assert await receive_exactly(second, 5) == b"done\n"
            await first.aclose()
            await second.aclose()
    # Named while they run a handler (what a leak check looks for), and not after.
    assert threads == [THREAD_NAME, THREAD_NAME]
    assert THREAD_NAME not in {thread.name for thread in threading.enumerate()}


async def test_sync_request_is_socket_like_and_files_have_the_stdlib_methods() -> None:
    seen: dict[str, Any] = {}

    class Inspect(SyncStreamRequestHandler):
        timeout = 7.0

        def handle(self) -> None:
            sock = self.request
            seen["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            seen["keepalive"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            seen["timeout"] = sock.gettimeout()
            seen["names"] = (sock.getsockname(), sock.getpeername())
            seen["fileno"] = sock.fileno()
            seen["connection"] = self.connection is sock
            seen["line"] = self.rfile.readline()
            seen["limited"] = self.rfile.readline(3)
            seen["exact"] = self.rfile.read(4)
            buffer = bytearray(3)
            seen["into"] = self.rfile.readinto(buffer), bytes(buffer)
            seen["lines"] = self.rfile.readlines(1)
            seen["rest"] = list(self.rfile)
            self.wfile.write(b"one ")
            self.wfile.writelines([b"two ", b"three\n"])
            self.wfile.flush()
            sock.send(b"send\n")
            sock.sendall(b"sendall\n")

    with ThreadingTCPServer(LOCALHOST, Inspect) as server:
        async with serving(server), await connect(server) as stream:
            await stream.send_all(b"first\nabcdefg\n1234567\nx\ny\nz\n")
            await stream.send_eof()
            assert await receive_until_eof(stream) == b"one two three\nsend\nsendall\n"
            client_name = stream.socket.getsockname()
    assert seen["nodelay"] != 0  # Trio's TCP_NODELAY stays on: no 40 ms stalls
    assert seen["keepalive"] != 0
    assert seen["timeout"] == 7.0
    assert seen["names"] == (server.server_address, client_name)
    assert seen["fileno"] >= 0
    assert seen["connection"]
    assert seen["line"] == b"first\n"
    assert seen["limited"] == b"abc"
    assert seen["exact"] == b"defg"
    assert seen["into"] == (3, b"\n12")
    assert seen["lines"] == [b"34567\n"]
    assert seen["rest"] == [b"x\n", b"y\n", b"z\n"]


async def test_sync_readline_without_limit_stops_at_max_line_length(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Short(StreamRequestHandler):
        max_line_length = 16

        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())  # type: ignore[unused-coroutine,arg-type]

    with ThreadingTCPServer(LOCALHOST, Short) as server:
        async with serving(server):
            async with await connect(server) as stream:
                await stream.send_all(b"x" * 40)
                await stream.send_eof()
                assert await receive_until_eof(stream) == b""
            assert await trio_roundtrip(server, b"short\n") == b"short\n"
    assert any(
        r.levelno == logging.WARNING and "max_line_length" in r.getMessage()
        for r in caplog.records
    )


async def trio_roundtrip(server: trioserve.SocketServer, payload: bytes) -> bytes:
    async with await connect(server) as stream:
        await stream.send_all(payload)
        await stream.send_eof()
        return await receive_until_eof(stream)


# -- unmodified standard-library handler classes ----------------------------------------


class StdlibUpper(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


async def test_unmodified_socketserver_stream_handler() -> None:
    with ThreadingTCPServer(LOCALHOST, StdlibUpper) as server:
        async with serving(server):
            assert await trio_roundtrip(server, b"a\nb\n") == b"A\nB\n"


def make_site(root: Path) -> type[http.server.SimpleHTTPRequestHandler]:
    (root / "index.html").write_text("<h1>hello from trioserve</h1>\n")
    (root / "data.txt").write_bytes(b"0123456789" * 1000)

    class Site(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Site


async def test_simple_http_request_handler_with_urllib(tmp_path: Path) -> None:
    with trioserve.ThreadingHTTPServer(LOCALHOST, make_site(tmp_path)) as server:
        assert server.server_port == server.server_address[1]
        assert server.server_name
        base = f"http://127.0.0.1:{server.server_port}"

        def fetch(path: str) -> tuple[int, bytes]:
            with urllib.request.urlopen(base + path, timeout=10) as response:
                return response.status, response.read()

        async with serving(server):
            assert await trio.to_thread.run_sync(fetch, "/") == (
                200,
                b"<h1>hello from trioserve</h1>\n",
            )
            assert await trio.to_thread.run_sync(fetch, "/data.txt") == (200, b"0123456789" * 1000)
            with pytest.raises(urllib.error.HTTPError) as missing:
                await trio.to_thread.run_sync(fetch, "/missing")
            missing.value.close()
            assert missing.value.code == 404


async def test_simple_http_request_handler_with_curl_keep_alive(tmp_path: Path) -> None:
    with trioserve.ThreadingHTTPServer(LOCALHOST, make_site(tmp_path)) as server:
        base = f"http://127.0.0.1:{server.server_port}"
        async with serving(server):
            with trio.fail_after(20):
                result = await trio.run_process(
                    ["curl", "--silent", "--show-error", "--max-time", "10", "--write-out",
                     "|%{http_code}|%{num_connects}\n", f"{base}/", f"{base}/data.txt"],
                    capture_stdout=True,
                )  # fmt: skip
    out = result.stdout
    assert out.startswith(b"<h1>hello from trioserve</h1>\n|200|1\n")
    # The second request reused the first connection: no new connect.
    assert out.endswith(b"0123456789" * 1000 + b"|200|0\n")


class LogRecordStreamHandler(socketserver.StreamRequestHandler):
    """The logging cookbook's receiver, unchanged."""

    def handle(self) -> None:
        while True:
            chunk = self.connection.recv(4)
            if len(chunk) < 4:
                break
            slen = struct.unpack(">L", chunk)[0]
            chunk = self.connection.recv(slen)
            while len(chunk) < slen:
                chunk = chunk + self.connection.recv(slen - len(chunk))
            obj = self.unPickle(chunk)
            record = logging.makeLogRecord(obj)
            self.handleLogRecord(record)

    def unPickle(self, data: bytes) -> Any:
        return pickle.loads(data)

    def handleLogRecord(self, record: logging.LogRecord) -> None:
        name = self.server.logname if self.server.logname is not None else record.name  # type: ignore[attr-defined]
        logging.getLogger(name).handle(record)


class LogRecordSocketReceiver(ThreadingTCPServer):
    """The cookbook's server, on trioserve."""

    logname: str | None = None


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def cookbook_logger() -> Iterator[ListHandler]:
    target = logging.getLogger("trioserve-tests.cookbook")
    handler = ListHandler()
    target.addHandler(handler)
    target.propagate = False
    yield handler
    target.removeHandler(handler)
    target.propagate = True


async def test_logging_cookbook_socket_receiver(cookbook_logger: ListHandler) -> None:
    with LogRecordSocketReceiver(LOCALHOST, LogRecordStreamHandler) as server:

        def send_logs() -> None:
            sender = logging.handlers.SocketHandler("127.0.0.1", server.server_address[1])
            try:
                source = logging.getLogger("trioserve-tests.cookbook.sender")
                for index in range(3):
                    sender.handle(source.makeRecord(source.name, logging.INFO, __file__, 1,
                                                    "message %d", (index,), None))  # fmt: skip
            finally:
                sender.close()

        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            await trio.to_thread.run_sync(send_logs)
            server.logname = "trioserve-tests.cookbook"
            # Waits for the receiver to read to the sender's end of file.
            server.shutdown(grace=None)
    assert [r.getMessage() for r in cookbook_logger.records] == [
        "message 0",
        "message 1",
        "message 2",
    ]


class WSGIServer(trioserve.ThreadingHTTPServer):
    """The small server subclass that ``wsgiref.simple_server.WSGIRequestHandler`` needs."""

    def __init__(self, server_address: Any, application: Callable[..., Iterable[bytes]]) -> None:
        self.application = application
        super().__init__(server_address, wsgiref.simple_server.WSGIRequestHandler)

    def server_bind(self) -> None:
        super().server_bind()
        self.base_environ = {
            "SERVER_NAME": self.server_name,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PORT": str(self.server_port),
            "REMOTE_HOST": "",
            "CONTENT_LENGTH": "",
            "SCRIPT_NAME": "",
        }

    def get_app(self) -> Callable[..., Iterable[bytes]]:
        return self.application


def hello_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = f"hello {environ['PATH_INFO']} on port {environ['SERVER_PORT']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


async def test_wsgiref_request_handler_with_a_small_server_subclass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wsgiref.simple_server.WSGIRequestHandler, "log_message", print)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with WSGIServer(LOCALHOST, hello_app) as server:
        url = f"http://127.0.0.1:{server.server_port}/greeting"

        def fetch() -> bytes:
            with urllib.request.urlopen(url, timeout=10) as response:
                body: bytes = response.read()
                return body

        async with serving(server):
            body = await trio.to_thread.run_sync(fetch)
    assert body == f"hello /greeting on port {server.server_port}".encode()


# -- shutdown, cancellation, limits ------------------------------------------------------


async def test_shutdown_from_inside_a_sync_handler_does_not_deadlock() -> None:
    returned = threading.Event()

    class Stopper(BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(100)
            self.server.shutdown()  # socketserver code does this; it must return
            returned.set()
            self.request.sendall(b"still here\n")

    with ThreadingTCPServer(LOCALHOST, Stopper) as server:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_forever)
                stream = await connect(server)
                await stream.send_all(b"stop\n")
                # serve_forever waits for the handler that asked it to stop.
                assert await receive_exactly(stream, 11) == b"still here\n"
        await stream.aclose()
    assert returned.is_set()
    assert running_handler_threads(server) == 0


class BlockedInReadline(StreamRequestHandler):
    started: threading.Event
    seen: list[bytes]

    def handle(self) -> None:
        self.started.set()
        self.seen.append(self.rfile.readline())  # type: ignore[arg-type]


class BlockedInRecv(socketserver.BaseRequestHandler):
    started: threading.Event
    seen: list[bytes]

    def handle(self) -> None:
        self.started.set()
        self.seen.append(self.request.recv(100))


@pytest.mark.parametrize("handler", [BlockedInReadline, BlockedInRecv])
@pytest.mark.parametrize("stop", ["cancel", "shutdown"])
async def test_cancellation_and_shutdown_reach_a_handler_blocked_on_its_connection(
    handler: type[Any], stop: str
) -> None:
    started = threading.Event()
    seen: list[bytes] = []
    blocked = type("Blocked", (handler,), {"started": started, "seen": seen})
    with ThreadingTCPServer(LOCALHOST, blocked) as server:
        stream = await connect(server)
        with trio.fail_after(5):  # sanity bound: it takes milliseconds
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_forever)
                await trio.to_thread.run_sync(started.wait, 5)
                if stop == "cancel":
                    nursery.cancel_scope.cancel()
                else:
                    server.shutdown(grace=0)
        await stream.aclose()
    # The handler's blocked read returned end of file, and its thread is done.
    assert seen == [b""]
    assert running_handler_threads(server) == 0


async def test_a_thread_stuck_elsewhere_is_abandoned_after_a_deadline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(trioserve._threads, "ABANDON_AFTER", 0.2)
    started = threading.Event()
    release = threading.Event()
    ended = threading.Event()

    class Stuck(BaseRequestHandler):
        def handle(self) -> None:
            started.set()
            release.wait(10)  # not on the connection: nothing can interrupt it
            ended.set()

    with ThreadingTCPServer(LOCALHOST, Stuck) as server:
        stream = await connect(server)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_forever)
                await trio.to_thread.run_sync(started.wait, 5)
                nursery.cancel_scope.cancel()
        # serve_forever returned although the thread is still running.
        assert not ended.is_set()
        assert running_handler_threads(server) == 1
        release.set()
        await trio.to_thread.run_sync(ended.wait, 5)
        await stream.aclose()
    assert any(
        r.levelno == logging.ERROR and "abandoning its thread" in r.getMessage()
        for r in caplog.records
    )


async def test_requests_past_the_thread_limit_wait_and_are_then_served() -> None:
    release = threading.Event()
    first_running = threading.Event()
    running: list[int] = []

    class Held(BaseRequestHandler):
        def handle(self) -> None:
            running.append(1)
            self.request.recv(100)
            if len(running) == 1:
                first_running.set()
                release.wait(10)
            self.request.sendall(b"served\n")

    with ThreadingTCPServer(LOCALHOST, Held, max_handler_threads=1) as server:
        assert server.max_handler_threads == 1
        async with serving(server):
            first = await connect(server)
            await first.send_all(b"1")
            assert await trio.to_thread.run_sync(first_running.wait, 5)
            second = await connect(server)
            await second.send_all(b"2")
            # The second connection is accepted but waits for the one thread.
            with trio.move_on_after(0.3) as waited:
                await second.receive_some(10)
            assert waited.cancelled_caught
            assert running == [1]
            release.set()
            assert await receive_exactly(first, 7) == b"served\n"
            assert await receive_exactly(second, 7) == b"served\n"
            await first.aclose()
            await second.aclose()


# -- the socket-like adapter over other streams ------------------------------------------


async def test_stream_socket_adapter_over_a_non_socket_stream() -> None:
    client, server_side = trio.testing.memory_stream_pair()
    seen: dict[str, Any] = {}
    timed_out = threading.Event()

    class Handler(SyncStreamRequestHandler):
        def handle(self) -> None:
            seen["request"] = type(self.request)
            seen["line"] = self.rfile.readline()
            self.wfile.write(b"echo " + seen["line"])
            seen["fileno"] = self.request.fileno()
            with pytest.raises(OSError, match="not over a socket"):
                self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            self.request.settimeout(0.05)
            with pytest.raises(TimeoutError):
                self.request.recv(10)
            timed_out.set()
            self.request.settimeout(None)
            seen["rest"] = self.request.recv(100)

    with TCPServer(LOCALHOST, Handler, bind_and_activate=False) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_sync_handler, Handler, server_side, "peer", server)
            await client.send_all(b"hi\n")
            assert await receive_exactly(client, 8) == b"echo hi\n"
            # The handler times out waiting, then blocks again until this arrives.
            assert await trio.to_thread.run_sync(timed_out.wait, 5)
            await client.send_all(b"bye")
    assert seen == {"request": StreamSocket, "line": b"hi\n", "fileno": -1, "rest": b"bye"}


async def test_cancellation_reaches_a_handler_blocked_on_the_adapter() -> None:
    _client, server_side = trio.testing.memory_stream_pair()
    started = threading.Event()
    seen: list[bytes] = []

    class Handler(BaseRequestHandler):
        def handle(self) -> None:
            started.set()
            seen.append(self.request.recv(100))
            with pytest.raises(BrokenPipeError):
                self.request.sendall(b"too late")

    with TCPServer(LOCALHOST, Handler, bind_and_activate=False) as server:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_sync_handler, Handler, server_side, "peer", server)
                await trio.to_thread.run_sync(started.wait, 5)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
    assert seen == [b""]
    assert running_handler_threads(server) == 0


# -- the blocking files on their own -----------------------------------------------------


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(5)
        right.settimeout(5)
        yield left, right


def test_sync_reader_reads_like_a_buffered_reader(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    reader = SyncReader(sock, receive_size=4, max_line_length=8)
    peer.sendall(b"ab\ncdefghijkl\nrest")
    peer.shutdown(socket.SHUT_WR)
    assert reader.readable()
    assert reader.readline(None) == b"ab\n"
    with pytest.raises(trioserve.LineTooLongError):
        reader.readline()
    assert reader.read1(3) == b"cde"  # nothing was lost
    assert reader.readline(4) == b"fghi"
    assert reader.read(4) == b"jkl\n"
    assert reader.read() == b"rest"
    assert reader.read1() == b""
    assert reader.readline() == b""
    reader.close()
    with pytest.raises(ValueError, match="closed file"):
        reader.read()


def test_sync_reader_turns_a_reset_into_broken_connection_error(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    sock = socket_pair[1]
    # A real reset: a TCP peer that closes with SO_LINGER 0.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=5)
        connection, _ = listener.accept()
    with connection:
        connection.settimeout(5)
        reset(peer)
        reader = SyncReader(connection)
        writer = SyncWriter(connection)
        with pytest.raises(trioserve.BrokenConnectionError, match="reset"):
            reader.readline()
        with pytest.raises(ConnectionError, match="Broken pipe"):
            writer.write(b"x")
    with pytest.raises(ValueError, match="receive_size"):
        SyncReader(sock, receive_size=0)


@pytest.mark.parametrize(
    ("drop", "read", "end"),
    [
        (b"x", lambda reader: reader.readline(), b"\n"),
        (b"x\r\n", lambda reader: reader.readuntil(b"\r\n\r\n"), b"\r\n"),
    ],
    ids=["readline", "readuntil"],
)
def test_sync_reader_times_out_a_slow_drip_per_call_not_per_receive(
    socket_pair: tuple[socket.socket, socket.socket],
    drop: bytes,
    read: Callable[[SyncReader], bytes],
    end: bytes,
) -> None:
    peer, sock = socket_pair
    sock.settimeout(0.5)  # real seconds: the drip below sends a drop every 0.05 s
    reader = SyncReader(sock, max_line_length=None)
    stop = threading.Event()

    def drip() -> None:
        for _ in range(200):  # bounded: 10 s at most
            peer.sendall(drop)
            if stop.wait(0.05):
                return

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        start = time.monotonic()
        with pytest.raises(trioserve.PeerTimeoutError, match=r"within 0\.5 seconds") as info:
            read(reader)
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        dripper.join(10)
    assert 0.4 <= elapsed < 5  # about the timeout: not the whole drip
    assert isinstance(info.value, socket.timeout)
    assert info.value.timeout == 0.5
    assert sock.gettimeout() == 0.5  # the socket's own timeout is given back
    # Nothing was lost: the dripped bytes are still there for the next call.
    peer.sendall(end)
    piece = read(reader)
    assert piece == drop * ((len(piece) - len(end)) // len(drop)) + end
    assert len(piece) > len(drop) + len(end)


def test_sync_reader_gives_each_readline_a_fresh_timeout(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    sock.settimeout(5.0)
    reader = SyncReader(sock)
    peer.sendall(b"first ")
    peer.sendall(b"line\nsecond")
    assert reader.readline() == b"first line\n"
    peer.sendall(b" line\n")
    assert reader.readline() == b"second line\n"
    assert sock.gettimeout() == 5.0


def test_sync_reader_holds_at_most_max_line_length_and_one_small_buffer() -> None:
    sizes: list[int] = []

    class Flood:
        def recv(self, size: int) -> bytes:
            sizes.append(size)
            return b"x" * size

    reader = SyncReader(Flood(), receive_size=65536, max_line_length=1000)  # type: ignore[arg-type]
    with pytest.raises(trioserve.LineTooLongError):
        reader.readline()
    held = sum(sizes)
    # One small buffer per connection, not receive_size: idle connections stay cheap.
    assert max(sizes) <= io.DEFAULT_BUFFER_SIZE
    assert 1000 <= held <= 1000 + io.DEFAULT_BUFFER_SIZE
    with pytest.raises(trioserve.LineTooLongError):
        reader.readline()  # the same bytes again: nothing more is received
    assert sum(sizes) == held
    assert reader.read(held) == b"x" * held  # nothing lost, nothing more
    assert sum(sizes) == held


def test_sync_files_raise_peer_timeout_error_on_the_socket_timeout(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    sock = socket_pair[1]
    sock.settimeout(0.05)
    reader = SyncReader(sock)
    with pytest.raises(trioserve.PeerTimeoutError, match=r"within 0\.05 seconds"):
        reader.read(1)
    writer = SyncWriter(sock)

    def flood() -> None:
        for _ in range(10_000):  # bounded: the peer reads nothing, the buffers fill up
            writer.write(b"x" * 65536)

    with pytest.raises(trioserve.PeerTimeoutError):
        flood()


async def test_a_sync_handler_timed_out_by_a_slow_drip_is_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")

    class Lines(UpperLines):
        timeout = 0.5  # real seconds: the client below drips a byte every 0.05 s

    with ThreadingTCPServer(LOCALHOST, Lines) as server:
        async with serving(server), await connect(server) as slow, trio.open_nursery() as drips:

            async def drip() -> None:
                for _ in range(200):  # bounded: 10 s at most
                    try:
                        await slow.send_all(b"x")
                    except trio.BrokenResourceError:
                        return  # the server closed first: what this test waits for
                    await trio.sleep(0.05)

            drips.start_soon(drip)
            start = time.monotonic()
            with trio.fail_after(10):  # sanity bound
                # A reset also means the server closed the connection.
                assert await receive_until_eof(slow) == b""
            elapsed = time.monotonic() - start
            drips.cancel_scope.cancel()
    assert 0.4 <= elapsed < 5  # about the timeout: not the whole drip
    records = trioserve_records(caplog, logging.NOTSET)
    assert [r.levelno for r in records] == [logging.INFO]
    assert "timed out" in records[0].getMessage()
    assert records[0].exc_info is None


def test_sync_writer_buffers_up_to_bufsize(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    writer = SyncWriter(sock, bufsize=4)
    assert writer.writable()
    assert writer.write(b"ab") == 2
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(10)  # still buffered
    writer.write(memoryview(b"cd"))
    assert peer.recv(10) == b"abcd"
    writer.writelines([b"e", b"f"])
    writer.flush()
    assert peer.recv(10) == b"ef"
    writer.write(b"g")
    writer.close()  # flushes, as io's writers do
    assert peer.recv(10) == b"g"
    with pytest.raises(ValueError, match="closed file"):
        writer.write(b"h")
    assert SyncWriter(sock, bufsize=-1).bufsize == io.DEFAULT_BUFFER_SIZE


# -- TLS, through the StreamSocket adapter -----------------------------------------------


async def test_sync_http_handler_over_tls_uses_the_stream_socket(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    seen: dict[str, Any] = {}

    class Site(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def setup(self) -> None:
            seen["request"] = type(self.request)
            seen["nodelay"] = self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            seen["peer"] = self.request.getpeername()[0]
            super().setup()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class TLSServer(trioserve.ThreadingHTTPServer):
        async def get_request(self) -> tuple[Any, Any]:
            stream, address = await super().get_request()
            return trio.SSLStream(stream, server_context, server_side=True), address

    (tmp_path / "hello.txt").write_bytes(b"over TLS\n")
    with TLSServer(LOCALHOST, Site) as server:
        url = f"https://127.0.0.1:{server.server_port}/hello.txt"

        def fetch() -> bytes:
            with urllib.request.urlopen(url, context=client_context, timeout=10) as response:
                body: bytes = response.read()
                return body

        async with serving(server):
            assert await trio.to_thread.run_sync(fetch) == b"over TLS\n"
    assert seen == {"request": StreamSocket, "nodelay": 1, "peer": "127.0.0.1"}


async def test_stream_socket_methods_over_a_memory_stream() -> None:
    client, server_side = trio.testing.memory_stream_pair()
    seen: dict[str, Any] = {}

    class Handler(BaseRequestHandler):
        def handle(self) -> None:
            sock: StreamSocket = self.request
            buffer = bytearray(5)
            seen["into"] = sock.recv_into(buffer, 3), bytes(buffer)
            seen["send"] = sock.send(b"sent;")
            with sock.makefile("wb", 0) as wfile:
                wfile.write(b"binary;")
            text = sock.makefile("w", encoding="ascii")
            text.write("text;")
            text.flush()
            reader = sock.makefile("r", encoding="ascii")
            seen["text line"] = reader.readline()
            with pytest.raises(ValueError, match="invalid mode"):
                sock.makefile("rw")
            with pytest.raises(OSError, match="flags"):
                sock.recv(1, socket.MSG_PEEK)
            with pytest.raises(OSError, match="flags"):
                sock.sendall(b"x", socket.MSG_OOB)
            with pytest.raises(ValueError, match="out of range"):
                sock.settimeout(-1)
            with pytest.raises(OSError, match="non-blocking"):
                sock.setblocking(False)
            sock.setblocking(True)
            seen["timeout"] = sock.gettimeout()
            with pytest.raises(OSError, match="not over a socket"):
                sock.getsockname()
            sock.shutdown(socket.SHUT_WR)  # the peer sees end of file
            with pytest.raises(BrokenPipeError):
                sock.sendall(b"after")
            sock.shutdown(socket.SHUT_RD)
            seen["after shut rd"] = sock.recv(10)
            with sock:
                pass
            with pytest.raises(OSError, match="Bad file descriptor"):
                sock.shutdown(socket.SHUT_RDWR)
            seen["fileno"] = sock.fileno()

    with TCPServer(LOCALHOST, Handler, bind_and_activate=False) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_sync_handler, Handler, server_side, "peer", server)
            await client.send_all(b"abcline\n")
            assert await receive_until_eof(client) == b"sent;binary;text;"
    assert seen == {
        "into": (3, b"abc\x00\x00"),
        "send": 5,
        "text line": "line\n",
        "timeout": None,
        "after shut rd": b"",
        "fileno": -1,
    }


async def test_sync_datagram_request_is_passed_through() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server_sock,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client_sock,
    ):
        server_sock.bind(LOCALHOST)
        client_sock.bind(LOCALHOST)
        client_sock.settimeout(5)

        class Upper(socketserver.DatagramRequestHandler):
            def handle(self) -> None:
                self.wfile.write(self.rfile.read().upper())

        with TCPServer(LOCALHOST, Upper, bind_and_activate=False) as server:
            request = (b"datagram", server_sock)
            await run_sync_handler(Upper, request, client_sock.getsockname(), server)
        assert client_sock.recv(100) == b"DATAGRAM"


# -- SyncReader: errors a handler can catch lose nothing --------------------------------


def test_sync_reader_keeps_a_too_long_line_readable_in_order(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    reader = SyncReader(sock, max_line_length=100)
    long = b"".join(b"%05d," % index for index in range(60))  # 360 bytes, no line end
    peer.sendall(long + b"\nnext\n")  # what follows the long line is already here
    with pytest.raises(trioserve.LineTooLongError) as info:
        reader.readline()
    assert info.value.max_line_length == 100
    assert reader.read(len(long)) == long
    assert reader.readline() == b"\n"
    assert reader.readline() == b"next\n"

    peer.sendall(long)
    with pytest.raises(trioserve.LineTooLongError):
        reader.readline()
    peer.sendall(b"\nlater\n")  # arrives after the error
    with pytest.raises(trioserve.LineTooLongError):
        reader.readline()  # still too long, still nothing lost
    assert reader.readline(10) == long[:10]
    peer.shutdown(socket.SHUT_WR)
    assert reader.read() == long[10:] + b"\nlater\n"


class DrippingSocket:
    """A real socket that receives at most 3 bytes at a time, and records ``settimeout``."""

    def __init__(self, sock: socket.socket, *, reset_after: int | None = None) -> None:
        self.sock = sock
        self.timeouts: list[float | None] = []
        self.receives = 0
        self.reset_after = reset_after

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        if self.receives == self.reset_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        self.receives += 1
        return self.sock.recv_into(buffer, min(nbytes or len(buffer), 3))

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def settimeout(self, value: float | None) -> None:
        self.timeouts.append(value)
        self.sock.settimeout(value)


def test_sync_reader_restores_the_timeout_a_readline_lowered(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    sock.settimeout(5.0)
    dripping = DrippingSocket(sock)
    reader = SyncReader(dripping)  # type: ignore[arg-type]
    peer.sendall(b"hello\n")
    assert reader.readline() == b"hello\n"
    assert dripping.receives == 2
    # The second receive got what was left of the line's 5 s; then the 5 s came back.
    assert len(dripping.timeouts) == 2
    assert 0 < dripping.timeouts[0] < 5.0  # type: ignore[operator]
    assert dripping.timeouts[1] == 5.0
    assert sock.gettimeout() == 5.0


def test_sync_reader_restores_the_timeout_when_a_readline_times_out(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    sock.settimeout(0.2)  # real seconds: the second receive waits for it
    dripping = DrippingSocket(sock)
    reader = SyncReader(dripping)  # type: ignore[arg-type]
    peer.sendall(b"abc")
    with pytest.raises(trioserve.PeerTimeoutError) as info:
        reader.readline()
    assert info.value.timeout == 0.2  # the socket's timeout, not what was left of it
    assert dripping.timeouts[-1] == 0.2
    assert sock.gettimeout() == 0.2
    peer.sendall(b"\n")
    assert reader.readline() == b"abc\n"  # what had arrived is still there


def test_sync_reader_restores_the_timeout_when_the_peer_resets_mid_line(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    sock.settimeout(5.0)
    dripping = DrippingSocket(sock, reset_after=2)
    reader = SyncReader(dripping)  # type: ignore[arg-type]
    peer.sendall(b"abcdef")
    with pytest.raises(trioserve.BrokenConnectionError):
        reader.readline()
    assert dripping.timeouts[-1] == 5.0
    assert sock.gettimeout() == 5.0


def test_sync_reader_read_keeps_per_receive_timeouts_and_the_bytes(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    sock.settimeout(0.1)
    dripping = DrippingSocket(sock)
    reader = SyncReader(dripping)  # type: ignore[arg-type]
    peer.sendall(b"abcdefg")
    with pytest.raises(trioserve.PeerTimeoutError, match=r"within 0\.1 seconds"):
        reader.read(10)
    assert dripping.timeouts == []  # each receive waited the socket's own timeout
    peer.sendall(b"hij")
    assert reader.read(10) == b"abcdefghij"
    buffer = bytearray(5)
    peer.sendall(b"kl")
    with pytest.raises(trioserve.PeerTimeoutError):
        reader.readinto(buffer)
    peer.sendall(b"mno")
    assert reader.readinto(buffer) == 5
    assert buffer == b"klmno"


# -- SyncReader.readuntil: the contract of AsyncReader.readuntil -------------------------


class ChunkedSocket:
    """Hands out *data* in pieces of the given sizes (no more than asked), then end of file."""

    def __init__(self, data: bytes, sizes: Sequence[int]) -> None:
        self.data = data
        self.sizes = list(sizes)
        self.received = 0

    def recv(self, size: int) -> bytes:
        chunk = min(self.sizes.pop(0) if self.sizes else len(self.data), size)
        piece, self.data = self.data[:chunk], self.data[chunk:]
        self.received += len(piece)
        return piece


class ChunkedStream(trio.abc.ReceiveStream):
    """The same for an `AsyncReader`."""

    def __init__(self, data: bytes, sizes: Sequence[int]) -> None:
        self.socket = ChunkedSocket(data, sizes)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.socket.recv(max_bytes or 65536)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"\r\n", b"x", b"\n"]), max_size=80).map(b"".join),
    sizes=st.lists(st.integers(1, 30), max_size=20),
    separator=st.sampled_from([b"\n", b"\r\n\r\n", b"x\n", b"xx"]),
    limit=st.none() | st.integers(-1, 40),
    max_line_length=st.none() | st.integers(1, 40),
    receive_size=st.integers(1, 64),
)
def test_sync_readuntil_returns_what_the_async_readuntil_returns(
    data: bytes,
    sizes: list[int],
    separator: bytes,
    limit: int | None,
    max_line_length: int | None,
    receive_size: int,
) -> None:
    # Each side reads pieces until end of file; after a piece too long, it reads 3 bytes.
    def sync_reads() -> list[bytes | str]:
        sock = ChunkedSocket(data, sizes)
        reader = SyncReader(
            sock,  # type: ignore[arg-type]
            receive_size=receive_size,
            max_line_length=max_line_length,
        )
        reads: list[bytes | str] = []
        while True:
            try:
                piece = reader.readuntil(separator, limit)
            except trioserve.LineTooLongError as exc:
                reads.append(f"{exc} {exc.separator!r}")
                piece = reader.read(3)
            reads.append(piece)
            if not piece:
                return reads

    async def async_reads() -> list[bytes | str]:
        stream = ChunkedStream(data, sizes)
        reader = AsyncReader(stream, receive_size=receive_size, max_line_length=max_line_length)
        reads: list[bytes | str] = []
        while True:
            try:
                piece = await reader.readuntil(separator, limit)
            except trioserve.LineTooLongError as exc:
                reads.append(f"{exc} {exc.separator!r}")
                piece = await reader.read(3)
            reads.append(piece)
            if not piece:
                return reads

    reads = sync_reads()
    assert reads == trio.run(async_reads)
    assert b"".join(read for read in reads if isinstance(read, bytes)) == data  # in order


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 100])
def test_sync_readuntil_cuts_at_each_separator_however_the_peer_chunks(chunk: int) -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\r\n\r\n\r\n\r\nrest"
    reader = SyncReader(ChunkedSocket(data, [chunk] * 100))  # type: ignore[arg-type]
    assert reader.readuntil(b"\r\n\r\n") == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert reader.readuntil(b"\r\n\r\n") == b"body\r\n\r\n"
    assert reader.readuntil(b"\r\n\r\n") == b"\r\n\r\n"
    assert reader.readuntil(b"\r\n\r\n") == b"rest"  # the rest at end of file
    assert reader.readuntil(b"\r\n\r\n") == b""
    assert reader.readuntil() == b""


def test_sync_readuntil_finds_a_separator_split_across_receives(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    sock.settimeout(5.0)
    dripping = DrippingSocket(sock)  # 3 bytes a receive: every separator is split
    reader = SyncReader(dripping)  # type: ignore[arg-type]
    peer.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nline\nrest")
    assert reader.readuntil(b"\r\n\r\n") == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert dripping.receives == 9
    # The later receives got what was left of the call's 5 s; then the 5 s came back.
    lowered = [timeout for timeout in dripping.timeouts if timeout is not None]
    assert 0 < min(lowered) < 5.0
    assert dripping.timeouts[-1] == 5.0
    assert sock.gettimeout() == 5.0
    assert reader.readline() == b"line\n"  # the other reads go on where it stopped
    peer.shutdown(socket.SHUT_WR)
    assert reader.readuntil(b"\r\n\r\n") == b"rest"
    assert reader.read() == b""


def test_sync_readuntil_stops_at_the_limit_and_keeps_the_bytes() -> None:
    sock = ChunkedSocket(b"x" * 100 + b"\r\n\r\nrest\nmore", [7] * 30)
    reader = SyncReader(sock, max_line_length=32, receive_size=1000)  # type: ignore[arg-type]
    with pytest.raises(trioserve.LineTooLongError, match="32 bytes") as info:
        reader.readuntil(b"\r\n\r\n")
    assert info.value.max_line_length == 32
    assert info.value.separator == b"\r\n\r\n"
    assert str(info.value) == r"no separator b'\r\n\r\n' within 32 bytes"
    assert sock.received == 32  # never received past the limit
    with pytest.raises(trioserve.LineTooLongError, match="50 bytes"):
        reader.readuntil(b"\r\n\r\n", 50)
    assert sock.received == 50
    with pytest.raises(trioserve.LineTooLongError, match="50 bytes"):
        reader.readuntil(b"\r\n\r\n", 50)  # the same bytes again: nothing more received
    assert sock.received == 50
    assert reader.readuntil(b"\r\n\r\n", 104) == b"x" * 100 + b"\r\n\r\n"
    with pytest.raises(trioserve.LineTooLongError) as info:
        reader.readuntil(b"\n", 4)
    assert str(info.value) == "no end of line within 4 bytes (max_line_length)"
    assert info.value.separator == b"\n"
    assert reader.read(2) == b"re"  # readable in order
    assert reader.readuntil(b"\n", 3) == b"st\n"
    assert reader.readuntil(b"\n", 5) == b"more"  # the rest at end of file, within the limit


def test_sync_readuntil_limit_defaults_to_max_line_length() -> None:
    big = b"y" * 100_000 + b"\r\n\r\n"
    sock = ChunkedSocket(big + b"z" * 20 + b"\r\n\r\n" + b"z" * 20 + b"\r\n\r\n", [])
    reader = SyncReader(sock, max_line_length=None)  # type: ignore[arg-type]
    assert reader.readuntil(b"\r\n\r\n") == big  # no limit at all
    reader.max_line_length = 10
    for default in (None, -1, -5):
        with pytest.raises(trioserve.LineTooLongError, match="within 10 bytes"):
            reader.readuntil(b"\r\n\r\n", default)
    assert reader.readuntil(b"\r\n\r\n", 24) == b"z" * 20 + b"\r\n\r\n"  # above the default
    with pytest.raises(trioserve.LineTooLongError, match="within 23 bytes"):
        reader.readuntil(b"\r\n\r\n", 23)  # one byte short of the separator
    assert reader.read() == b"z" * 20 + b"\r\n\r\n"


def test_sync_readuntil_restores_the_timeout_when_it_times_out(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    sock.settimeout(0.2)  # real seconds: the fourth receive waits for it
    dripping = DrippingSocket(sock)
    reader = SyncReader(dripping)  # type: ignore[arg-type]
    peer.sendall(b"abc\r\nde")
    with pytest.raises(trioserve.PeerTimeoutError) as info:
        reader.readuntil(b"\r\n\r\n")
    assert info.value.timeout == 0.2  # the socket's timeout, not what was left of it
    assert dripping.timeouts[-1] == 0.2
    assert sock.gettimeout() == 0.2
    peer.sendall(b"\r\n\r\n")
    assert reader.readuntil(b"\r\n\r\n") == b"abc\r\nde\r\n\r\n"  # what had arrived is there


def test_sync_readuntil_refuses_an_empty_separator_and_a_closed_file(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    peer, sock = socket_pair
    reader = SyncReader(sock)
    peer.sendall(b"a\n")
    with pytest.raises(ValueError, match="separator must not be empty"):
        reader.readuntil(b"")
    assert reader.readuntil() == b"a\n"
    reader.close()
    with pytest.raises(ValueError, match="closed file"):
        reader.readuntil()


@pytest.mark.parametrize("reader_class", [SyncReader, AsyncReader])
def test_both_readers_refuse_a_max_line_length_below_one(reader_class: type[Any]) -> None:
    with pytest.raises(ValueError, match="max_line_length must be >= 1"):
        reader_class(object(), max_line_length=0)


async def test_sync_files_have_the_connections_fileno_for_select() -> None:
    import select

    class Selecting(SyncStreamRequestHandler):
        def handle(self) -> None:
            readable, _, _ = select.select([self.rfile], [], [], 30)
            assert readable == [self.rfile]
            assert self.rfile.fileno() == self.wfile.fileno() == self.request.fileno()
            self.wfile.write(self.rfile.readline())

    with ThreadingTCPServer(("127.0.0.1", 0), Selecting) as server:
        async with (
            trioserve.testing.serving(server),
            await trioserve.testing.connect(server) as client,
        ):
            await client.send_all(b"selected\n")
            assert await receive_exactly(client, 9) == b"selected\n"


def test_sync_reader_takes_a_long_unfinished_line_from_the_budget() -> None:
    from trioserve import InputBudgetError
    from trioserve._buffer import INPUT_ALLOWANCE, InputBudget

    budget = InputBudget(10_000)
    line = b"x" * (INPUT_ALLOWANCE + 20_000) + b"\n"
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.settimeout(5)
        reader = SyncReader(ours, budget=budget)
        peer.sendall(line + b"next\n")
        # Its allowance and the whole budget are not enough for this line: refused.
        with pytest.raises(InputBudgetError, match="max_buffered_input"):
            reader.readline()
        assert budget.available == 10_000  # a call's reservation ends with the call
        # Nothing is lost: the bytes it held are read first, the rest fits now.
        assert reader.readline() == line
        assert reader.readline() == b"next\n"
        # Ordinary reads never touch the budget.
        peer.sendall(b"a" * 5000)
        assert reader.read(5000) == b"a" * 5000
        assert budget.available == 10_000
        reader.close()
