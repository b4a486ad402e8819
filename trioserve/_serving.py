"""The state of a server while it serves, shared by the lifecycle, the policies and `shutdown`.

One `Serving` exists per call of ``serve_forever``: the cancel scopes that stopping
works through, the Trio token that other threads reach the run with, the event they wait
on, and the drain: whether the server is stopping, and how long handlers have left.
`ServerState` is what a server keeps between runs (its lock, the `Serving` of the
current run, a shutdown asked for before serving started, its worked-out request path).

How stopping works
------------------
::

    handler scope (deadline = the drain deadline)
    └── the policy's nursery: one task per request, for concurrent servers
        └── accept scope: the loop  get_request -> dispatch -> service_actions

`Serving.stop` cancels the accept scope, so no new request is taken, and sets the handler
scope's deadline ``grace`` seconds ahead: handlers still running then are cancelled. It
also sets `Serving.draining`, which handlers can wait on to end their own loops early.
Cancelling the scope around ``serve_forever`` cancels both at once. Nothing polls.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, final

import trio

from ._stats import Counters
from ._threads import OwnedConnections, descends_from, waiting_task

if TYPE_CHECKING:
    from ._request import RequestPath

__all__ = ["ServerState", "Serving", "serving_tasks"]

# The runs in progress in this process, of every server (see `serving_tasks`).
_runs: weakref.WeakSet[Serving] = weakref.WeakSet()


def serving_tasks() -> frozenset[trio.lowlevel.Task]:
    """The tasks serving a server now, in any run of this process: each server's
    handler tasks descend from its serving task. (For `trioserve.testing`'s leak check,
    which leaves other servers' tasks to them.)"""
    return frozenset(serving.task for serving in list(_runs))


@final
class Serving:
    """One run of ``serve_forever``: its scopes, its token, its drain."""

    __slots__ = (
        "__weakref__",
        "accept_scope",
        "draining",
        "grace",
        "handler_scope",
        "idle",
        "on_stop",
        "owned",
        "policy",
        "stopped",
        "task",
        "token",
        "waiting",
    )

    def __init__(self, policy: object) -> None:
        self.policy = policy
        self.token = trio.lowlevel.current_trio_token()
        #: The task that serves: every handler task descends from it.
        self.task = trio.lowlevel.current_task()
        self.accept_scope = trio.CancelScope()
        self.handler_scope = trio.CancelScope()
        #: Set (in any thread) once ``serve_forever`` has returned.
        self.stopped = threading.Event()
        #: Set in the Trio thread when stopping begins.
        self.draining = trio.Event()
        #: The grace the stop was given (None: handlers may take all they need).
        self.grace: float | None = None
        #: Called with the grace, in the Trio thread, when stopping begins.
        self.on_stop: list[Callable[[float | None], object]] = []
        #: Scopes of connections waiting, idle, for their next request: cancelled by `stop`,
        #: so an idle keep-alive connection closes at once when the server drains.
        self.idle: set[trio.CancelScope] = set()
        #: The scope of a sequential server's wait for its next request, if it waits.
        self.waiting: trio.CancelScope | None = None
        #: Connections that worker threads serve to their end (`trioserve._sync`): the
        #: run waits for them as for its tasks.
        self.owned = OwnedConnections()

    @contextlib.contextmanager
    def waiting_for_request(self) -> Iterator[trio.CancelScope]:
        """A scope for one wait for a request, cancelled by `stop` (sequential servers).

        Only the wait is cancelled: the request a sequential server is handling finishes
        within the grace, under the handler scope alone.
        """
        scope = trio.CancelScope()
        if self.accept_scope.cancel_called:
            scope.cancel()
        self.waiting = scope
        try:
            with scope:
                yield scope
        finally:
            self.waiting = None

    def stop(self, grace: float | None) -> None:
        """Stop accepting; cancel the handlers after *grace* seconds. In the Trio thread."""
        self.accept_scope.cancel()
        if self.waiting is not None:
            self.waiting.cancel()
        for scope in self.idle:
            scope.cancel()
        if grace is not None:
            deadline = trio.current_time() + grace
            self.handler_scope.deadline = min(self.handler_scope.deadline, deadline)
        if self.draining.is_set():
            return
        self.grace = grace
        self.draining.set()
        for callback in self.on_stop:
            callback(grace)

    def remaining_grace(self) -> float | None:
        """What is left of the handlers' grace: None for no deadline."""
        deadline = self.handler_scope.deadline
        if deadline == math.inf:
            return None
        return max(deadline - trio.current_time(), 0.0)

    def may_wait_here(self) -> bool:
        """Whether the calling thread (not the run's own) may wait for this run to end.

        Not a thread that one of this run's own tasks waits for (a sync handler's, or one
        a handler started with `trio.to_thread.run_sync`): the run waits for its handlers,
        so waiting for the run there would deadlock. The one place this is decided.
        """
        task = waiting_task()
        return task is None or not descends_from(task, self.task)


@final
class ServerState:
    """What a server keeps between runs. One per server, created by its constructor."""

    __slots__ = (
        "counters",
        "cut",
        "lock",
        "path",
        "refusal_logged",
        "serving",
        "shutdown_pending",
    )

    def __init__(self) -> None:
        #: Requests cut short by cancellation in the current run (for the stop's log line).
        self.cut = 0
        #: When a refused request was last logged at warning level (time.monotonic).
        self.refusal_logged: float | None = None
        self.lock = threading.Lock()
        self.serving: Serving | None = None
        self.shutdown_pending = False
        #: The server's worked-out request path; None until needed, or after a hook changed.
        self.path: RequestPath | None = None
        #: The server's live statistics (`trioserve._stats`), counted by its request path.
        self.counters = Counters()

    def begin(self, policy: object) -> Serving:
        """Start a run (in the Trio thread); a shutdown asked for earlier stops it at once."""
        serving = Serving(policy)
        self.cut = 0
        with self.lock:
            if self.serving is not None:
                raise RuntimeError("the server is already serving")
            self.serving = serving
            _runs.add(serving)
            if self.shutdown_pending:
                self.shutdown_pending = False
                serving.accept_scope.cancel()
        return serving

    def end(self, serving: Serving) -> None:
        """End the run *serving* (it has returned); wake whoever waits for it."""
        with self.lock:
            if self.serving is serving:
                self.serving = None
            _runs.discard(serving)
        serving.stopped.set()
