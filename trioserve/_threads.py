"""Worker threads for sync handlers: the runner, the thread limit, the thread's socket.

A sync handler blocks, so it runs in a worker thread while the Trio task that owns its
request waits. This module is everything about those threads, and nothing about
handlers: `run_in_handler_thread` runs a callable in a thread under a server's
``max_handler_threads`` limit and can reach it when cancelled; `ThreadSocket` gives the
thread a blocking socket on a Trio socket's descriptor; `waiting_task` says
which Trio task a thread works for, the one fact `~trioserve.BaseServer.shutdown` needs to
decide whether it may wait.

Threads, limits, cancellation
-----------------------------
Worker threads come from Trio's thread cache (`trio.lowlevel.start_thread_soon`), and how
many run handlers at once is bounded per server by ``max_handler_threads`` (`Tokens`,
which a thread that ends its connection gives back itself). A request past the limit
waits, accepted and unrefused, until a thread is free. Waiting is logged: a server whose
idle connections hold every thread must not starve its new clients silently. The first
wait is a warning, the others for a minute (`COMPLAINT_INTERVAL`) are logged at debug
level only.

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

The thread's socket
-------------------
A thread's socket (`ThreadSocket.lend`) is on the connection's own descriptor: a sync
connection holds one descriptor, and a thread needs none of its own, so a server at its
descriptor limit still serves the connections it has. Everything the handler does with
the socket (even ``close()``) leaves the descriptor open; the Trio side closes it after
the handler. The socket's timeout is emulated over the non-blocking descriptor (each call
is tried first, and waits in ``poll(2)`` only if it would block); only without a timeout
is the descriptor made blocking while the thread has it alone, and non-blocking again
when it lets go. If a thread is ever abandoned (above), the
descriptor is handed over to it (`ThreadSocket.adopt`) rather than closed under it, so
that a number reused by the next connection can never reach a stuck handler.

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

import _socket
import collections
import contextvars
import logging
import math
import operator
import os
import select
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, SupportsIndex, TypeVar, final

import trio

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

#: Makes a `socket.socket` on a descriptor take it to be non-blocking (Linux; elsewhere a
#: socket finds out from its first call that would block, and `ThreadSocket` waits then).
_NONBLOCK: Final = getattr(socket, "SOCK_NONBLOCK", 0)

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


# -- a bound released from any thread -------------------------------------------------------


@final
class Tokens:
    """How many may run at once: taken in a Trio run, given back from any thread.

    What `trio.Semaphore` is, except that `release` may be called in any thread: a
    connection that a worker thread serves to its end gives its token back there. The
    Trio run is woken only when one of its tasks waits for a token. Waiting tasks get
    tokens in the order they asked.

    Taking a free token and giving one back in the run's own thread take no lock: each
    count has one writer. The run's thread alone changes ``_taken``; other threads add
    what they give back to ``_returned``, under ``_lock``. The run takes the lock too
    whenever a task waits, so a token given back is either counted before the task
    looks or handed to it.

    Args:
      total: how many tokens there are (``math.inf``: no bound).
    """

    __slots__ = ("_lock", "_returned", "_taken", "_thread", "_token", "_waiters", "total")

    def __init__(self, total: float) -> None:
        self.total = total
        self._taken = 0  # tokens taken, net of those given back in the run's thread
        self._returned = 0  # tokens given back by other threads
        self._lock = threading.Lock()
        self._waiters: collections.deque[trio.Event] = collections.deque()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()

    @property
    def available(self) -> float:
        """How many tokens are free now."""
        return self.total - self._taken + self._returned

    def set_total(self, total: float) -> None:
        """Change how many tokens there are (in the Trio thread)."""
        self.total = total
        while self._waiters and self.available >= 1:
            event = self._next_waiter()
            if event is None:
                return
            self._taken += 1
            event.set()

    def _next_waiter(self) -> trio.Event | None:
        """The first task waiting, taken off the queue (another thread may have taken it)."""
        with self._lock:
            return self._waiters.popleft() if self._waiters else None

    def acquire_nowait(self) -> None:
        """Take a token without waiting (in the Trio thread).

        Raises:
          trio.WouldBlock: none is free (or tasks wait for one already).
        """
        # A token another thread is giving back this instant may be missed: the caller
        # then waits in `acquire`, which looks again under the lock.
        if self._waiters or self.total - self._taken + self._returned < 1:
            raise trio.WouldBlock
        self._taken += 1

    async def acquire(self) -> None:
        """Take a token, waiting for one if none is free (a checkpoint either way)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        event = trio.Event()
        with self._lock:
            if not self._waiters and self.available >= 1:
                self._taken += 1
                event.set()
            else:
                self._waiters.append(event)
        if event.is_set():
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        try:
            await event.wait()
        except BaseException:
            with self._lock:
                waiting = event in self._waiters
                if waiting:
                    self._waiters.remove(event)
            if not waiting:
                self.release()  # given to this task as it was cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a token back, in any thread: to the first task waiting, if one is."""
        if threading.get_ident() == self._thread:
            # The run's own thread: only it adds waiters, so none can appear meanwhile.
            if not self._waiters:
                self._taken -= 1
                return
            event = self._next_waiter()
            if event is None:
                self._taken -= 1
            else:
                event.set()  # passed on: still taken
            return
        with self._lock:
            if not self._waiters:
                self._returned += 1
                return
            event = self._waiters.popleft()
        try:
            self._token.run_sync_soon(event.set)
        except trio.RunFinishedError:
            pass  # nobody waits any more


# -- running work in a thread ----------------------------------------------------------------


@final
class _ThreadState:
    """One server's sync handler threads within one Trio run."""

    __slots__ = ("complaints", "lock", "running", "token", "tokens")

    def __init__(self, token: trio.lowlevel.TrioToken, total: float) -> None:
        self.token = token
        self.tokens = Tokens(total)
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

    async def take_thread(self, owner: object) -> None:
        """Take one of the threads (a token), waiting and saying so if none is free."""
        tokens = self.tokens
        try:
            # A free thread is taken without a yield of its own (the caller yields later):
            # about 3 µs less per sync request.
            tokens.acquire_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        self.complain(
            "threads",
            logging.WARNING,
            "%r: a sync handler waits for a worker thread: all %s of max_handler_threads "
            "are busy (a sync connection holds its thread while it is open)",
            owner,
            tokens.total,
        )
        await tokens.acquire()

    def run(
        self, task: trio.lowlevel.Task, context: contextvars.Context, work: Callable[[], T]
    ) -> T:
        """In the worker thread: *work*, marked as a handler's for *task* while it runs."""
        # Named while it runs a handler: a leak check tells it from an idle cached thread.
        # (The Python name only: the OS-level name would cost two calls through ctypes,
        # each giving up the GIL, per request.)
        thread = threading.current_thread()
        idle_name = thread.name
        thread.name = THREAD_NAME
        with self.lock:
            self.running += 1
        _local.task = task
        try:
            return context.run(work)
        finally:
            _local.task = None
            with self.lock:
                self.running -= 1
            thread.name = idle_name


_states: weakref.WeakKeyDictionary[object, _ThreadState] = weakref.WeakKeyDictionary()


def _thread_state(owner: object, limit: int | None) -> _ThreadState:
    total = math.inf if limit is None else limit
    token = trio.lowlevel.current_trio_token()
    state = _states.get(owner)
    if state is None or state.token is not token:
        state = _states[owner] = _ThreadState(token, total)
    elif state.tokens.total != total:
        state.tokens.set_total(total)
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
    await state.take_thread(owner)
    done = trio.Event()
    results: list[outcome.Outcome[T]] = []
    context = contextvars.copy_context()
    token = state.token
    task = trio.lowlevel.current_task()

    def run() -> T:
        return state.run(task, context, work)

    def report(result: outcome.Outcome[T]) -> None:
        state.tokens.release()
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
        state.tokens.release()
        raise
    try:
        await done.wait()
    except trio.Cancelled:
        on_cancel()
        with trio.move_on_after(ABANDON_AFTER, shield=True):
            await done.wait()
        if not results:
            on_abandon()
            _log_abandoned(owner, 1)
        else:
            error = getattr(results[0], "error", None)
            if error is not None:
                logger.debug("a cancelled sync handler ended with %r", error)
        raise
    return results[0].unwrap()


def _log_abandoned(owner: object, count: int) -> None:
    logger.error(
        "%d sync handler%s of %r did not return within %.1f s of %s connection being "
        "shut down; abandoning %s",
        count,
        "" if count == 1 else "s",
        owner,
        ABANDON_AFTER,
        "its" if count == 1 else "their",
        "its thread" if count == 1 else "their threads",
    )


async def take_handler_thread(owner: object, limit: int | None) -> None:
    """Take one of *owner*'s at most *limit* handler threads, for `start_handler_thread`.

    Waits for one to be free (cancellable; a wait is logged, see the module
    documentation).
    """
    await _thread_state(owner, limit).take_thread(owner)


def start_handler_thread(
    owner: object,
    limit: int | None,
    task: trio.lowlevel.Task,
    owned: OwnedConnections,
    work: Callable[[], object],
    *,
    taken: bool,
) -> None:
    """Start *work* in one of *owner*'s handler threads, and return (in the Trio thread).

    As `run_in_handler_thread`, but nobody waits for the thread: *work* ends what it
    was given itself, and *owned* counts the thread until it has returned. The thread
    works for *task* (`waiting_task`). *taken*: `take_handler_thread` took a thread for
    it, given back as *work* returns; else it runs beyond the limit, for the short work
    that ends a connection (``finish()``), where waiting for a free thread could hold a
    stopping server up.
    """
    _start(_thread_state(owner, limit), task, owned, work, release=taken)


def _start(
    state: _ThreadState,
    task: trio.lowlevel.Task,
    owned: OwnedConnections,
    work: Callable[[], object],
    *,
    release: bool,
) -> None:
    context = contextvars.copy_context()

    def run() -> object:
        try:
            return state.run(task, context, work)
        finally:
            if release:
                state.tokens.release()

    def returned(result: outcome.Outcome[object]) -> None:
        owned.returned()
        error = getattr(result, "error", None)
        if error is not None:  # pragma: no cover - the work given reports its own errors
            logger.error("a sync handler's thread failed", exc_info=error)

    owned.started()
    try:
        trio.lowlevel.start_thread_soon(run, returned)
    except BaseException:
        owned.returned()
        if release:
            state.tokens.release()
        raise


# -- connections a thread ends ---------------------------------------------------------------


class Owned(Protocol):
    """A connection served by worker threads to its end (see `OwnedConnections`)."""

    def shut_down(self) -> None:
        """Shut the connection down (from the Trio thread), so its handler returns."""


@final
class OwnedConnections:
    """The connections of one serving run that worker threads end, not Trio tasks.

    A task that hands its connection to a thread for good registers it here (`add`) and
    starts the thread with `hand_to_thread`, which counts it; the thread that ends the
    connection closes its socket through `discard`. ``serve_forever`` waits until no
    connection is left and every such thread has returned (`wait`), as a nursery waits
    for its tasks: when cancelled, it shuts the connections down, then waits
    `ABANDON_AFTER` seconds more before it abandons (and logs) what is still running.
    The Trio run is woken as a thread returns only while `wait` waits.
    """

    __slots__ = ("_busy", "_connections", "_lock", "_waiter", "cut", "token")

    def __init__(self) -> None:
        #: How many `wait` shut down because it was cancelled.
        self.cut = 0
        self._lock = threading.Lock()
        self._connections: set[Owned] = set()
        self._busy = 0
        #: The serving run's token: for its threads to reach it.
        self.token = trio.lowlevel.current_trio_token()
        self._waiter: trio.Event | None = None

    def add(self, connection: Owned) -> None:
        """Register *connection*: a thread will end it (in the Trio thread)."""
        with self._lock:
            self._connections.add(connection)

    def discard(self, connection: Owned, close: Callable[[], object] | None = None) -> None:
        """*connection* ends: forget it and *close* its socket (in any thread).

        Both under the lock that `shut_down` takes, so that a descriptor number is never
        shut down once closed (it may belong to a new connection by then).
        """
        with self._lock:
            self._connections.discard(connection)
            if close is not None:
                close()

    def started(self) -> None:
        """A thread for these connections starts (in the Trio thread)."""
        with self._lock:
            self._busy += 1

    def returned(self) -> None:
        """A thread for these connections has returned (in that thread, at its very end)."""
        with self._lock:
            self._busy -= 1
            waiter = self._waiter if self._done() else None
        if waiter is not None:
            try:
                self.token.run_sync_soon(waiter.set)
            except trio.RunFinishedError:  # pragma: no cover - an abandoned thread
                pass

    def _done(self) -> bool:
        return not self._connections and not self._busy

    def shut_down(self) -> int:
        """Shut every connection still open down (in the Trio thread); how many there were."""
        with self._lock:
            connections = list(self._connections)
            for connection in connections:
                connection.shut_down()
        return len(connections)

    async def _until_empty(self) -> None:
        while True:
            with self._lock:
                if self._done():
                    return
                waiter = self._waiter = trio.Event()
            try:
                await waiter.wait()
            finally:
                self._waiter = None

    async def wait(self, owner: object) -> None:
        """Wait until every registered connection has ended.

        When cancelled, shuts the rest down (counted in `cut`) and waits up to
        `ABANDON_AFTER` seconds more (shielded), then abandons what is left (logged as an
        error) and raises `trio.Cancelled`.
        """
        if self._done():
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        try:
            await self._until_empty()
        except trio.Cancelled:
            await self.close(owner)
            raise

    async def close(self, owner: object) -> None:
        """Shut every connection down, and wait (shielded) for them to end.

        Those still running `ABANDON_AFTER` seconds later are abandoned, and logged as an
        error: their threads still close them if they ever return.
        """
        self.cut += self.shut_down()
        with trio.move_on_after(ABANDON_AFTER, shield=True):
            await self._until_empty()
        left = self._busy
        if left:
            _log_abandoned(owner, left)


# -- a thread's own socket -------------------------------------------------------------------

_Socket = socket.socket

#: poll(2) events a call waits for: to read, to write.
_READ: Final = select.POLLIN
_WRITE: Final = select.POLLOUT
#: The longest wait poll(2) takes, in milliseconds (a longer timeout waits again).
_LONGEST_POLL: Final = 2**31 - 1


def _timeout_seconds(value: object) -> float | None:
    """*value* checked as `socket.socket.settimeout` checks it (same errors)."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("Invalid value NaN (not a number)")
        seconds = value
    elif isinstance(value, SupportsIndex):
        seconds = float(operator.index(value))
    else:
        raise TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer")
    if seconds < 0:
        raise ValueError("Timeout value out of range")
    return seconds


@final
class ThreadSocket(socket.socket):
    """A worker thread's blocking `socket.socket` on a Trio socket's own descriptor.

    `lend` makes one for a thread; `release` lets go of it when the handler returns, even
    if files made by ``makefile`` still hold it. Whatever the handler does with it (even
    ``close()``) leaves the descriptor open: it is the connection's, and the Trio side
    closes it. So a sync connection holds one descriptor, however many are free.

    Timeouts (``settimeout``, ``setblocking``, ``gettimeout``) are the socket's own, over
    the descriptor that stays non-blocking, as Trio needs it: each call is *tried* first,
    and only if it would block does the thread wait in ``poll(2)``, for the rest of the
    timeout (for ``sendall``, the timeout is for the whole call, as CPython's). CPython's
    own sockets with a timeout poll *before* every call: a request that is there already,
    or an answer the kernel takes at once, costs one system call here instead of two. A
    timeout raises `TimeoutError` ("timed out"), and a timeout of 0 `BlockingIOError`, as
    CPython's sockets do. Without a timeout (blocking mode, socketserver's default), a
    socket that is not *shared* makes the descriptor blocking for real, so that a wait is
    the call itself, as in socketserver; `release` makes it non-blocking again. A shared
    socket (a datagram server's, which Trio keeps receiving on) never changes the
    descriptor: it waits in ``poll(2)`` without a timeout instead.

    If its thread is ever abandoned, `adopt` hands the descriptor over to it: it is then
    closed by `release`, never under the stuck handler. One collected without `release`
    (a bug in whatever lent it) warns with a `ResourceWarning` and lets go of a lent
    descriptor, never closes it: by then the number may be another socket's.
    """

    _origin: trio.socket.SocketType | None = None
    _owned: bool = True
    _shared: bool = True
    _blocked: bool = False
    _timeout: float | None = None
    _lock: threading.Lock

    @classmethod
    def _on(
        cls, family: int, kind: int, proto: int, fd: int, *, owned: bool, timeout: float | None
    ) -> ThreadSocket:
        # SOCK_NONBLOCK: CPython takes the descriptor to be non-blocking (it is) with no
        # system call to make it so.
        thread_socket = cls(family, kind | _NONBLOCK, proto, fileno=fd)
        thread_socket._owned = owned
        thread_socket._lock = threading.Lock()
        thread_socket._timeout = timeout
        return thread_socket

    @classmethod
    def lend(
        cls, sock: trio.socket.SocketType, *, timeout: float | None = None, shared: bool = False
    ) -> ThreadSocket:
        """A socket on *sock*'s own descriptor, blocking, for a thread.

        Its timeout is *timeout* if given, else `socket.getdefaulttimeout`, as for any new
        socket. *shared*: the Trio side uses the descriptor meanwhile (see the class
        documentation).
        """
        if timeout is None:
            timeout = socket.getdefaulttimeout()
        thread_socket = cls._on(
            sock.family, sock.type, sock.proto, sock.fileno(), owned=False, timeout=None
        )
        thread_socket._origin = sock
        thread_socket._shared = shared
        thread_socket._set(timeout)
        return thread_socket

    # -- blocking mode, emulated over the non-blocking descriptor

    @property
    def timeout(self) -> float | None:
        """As `socket.socket.timeout`."""
        return self._timeout

    def settimeout(self, value: float | None) -> None:
        """As `socket.socket.settimeout`."""
        self._set(_timeout_seconds(value))

    def _set(self, timeout: float | None) -> None:
        self._timeout = timeout
        blocking = timeout is None and not self._shared
        if blocking is not self._blocked:
            os.set_blocking(self.fileno(), blocking)
            self._blocked = blocking

    def gettimeout(self) -> float | None:
        """As `socket.socket.gettimeout`."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """As `socket.socket.setblocking`."""
        self._set(None if flag else 0.0)

    def getblocking(self) -> bool:
        """As `socket.socket.getblocking`."""
        return self._timeout != 0.0

    def _call(self, events: int, method: Callable[..., T], *args: Any) -> T:
        """``method(self, *args)``, waiting for *events* and trying again while it would block."""
        try:
            return method(self, *args)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
        # Out of the except block: a timeout raised below has no "during handling" context.
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            self._wait(events, deadline)
            try:
                return method(self, *args)
            except BlockingIOError:
                pass

    def _wait(self, events: int, deadline: float | None) -> None:
        """Wait until the descriptor is ready for *events*, or raise `TimeoutError`."""
        poller = select.poll()
        poller.register(self.fileno(), events)
        while True:
            milliseconds = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out")
                milliseconds = min(math.ceil(remaining * 1000), _LONGEST_POLL)
            if poller.poll(milliseconds):
                return

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """As `socket.socket.recv`."""
        return self._call(_READ, _Socket.recv, bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """As `socket.socket.recv_into`."""
        return self._call(_READ, _Socket.recv_into, buffer, nbytes, flags)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        """As `socket.socket.recvfrom`."""
        return self._call(_READ, _Socket.recvfrom, bufsize, flags)

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        """As `socket.socket.recvfrom_into`."""
        return self._call(_READ, _Socket.recvfrom_into, buffer, nbytes, flags)

    def recvmsg(self, *args: Any) -> Any:
        """As `socket.socket.recvmsg`."""
        return self._call(_READ, _Socket.recvmsg, *args)

    def recvmsg_into(self, *args: Any) -> Any:
        """As `socket.socket.recvmsg_into`."""
        return self._call(_READ, _Socket.recvmsg_into, *args)

    def send(self, data: Any, flags: int = 0) -> int:
        """As `socket.socket.send`."""
        return self._call(_WRITE, _Socket.send, data, flags)

    def sendto(self, *args: Any) -> int:
        """As `socket.socket.sendto`."""
        return self._call(_WRITE, _Socket.sendto, *args)

    def sendmsg(self, *args: Any) -> int:
        """As `socket.socket.sendmsg`."""
        return self._call(_WRITE, _Socket.sendmsg, *args)

    def sendall(self, data: Any, flags: int = 0) -> None:
        """As `socket.socket.sendall`: the timeout is for the whole call."""
        try:
            sent = _Socket.send(self, data, flags)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
            sent = 0
        if type(data) is bytes and sent == len(data):
            return  # nearly always: the kernel took it all at once
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        with memoryview(data) as view, view.cast("B") as octets:
            total = octets.nbytes
            while sent < total:
                try:
                    sent += _Socket.send(self, octets[sent:], flags)
                    continue
                except BlockingIOError:
                    if self._timeout == 0.0:
                        raise
                self._wait(_WRITE, deadline)

    def dup(self) -> ThreadSocket:
        """As `socket.socket.dup`: a socket of the same kind, on a descriptor of its own.

        The duplicate shares the descriptor's blocking flag, so it is *shared*: it never
        changes it (while this socket has no timeout, the duplicate's calls block).
        """
        fd = os.dup(self.fileno())
        return self._on(self.family, self.type, self.proto, fd, owned=True, timeout=self._timeout)

    # -- whose descriptor it is

    def _real_close(self, _ss: type[_socket.socket] = _socket.socket) -> None:
        # close(), directly or once the last file from makefile() is closed: a lent
        # descriptor is let go, not closed (it is the connection's own).
        with self._lock:
            if not self._owned:
                _ss.detach(self)
                return
        _ss.close(self)

    def adopt(self) -> bool:
        """From the Trio thread, for an abandoned thread: hand the lent descriptor over.

        Returns:
          True if this socket now owns the descriptor (it closes it in `release`): the
          Trio side must then let go of it (``detach``) instead of closing it.
        """
        with self._lock:
            if not self._owned and self.fileno() >= 0:
                self._owned = True
                return True
        return False

    def __del__(self) -> None:
        # Collected without `release` (its lender's bug): CPython's socket would warn and
        # close the descriptor, which is still the connection's, and may by then be another
        # one's. Warn, and let go of it instead.
        if not self._owned and self.fileno() >= 0:
            warnings.warn(f"unreleased {self!r}", ResourceWarning, stacklevel=1, source=self)
            self._real_close()  # lets go of it, as close() does
        super().__del__()  # type: ignore[misc]  # CPython has it; typeshed does not say so

    def release(self) -> None:
        """Let go of the descriptor, as the handler returns: closed only if it was adopted."""
        with self._lock:
            fd = _Socket.detach(self)
            if fd >= 0 and self._owned:
                os.close(fd)
                return
        if self._blocked:  # even if the handler closed it: the descriptor is the connection's
            origin = self._origin
            if origin is not None and origin.fileno() >= 0:
                os.set_blocking(origin.fileno(), False)
