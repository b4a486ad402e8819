"""Worker threads for sync handlers: the runner, the thread limit, the thread's socket.

A sync handler blocks, so it runs in a worker thread while the Trio task that owns its
request waits. This module is everything about those threads, and nothing about
handlers: `run_in_handler_thread` runs a callable in a thread under a server's
``max_handler_threads`` limit and can reach it when cancelled; `ThreadSocket` gives the
thread a blocking socket of its own on a Trio socket's descriptor; `waiting_task` says
which Trio task a thread works for, the one fact `~trioserve.BaseServer.shutdown` needs to
decide whether it may wait.

Threads, limits, cancellation
-----------------------------
Worker threads come from Trio's thread cache (`trio.lowlevel.start_thread_soon`), and how
many run handlers at once is bounded per server by ``max_handler_threads`` (a
`trio.CapacityLimiter`). A request past the limit waits, accepted and unrefused, until a
thread is free. Waiting is logged: a server whose idle connections hold every thread must
not starve its new clients silently. The first wait is a warning, the others for a minute
(`COMPLAINT_INTERVAL`) are logged at debug level only.

Cancelling the task of a sync handler cannot interrupt Python code in another thread.
What it can do is reach the place where such a thread nearly always waits, its
connection: the caller's ``on_cancel`` shuts it down, so a blocked ``recv`` returns end of
file at once and a blocked ``send`` fails; the handler then returns. The task waits for
that, so normally no handler thread outlives ``serve_forever``. A thread stuck somewhere
the server cannot reach (``time.sleep(3600)``, a lock, another socket) is waited for
`ABANDON_AFTER` seconds, then logged as an error and abandoned: the server never waits
forever for a stuck thread. Its thread slot is only given back when it really ends.

`trio.to_thread.run_sync` is not used because its cancellation is all or nothing: with
``abandon_on_cancel=False`` the task cannot react to being cancelled until the thread is
done, which is exactly when the connection needs to be shut down. Here the task waits on
an event that the thread sets when it ends; cancellation interrupts that wait, shuts the
connection down, and then waits again, shielded, for the thread.

Out of file descriptors
-----------------------
A thread's socket is a duplicate of the connection's descriptor, made in the thread once
it runs (`ThreadSocket.duplicate`), so a sync connection holds two descriptors. At the
process's descriptor limit the duplicate fails with ``EMFILE`` (or ``ENFILE``). Waiting
for one to come free, as the accept loop does, would not do: each waiting connection
holds a descriptor of its own, and the accept loop takes every one that comes free, so
the waiting connections would wait for each other (measured: 5 of 100 clients served in
90 s). Instead the thread then *borrows* the connection's own descriptor: its socket is
that descriptor, and everything the handler does with it (even ``close()``) leaves the
descriptor open, exactly as with a duplicate. The request is served at once, and the
failure is logged once a minute at error level (`COMPLAINT_INTERVAL`), at debug level
otherwise. If such a thread is ever abandoned (above), the descriptor is handed over to it
(`ThreadSocket.adopt`) rather than closed under it, so that a number reused by the next
connection can never reach a stuck handler.

Which run a thread serves
-------------------------
``shutdown()`` called from another thread waits until ``serve_forever`` has returned, as
socketserver's does. But ``serve_forever`` waits for its handlers, so a thread that a
handler is waiting for must not wait for ``serve_forever``: a sync handler's own thread,
or a thread an async handler started with `trio.to_thread.run_sync`. `waiting_task`
names the task such a thread works for (our mark for handler threads; Trio's own
thread-to-task link, asked through `trio.from_thread.run_sync`, for the others): if the
task that waits for the thread is one of the server's own (it descends from the task that
serves), ``shutdown()`` must not wait. Any other thread, including one that a task outside
the server started, waits as socketserver's callers do.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, final

import trio

from ._errors import CAPACITY_ERRNOS

if TYPE_CHECKING:
    import outcome

__all__ = [
    "ABANDON_AFTER",
    "COMPLAINT_INTERVAL",
    "THREAD_NAME",
    "ThreadSocket",
    "descends_from",
    "run_in_handler_thread",
    "running_handler_threads",
    "waiting_task",
]

logger = logging.getLogger("trioserve")

T = TypeVar("T")

#: Seconds a cancelled sync handler may take to return once its connection is shut down,
#: before its thread is abandoned (and logged).
ABANDON_AFTER = 5.0

#: The name of a worker thread while it runs a sync handler (Trio names an idle one
#: ``Trio thread N``).
THREAD_NAME = "trioserve sync handler"

#: After a complaint is logged (out of descriptors, waiting for a thread), the same one
#: is logged at debug level only for this many seconds.
COMPLAINT_INTERVAL = 60.0

#: The timeout that stands for "blocking" on a shared `ThreadSocket`.
_BLOCKING_TIMEOUT = 24 * 3600.0

_local = threading.local()


def waiting_task() -> trio.lowlevel.Task | None:
    """The Trio task waiting for the calling thread; None for a thread no task waits for.

    A task waits for a thread that runs a sync handler for it (`run_in_handler_thread`),
    or that it started with `trio.to_thread.run_sync`. Call it from outside the Trio
    thread.
    """
    task: trio.lowlevel.Task | None = getattr(_local, "task", None)
    if task is not None:
        return task
    try:
        # In a thread of trio.to_thread.run_sync this runs in the task that waits for it.
        return trio.from_thread.run_sync(trio.lowlevel.current_task)
    except RuntimeError:  # not a thread of a run (or its run is over)
        return None


def descends_from(task: trio.lowlevel.Task, ancestor: trio.lowlevel.Task) -> bool:
    """Whether *task* is *ancestor* or runs in a nursery below it."""
    current: trio.lowlevel.Task | None = task
    for _ in range(10_000):  # a task tree is never this deep; never a cycle
        if current is None:
            return False
        if current is ancestor:
            return True
        nursery = current.parent_nursery
        current = nursery.parent_task if nursery is not None else None
    return False


# -- running work in a thread ----------------------------------------------------------------


@final
class _ThreadState:
    """One server's sync handler threads within one Trio run."""

    __slots__ = ("complaints", "limiter", "lock", "running", "token")

    def __init__(self, token: trio.lowlevel.TrioToken, total: float) -> None:
        self.token = token
        self.limiter = trio.CapacityLimiter(total)
        self.lock = threading.Lock()
        self.running = 0
        #: When each kind of complaint was last logged at its own level (time.monotonic).
        self.complaints: dict[str, float] = {}

    def complain(self, kind: str, level: int, message: str, *args: object) -> None:
        """Log *message* at *level*, or at debug level if *kind* was logged in the last
        `COMPLAINT_INTERVAL` seconds: one line a minute, however often it happens."""
        now = time.monotonic()
        last = self.complaints.get(kind)
        if last is None or now - last >= COMPLAINT_INTERVAL:
            self.complaints[kind] = now
        else:
            level = logging.DEBUG
        logger.log(level, message, *args)


_states: weakref.WeakKeyDictionary[object, _ThreadState] = weakref.WeakKeyDictionary()


def _thread_state(owner: object, limit: int | None) -> _ThreadState:
    total = math.inf if limit is None else limit
    token = trio.lowlevel.current_trio_token()
    state = _states.get(owner)
    if state is None or state.token is not token:
        state = _states[owner] = _ThreadState(token, total)
    elif state.limiter.total_tokens != total:
        state.limiter.total_tokens = total
    return state


def running_handler_threads(owner: object) -> int:
    """How many threads are running a sync handler of *owner* (a server) right now."""
    state = _states.get(owner)
    return 0 if state is None else state.running


async def run_in_handler_thread(
    owner: object,
    limit: int | None,
    work: Callable[[], T],
    on_cancel: Callable[[], object],
    on_abandon: Callable[[], object] = lambda: None,
) -> T:
    """Run *work* in a worker thread, as one of *owner*'s at most *limit* handler threads.

    Waits for a free slot first (cancellable; a wait is logged, see the module
    documentation). While *work* runs, the thread is marked as working for the calling
    task (`waiting_task`).

    Args:
      owner: the server whose threads these are (weakly referenced).
      limit: how many of *owner*'s threads may run at once; None for no limit.
      work: what to run in the thread.
      on_cancel: called in the Trio thread, once, if this task is cancelled while *work*
        runs: it must make *work* return soon (shut its connection down).
      on_abandon: called in the Trio thread if the thread is abandoned (still running
        `ABANDON_AFTER` seconds after *on_cancel*): hand it what it must keep.

    Returns:
      What *work* returned; what it raised is raised here.

    Error handling:
      When cancelled, this waits up to `ABANDON_AFTER` seconds for *work* to return, then
      raises `trio.Cancelled`; what *work* raised meanwhile is logged at debug level. A
      thread still running then is abandoned, and logged as an error.
    """
    state = _thread_state(owner, limit)
    borrower = object()
    limiter = state.limiter
    if limiter.available_tokens >= 1:
        # A free slot is taken without a yield of its own (the wait for the thread is one):
        # about 3 µs less per sync request than acquire_on_behalf_of, which always yields.
        await trio.lowlevel.checkpoint_if_cancelled()
        limiter.acquire_on_behalf_of_nowait(borrower)
    else:
        state.complain(
            "threads",
            logging.WARNING,
            "%r: a sync handler waits for a worker thread: all %s of max_handler_threads "
            "are busy (a sync connection holds its thread while it is open)",
            owner,
            limiter.total_tokens,
        )
        await limiter.acquire_on_behalf_of(borrower)
    done = trio.Event()
    results: list[outcome.Outcome[T]] = []
    context = contextvars.copy_context()
    token = state.token
    task = trio.lowlevel.current_task()

    def run() -> T:
        # Named while it runs a handler: a leak check tells it from an idle cached thread.
        # (The Python name only: the OS-level name would cost two calls through ctypes,
        # each giving up the GIL, per request.)
        thread = threading.current_thread()
        idle_name = thread.name
        thread.name = THREAD_NAME
        with state.lock:
            state.running += 1
        _local.task = task
        try:
            return context.run(work)
        finally:
            _local.task = None
            with state.lock:
                state.running -= 1
            thread.name = idle_name

    def report(result: outcome.Outcome[T]) -> None:
        state.limiter.release_on_behalf_of(borrower)
        results.append(result)
        done.set()

    def deliver(result: outcome.Outcome[T]) -> None:
        try:
            token.run_sync_soon(report, result)
        except trio.RunFinishedError:
            pass  # an abandoned thread, ending after the run: no one is waiting

    try:
        trio.lowlevel.start_thread_soon(run, deliver)
    except BaseException:
        state.limiter.release_on_behalf_of(borrower)
        raise
    try:
        await done.wait()
    except trio.Cancelled:
        on_cancel()
        with trio.move_on_after(ABANDON_AFTER, shield=True):
            await done.wait()
        if not results:
            on_abandon()
            logger.error(
                "a sync handler of %r did not return within %.1f s of its connection being "
                "shut down; abandoning its thread",
                owner,
                ABANDON_AFTER,
            )
        else:
            error = getattr(results[0], "error", None)
            if error is not None:
                logger.debug("a cancelled sync handler ended with %r", error)
        raise
    return results[0].unwrap()


# -- a thread's own socket -------------------------------------------------------------------


#: When a thread last had to borrow a connection's descriptor, logged at error level.
_borrow_complaint: list[float] = []


def _complain_of_borrowing(error: OSError) -> None:
    now = time.monotonic()
    if not _borrow_complaint or now - _borrow_complaint[0] >= COMPLAINT_INTERVAL:
        _borrow_complaint[:] = [now]
        level = logging.ERROR
    else:
        level = logging.DEBUG
    logger.log(
        level,
        "no file descriptor for a sync handler's own socket (%s): it uses its "
        "connection's; raise the descriptor limit or lower max_connections",
        error.strerror,
    )


@final
class ThreadSocket(socket.socket):
    """A worker thread's blocking `socket.socket` on a duplicate of a Trio socket's descriptor.

    Whatever the handler does with it (even ``close()``) cannot close the Trio side's
    descriptor; `release` closes the duplicate when the handler returns, even if files
    made by ``makefile`` still hold it.

    A duplicate shares the descriptor's file status flags, so blocking mode is one of two
    kinds (`duplicate`'s *exclusive*):

    * exclusive, for a connection the Trio side leaves alone while the thread runs: real
      blocking mode, socketserver's speed (no ``poll`` before each call); `release` puts
      the descriptor back in non-blocking mode before the Trio side touches it again;
    * shared, for a datagram server's socket, which the server keeps receiving on: the
      descriptor must stay non-blocking, so blocking mode is emulated with a timeout of a
      day (``gettimeout()`` still says None; ``settimeout(None)`` and
      ``setblocking(True)`` keep the emulation).

    Without a free descriptor for the duplicate, the socket *borrows* the Trio socket's
    own (see the module documentation): closing it then leaves the descriptor open, and
    `release` lets it go without closing it, unless `adopt` handed it over.
    """

    _origin: trio.socket.SocketType
    _shared: bool
    _borrowed: bool
    _owned: bool
    _blocked: bool
    _lock: threading.Lock

    @classmethod
    def duplicate(
        cls,
        sock: trio.socket.SocketType,
        *,
        exclusive: bool,
        timeout: float | None = None,
    ) -> ThreadSocket:
        """A new socket on a duplicate of *sock*'s descriptor, in blocking mode.

        Its timeout is *timeout* if given, else `socket.getdefaulttimeout`, as for any new
        socket (given here rather than set after, it saves a system call). Without a free
        descriptor (``EMFILE``, ``ENFILE``...), the socket is on *sock*'s own, borrowed.
        """
        borrowed = False
        try:
            fd = os.dup(sock.fileno())
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            _complain_of_borrowing(exc)
            fd = sock.fileno()
            borrowed = True
        try:
            thread_socket = cls(sock.family, sock.type, sock.proto, fileno=fd)
        except BaseException:
            if not borrowed:
                os.close(fd)
            raise
        thread_socket._origin = sock
        thread_socket._shared = not exclusive
        thread_socket._borrowed = borrowed
        thread_socket._owned = False
        thread_socket._lock = threading.Lock()
        # The descriptor is non-blocking (the Trio socket's): `release` only has to make
        # it so again if a blocking mode was set on this socket.
        thread_socket._blocked = False
        thread_socket.settimeout(socket.getdefaulttimeout() if timeout is None else timeout)
        return thread_socket

    @property
    def borrowed(self) -> bool:
        """Whether this socket is on the Trio socket's own descriptor (none was free)."""
        return self._borrowed

    def _real_close(self, _ss: type[socket.socket] = socket.socket) -> None:
        # close(), directly or once the last file from makefile() is closed: a borrowed
        # descriptor is let go, not closed (it is the connection's own).
        if self._borrowed:
            with self._lock:
                if not self._owned:
                    _ss.detach(self)
                    return
        _ss.close(self)

    def settimeout(self, value: float | None) -> None:
        """As `socket.socket.settimeout`; on a shared socket None is emulated."""
        if value is None:
            if self._shared:
                value = _BLOCKING_TIMEOUT
            else:
                self._blocked = True  # the descriptor itself is blocking now
        super().settimeout(value)

    def setblocking(self, flag: bool) -> None:
        """As `socket.socket.setblocking`; on a shared socket blocking mode is emulated."""
        self.settimeout(None if flag else 0.0)

    def gettimeout(self) -> float | None:
        """As `socket.socket.gettimeout`: None in (emulated) blocking mode."""
        timeout = super().gettimeout()
        return None if timeout == _BLOCKING_TIMEOUT else timeout

    def adopt(self) -> bool:
        """From the Trio thread, for an abandoned thread: hand a borrowed descriptor over.

        Returns:
          True if this socket now owns the descriptor (it closes it in `release`): the
          Trio side must then let go of it (``detach``) instead of closing it.
        """
        with self._lock:
            if self._borrowed and not self._owned and self.fileno() >= 0:
                self._owned = True
                return True
        return False

    def release(self) -> None:
        """Close the duplicate; for an exclusive one, make the descriptor non-blocking again."""
        with self._lock:
            fd = self.detach()
            if fd >= 0 and (not self._borrowed or self._owned):
                os.close(fd)
            if self._owned:
                return
        if self._blocked:
            origin = self._origin.fileno()
            if origin >= 0:
                os.set_blocking(origin, False)
