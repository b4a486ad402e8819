"""Live statistics: what a server counts while it serves, and the snapshot it gives out.

What is counted, and what it costs
----------------------------------
The request path (`trioserve._request.RequestPath.dispatch`) keeps one `Counters` per
server (on its `~trioserve._serving.ServerState`): per request, two increments when it
starts (``active``, ``total``), one decrement when it ends, one increment for a handler
that raised. Those are plain ``int`` attributes of a ``__slots__`` object (`Tally`),
changed only in the server's Trio thread, so they need no lock; a reader in another
thread sees each figure whole (CPython reads and writes an attribute atomically), though
two figures of one snapshot may be a request apart. A connection a worker thread serves
to its end is ended there: those threads count in a `Tally` of their own, under a lock.

Bytes are not counted on the read and write paths at all. For a TCP connection the kernel
has counted them already: one ``getsockopt(TCP_INFO)`` as the connection ends gives the
bytes received and the bytes the handler handed to the kernel (`tcp_bytes`). A Unix stream
socket has no such counter, and counting in ``rfile``/``wfile`` would tax every read and
write of every connection, so its bytes are not counted (the access log says ``-``). A
datagram counts its packet's length in; its reply is not seen by the request path.

Durations (for the access log and the Prometheus histogram) cost a clock read and a float
per request, so they are measured only when something asks for them: the server's
``access_log`` or ``duration_histogram`` option.

A process pool
--------------
Each worker counts its own requests as above and pushes its `Counters` to the parent in a
``stats`` frame (`trioserve._frames`) at most every `PUSH_INTERVAL` seconds, and only when
a figure changed, plus once more as it stops. The parent keeps the last figures of each
worker (`Counters.workers`) and adds those of workers that have exited to ``retired``, so
totals never go backwards when a worker is replaced. A snapshot of a pool is the parent's
own figures (it handles no request itself) plus the sum over workers, with the figures of
each live worker in `Statistics.workers`. So a pool's figures are up to `PUSH_INTERVAL`
seconds old.
"""

from __future__ import annotations

import bisect
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, final

import trio

__all__ = [
    "DURATION_BUCKETS",
    "PUSH_INTERVAL",
    "Counters",
    "Statistics",
    "Tally",
    "WorkerStatistics",
    "push_statistics",
    "tcp_bytes",
]

#: How often, at most, a pool worker sends its figures to the parent (seconds).
PUSH_INTERVAL: Final = 0.5

#: The upper bounds (seconds) of the handler-duration histogram's buckets; the last
#: bucket, +Inf, is implied. Prometheus's default buckets.
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)

# struct tcp_info (linux/tcp.h): the fields read here, at their offsets since Linux 4.19.
# tcpi_state (u8) at 0, tcpi_bytes_received (u64) at 128, tcpi_notsent_bytes (u32) at 144,
# tcpi_bytes_sent and tcpi_bytes_retrans (u64) at 200 and 208. tests/test_stats.py checks
# them on the running kernel with known sizes. tcpi_bytes_received counts the peer's FIN
# as one byte (it follows rcv_nxt): it is taken off in the states that show it was received.
# The request path reads before its own end-of-file (ESTABLISHED, CLOSE_WAIT, or CLOSE after
# a reset, which counts nothing); only a socket closed both ways (CLOSE) would be one over.
_TCP_INFO: Final = getattr(socket, "TCP_INFO", 11)
_TCP_INFO_SIZE: Final = 216
#: TCP states (include/net/tcp_states.h) in which the peer's FIN has been received:
#: TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING.
_FIN_RECEIVED: Final = frozenset({6, 8, 9, 11})
_RECEIVED: Final = struct.Struct("=Q")
_NOTSENT: Final = struct.Struct("=I")
_SENT: Final = struct.Struct("=QQ")


def tcp_bytes(sock: Any) -> tuple[int, int] | None:
    """``(received, sent)`` for the TCP connection *sock*, from the kernel; None if unknown.

    *received* is what the peer sent that reached this socket (read by the handler or
    not); *sent* is what the handler handed to the kernel (sent once, or still queued),
    retransmissions not counted twice. None for a closed socket, a kernel older than 4.19,
    or anything that is not TCP.
    """
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    (received,) = _RECEIVED.unpack_from(info, 128)
    if received and info[0] in _FIN_RECEIVED:
        received -= 1  # the peer's FIN, counted by the kernel as a byte
    (notsent,) = _NOTSENT.unpack_from(info, 144)
    sent, retransmitted = _SENT.unpack_from(info, 200)
    return received, sent - retransmitted + notsent


@final
class Tally:
    """Running figures with a single writer (see `Counters`)."""

    __slots__ = ("active", "bytes_in", "bytes_out", "duration_sum", "durations", "errors", "total")

    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: Requests per duration bucket (`DURATION_BUCKETS`, then +Inf), when measured.
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one request's handler duration in the histogram."""
        self.durations[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds


@final
class Counters:
    """One server's running figures; read from anywhere.

    Two `Tally` objects, each with one writer, so the request path takes no lock:
    `own`, changed in the server's Trio thread only, and `threads`, what the worker
    threads that end the connections they were handed (`trioserve._sync`) add, under
    `lock`. A connection counted as active in `own` and ended in a thread counts -1 in
    ``threads.active``. `figures` adds the two.
    """

    __slots__ = ("lock", "own", "retired", "threads", "workers")

    def __init__(self) -> None:
        self.own = Tally()
        self.threads = Tally()
        self.lock = threading.Lock()
        #: A pool's parent: the last figures of each live worker, by pid.
        self.workers: dict[int, WorkerStatistics] = {}
        #: A pool's parent: the totals of workers that have exited.
        self.retired = WorkerStatistics(pid=0)

    def figures(self, pid: int, busy_threads: int) -> WorkerStatistics:
        """This process's own figures, as one worker's."""
        # The threads' first: a connection a thread ends was counted in `own` before, so
        # the active figure read this way is never negative.
        with self.lock:
            ended = self.threads.active
            errors = self.threads.errors
            bytes_in = self.threads.bytes_in
            bytes_out = self.threads.bytes_out
            durations = list(self.threads.durations)
            duration_sum = self.threads.duration_sum
        own = self.own
        return WorkerStatistics(
            pid=pid,
            active_connections=own.active + ended,
            total_connections=own.total,
            busy_threads=busy_threads,
            bytes_received=own.bytes_in + bytes_in,
            bytes_sent=own.bytes_out + bytes_out,
            handler_errors=own.errors + errors,
            duration_buckets=tuple(a + b for a, b in zip(own.durations, durations, strict=True)),
            duration_sum=own.duration_sum + duration_sum,
        )

    def worker_update(self, figures: WorkerStatistics) -> None:
        """A pool's parent: a worker's latest figures (its ``stats`` frame)."""
        self.workers[figures.pid] = figures

    def worker_gone(self, pid: int) -> None:
        """A pool's parent: the worker *pid* has exited; keep its totals."""
        last = self.workers.pop(pid, None)
        if last is not None:
            self.retired = _add(self.retired, last, active=False)

    def snapshot(self, pid: int, busy_threads: int) -> Statistics:
        """The figures now: this process's own, plus a pool's workers (live and retired)."""
        own = self.figures(pid, busy_threads)
        # sorted() copies the values first, in one step with no Python code run meanwhile,
        # so no other thread changes the dict under it: safe from any thread.
        workers = tuple(sorted(self.workers.values(), key=lambda each: each.pid))
        total = _add(own, self.retired, active=False)
        for each in workers:
            total = _add(total, each, active=True)
        return Statistics(
            active_connections=total.active_connections,
            total_connections=total.total_connections,
            busy_threads=total.busy_threads,
            bytes_received=total.bytes_received,
            bytes_sent=total.bytes_sent,
            handler_errors=total.handler_errors,
            duration_buckets=total.duration_buckets,
            duration_sum=total.duration_sum,
            workers=workers,
        )


def _add(a: WorkerStatistics, b: WorkerStatistics, *, active: bool) -> WorkerStatistics:
    """*a* plus *b*; *b*'s gauges (active, busy) only if *active*."""
    buckets = (
        tuple(x + y for x, y in zip(a.duration_buckets, b.duration_buckets, strict=True))
        if a.duration_buckets and b.duration_buckets
        else a.duration_buckets or b.duration_buckets
    )
    return WorkerStatistics(
        pid=a.pid,
        active_connections=a.active_connections + (b.active_connections if active else 0),
        total_connections=a.total_connections + b.total_connections,
        busy_threads=a.busy_threads + (b.busy_threads if active else 0),
        bytes_received=a.bytes_received + b.bytes_received,
        bytes_sent=a.bytes_sent + b.bytes_sent,
        handler_errors=a.handler_errors + b.handler_errors,
        duration_buckets=buckets,
        duration_sum=a.duration_sum + b.duration_sum,
    )


@dataclass(frozen=True)
class WorkerStatistics:
    """One process's figures: a pool worker's (as it last reported them), or the server's.

    Attributes:
      pid: the process.
      active_connections: requests being handled now (connections, or datagrams).
      total_connections: requests taken since the server was made.
      busy_threads: worker threads running a sync handler now.
      bytes_received: bytes received on TCP connections (and in datagrams) that ended.
      bytes_sent: bytes sent on TCP connections that ended.
      handler_errors: requests whose handler raised (``handle_error`` was called).
      duration_buckets: requests per handler-duration bucket (`DURATION_BUCKETS`, then
        +Inf; not cumulative); all zero unless durations are measured.
      duration_sum: the sum of those durations, in seconds.
    """

    pid: int
    active_connections: int = 0
    total_connections: int = 0
    busy_threads: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    handler_errors: int = 0
    duration_buckets: tuple[int, ...] = ()
    duration_sum: float = 0.0


@dataclass(frozen=True)
class Statistics:
    """A snapshot of a server's figures (`~trioserve.BaseServer.statistics`).

    For a process pool, each figure is the sum over its workers (those that have exited
    included, for the totals), as they last reported them (at most `PUSH_INTERVAL`
    seconds ago), and ``workers`` holds each live worker's figures.

    Attributes:
      active_connections: requests being handled now (connections, or datagrams).
      total_connections: requests taken since the server was made.
      busy_threads: worker threads running a sync handler now.
      bytes_received: bytes received on TCP connections that ended, and in datagrams.
      bytes_sent: bytes sent on TCP connections that ended.
      handler_errors: requests whose handler raised.
      duration_buckets: requests per handler-duration bucket (`DURATION_BUCKETS`, then
        +Inf; not cumulative); measured only with ``access_log`` or ``duration_histogram``.
      duration_sum: the sum of those durations, in seconds.
      workers: a process pool's live workers, each one's figures; empty otherwise.
    """

    active_connections: int
    total_connections: int
    busy_threads: int
    bytes_received: int
    bytes_sent: int
    handler_errors: int
    duration_buckets: tuple[int, ...]
    duration_sum: float
    workers: tuple[WorkerStatistics, ...] = ()


async def push_statistics(
    figures: Callable[[], WorkerStatistics], send: Callable[[WorkerStatistics], object]
) -> None:
    """A pool worker's side: *send* its *figures* when they change, every `PUSH_INTERVAL`.

    Runs until cancelled; the caller sends the last figures once more as it stops. Ends
    quietly when *send* raises `OSError` (the parent is gone).
    """
    last: WorkerStatistics | None = None
    while True:
        now = figures()
        if now != last:
            try:
                send(now)
            except OSError:
                return
            last = now
        await trio.sleep(PUSH_INTERVAL)
