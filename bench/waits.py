"""What one trip through the event loop costs in Trio and in asyncio, without a server.

``python -m bench.waits`` times, in one process pinned to one CPU, N rounds of: the other
end of a socket pair sends 40 bytes, then the measured side goes through the event loop
in one of the ways below and reads them. Subtracting the first line (no event loop)
leaves what the loop adds, whatever a server does around it:

* one yield: ``trio.lowlevel.checkpoint()`` against ``asyncio.sleep(0)``;
* one wait for the socket: `trio.lowlevel.wait_readable` (Trio's epoll: an ``epoll_ctl``
  to re-arm a one-shot registration, a trip through the scheduler, ``epoll_wait``),
  what a trioserve handler's read after an answer does, against asyncio's ``add_reader``
  and a future (which asyncio's streams do once per connection, not once per wait);
* a raw Trio server's read when the bytes are there (`trio.SocketStream.receive_some`:
  the read, then a yield), against ``loop.sock_recv`` (the read, no yield).

The best of ``--repeat`` runs, in microseconds per round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable

import trio

__all__ = ["main"]

PAYLOAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"[:40]


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


def _baseline(rounds: int) -> float:
    ours, theirs = _pair()
    with ours, theirs:
        fd = ours.fileno()
        started = time.perf_counter()
        for _ in range(rounds):
            theirs.send(PAYLOAD)
            os.read(fd, 65536)
        return time.perf_counter() - started


async def _trio_checkpoint(rounds: int) -> float:
    ours, theirs = _pair()
    with ours, theirs:
        fd = ours.fileno()
        started = time.perf_counter()
        for _ in range(rounds):
            theirs.send(PAYLOAD)
            await trio.lowlevel.checkpoint()
            os.read(fd, 65536)
        return time.perf_counter() - started


async def _trio_wait_readable(rounds: int) -> float:
    ours, theirs = _pair()
    with ours, theirs:
        fd = ours.fileno()
        started = time.perf_counter()
        for _ in range(rounds):
            theirs.send(PAYLOAD)
            await trio.lowlevel.wait_readable(fd)
            os.read(fd, 65536)
        return time.perf_counter() - started


async def _trio_receive_some(rounds: int) -> float:
    ours, theirs = socket.socketpair()
    with theirs:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        async with stream:
            started = time.perf_counter()
            for _ in range(rounds):
                theirs.send(PAYLOAD)
                await stream.receive_some(65536)
            return time.perf_counter() - started


async def _asyncio_sleep0(rounds: int) -> float:
    ours, theirs = _pair()
    with ours, theirs:
        fd = ours.fileno()
        started = time.perf_counter()
        for _ in range(rounds):
            theirs.send(PAYLOAD)
            await asyncio.sleep(0)
            os.read(fd, 65536)
        return time.perf_counter() - started


async def _asyncio_sock_recv(rounds: int) -> float:
    ours, theirs = _pair()
    loop = asyncio.get_running_loop()
    with ours, theirs:
        started = time.perf_counter()
        for _ in range(rounds):
            theirs.send(PAYLOAD)
            await loop.sock_recv(ours, 65536)  # tries at once: the bytes are there
        return time.perf_counter() - started


async def _asyncio_wait_readable(rounds: int) -> float:
    ours, theirs = _pair()
    loop = asyncio.get_running_loop()
    with ours, theirs:
        fd = ours.fileno()
        started = time.perf_counter()
        for _ in range(rounds):
            theirs.send(PAYLOAD)
            ready = loop.create_future()
            loop.add_reader(fd, ready.set_result, None)
            await ready
            loop.remove_reader(fd)
            os.read(fd, 65536)
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Time each wait; print microseconds per round."""
    parser = argparse.ArgumentParser(prog="python -m bench.waits")
    parser.add_argument("--rounds", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=1)
    args = parser.parse_args(argv)
    if args.cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {args.cpu})
    rounds = args.rounds
    cases: dict[str, Callable[[], float]] = {
        "no event loop: send, os.read": lambda: _baseline(rounds),
        "trio: send, checkpoint (one yield), os.read": lambda: trio.run(_trio_checkpoint, rounds),
        "trio: send, wait_readable, os.read": lambda: trio.run(_trio_wait_readable, rounds),
        "trio: send, SocketStream.receive_some": lambda: trio.run(_trio_receive_some, rounds),
        "asyncio: send, sleep(0) (one yield), os.read": lambda: asyncio.run(
            _asyncio_sleep0(rounds)
        ),
        "asyncio: send, add_reader + future (one wait), os.read": lambda: asyncio.run(
            _asyncio_wait_readable(rounds)
        ),
        "asyncio: send, loop.sock_recv": lambda: asyncio.run(_asyncio_sock_recv(rounds)),
    }
    for name, run in cases.items():
        best = min(run() for _ in range(args.repeat))
        print(f"{name}: {best / rounds * 1e6:.2f} us per round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
