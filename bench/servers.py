"""The benchmark contenders: one server per name, each run as its own process.

``python -m bench.servers NAME [--port P]`` binds NAME on 127.0.0.1, prints
``READY <port>`` on stdout once it listens, and serves until SIGTERM or SIGINT. A
contender whose trioserve feature does not exist yet prints ``SKIP <reason>`` and exits
with status 3, so the runner can say so and carry on.

HTTP contenders (the same hello world, `bench._common.RESPONSE`; keep-alive, unless a
request is HTTP/1.0 or says ``Connection: close``: then `bench._common.RESPONSE_CLOSE` and
the connection is closed):

* ``trioserve-async``: an ``async def`` `trioserve.StreamRequestHandler` on
  `trioserve.ThreadingTCPServer`, reading the request line and headers with
  ``rfile.readline()`` as the raw Trio, asyncio and stdlib contenders do;
* ``trioserve-sync``: the line-by-line handler body (``readline`` up to the blank line) as
  a plain ``def`` (a worker thread);
* ``trioserve-http``: an unmodified `http.server.BaseHTTPRequestHandler` subclass on
  trioserve (``trioserve.ThreadingHTTPServer`` if it exists, else ``ThreadingTCPServer``);
* ``trioserve-pool``: the line-by-line async handler on ``trioserve.ForkingTCPServer``
  (2 workers);
* ``trio``: raw `trio.serve_tcp` with a hand-written buffered reader;
* ``stdlib``: `socketserver.ThreadingTCPServer` with the sync handler body;
* ``stdlib-http``: `http.server.ThreadingHTTPServer`, the handler with ``TCP_NODELAY``;
* ``stdlib-http-stock``: the same, as shipped (Nagle's algorithm on);
* ``asyncio``: `asyncio.start_server` with ``StreamReader.readline``.

Two floors, for telling Trio's share of a keep-alive request from ours (`FLOORS`; not in
the suite's tables, run them with `bench.paired` or `bench.profile`). Each handles only
what ``wrk`` sends (it answers at every blank line) and is no pattern to follow:

* ``trio-minimal``: the least a Trio server can do per request: one
  `trio.lowlevel.wait_readable`, one ``os.read``, ``bytes.find`` for the lines, one
  ``os.write``; no cancellation check, no line limit, no handler;
* ``trio-minimal-et``: the same, but a connection waits on an edge-triggered epoll
  registration of its own, made once, with one task that waits for that epoll object in
  Trio and reschedules the connections it reports: what the per-wait work of Trio's I/O
  manager (re-arming a one-shot registration, its bookkeeping) costs, by its absence.
  A connection closed by another task would never wake its reader here.

UDP echo contenders: ``udp-trioserve`` (`trioserve.ThreadingUDPServer`, async handler),
``udp-trio`` (a raw Trio ``recvfrom``/``sendto`` loop) and ``udp-stdlib``
(`socketserver.ThreadingUDPServer`, a thread per datagram).

``--profile FILE`` runs the server under `cProfile` and writes the stats to FILE when the
server stops (see `bench.profile`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import http.server
import inspect
import os
import select
import signal
import socket
import socketserver
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

import trioserve
from bench._common import BACKLOG, BODY, HOST, RESPONSE, RESPONSE_CLOSE, raise_open_file_limit

__all__ = ["CONTENDERS", "FLOORS", "UDP_CONTENDERS", "main"]

#: Exit status of a contender whose feature trioserve does not have yet.
SKIP_STATUS = 3
_BLANK = (b"\r\n", b"\n", b"")
#: How an HTTP/1.0 request line ends, and how a Connection header begins (lower case):
#: what the hand-written bodies look at to tell a request that asks to close.
_HTTP10 = b"HTTP/1.0\r\n"
_CONNECTION = b"connection:"


class Skip(Exception):
    """This contender cannot run here; the message says why."""


def _ready(port: int) -> None:
    print(f"READY {port}", flush=True)


def _feature(name: str) -> Any:
    value = getattr(trioserve, name, None)
    if value is None:
        raise Skip(f"trioserve has no {name} yet")
    return value


# -- the handler bodies ------------------------------------------------------------------


class AsyncHello(trioserve.StreamRequestHandler):
    """The async hello world: request line, headers up to the blank line, answer.

    Every hand-written body here reads the same way: a request line that ends in
    HTTP/1.0, or a ``Connection: close`` header, gets `RESPONSE_CLOSE` and the connection
    closes; any other request gets `RESPONSE` and the next request is read.
    """

    async def handle(self) -> None:
        rfile, wfile = self.rfile, self.wfile
        while line := await rfile.readline():
            close = line.endswith(_HTTP10)
            while (line := await rfile.readline()) not in _BLANK:
                if line[:11].lower() == _CONNECTION:
                    close = b"close" in line.lower()
            if not line:
                return
            if close:
                await wfile.write(RESPONSE_CLOSE)
                return
            await wfile.write(RESPONSE)


def _sync_hello(rfile: Any, wfile: Any) -> None:
    """The sync hello world, shared by trioserve's sync handler and the stdlib's."""
    while line := rfile.readline():
        close = line.endswith(_HTTP10)
        while (line := rfile.readline()) not in _BLANK:
            if line[:11].lower() == _CONNECTION:
                close = b"close" in line.lower()
        if not line:
            return
        if close:
            wfile.write(RESPONSE_CLOSE)
            return
        wfile.write(RESPONSE)


class SyncHello(trioserve.StreamRequestHandler):
    """The hello world as a sync handler on trioserve (runs in a worker thread)."""

    def handle(self) -> None:
        _sync_hello(self.rfile, self.wfile)


class StdlibHello(socketserver.StreamRequestHandler):
    """The hello world for `socketserver.ThreadingTCPServer`."""

    def handle(self) -> None:
        _sync_hello(self.rfile, self.wfile)


class HTTPHello(http.server.BaseHTTPRequestHandler):
    """A plain `http.server` handler, as found in the wild; quiet, and keep-alive."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if self.close_connection:  # an HTTP/1.0 request, or Connection: close
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a benchmark does not log every request, on any server


class NoDelayHTTPHello(HTTPHello):
    """`HTTPHello` with ``TCP_NODELAY``, as socketserver offers it."""

    disable_nagle_algorithm = True


# -- HTTP servers ------------------------------------------------------------------------


def _run_trioserve(server_class: Any, handler: Any, port: int, **options: Any) -> None:
    with server_class((HOST, port), handler, request_queue_size=BACKLOG, **options) as server:
        _ready(server.server_address[1])
        trio.run(server.serve_forever)


def trioserve_async(port: int) -> None:
    _run_trioserve(trioserve.ThreadingTCPServer, AsyncHello, port)


def _unlimited_threads() -> dict[str, Any]:
    # Like socketserver.ThreadingTCPServer, a thread for every connection: no limit.
    if hasattr(trioserve.BaseServer, "max_handler_threads"):
        return {"max_handler_threads": None}
    return {}


def trioserve_sync(port: int) -> None:
    _run_trioserve(trioserve.ThreadingTCPServer, SyncHello, port, **_unlimited_threads())


def trioserve_http(port: int) -> None:
    server_class = getattr(trioserve, "ThreadingHTTPServer", trioserve.ThreadingTCPServer)
    _run_trioserve(server_class, HTTPHello, port, **_unlimited_threads())


def trioserve_pool(port: int) -> None:
    _run_trioserve(_feature("ForkingTCPServer"), AsyncHello, port, max_children=2)


class _Reader:
    """A straightforward buffered reader: what anyone writes over a Trio stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def readline(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            data = await self.stream.receive_some(65536)
            if not data:
                line = bytes(self.buffer)
                self.buffer.clear()
                return line
            self.buffer += data


async def _trio_hello(stream: trio.SocketStream) -> None:
    reader = _Reader(stream)
    try:
        while line := await reader.readline():
            close = line.endswith(_HTTP10)
            while (line := await reader.readline()) not in _BLANK:
                if line[:11].lower() == _CONNECTION:
                    close = b"close" in line.lower()
            if not line:
                return
            if close:
                await stream.send_all(RESPONSE_CLOSE)
                return
            await stream.send_all(RESPONSE)
    except trio.BrokenResourceError:
        pass


def _serve_tcp(
    handler: Callable[[trio.SocketStream], Any],
    port: int,
    alongside: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve *handler* with `trio.serve_tcp`, as anyone would with Trio alone.

    *alongside*, if given, runs in the same nursery for as long as the server does.
    """

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            if alongside is not None:
                nursery.start_soon(alongside)
            listeners: list[trio.SocketListener] = await nursery.start(
                partial(trio.serve_tcp, handler, port, host=HOST, backlog=BACKLOG)
            )
            _ready(listeners[0].socket.getsockname()[1])

    trio.run(serve)


def raw_trio(port: int) -> None:
    _serve_tcp(_trio_hello, port)


class _StdlibTCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = BACKLOG


def stdlib(port: int) -> None:
    with _StdlibTCPServer((HOST, port), StdlibHello) as server:
        _ready(server.server_address[1])
        server.serve_forever()


class _StdlibHTTPServer(http.server.ThreadingHTTPServer):
    request_queue_size = BACKLOG


def _run_stdlib_http(handler: type[HTTPHello], port: int) -> None:
    with _StdlibHTTPServer((HOST, port), handler) as server:
        _ready(server.server_address[1])
        server.serve_forever()


def stdlib_http(port: int) -> None:
    _run_stdlib_http(NoDelayHTTPHello, port)


def stdlib_http_stock(port: int) -> None:
    _run_stdlib_http(HTTPHello, port)


async def _asyncio_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            close = line.endswith(_HTTP10)
            while (line := await reader.readline()) not in _BLANK:
                if line[:11].lower() == _CONNECTION:
                    close = b"close" in line.lower()
            if not line:
                return
            if close:
                writer.write(RESPONSE_CLOSE)
                await writer.drain()
                return
            writer.write(RESPONSE)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def asyncio_server(port: int) -> None:
    async def serve() -> None:
        server = await asyncio.start_server(_asyncio_hello, HOST, port, backlog=BACKLOG)
        async with server:
            _ready(server.sockets[0].getsockname()[1])
            await server.serve_forever()

    asyncio.run(serve())


# -- UDP echo servers --------------------------------------------------------------------


class AsyncEcho(trioserve.BaseRequestHandler):
    """Send each datagram back to where it came from."""

    async def handle(self) -> None:
        data, sock = self.request
        sent = sock.sendto(data, self.client_address)
        if inspect.isawaitable(sent):
            await sent


class StdlibEcho(socketserver.BaseRequestHandler):
    """Send each datagram back, from a thread of its own."""

    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)


def udp_trioserve(port: int) -> None:
    server_class = _feature("ThreadingUDPServer")
    with server_class((HOST, port), AsyncEcho) as server:
        _ready(server.server_address[1])
        trio.run(server.serve_forever)


def udp_trio(port: int) -> None:
    async def serve() -> None:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind((HOST, port))
            _ready(sock.getsockname()[1])
            while True:
                data, address = await sock.recvfrom(65536)
                await sock.sendto(data, address)

    trio.run(serve)


class _StdlibUDPServer(socketserver.ThreadingUDPServer):
    daemon_threads = True


def udp_stdlib(port: int) -> None:
    with _StdlibUDPServer((HOST, port), StdlibEcho) as server:
        _ready(server.server_address[1])
        server.serve_forever()


# -- floors: Trio's share of a request -------------------------------------------------


async def _answer_blank_lines(fd: int, wait: Callable[[int], Any]) -> None:
    """Read with one system call per *wait*, answer every blank line: the floors' body."""
    held = b""
    try:
        while True:
            await wait(fd)
            data = os.read(fd, 65536)
            if not data:
                return
            held += data
            while (end := held.find(b"\n")) >= 0:
                line, held = held[: end + 1], held[end + 1 :]
                if line in _BLANK:
                    os.write(fd, RESPONSE)
    except OSError:
        pass


async def _minimal_hello(stream: trio.SocketStream) -> None:
    await _answer_blank_lines(stream.socket.fileno(), trio.lowlevel.wait_readable)


def trio_minimal(port: int) -> None:
    _serve_tcp(_minimal_hello, port)


class _EdgePoller:
    """One edge-triggered epoll object for all connections, waited for in one task."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.waiting: dict[int, trio.lowlevel.Task] = {}
        self.ready: set[int] = set()  # reported while nobody waited

    async def run(self) -> None:
        with self.epoll:
            while True:
                await trio.lowlevel.wait_readable(self.epoll.fileno())
                for fd, _ in self.epoll.poll(0):
                    task = self.waiting.pop(fd, None)
                    if task is None:
                        self.ready.add(fd)
                    else:
                        trio.lowlevel.reschedule(task)

    async def wait(self, fd: int) -> None:
        if fd in self.ready:
            self.ready.discard(fd)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self.waiting[fd] = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.waiting.pop(fd, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def hello(self, stream: trio.SocketStream) -> None:
        fd = stream.socket.fileno()
        self.epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        try:
            await _answer_blank_lines(fd, self.wait)
        finally:
            self.epoll.unregister(fd)
            self.ready.discard(fd)


def trio_minimal_et(port: int) -> None:
    poller = _EdgePoller()
    _serve_tcp(poller.hello, port, alongside=poller.run)


#: The HTTP contenders, in the order the tables list them.
CONTENDERS: dict[str, Callable[[int], None]] = {
    "trioserve-async": trioserve_async,
    "trioserve-sync": trioserve_sync,
    "trioserve-http": trioserve_http,
    "trioserve-pool": trioserve_pool,
    "trio": raw_trio,
    "stdlib": stdlib,
    "stdlib-http": stdlib_http,
    "stdlib-http-stock": stdlib_http_stock,
    "asyncio": asyncio_server,
}

#: The floors: servers that show Trio's share of a keep-alive request (not in the tables).
FLOORS: dict[str, Callable[[int], None]] = {
    "trio-minimal": trio_minimal,
    "trio-minimal-et": trio_minimal_et,
}

#: The UDP echo contenders.
UDP_CONTENDERS: dict[str, Callable[[int], None]] = {
    "udp-trioserve": udp_trioserve,
    "udp-trio": udp_trio,
    "udp-stdlib": udp_stdlib,
}


def main(argv: list[str] | None = None) -> int:
    """Run one contender until SIGTERM or SIGINT; return the exit status."""
    names = {**CONTENDERS, **FLOORS, **UDP_CONTENDERS}
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("name", choices=sorted(names))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", metavar="FILE", help="run under cProfile, dump to FILE")
    parser.add_argument("--cpu", type=int, help="run on this CPU only (sched_setaffinity)")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    raise_open_file_limit(20_000)
    # SIGTERM stops a server as Ctrl-C does, so a pool's parent can stop its workers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run = names[args.name]
    profiler = cProfile.Profile() if args.profile else None
    try:
        if profiler is not None:
            profiler.runcall(run, args.port)
        else:
            run(args.port)
    except Skip as exc:
        print(f"SKIP {exc}", flush=True)
        return SKIP_STATUS
    except KeyboardInterrupt:
        pass
    finally:
        if profiler is not None:
            profiler.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
