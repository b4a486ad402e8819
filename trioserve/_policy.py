"""Concurrency policies, and the mix-ins that select them.

A server handles requests in one of three ways:

* `Concurrency.SEQUENTIAL`: one request at a time, in the serving task (socketserver's
  plain servers);
* `Concurrency.NURSERY`: each request in its own task of a nursery that `serve_forever`
  owns, bounded by ``max_connections`` (what ``ThreadingMixIn`` did with threads);
* `Concurrency.PROCESS_POOL`: a pool of worker processes, each serving concurrently (what
  ``ForkingMixIn`` did with a fork per request).

The mix-ins only *select* a policy: they carry no methods, so the order of the bases does
not matter (``class S(TCPServer, ThreadingMixIn)`` works, unlike with socketserver), and
the server asks `concurrency_of` which one applies.
"""

from __future__ import annotations

import enum

__all__ = [
    "Concurrency",
    "ForkingMixIn",
    "NurseryMixIn",
    "ProcessPoolMixIn",
    "ThreadingMixIn",
    "concurrency_of",
]


class Concurrency(enum.Enum):
    """How a server runs its requests."""

    SEQUENTIAL = "sequential"
    NURSERY = "nursery"
    PROCESS_POOL = "process pool"


class NurseryMixIn:
    """Handle each request in its own Trio task (the replacement for ``ThreadingMixIn``).

    Concurrency is bounded by the server's ``max_connections``: at the limit the server
    stops accepting until a handler finishes. Sync handlers still run in worker threads.

    Attributes:
      daemon_threads: accepted for compatibility; it changes nothing, as no task or thread
        outlives `~trioserve.BaseServer.serve_forever`.
    """

    daemon_threads: bool = False


#: socketserver's name for `NurseryMixIn`.
ThreadingMixIn = NurseryMixIn


class ProcessPoolMixIn:
    """Serve requests in a pool of worker processes (the replacement for ``ForkingMixIn``).

    Each worker runs its own Trio loop and serves many requests concurrently.

    Attributes:
      max_children: the number of worker processes; None means ``os.cpu_count()``.
    """

    max_children: int | None = None


#: socketserver's name for `ProcessPoolMixIn`.
ForkingMixIn = ProcessPoolMixIn


def concurrency_of(server_class: type) -> Concurrency:
    """The policy selected by *server_class*'s mix-ins, whatever their order."""
    if issubclass(server_class, ProcessPoolMixIn):
        return Concurrency.PROCESS_POOL
    if issubclass(server_class, NurseryMixIn):
        return Concurrency.NURSERY
    return Concurrency.SEQUENTIAL
