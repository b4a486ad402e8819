"""CPU-heavy requests: the single-process nursery server against the process pool.

Each request costs about 2 ms of pure-Python work in the handler, so a single process is
bound by one core, and a pool of N workers should get close to N times its requests/s on
an N-core machine. Three servers are measured side by side, in one run, with ``wrk``:

* ``nursery``: `ThreadingTCPServer` (one process, one task per connection);
* ``pool``: `ForkingTCPServer` with ``max_children`` workers accepting on the one
  listening socket they share (what trioserve does);
* ``pool-reuseport``: the same pool, but each worker listens on a socket of its own bound
  with ``SO_REUSEPORT``, so the kernel spreads connections by a hash of the client's
  address (the alternative trioserve does not use; built here with ``from_socket``).

Each row is measured twice: a new connection per request (``Connection: close``, the
socketserver way), and keep-alive connections.

Run (``wrk`` must be installed)::

    .venv/bin/python bench/pool_cpu.py                # 2 workers, 5 s per row
    .venv/bin/python bench/pool_cpu.py --workers 4 --seconds 10
    .venv/bin/python bench/pool_cpu.py --repeat 3      # the median of 3 interleaved runs

The servers run in processes of their own; this script only starts them and ``wrk``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import trio

import trioserve

TARGET_SECONDS = 0.002


def burn(rounds: int) -> int:
    """Pure-Python work: about `TARGET_SECONDS` for the calibrated number of rounds."""
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return total


def calibrate() -> int:
    """The number of `burn` rounds that takes about 2 ms here (the best of several tries)."""
    rounds = 10_000
    best = min(_time_burn(rounds) for _ in range(20))
    return max(1, round(rounds * TARGET_SECONDS / best))


def _time_burn(rounds: int) -> float:
    started = time.perf_counter()
    burn(rounds)
    return time.perf_counter() - started


class CPUHandler(trioserve.StreamRequestHandler):
    """A minimal HTTP/1.1 responder that burns ``server.work`` rounds per request."""

    async def handle(self) -> None:
        rounds: int = self.server.work  # type: ignore[attr-defined]
        while await self.rfile.readline():
            keep_alive = True
            while (line := await self.rfile.readline()).strip():
                if line.lower().startswith(b"connection:") and b"close" in line.lower():
                    keep_alive = False
            burn(rounds)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
            if not keep_alive:
                head += b"Connection: close\r\n"
            await self.wfile.write(head + b"\r\nok\n")
            if not keep_alive:
                return


class ReusePortForkingTCPServer(trioserve.ForkingTCPServer):
    """A pool whose workers each listen on an ``SO_REUSEPORT`` socket of their own.

    The parent only binds (to hold the port, in the same reuse-port group); it does not
    listen, so the kernel never queues a connection for it.
    """

    allow_reuse_port = True
    _in_worker = False

    def server_activate(self) -> None:
        if type(self)._in_worker:
            super().server_activate()

    @classmethod
    def from_socket(cls, sock: socket.socket, *args: Any, **options: Any) -> Any:
        cls._in_worker = True
        own = socket.socket(sock.family, sock.type)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own.bind(sock.getsockname())
        sock.close()
        return super().from_socket(own, *args, **options)


SERVERS: dict[str, tuple[type[trioserve.TCPServer], dict[str, Any]]] = {
    "nursery": (trioserve.ThreadingTCPServer, {}),
    "pool": (trioserve.ForkingTCPServer, {}),
    "pool-reuseport": (ReusePortForkingTCPServer, {}),
}


def serve(kind: str, rounds: int, workers: int) -> None:
    """Serve one kind of server on a free port; print the port; stop on SIGTERM."""
    server_class, options = SERVERS[kind]
    if issubclass(server_class, trioserve.ProcessPoolMixIn):
        options = {**options, "max_children": workers}
    with server_class(("127.0.0.1", 0), CPUHandler, **options) as server:
        server.work = rounds  # type: ignore[attr-defined]

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_forever)
                print(server.server_address[1], flush=True)
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        server.shutdown()
                        return

        trio.run(main)


def wrk(port: int, seconds: float, connections: int, close: bool) -> float:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s"]
    if close:
        command += ["-H", "Connection: close"]
    command.append(f"http://127.0.0.1:{port}/")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{output}")
    errors = re.search(r"Socket errors: .*|Non-2xx.*", output)
    if errors:
        print(f"    wrk reported: {errors.group(0)}", file=sys.stderr)
    return float(match.group(1))


def measure(kind: str, rounds: int, args: argparse.Namespace) -> dict[bool, float]:
    command = [sys.executable, __file__, "--serve", kind, "--work", str(rounds)]
    server = subprocess.Popen(
        [*command, "--workers", str(args.workers)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        results = {}
        for close in (True, False):
            wrk(port, 1, args.connections, close)  # warm up
            results[close] = wrk(port, args.seconds, args.connections, close)
        return results
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each cell; the median")
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.work, args.workers)
        return
    rounds = calibrate()
    started = time.perf_counter()
    burn(rounds)
    print(
        f"work per request: {rounds} rounds (~{(time.perf_counter() - started) * 1e3:.1f} ms); "
        f"cores: {os.cpu_count()}; pool workers: {args.workers}; "
        f"wrk: {args.connections} connections, {args.seconds:g} s per cell, "
        f"median of {args.repeat}"
    )
    runs: dict[str, list[dict[bool, float]]] = {kind: [] for kind in SERVERS}
    for _ in range(args.repeat):  # interleaved, so that a busy moment hits every server
        for kind in SERVERS:
            runs[kind].append(measure(kind, rounds, args))
    table = {
        kind: {close: statistics.median(run[close] for run in results) for close in (True, False)}
        for kind, results in runs.items()
    }
    base = table["nursery"]
    print()
    print(f"| {'server':<16} | {'new conn/request':>20} | {'keep-alive':>20} |")
    print(f"|{'-' * 18}|{'-' * 22}|{'-' * 22}|")
    for kind, results in table.items():
        cells = [
            f"{results[close]:8.0f} req/s {results[close] / base[close]:4.2f}x"
            for close in (True, False)
        ]
        print(f"| {kind:<16} | {cells[0]:>20} | {cells[1]:>20} |")


if __name__ == "__main__":
    main()
