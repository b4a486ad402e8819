"""`BaseServer`: the lifecycle every trioserve server shares.

How serving works
-----------------
`BaseServer.serve_forever` owns everything a server starts while it serves::

    handler scope (deadline = the drain deadline)
    └── nursery: one task per request, for concurrent servers
        └── accept scope: the loop  get_request -> dispatch -> service_actions

Stopping is cancellation; nothing polls a flag. `shutdown` cancels the accept scope, so
no new request is taken, and sets the handler scope's deadline ``grace`` seconds ahead:
handlers still running then are cancelled. Cancelling the scope around ``serve_forever``
cancels both at once. Either way the nursery does not exit before every handler task
(and the worker thread of every sync handler) is done, and every connection is closed in
a ``finally`` as its task ends, so when ``serve_forever`` returns nothing it opened is
left. The one exception is a sync handler's thread stuck outside socket I/O (in
``time.sleep``, on a lock): shutting its connection down cannot wake it, so after
``trioserve._sync.ABANDON_AFTER`` seconds it is abandoned, with an error logged, rather
than holding ``serve_forever`` forever (see the sync handlers page).

`shutdown` may be called from any task or thread. From the thread of the serving run it
only asks the loop to stop and returns. From another thread it also waits, as
socketserver's does, until ``serve_forever`` has returned, except from the worker thread
of one of this server's own sync handlers, where waiting would deadlock (the server
waits for that handler): there it returns at once.

The request path mirrors socketserver's, hook for hook: ``get_request`` ->
``verify_request`` -> ``process_request`` (``finish_request`` then ``shutdown_request``),
with ``handle_error`` then ``shutdown_request`` when processing raised. The concurrency
policy decides only where that path runs: inline in the serving task, or in a task of its
own. A worker-process pool replaces ``serve_forever`` as a whole (`trioserve._workers`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import socketserver
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from types import EllipsisType, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from . import _options
from ._exceptions import BrokenConnectionError, LineTooLongError, PeerTimeoutError
from ._handlers import (
    BaseRequestHandler,
    handler_type,
    is_sync_handler,
    run_async_handler,
    run_handler,
)
from ._policy import Concurrency, concurrency_of

if TYPE_CHECKING:
    from typing_extensions import Self

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

__all__ = ["BaseServer", "HandlerClass", "logger"]

#: Where every trioserve server logs.
logger = logging.getLogger("trioserve")

#: What a server runs per request: a handler class, or a `functools.partial` of one.
#: (`functools.partial` is invariant: ``partial[Any]`` lets a partial of a subclass in.)
HandlerClass = (
    type[BaseRequestHandler] | type[socketserver.BaseRequestHandler] | functools.partial[Any]
)
_HandlerRunner = Callable[[Any, Any, Any, "BaseServer"], Awaitable[None]]

# How long closing a request may take once its handler is done or cancelled (a TLS
# close_notify to a peer that never reads, a user's shutdown_request that blocks).
_CLOSE_TIMEOUT = 1.0

_thread_local = threading.local()


def mark_handler_thread(server: BaseServer | None) -> None:
    """Record that this worker thread runs a sync handler of *server* (None: no longer)."""
    _thread_local.server = server


async def call_hook(hook: Callable[..., object], *args: Any) -> Any:
    """Call *hook* and await what it returns if that is awaitable.

    So a hook may be overridden with ``def`` (as socketserver code does) or ``async def``.
    """
    result = hook(*args)
    if inspect.isawaitable(result):
        return await result
    return result


class _Serving:
    """The state of one running `serve_forever`, shared with `shutdown` callers."""

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.accept_scope = trio.CancelScope()
        self.handler_scope = trio.CancelScope()
        self.stopped = threading.Event()

    def stop(self, grace: float | None) -> None:
        """Stop accepting; cancel the handlers after *grace* seconds. In the Trio thread."""
        self.accept_scope.cancel()
        if grace is not None:
            deadline = trio.current_time() + grace
            self.handler_scope.deadline = min(self.handler_scope.deadline, deadline)


class BaseServer:
    """The base of every server: serving, shutting down, and socketserver's hooks.

    Subclasses provide the transport: `get_request` and the socket. Use `TCPServer`,
    `UDPServer` and their Unix siblings, not this class.

    Args:
      server_address: the address to serve on.
      RequestHandlerClass: the handler class to run for each request; a trioserve handler
        (async or sync) or one of socketserver's own, or a `functools.partial` of one to
        pass it arguments.
      **options: any of the class's options (below, and each subclass's), overriding the
        class attribute of the same name for this server. An unknown or malformed option
        raises `TypeError` or `ValueError` naming it.

    Options and class attributes:
      timeout: seconds `handle_request` waits for a request before calling
        `handle_timeout`; None waits forever.
      max_connections: for concurrent servers, how many requests are handled at once;
        at the limit the server stops taking new ones until a handler finishes, so the
        rest wait in the kernel's queue. None for no limit. Default 10,000.
      shutdown_grace: seconds `shutdown` lets running handlers finish before cancelling
        them; None waits for them however long they take. Default 5.
      block_on_close: socketserver's switch for waiting on handlers; False makes the
        default grace 0 (handlers are cancelled at once).
      max_handler_threads: how many sync handlers run at once, each in a worker thread;
        a request past the limit waits for a free thread. None for no limit. Default 256.
    """

    timeout: float | None = None
    max_connections: int | None = 10_000
    shutdown_grace: float | None = 5.0
    block_on_close: bool = True
    max_handler_threads: int | None = 256

    _options: ClassVar[Mapping[str, _options.Check]] = {
        "timeout": _options.seconds_or_none,
        "max_connections": _options.positive_int_or_none,
        "shutdown_grace": _options.seconds_or_none,
        "block_on_close": _options.boolean,
        "max_handler_threads": _options.positive_int_or_none,
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        klass: type = cls  # a trioserve class may still, wrongly, mix in socketserver's
        for stdlib_mixin in (socketserver.ThreadingMixIn, socketserver.ForkingMixIn):
            if issubclass(klass, stdlib_mixin):
                name = stdlib_mixin.__name__
                raise TypeError(
                    f"{cls.__qualname__} mixes socketserver.{name} into a trioserve server; "
                    f"use trioserve.{name} instead"
                )

    def __init__(
        self, server_address: Any, RequestHandlerClass: HandlerClass, **options: Any
    ) -> None:
        known = _options.collect_options(type(self))
        for name, value in options.items():
            check = known.get(name)
            if check is None:
                raise TypeError(
                    f"{type(self).__name__}() got an unexpected option {name!r}; "
                    f"it takes: {', '.join(sorted(known))}"
                )
            setattr(self, name, check(name, value))
        if handler_type(RequestHandlerClass) is None:
            raise TypeError(
                "RequestHandlerClass must be a subclass of trioserve.BaseRequestHandler or "
                "socketserver.BaseRequestHandler, or a functools.partial of one, "
                f"not {RequestHandlerClass!r}"
            )
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self._serving_lock = threading.Lock()
        self._serving: _Serving | None = None
        self._shutdown_pending = False

    @property
    def concurrency(self) -> Concurrency:
        """How this server runs its requests, as its mix-ins select."""
        return concurrency_of(type(self))

    # -- serving -----------------------------------------------------------------------

    async def serve_forever(
        self,
        poll_interval: float = 0.5,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve requests until `shutdown` is called or the surrounding scope is cancelled.

        ``await nursery.start(server.serve_forever)`` returns once the server accepts
        requests; ``trio.run(server.serve_forever)`` serves from a plain script.

        Args:
          poll_interval: accepted for compatibility and ignored: nothing polls.

        Resource handling:
          When this returns, every handler task and worker thread it started is finished
          and every connection it accepted is closed. The listening socket stays open
          until `server_close`.
        """
        del poll_interval
        if self.concurrency is Concurrency.PROCESS_POOL:
            from ._workers import serve_process_pool

            await serve_process_pool(self, task_status=task_status)
            return
        serving = self._start_serving()
        try:
            with serving.handler_scope:
                async with trio.open_nursery() as nursery:
                    with serving.accept_scope:
                        task_status.started()
                        await self._serve_loop(
                            nursery if self.concurrency is Concurrency.NURSERY else None
                        )
        except BaseExceptionGroup as group:
            # Ctrl-C arrives in the serving task, inside the nursery, which wraps it in a
            # group: unwrap it, so ``except KeyboardInterrupt`` around trio.run works.
            interrupt, rest = group.split(KeyboardInterrupt)
            if interrupt is not None and rest is None:
                raise KeyboardInterrupt from group
            raise
        finally:
            self._stop_serving(serving)

    def _start_serving(self) -> _Serving:
        serving = _Serving()
        with self._serving_lock:
            if self._serving is not None:
                raise RuntimeError(f"{self!r} is already serving")
            self._serving = serving
            if self._shutdown_pending:
                self._shutdown_pending = False
                serving.accept_scope.cancel()
        return serving

    def _stop_serving(self, serving: _Serving) -> None:
        with self._serving_lock:
            self._serving = None
        serving.stopped.set()

    def _concurrency_limit(self) -> int | None:
        """How many requests a concurrent server handles at once (None: no limit)."""
        return self.max_connections

    async def _serve_loop(self, nursery: trio.Nursery | None) -> None:
        limit = self._concurrency_limit() if nursery is not None else None
        slots = trio.Semaphore(limit) if limit is not None else None
        plan = self._plan()
        # The hooks that are BaseServer's own no-ops are looked up once, not per request.
        service_actions = None if plan.plain_service_actions else self.service_actions
        get_request = self.get_request
        dispatch = self._dispatch
        while True:
            if slots is not None:
                # A free slot is taken without a checkpoint of its own: get_request has
                # one, and one yield per connection accepts twice as fast under load.
                try:
                    slots.acquire_nowait()
                except trio.WouldBlock:
                    await slots.acquire()
            try:
                request, client_address = await get_request()
            except BaseException:
                if slots is not None:
                    slots.release()
                raise
            if nursery is None:
                await dispatch(request, client_address, None, plan)
            else:
                # Named as Trio would name it, without Trio working the name out each time.
                nursery.start_soon(
                    dispatch, request, client_address, slots, plan, name=_DISPATCH_TASK_NAME
                )
            if service_actions is not None:
                await call_hook(service_actions)

    def _plan(self) -> _RequestPlan:
        """Which hooks of the request path are BaseServer's own, and so may be skipped."""
        return _RequestPlan(self)

    def _runs_handler_directly(self, handler_class: HandlerClass) -> bool:
        """Whether ``finish_request`` only runs *handler_class* (`run_handler`)."""
        return _method_is(self, "finish_request", BaseServer.finish_request)

    def _shutdown_is_noop(self) -> bool:
        """Whether ``shutdown_request`` does nothing at all (BaseServer's own)."""
        return _method_is(self, "shutdown_request", BaseServer.shutdown_request) and _method_is(
            self, "close_request", BaseServer.close_request
        )

    async def _dispatch(
        self,
        request: Any,
        client_address: Any,
        slots: trio.Semaphore | None = None,
        plan: _RequestPlan | None = None,
    ) -> None:
        """The life of one request, from ``verify_request`` to the closing of it."""
        if plan is None:
            plan = self._plan()
        try:
            if plan.plain_verify or await call_hook(self.verify_request, request, client_address):
                if plan.prepares:
                    prepared = await self._prepare_request(request, client_address)
                    if prepared is None:
                        return  # refused by the transport (a failed TLS handshake): just close
                    request = prepared
                try:
                    handler_class = self.RequestHandlerClass
                    if handler_class is plan.direct_handler_class:
                        # What process_request and finish_request would do, two coroutine
                        # frames shallower: every checkpoint of the handler passes them.
                        await plan.run_handler(handler_class, request, client_address, self)
                        if not plan.noop_shutdown:
                            await call_hook(self.shutdown_request, request)
                    else:
                        await self.process_request(request, client_address)
                except Exception:
                    await call_hook(self.handle_error, request, client_address)
                    if not plan.noop_shutdown:
                        await self._finally_shutdown_request(request)
                except BaseException:
                    if not plan.noop_shutdown:
                        await self._finally_shutdown_request(request)
                    raise
            elif not plan.noop_shutdown:
                await self._finally_shutdown_request(request)
        finally:
            if plan.discards:
                with trio.CancelScope(shield=True):
                    await self._discard_request(request)
            if slots is not None:
                slots.release()

    async def _prepare_request(self, request: Any, client_address: Any) -> Any:
        """Make a verified *request* ready for its handler, in the request's own task.

        Returns what the handler gets as ``request``, or None to close the request with
        no further hook called. Runs after ``verify_request`` (so a refused client costs
        nothing more) and may take time without holding up the accept loop of a
        concurrent server: stream servers do their TLS handshake here
        (`trioserve._tls`). Whatever it returns is closed when the request ends.
        """
        return request

    async def _finally_shutdown_request(self, request: Any) -> None:
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await call_hook(self.shutdown_request, request)

    async def _discard_request(self, request: Any) -> None:
        """Release whatever *request* holds, whatever the hooks did. Must not block."""

    async def handle_request(self) -> None:
        """Wait for one request and handle it, honouring `timeout`.

        If no request comes within `timeout` seconds, call `handle_timeout` and return.
        The request is handled in the calling task, for every kind of server.
        """
        timeout = math.inf if self.timeout is None else self.timeout
        with trio.move_on_after(timeout) as scope:
            request, client_address = await self.get_request()
        if scope.cancelled_caught:
            await call_hook(self.handle_timeout)
            return
        await self._dispatch(request, client_address)

    def shutdown(self, grace: float | EllipsisType | None = ...) -> None:
        """Stop `serve_forever`: from any task or any thread.

        New requests are no longer taken at once; handlers still running get *grace*
        seconds to finish, then are cancelled. Called from the serving run, this returns
        at once and ``serve_forever`` returns soon after. Called from another thread, it
        waits until ``serve_forever`` has returned (socketserver's semantics), except from
        a sync handler of this server, where it returns at once. Called when the server is
        not serving, it returns at once and the next ``serve_forever`` stops as soon as it
        starts.

        Args:
          grace: seconds handlers may take to finish; None waits for them. The default is
            `shutdown_grace` (0 when `block_on_close` is false).
        """
        if isinstance(grace, EllipsisType):
            grace = self.shutdown_grace if self.block_on_close else 0.0
        else:
            grace = _options.seconds_or_none("grace", grace)
        with self._serving_lock:
            serving = self._serving
            if serving is None:
                self._shutdown_pending = True
                return
        if trio.lowlevel.in_trio_run() and trio.lowlevel.current_trio_token() is serving.token:
            serving.stop(grace)
            return
        try:
            serving.token.run_sync_soon(serving.stop, grace)
        except trio.RunFinishedError:
            return
        if getattr(_thread_local, "server", None) is self:
            return
        serving.stopped.wait()

    # -- hooks, as socketserver names them -----------------------------------------------

    def server_activate(self) -> None:
        """Called by the constructor to activate the server (listen). Override as needed."""

    def server_close(self) -> None:
        """Clean up the server (close its socket). Override as needed."""

    def fileno(self) -> int:
        """The file descriptor of the server's socket."""
        raise NotImplementedError

    async def get_request(self) -> tuple[Any, Any]:
        """Wait for a request; return ``(request, client_address)``. Provided by subclasses."""
        raise NotImplementedError

    def verify_request(self, request: Any, client_address: Any) -> bool | Awaitable[bool]:
        """Return False to refuse the request: it is closed and no handler runs.

        May be overridden with ``def`` or ``async def``.
        """
        return True

    async def process_request(self, request: Any, client_address: Any) -> None:
        """Run the handler (`finish_request`), then `shutdown_request`.

        Concurrent servers call this in a task of its own for each request.
        """
        await self.finish_request(request, client_address)
        await call_hook(self.shutdown_request, request)

    async def finish_request(self, request: Any, client_address: Any) -> None:
        """Construct the handler and run its ``setup``, ``handle`` and ``finish``."""
        await run_handler(self.RequestHandlerClass, request, client_address, self)

    def shutdown_request(self, request: Any) -> Any:
        """Shut down and close one request. May be overridden with def or async def."""
        return self.close_request(request)

    def close_request(self, request: Any) -> Any:
        """Close one request. May be overridden with def or async def."""
        return None

    def handle_error(self, request: Any, client_address: Any) -> Awaitable[None] | None:
        """Report an exception raised while handling a request; the server keeps serving.

        Call it from an ``except`` block, as the server does. The default logs to the
        ``"trioserve"`` logger: a peer that disconnected at debug level, a peer too slow
        for the handler's ``timeout`` (`~trioserve.PeerTimeoutError`) at info level, and
        a line longer than ``max_line_length`` at warning level, all three in one line;
        anything else (a `TimeoutError` of the handler's own too) at error level with its
        traceback.
        """
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenConnectionError, trio.BrokenResourceError)):
            logger.debug("%s disconnected: %s", _peer(client_address), exc)
        elif isinstance(exc, PeerTimeoutError):
            logger.info("%s timed out: %s", _peer(client_address), exc)
        elif isinstance(exc, LineTooLongError):
            logger.warning("request from %s refused: %s", _peer(client_address), exc)
        else:
            logger.error(
                "exception while handling a request from %s", _peer(client_address), exc_info=True
            )
        return None

    def handle_timeout(self) -> Awaitable[None] | None:
        """Called when `handle_request` waited `timeout` seconds for nothing."""
        return None

    def service_actions(self) -> Awaitable[None] | None:
        """Called by `serve_forever` after each request is dispatched (never on a timer)."""
        return None

    # -- context managers ----------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.server_close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.server_close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.server_address!r}>"


def _method_is(server: BaseServer, name: str, function: Callable[..., Any]) -> bool:
    """Whether *server*'s method *name* is *function* (not overridden, nor set on *server*)."""
    return getattr(getattr(server, name), "__func__", None) is function


_DISPATCH_TASK_NAME = f"{BaseServer._dispatch.__module__}.{BaseServer._dispatch.__qualname__}"


class _RequestPlan:
    """Which steps of a server's request path can be skipped, worked out once per serve.

    A hook that is still BaseServer's own does nothing that calling it would show
    (``verify_request`` returns True, ``service_actions`` and a plain ``shutdown_request``
    return None without a checkpoint), so `BaseServer._dispatch` leaves it out rather than
    pay for a call and an ``await`` on every request. Overriding any of them, on the class
    or on the instance before serving starts, brings the call back.
    """

    __slots__ = (
        "direct_handler_class",
        "discards",
        "noop_shutdown",
        "plain_service_actions",
        "plain_verify",
        "prepares",
        "run_handler",
    )

    def __init__(self, server: BaseServer) -> None:
        cls = type(server)
        self.plain_verify = _method_is(server, "verify_request", BaseServer.verify_request)
        self.plain_service_actions = _method_is(
            server, "service_actions", BaseServer.service_actions
        )
        self.prepares = cls._prepare_request is not BaseServer._prepare_request
        self.discards = cls._discard_request is not BaseServer._discard_request
        self.noop_shutdown = server._shutdown_is_noop()
        handler_class = server.RequestHandlerClass
        direct = _method_is(
            server, "process_request", BaseServer.process_request
        ) and server._runs_handler_directly(handler_class)
        #: The handler class `run_handler` may run with no process/finish_request call.
        self.direct_handler_class: HandlerClass | None = handler_class if direct else None
        #: What runs it: for an async handler, without asking again how it runs.
        self.run_handler: _HandlerRunner = run_handler
        if direct and not is_sync_handler(handler_class):
            self.run_handler = run_async_handler


def _peer(client_address: Any) -> str:
    return repr(client_address) if client_address not in ("", None) else "a local client"
