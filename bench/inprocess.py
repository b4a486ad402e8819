"""The server's cost per request, measured in one process, for comparing two versions.

``python -m bench.inprocess NAME [--mode keep-alive|close] [--connections 10]`` serves
contender NAME (``trioserve-async``, ``trio``, ``udp-trioserve`` or ``udp-trio``) and a
client in the same Trio run, on one CPU, over loopback, and prints the CPU time per
request of the whole process (server and client) for ``--requests`` requests, the best of
``--repeat`` runs. The client is the same for every contender and every version, so the
difference between two figures is the difference between the servers, without wrk, a
second process, or the other work on the machine between them (the best of several runs
leaves most of that out). Run it from a ``git archive`` of another commit (with this
``bench/`` copied in) to compare versions of the library::

    .venv/bin/python -m bench.inprocess trioserve-async
    (cd /tmp/before && /work/project/.venv/bin/python -m bench.inprocess trioserve-async)

With ``--profile`` it runs once under cProfile and prints the Python calls per request.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

import trioserve
from bench._common import HOST, RESPONSE, RESPONSE_CLOSE
from bench.servers import AsyncEcho, AsyncHello, _trio_hello

__all__ = ["main"]

KEEP_ALIVE_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
DATAGRAM = b"%032d" % 0


async def _receive_exactly(sock: trio.socket.SocketType, size: int) -> None:
    got = 0
    while got < size:
        data = await sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        got += len(data)


async def _keep_alive_client(port: int, count: int) -> None:
    sock = trio.socket.socket()
    with sock:
        await sock.connect((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            await sock.send(KEEP_ALIVE_REQUEST)
            await _receive_exactly(sock, len(RESPONSE))


async def _close_client(port: int, count: int) -> None:
    for _ in range(count):
        sock = trio.socket.socket()
        with sock:
            await sock.connect((HOST, port))
            await sock.send(CLOSE_REQUEST)
            await _receive_exactly(sock, len(RESPONSE_CLOSE))
            while await sock.recv(65536):  # until the server closes
                pass


async def _udp_client(port: int, count: int) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.connect((HOST, port))
        in_flight = answered = 0
        while answered < count:
            while in_flight < 32 and answered + in_flight < count:  # as bench.udp_client
                await sock.send(DATAGRAM)
                in_flight += 1
            with trio.move_on_after(0.05) as lost:
                await sock.recv(2048)
            if lost.cancelled_caught:
                in_flight = 0  # the kernel dropped some: refill the window
            else:
                answered += 1
                in_flight -= 1


async def _serve_trioserve_async(nursery: trio.Nursery) -> int:
    server = trioserve.ThreadingTCPServer((HOST, 0), AsyncHello)
    await nursery.start(server.serve_forever)
    return int(server.server_address[1])


async def _serve_trio(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, _trio_hello, 0, host=HOST))
    return int(listeners[0].socket.getsockname()[1])


async def _serve_udp_trioserve(nursery: trio.Nursery) -> int:
    server = trioserve.ThreadingUDPServer((HOST, 0), AsyncEcho)
    await nursery.start(server.serve_forever)
    return int(server.server_address[1])


async def _serve_udp_trio(nursery: trio.Nursery) -> int:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((HOST, 0))

    async def echo() -> None:
        with sock:
            while True:
                data, address = await sock.recvfrom(65536)
                await sock.sendto(data, address)

    nursery.start_soon(echo)
    return int(sock.getsockname()[1])


SERVERS: dict[str, Callable[[trio.Nursery], Awaitable[int]]] = {
    "trioserve-async": _serve_trioserve_async,
    "trio": _serve_trio,
    "udp-trioserve": _serve_udp_trioserve,
    "udp-trio": _serve_udp_trio,
}


def _client_for(name: str, mode: str) -> Callable[[int, int], Awaitable[None]]:
    if name.startswith("udp-"):
        return _udp_client
    return _close_client if mode == "close" else _keep_alive_client


def run_once(name: str, mode: str, requests: int, connections: int) -> float:
    """Serve *requests* requests; return the process's CPU seconds they took."""
    client = _client_for(name, mode)
    if name.startswith("udp-"):
        connections = 1  # one client keeps 32 datagrams in flight, as the suite's does
    per_client = requests // connections
    spent = 0.0

    async def main() -> None:
        nonlocal spent
        async with trio.open_nursery() as nursery:
            port = await SERVERS[name](nursery)
            await client(port, 10)  # warm up
            started = time.process_time()
            async with trio.open_nursery() as clients:
                for _ in range(connections):
                    clients.start_soon(client, port, per_client)
            spent = time.process_time() - started
            nursery.cancel_scope.cancel()

    trio.run(main)
    return spent


def main(argv: list[str] | None = None) -> int:
    """Measure; print the best CPU time per request."""
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess")
    parser.add_argument("name", choices=list(SERVERS))
    parser.add_argument("--mode", choices=("keep-alive", "close"), default="keep-alive")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=1, help="run on this CPU (-1: anywhere)")
    parser.add_argument("--profile", action="store_true", help="count Python calls per request")
    args = parser.parse_args(argv)
    if args.cpu >= 0 and args.cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {args.cpu})
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run_once, args.name, args.mode, args.requests, args.connections)
        stats: Any = pstats.Stats(profiler)
        calls = stats.total_calls / args.requests
        print(f"{args.name} {args.mode}: {calls:.1f} calls per request")
        stats.sort_stats("ncalls").print_stats(25)
        return 0
    best = min(
        run_once(args.name, args.mode, args.requests, args.connections) for _ in range(args.repeat)
    )
    print(
        f"{args.name} {args.mode} c{args.connections}: "
        f"{best / args.requests * 1e6:.2f} us of CPU per request (server and client), "
        f"best of {args.repeat}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
