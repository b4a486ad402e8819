"""Concurrency policies, and the mix-ins that select them.

A server handles requests in one of three ways:

* `Concurrency.SEQUENTIAL`: one request at a time, in the serving task (socketserver's
  plain servers);
* `Concurrency.NURSERY`: each request in its own task of a nursery that `serve_forever`
  owns, bounded by ``max_connections`` (what ``ThreadingMixIn`` did with threads);
* `Concurrency.PROCESS_POOL`: a pool of worker processes, each serving concurrently (what
  ``ForkingMixIn`` did with a fork per request).

The mix-ins only *select* a policy (and declare its options): they carry no methods, so
the order of the bases does not matter (``class S(TCPServer, ThreadingMixIn)`` works,
unlike with socketserver), and the server asks `concurrency_of` which one applies.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar

from . import _options

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

    ``serve_forever`` starts ``max_children`` worker processes, hands each the listening
    socket, and supervises them: a worker that dies is replaced. Each worker is a fresh
    interpreter running its own Trio loop, serving many requests concurrently (async and
    sync handlers alike, up to ``max_connections`` at once in each worker). ``shutdown``,
    cancellation, SIGINT and SIGTERM stop the workers, with the grace period; when
    ``serve_forever`` returns, no worker is left. See :doc:`process-pool`.

    The handler class and the server class must be importable (defined at the top level
    of a module or of the script being run), and the server's public attributes picklable:
    each worker rebuilds the server with ``from_socket`` and gets a copy of them.
    Otherwise ``serve_forever`` raises `TypeError` naming what cannot be sent, before any
    worker starts.

    Options and class attributes:
      max_children: the number of worker processes; None (the default) means
        ``os.cpu_count()``.

    Attributes:
      worker_pids: the pids of the workers serving now, sorted (read only; empty when the
        server is not serving).
    """

    max_children: int | None = None
    worker_pids: tuple[int, ...] = ()

    _options: ClassVar[Mapping[str, _options.Check]] = {
        "max_children": _options.positive_int_or_none,
    }


#: socketserver's name for `ProcessPoolMixIn`.
ForkingMixIn = ProcessPoolMixIn


def concurrency_of(server_class: type) -> Concurrency:
    """The policy selected by *server_class*'s mix-ins, whatever their order."""
    if issubclass(server_class, ProcessPoolMixIn):
        return Concurrency.PROCESS_POOL
    if issubclass(server_class, NurseryMixIn):
        return Concurrency.NURSERY
    return Concurrency.SEQUENTIAL
