"""CPU-heavy work on a pool of worker processes: counting primes.

A Trio server runs on one core. Work that computes rather than waits would hold that core
(and, in threads, the GIL) while every other client waits. `trioserve.ForkingTCPServer`
serves from a pool of worker processes instead, each with its own interpreter and its
own Trio loop, all accepting on the one listening socket: N workers use N cores.

The handler is an ordinary sync handler (``def handle``): in each worker it runs in a
thread, so that worker's loop keeps accepting while it computes. It must be importable
by the workers, as it is here (defined at the top level of the script being run, which
starts the server under ``if __name__ == "__main__":``).

Run it (TCP on 127.0.0.1:9002, or any free port with 0; ``--workers`` defaults to one
per core)::

    python examples/cpu_pool.py
    python examples/cpu_pool.py 0 --workers 4

Send it numbers, one per line; for each N it answers how many primes are below N, and
which worker process counted them::

    $ nc 127.0.0.1 9002
    1000000
    78498 primes below 1000000 (worker 12345)

Ctrl-C or SIGTERM stops the workers gracefully: a count in progress is allowed to finish.
"""

from __future__ import annotations

import argparse
import math
import os
import signal

import trio

import trioserve

LIMIT = 50_000_000


def count_primes(n: int) -> int:
    """How many primes are below *n* (a sieve of Eratosthenes: pure CPU)."""
    if n < 3:
        return 0
    sieve = bytearray([1]) * n
    sieve[0] = sieve[1] = 0
    for i in range(2, math.isqrt(n - 1) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n, i)))
    return sum(sieve)


class PrimeHandler(trioserve.SyncStreamRequestHandler):
    """Read numbers, one per line; answer each with a count of the primes below it."""

    def handle(self) -> None:
        for line in self.rfile:
            try:
                n = int(line)
            except ValueError:
                self.wfile.write(b"send a whole number, one per line\n")
                continue
            if not 0 <= n <= LIMIT:
                self.wfile.write(b"send a number from 0 to %d\n" % LIMIT)
                continue
            count = count_primes(n)
            self.wfile.write(b"%d primes below %d (worker %d)\n" % (count, n, os.getpid()))


async def serve(server: trioserve.ForkingTCPServer) -> None:
    """Serve until Ctrl-C or SIGTERM, then shut down gracefully."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)  # returns once every worker is ready
            host, port = server.server_address
            print(
                f"primes: listening on tcp {host}:{port} with workers "
                f"{', '.join(map(str, server.worker_pids))} (Ctrl-C to stop)",
                flush=True,
            )
            async for _ in signals:
                server.shutdown(grace=30)
                return


def main() -> None:
    parser = argparse.ArgumentParser(description="Count primes on a process pool.")
    parser.add_argument("port", type=int, nargs="?", default=9002, help="TCP port (0: any)")
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    args = parser.parse_args()
    address = ("127.0.0.1", args.port)
    with trioserve.ForkingTCPServer(address, PrimeHandler, max_children=args.workers) as server:
        trio.run(serve, server)


if __name__ == "__main__":
    main()
