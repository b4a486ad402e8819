"""Concurrency policies, and the mix-ins that select them.

A policy decides where each request's path (`trioserve._request.RequestPath`) runs, and
nothing else. It is an object with one coroutine, `ConcurrencyPolicy.serve`:

* `Sequential`: one request at a time, in the serving task (socketserver's plain
  servers);
* `Nursery`: each request in its own task of a nursery, at most ``limit`` at once (what
  ``ThreadingMixIn`` did with threads); a task whose request is done waits for the next
  one (`RequestTasks`) rather than exit, as a new task costs more than waking one;
* `ProcessPool`: a pool of worker processes, each serving with `Nursery` (what
  ``ForkingMixIn`` did with a fork per request). It is the only thing that imports the
  pool (`trioserve._pool`).

The lifecycle around a policy (`trioserve._server.serve`) is written once: begin the run,
``policy.serve``, end the run. The mix-ins only *select* a policy (and declare its
options): they carry no behaviour, so the order of the bases does not matter (``class
S(TCPServer, ThreadingMixIn)`` works, unlike with socketserver), and `policy_for` asks
which one applies.

The request loop
----------------
`Sequential` and `Nursery` share one loop: take a slot (a nursery's limit), wait for a
request (``get_request``), dispatch it, call ``service_actions``. A server that overrides
``service_actions`` gets it called after each request *and* every ``poll_interval``
seconds while no request comes, as socketserver calls it: the loop then waits for the
server's socket to become readable under a deadline before calling ``get_request``, so a
request is never cut in half by the timer. A server that does not override it pays for
no timer at all.
"""

from __future__ import annotations

import abc
import contextvars
import enum
import math
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, final

import outcome
import trio

from . import _options
from ._request import RequestPath, call_hook
from ._threads import Tokens

if TYPE_CHECKING:
    from ._serving import Serving

__all__ = [
    "Concurrency",
    "ConcurrencyPolicy",
    "ForkingMixIn",
    "Nursery",
    "NurseryMixIn",
    "ProcessPool",
    "ProcessPoolMixIn",
    "RequestTasks",
    "Sequential",
    "ThreadingMixIn",
    "concurrency_limit",
    "policy_for",
    "request_path",
]


#: What the pool calls, once a reload is over, for a caller waiting in another thread.
_ReloadDone = Callable[[Exception | None], object]


class Concurrency(enum.Enum):
    """How a server runs its requests: the name of its policy."""

    SEQUENTIAL = "sequential"
    NURSERY = "nursery"
    PROCESS_POOL = "process pool"


def request_path(server: Any) -> RequestPath:
    """*server*'s request path, worked out when first needed (and again after a hook changed)."""
    state = server._trioserve
    path: RequestPath | None = state.path
    if path is None:
        path = state.path = RequestPath(server)
    return path


class ConcurrencyPolicy(abc.ABC):
    """How a server runs its requests: one coroutine, `serve`."""

    #: What `~trioserve.BaseServer.concurrency` reports for this policy.
    concurrency: ClassVar[Concurrency]

    @abc.abstractmethod
    async def serve(
        self,
        server: Any,
        serving: Serving,
        poll_interval: float,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Serve *server* until *serving*'s accept scope is cancelled.

        Called inside *serving*'s handler scope; reports ``task_status.started()`` once
        requests are taken. Returns when every request it started is done.
        """


@final
class Sequential(ConcurrencyPolicy):
    """One request at a time, in the serving task.

    Only the wait for a request is cancelled by `shutdown`; the request in progress
    finishes within the grace, as socketserver's ``serve_forever`` finishes it.
    """

    concurrency = Concurrency.SEQUENTIAL

    async def serve(
        self,
        server: Any,
        serving: Serving,
        poll_interval: float,
        task_status: trio.TaskStatus[None],
    ) -> None:
        # A nursery with no tasks: so that an error leaves serve_forever the same way
        # whatever the policy, in an exception group (Trio's strict groups).
        async with trio.open_nursery():
            task_status.started()
            while True:
                with serving.waiting_for_request() as scope:
                    path, request, client_address = await _take_request(
                        server, None, poll_interval
                    )
                if scope.cancelled_caught:
                    break
                await path.dispatch(request, client_address)
                if path.service_actions is not None:
                    await call_hook(path.service_actions)
            if serving.draining.is_set():
                await _drain(server, serving, None)

    def __repr__(self) -> str:
        return "Sequential()"


@final
class Nursery(ConcurrencyPolicy):
    """Each request in its own task, at most *limit* at once (None: no limit).

    At the limit the loop stops taking requests until a handler finishes, so the rest
    wait in the kernel's queue.

    A graceful stop serves the connections already in that queue, unless `take_queued`
    is false by then: a pool worker that a reload replaces leaves them to the workers that
    go on serving on the same socket.
    """

    concurrency = Concurrency.NURSERY

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        #: Whether a graceful stop takes the connections queued (else: only stops listening).
        self.take_queued = True

    async def serve(
        self,
        server: Any,
        serving: Serving,
        poll_interval: float,
        task_status: trio.TaskStatus[None],
    ) -> None:
        slots = Tokens(self.limit) if self.limit is not None else None
        async with trio.open_nursery() as nursery:
            with serving.accept_scope:
                task_status.started()
                await _request_loop(server, nursery, slots, poll_interval)
            if serving.draining.is_set():
                await _drain(server, serving, nursery, take_queued=self.take_queued)

    def __repr__(self) -> str:
        return f"Nursery(limit={self.limit!r})"


@final
class ProcessPool(ConcurrencyPolicy):
    """A pool of *size* worker processes, each serving with `Nursery` (see `trioserve._pool`)."""

    concurrency = Concurrency.PROCESS_POOL

    def __init__(self, size: int) -> None:
        self.size = size
        #: The pids of the workers serving now, sorted.
        self.worker_pids: tuple[int, ...] = ()
        # Reload requests, to the pool while it serves: each a callable told the outcome
        # (a caller waiting in another thread), or None (nobody waits).
        self._reloads: trio.MemorySendChannel[_ReloadDone | None] | None = None

    async def serve(
        self,
        server: Any,
        serving: Serving,
        poll_interval: float,
        task_status: trio.TaskStatus[None],
    ) -> None:
        from ._pool import serve_pool  # the one import of the pool: only when it serves

        send, receive = trio.open_memory_channel[_ReloadDone | None](math.inf)
        self._reloads = send
        try:
            await serve_pool(server, serving, self.size, self._set_pids, receive, task_status)
        finally:
            self._reloads = None
            send.close()

    def _set_pids(self, pids: tuple[int, ...]) -> None:
        self.worker_pids = pids

    def reload(self, serving: Serving) -> None:
        """Ask the pool serving *serving* for new workers (`ProcessPoolMixIn.reload_workers`).

        In the serving run, returns at once; in another thread, waits for the outcome.

        Raises:
          Exception: in another thread, why the new workers did not start.
        """
        if trio.lowlevel.in_trio_run() and trio.lowlevel.current_trio_token() is serving.token:
            self._ask(None)
            return
        outcomes: list[Exception | None] = []
        over = threading.Event()

        def done(outcome: Exception | None) -> None:
            outcomes.append(outcome)
            over.set()

        try:
            serving.token.run_sync_soon(self._ask, done)
        except trio.RunFinishedError:
            return
        over.wait()  # bounded: the pool answers every request it got, even when it stops
        if outcomes[0] is not None:
            raise outcomes[0]

    def _ask(self, done: _ReloadDone | None) -> None:
        try:
            if self._reloads is None:
                raise trio.ClosedResourceError
            self._reloads.send_nowait(done)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if done is not None:
                done(None)  # not serving (any more): the next serve starts new workers anyway

    def __repr__(self) -> str:
        return f"ProcessPool(size={self.size!r})"


async def _request_loop(
    server: Any, nursery: trio.Nursery, slots: Tokens | None, poll_interval: float
) -> None:
    """Take requests and run each in a task of *nursery*, until cancelled (the accept
    scope)."""
    tasks = RequestTasks(nursery)
    try:
        while True:
            path, request, client_address = await _take_request(server, slots, poll_interval)
            tasks.run(path, request, client_address, slots)
            if path.service_actions is not None:
                await call_hook(path.service_actions)
    finally:
        tasks.close()


#: How many request tasks may wait for the next request (`RequestTasks`); more exit.
IDLE_TASKS = 64


@final
class RequestTasks:
    """The tasks of a nursery that run requests, each kept for the next request.

    Each request runs in a task of its own, as a new task would run it: with a copy of
    the serving nursery's context, its own cancellation, and its exceptions reaching the
    nursery. But a task whose request is done waits for the next one rather than exit
    (at most `IDLE_TASKS` wait), and `run` hands a request to the task that finished
    last, or starts one when none waits. Starting and ending a Trio task costs about
    1.7 µs more than waking one (``python -m bench.tasks``), a tenth of a UDP echo.

    A handler that changes a context variable leaves its task changed: that task exits
    after its request, so the next request never sees another's context.
    """

    __slots__ = ("_closed", "_idle", "_nursery")

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._idle: list[trio.lowlevel.Task] = []
        self._closed = False

    def run(
        self, path: RequestPath, request: Any, client_address: Any, slots: Tokens | None
    ) -> None:
        """Run one request's path in a task of the nursery; return at once."""
        if self._idle:
            work = (path, request, client_address, slots)
            trio.lowlevel.reschedule(self._idle.pop(), outcome.Value(work))
        else:
            # Named as Trio would name it, without Trio working the name out each time.
            self._nursery.start_soon(
                self._serve, path, request, client_address, slots, name=_TASK_NAME
            )

    def close(self) -> None:
        """No more requests: the waiting tasks exit, and the others after their request."""
        self._closed = True
        for task in self._idle:
            trio.lowlevel.reschedule(task, outcome.Value(None))
        self._idle.clear()

    async def _serve(
        self, path: RequestPath, request: Any, client_address: Any, slots: Tokens | None
    ) -> None:
        idle = self._idle
        task = trio.lowlevel.current_task()
        context = contextvars.copy_context()

        def abort(_: object) -> trio.lowlevel.Abort:
            idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            # The last arguments: a handler's SystemExit ends its own request only, and a
            # sync handler's thread may end the connection.
            await path.dispatch(request, client_address, slots, True, True)
            if self._closed or len(idle) >= IDLE_TASKS or contextvars.copy_context() != context:
                return
            idle.append(task)
            work = await trio.lowlevel.wait_task_rescheduled(abort)
            if work is None:
                return
            path, request, client_address, slots = work


async def _take_request(
    server: Any, slots: Tokens | None, poll_interval: float
) -> tuple[RequestPath, Any, Any]:
    """Take a slot, wait for a request; return it with the request path to run it on."""
    if slots is not None:
        # A free slot is taken without a checkpoint of its own: get_request has one, and
        # one yield per connection accepts twice as fast under load.
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await slots.acquire()
    try:
        path = server._trioserve.path or request_path(server)
        if path.service_actions is not None:
            await _wait_for_request(server, path, poll_interval)
        request, client_address = await path.get_request()
    except BaseException:
        if slots is not None:
            slots.release()
        raise
    # The path as it is now: a hook replaced while get_request waited applies.
    return server._trioserve.path or request_path(server), request, client_address


async def _drain(
    server: Any, serving: Serving, nursery: trio.Nursery | None, *, take_queued: bool = True
) -> None:
    """At the start of a graceful stop: take what is queued, then stop listening.

    The transport hands over the requests already waiting (connections the kernel has
    accepted for us), which are served within the grace like the others, and closes its
    listening socket, so new connections are refused at once and a load balancer sends
    them elsewhere. A transport with nothing to drain (datagrams) does nothing. Without
    *take_queued*, the socket is only closed: what is queued is left to the other
    holders of the same listening socket (the rest of a process pool).
    """
    if not take_queued:
        close = getattr(server, "_trioserve_close_listener", None)
        if close is not None:
            close()
        return
    drain = getattr(server, "_trioserve_drain", None)
    if drain is None:
        return
    path = server._trioserve.path or request_path(server)
    for request, client_address in drain():
        if nursery is None:
            await path.dispatch(request, client_address)
        else:
            nursery.start_soon(path.dispatch, request, client_address, None, True, True)


async def _wait_for_request(server: Any, path: RequestPath, poll_interval: float) -> None:
    """Wait until the server's socket is readable, calling ``service_actions`` meanwhile.

    Every *poll_interval* seconds with no request, ``service_actions`` is called, as
    socketserver's ``serve_forever`` calls it. A server without a socket to wait on (a
    ``get_request`` of the user's own) gets no timer.
    """
    sock: Any = getattr(server, "socket", None)
    if getattr(sock, "fileno", None) is None or sock.fileno() < 0:
        return
    while path.service_actions is not None:
        with trio.move_on_after(poll_interval):
            await trio.lowlevel.wait_readable(sock)
            return
        await call_hook(path.service_actions)


_TASK_NAME = f"{RequestPath.dispatch.__module__}.{RequestPath.dispatch.__qualname__}"


# -- the mix-ins ---------------------------------------------------------------------------


class NurseryMixIn:
    """Handle each request in its own Trio task (the replacement for ``ThreadingMixIn``).

    Concurrency is bounded by the server's ``max_connections`` (``max_concurrent_datagrams``
    for datagram servers): at the limit the server stops accepting until a handler
    finishes. Sync handlers still run in worker threads.

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
    """

    max_children: int | None = None

    _trioserve_options: ClassVar[Mapping[str, _options.Check]] = {
        "max_children": _options.positive_int_or_none,
    }

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """The pids of the workers serving now, sorted (empty when not serving).

        During `reload_workers`, both generations: the new workers once each is ready,
        and the old ones until each has exited.
        """
        serving = self._trioserve.serving  # type: ignore[attr-defined]
        policy = getattr(serving, "policy", None)
        return policy.worker_pids if isinstance(policy, ProcessPool) else ()

    def reload_workers(self) -> None:
        """Replace every worker with a new one, refusing no connection: from any task or thread.

        Starts ``max_children`` new workers, each a fresh interpreter that imports the
        handler's module (and the script run, for a handler defined there) again, so code
        changed on disk takes effect; the parent imports nothing again. The spec sent to
        them is taken anew, so changed public attributes of the server are sent too. Once
        every new worker accepts, each old worker stops accepting and gets the default
        grace of `shutdown` to finish its requests; then it is reaped. Both generations
        accept on the one listening socket meanwhile, so no connection is refused. If the
        new workers cannot start, they are stopped, the old ones keep serving, and the
        error is logged. Requests made while a reload runs share the next one. SIGHUP to
        the parent calls this (see :doc:`process-pool`).

        Called in the serving run, it returns at once. Called from another thread, it
        returns once the reload is over: the new workers serve and the old ones are
        reaped (or the server stopped first). Called in a worker (by a handler), it asks
        the parent, and returns at once.
        When the server is not serving it does nothing: the next ``serve_forever`` starts
        workers from the code as it is then.

        Raises:
          WorkerStartupError: (another thread only) the new workers could not start; the
            old ones serve on.
          TypeError: (another thread only) the server cannot be sent to new workers (see
            `ProcessPoolMixIn`); the old ones serve on.
        """
        in_worker: Callable[[], None] | None = getattr(self, "_trioserve_reload_in_parent", None)
        if in_worker is not None:
            in_worker()
            return
        serving = self._trioserve.serving  # type: ignore[attr-defined]
        policy = getattr(serving, "policy", None)
        if isinstance(policy, ProcessPool):
            policy.reload(serving)


#: socketserver's name for `ProcessPoolMixIn`.
ForkingMixIn = ProcessPoolMixIn


def concurrency_limit(server: Any) -> int | None:
    """How many requests *server* handles at once when concurrent (None: no limit).

    The option that says so is a fact of the transport: ``max_connections`` for stream
    servers, ``max_concurrent_datagrams`` for datagram servers.
    """
    limit: int | None = getattr(server, server._trioserve_limit_option)
    return limit


def policy_for(server: Any) -> ConcurrencyPolicy:
    """The policy *server*'s class selects with its mix-ins, whatever their order."""
    if isinstance(server, ProcessPoolMixIn):
        size = server.max_children or os.cpu_count() or 1
        return ProcessPool(size)
    if isinstance(server, NurseryMixIn):
        return Nursery(concurrency_limit(server))
    return Sequential()
