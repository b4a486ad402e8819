"""Hostile clients at full size: the figures of docs/security.md, run by hand.

``python -m bench.hostile [--connections N] [--only a,b]`` starts each scenario's server in
a process of its own (``python -m bench.hostile --serve NAME``), attacks it from this
process over loopback, and prints one Markdown table row per scenario: what the server
held, read from ``/proc`` (RSS, threads), and what a fresh client saw meanwhile. Both
processes raise their soft ``RLIMIT_NOFILE`` within the hard limit; N is lowered to what
the limit allows.

Scenarios:

* ``idle-http``: N keep-alive connections to a `trioserve.ThreadingHTTPServer` with an
  ``http.server`` handler (`bench.servers.HTTPHello`), each served once and then idle;
  the server's RSS per connection, its thread count, and a fresh client's round trip.
* ``idle-sync``: the same with a plain sync trioserve handler (a thread per connection),
  for comparison: the cost of a thread held by an idle connection.
* ``partial-lines``: N connections to an async line server, each sending an unfinished
  64 KiB line; the RSS they pin, with the default input budget.
* ``partial-lines-unbudgeted``: the same with the budget lifted, as before it existed.
* ``partial-http``: the same unfinished line as the request line of an ``http.server``
  handler on `trioserve.ThreadingHTTPServer` (``http.server`` reads it itself, in a thread).
* ``resets``: 200 clients that reset a `SimpleHTTPRequestHandler` connection mid-request or
  mid-response; the lines the server logged at WARNING or above.
* ``emfile``: a sync stream handler and a sync UDP handler in a process left with ten
  spare descriptors; 100 concurrent clients (one line each), then a burst of 300
  datagrams; what was answered and how many ERROR lines were logged.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.server
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

import trioserve
from bench._common import HOST, REQUEST, raise_open_file_limit, rss_kib, thread_count
from bench.idle_client import read_response
from bench.servers import HTTPHello, SyncHello

__all__ = ["main"]

LINE = 64 * 1024 - 1  # an unfinished line just under max_line_length


class _LineHandler(trioserve.StreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            await self.wfile.write(line)


class _SyncEcho(trioserve.SyncStreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class _SyncUDPEcho(trioserve.DatagramRequestHandler):
    def handle(self) -> None:  # a sync datagram handler
        self.wfile.write(self.rfile.read())  # type: ignore[arg-type, unused-coroutine]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(name: str) -> None:
    raise_open_file_limit(1 << 20)
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(message)s"
    )
    address = (HOST, 0)
    if name in ("idle-http", "partial-http"):
        server: Any = trioserve.ThreadingHTTPServer(address, HTTPHello)
    elif name == "idle-sync":
        server = trioserve.ThreadingTCPServer(address, SyncHello)
    elif name == "partial-lines":
        server = trioserve.ThreadingTCPServer(address, _LineHandler)
    elif name == "partial-lines-unbudgeted":
        server = trioserve.ThreadingTCPServer(address, _LineHandler)
        server.max_buffered_input = None
    elif name == "resets":
        os.chdir(Path(__file__).parent)
        server = trioserve.ThreadingHTTPServer(address, _Quiet)
    elif name == "emfile":
        _serve_emfile()
        return
    else:
        raise SystemExit(f"unknown scenario {name}")
    with server:
        print(server.server_address[1], flush=True)
        trio.run(server.serve_forever)


def _serve_emfile() -> None:
    tcp = trioserve.ThreadingTCPServer((HOST, 0), _SyncEcho)
    udp = trioserve.ThreadingUDPServer((HOST, 0), _SyncUDPEcho)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 11, hard))
    print(tcp.server_address[1], udp.server_address[1], flush=True)

    async def both() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tcp.serve_forever)
            nursery.start_soon(udp.serve_forever)

    trio.run(both)


@contextlib.contextmanager
def _server(name: str) -> Iterator[tuple[subprocess.Popen[str], list[int], Path]]:
    """The scenario's server process, its ports, and the file its stderr goes to."""
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "stderr"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.hostile", "--serve", name],
                stdout=subprocess.PIPE,
                stderr=stderr,  # a file, not a pipe: a full pipe would stop the server
                text=True,
            )
        try:
            assert process.stdout is not None
            ports = [int(port) for port in process.stdout.readline().split()]
            yield process, ports, log
        finally:
            process.kill()  # by PID: the process started above
            process.wait(timeout=30)
            process.stdout.close()  # type: ignore[union-attr]


def _round_trip_ms(port: int) -> float:
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(REQUEST)
        read_response(sock, bytearray())
    return (time.perf_counter() - start) * 1000


def _settle(pid: int) -> int:
    time.sleep(1.0)
    return rss_kib(pid)


def _idle(name: str, connections: int) -> str:
    with _server(name) as (process, [port], _log):
        _round_trip_ms(port)  # warm up: the first thread, the first request
        before = _settle(process.pid)
        socks = []
        for _ in range(connections):
            sock = socket.create_connection((HOST, port), timeout=10)
            sock.sendall(REQUEST)
            read_response(sock, bytearray())
            socks.append(sock)
        held = _settle(process.pid)
        threads = thread_count(process.pid)
        fresh = max(_round_trip_ms(port) for _ in range(5))
        for sock in socks:
            sock.sendall(REQUEST)
            read_response(sock, bytearray())
            sock.close()
    per = (held - before) / connections
    return (
        f"| `{name}` | {connections} idle keep-alive connections | {per:.1f} KiB each, "
        f"{threads} threads; a fresh client answered in {fresh:.1f} ms (slowest of 5) |"
    )


def _partial(name: str, connections: int) -> str:
    prefix = b"GET /" if name == "partial-http" else b""
    with _server(name) as (process, [port], _log):
        before = _settle(process.pid)
        socks: list[tuple[socket.socket, list[int]]] = []
        for _ in range(connections):
            sock = socket.create_connection((HOST, port), timeout=30)
            sock.setblocking(False)
            done = [len(prefix)]
            sock.send(prefix)
            with contextlib.suppress(BlockingIOError):
                while done[0] < LINE:  # what the kernel takes now; the rest later
                    done[0] += sock.send(b"x" * (LINE - done[0]))
            socks.append((sock, done))
        for _ in range(100):  # the rest of each line, as the server makes room
            waiting = [(sock, done) for sock, done in socks if done[0] < LINE]
            if not waiting:
                break
            for sock, done in waiting:
                with contextlib.suppress(BlockingIOError, ConnectionError):
                    done[0] += sock.send(b"x" * (LINE - done[0]))
            time.sleep(0.05)
        held = _settle(process.pid)
        threads = thread_count(process.pid)
        refused = 0
        for sock, _sent in socks:
            try:
                refused += sock.recv(1) == b""
            except BlockingIOError:
                pass  # still open: its line is held
            except ConnectionError:
                refused += 1
            sock.close()
    pinned = (held - before) / 1024
    return (
        f"| `{name}` | {connections} connections, each an unfinished {LINE + 1 >> 10} KiB line "
        f"| {pinned:.0f} MiB RSS ({(held - before) / connections:.1f} KiB a connection), "
        f"{threads} threads; {refused} connections refused |"
    )


def _resets(name: str, connections: int) -> str:
    with _server(name) as (process, [port], log):
        for i in range(connections):
            sock = socket.create_connection((HOST, port), timeout=10)
            if i % 2:
                sock.sendall(b"GET /hostile.py HTTP/1.1\r\nHost: x\r\n")  # mid-request
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /hostile.py HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
                sock.recv(100)  # mid-response
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            sock.close()
        fresh = _round_trip_ms(port)
        process.kill()
        process.wait(timeout=30)
        err = log.read_text()
    lines = [line for line in err.splitlines() if line.split(" ", 1)[0] in _LOUD]
    return (
        f"| `{name}` | {connections} clients reset mid-request or mid-response | "
        f"{len(lines)} lines at WARNING or above; a fresh client answered in {fresh:.1f} ms |"
    )


_LOUD = {"WARNING", "ERROR", "CRITICAL"}


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=90) as sock:
            sock.sendall(b"ping\n")
            return sock.recv(5) == b"ping\n"
    except OSError:
        return False


def _emfile(name: str, connections: int) -> str:
    with _server(name) as (process, [tcp_port, udp_port], log):
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            answered = sum(pool.map(_ping, [tcp_port] * 100))
        elapsed = time.perf_counter() - start
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(5)
        for i in range(300):
            udp.sendto(b"%d" % i, (HOST, udp_port))
        replies = 0
        with contextlib.suppress(TimeoutError):
            for _ in range(300):
                udp.recv(100)
                replies += 1
        udp.close()
        process.kill()
        process.wait(timeout=30)
        err = log.read_text()
    errors = [line for line in err.splitlines() if line.startswith(("ERROR", "Traceback"))]
    return (
        f"| `{name}` | 10 spare descriptors; 100 concurrent sync TCP clients, then 300 "
        f"datagrams | {answered}/100 clients answered in {elapsed:.1f} s, {replies}/300 "
        f"datagrams; {len(errors)} ERROR lines, no traceback: {'Traceback' not in err} |"
    )


SCENARIOS: dict[str, Callable[[str, int], str]] = {
    "idle-http": _idle,
    "idle-sync": _idle,
    "partial-lines": _partial,
    "partial-lines-unbudgeted": _partial,
    "partial-http": _partial,
    "resets": lambda name, n: _resets(name, 200),
    "emfile": _emfile,
}


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; print a Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m bench.hostile")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return 0
    limit = raise_open_file_limit(args.connections + 200)
    connections = min(args.connections, limit - 200)
    print("| scenario | setup | figure |")
    print("| --- | --- | --- |")
    for name in args.only.split(","):
        print(SCENARIOS[name](name, connections), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
