"""`BaseServer`: the lifecycle every trioserve server shares, written once.

``serve_forever`` is three steps (`serve`): begin the run (`trioserve._serving`), let the
server's concurrency policy serve (`trioserve._policy`), end the run. The policy decides
where each request's path runs (`trioserve._request`); the transport (`SocketServer` and
its subclasses) provides ``get_request`` and the socket. A worker process of the pool
serves its copy of the server through the very same `serve`, with the nursery policy.

Inside and outside Trio
-----------------------
``serve_forever()`` and ``handle_request()`` work where socketserver's do. Called inside a
Trio run they return a coroutine: ``await server.serve_forever()``,
``nursery.start(server.serve_forever)`` and ``trio.run(server.serve_forever)`` all work.
Called where no Trio run is active (a plain script, another thread) they block, each in a
``trio.run`` of its own, exactly like socketserver's, and ``shutdown()`` from another
thread stops them; they then return an already complete awaitable, so the call needs no
``await`` and leaves no "never awaited" warning.

Stopping
--------
`shutdown` may be called from any task or thread. From the thread of the serving run it
only asks the run to stop and returns. From another thread it also waits, as
socketserver's does, until ``serve_forever`` has returned, except from a thread that works
for the run itself (a sync handler's, or one an async handler started with
`trio.to_thread.run_sync`), where waiting would deadlock: there it returns at once
(`trioserve._serving.Serving.may_wait_here`, the one place that is decided). When
``serve_forever`` returns, every handler task and worker thread it started is finished and
every connection it accepted is closed; a sync handler's thread stuck outside socket I/O
is the one exception, abandoned after ``trioserve._threads.ABANDON_AFTER`` seconds, with
an error logged, rather than holding ``serve_forever`` forever.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import socketserver
import sys
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from types import EllipsisType, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, final

import trio

from . import _options
from ._buffer import DEFAULT_MAX_BUFFERED_INPUT
from ._errors import is_vanished_peer
from ._exceptions import LineTooLongError, PeerTimeoutError
from ._handlers import HandlerClass, is_handler
from ._policy import Concurrency, ConcurrencyPolicy, policy_for, request_path
from ._request import HOOK_NAMES, call_hook, standard, trivial
from ._serving import ServerState, Serving
from ._stats import Statistics
from ._threads import running_handler_threads

if TYPE_CHECKING:
    from typing_extensions import Self

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

__all__ = ["BaseServer", "HandlerClass", "serve"]

logger = logging.getLogger("trioserve")

#: After a refused request (a line too long) is logged at warning level, the next ones
#: are logged at debug level for this many seconds.
REFUSAL_LOG_INTERVAL = 60.0


async def serve(
    server: BaseServer,
    policy: ConcurrencyPolicy,
    *,
    poll_interval: float = 0.5,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    on_stop: Callable[[float | None], object] | None = None,
) -> None:
    """Serve *server* with *policy* until it is stopped: ``serve_forever``'s one body.

    Args:
      server: the server.
      policy: where its requests run.
      poll_interval: how often ``service_actions`` is called while idle, if overridden.
      task_status: told ``started()`` once requests are taken.
      on_stop: called with the grace, in the Trio thread, when stopping begins.

    Resource handling:
      When this returns, every handler task and worker thread it started is finished and
      every connection it accepted is closed. The listening socket stays open until
      ``server_close``.
    """
    state = server._trioserve
    reopen = getattr(server, "_trioserve_reopen", None)
    if reopen is not None:
        reopen()  # the listening socket an earlier graceful stop closed
    serving = state.begin(policy)
    if on_stop is not None:
        serving.on_stop.append(on_stop)
    try:
        with serving.handler_scope:
            try:
                await policy.serve(server, serving, poll_interval, task_status)
            except BaseException:
                await serving.owned.close(server)
                raise
            await serving.owned.wait(server)
    except BaseExceptionGroup as group:
        # Ctrl-C arrives in the serving task, inside the policy's nursery, which wraps it in
        # a group: raise it alone, so ``except KeyboardInterrupt`` around trio.run works
        # and the traceback is the interrupt's, not a group's.
        interrupt, rest = group.split(KeyboardInterrupt)
        if interrupt is not None and rest is None:
            # Where the loop happened to wait when Ctrl-C came is of no interest: the
            # traceback starts here, as short as socketserver's.
            raise _first_leaf(interrupt).with_traceback(None) from None
        raise
    finally:
        state.cut += serving.owned.cut
        if state.cut and serving.draining.is_set():
            logger.warning(
                "%r stopped: %d request%s cut short when the shutdown grace ran out",
                server,
                state.cut,
                "" if state.cut == 1 else "s",
            )
        state.end(serving)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


@final
class _Complete:
    """What a blocking call returns outside Trio: an awaitable that is complete already."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator function


_COMPLETE = _Complete()


class BaseServer:
    """The base of every server: serving, shutting down, and socketserver's hooks.

    Subclasses provide the transport: `get_request` and the socket. Use `TCPServer`,
    `UDPServer` and their Unix siblings, not this class.

    Args:
      server_address: the address to serve on.
      RequestHandlerClass: the handler class to run for each request; a trioserve handler
        (async or sync) or one of socketserver's own, or a `functools.partial` of one to
        pass it arguments, or (as socketserver allows) any callable taking ``(request,
        client_address, server)``, which is called in a worker thread.
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
        a request past the limit waits for a free thread (logged at warning, once a
        minute). None (the default) follows the bound on concurrent requests
        (``max_connections``), so every connection can have a thread, as in
        socketserver's ``ThreadingMixIn``; for ``http.server`` handlers, run request by
        request (an idle connection holds no thread), None means 256.
      max_buffered_input: bytes of unread input all connections together may hold
        beyond 8 KiB each (partial lines): past it a read raises `InputBudgetError`.
        None for no limit. Default 32 MiB (see the security page).
      handler_timeout: the ``timeout`` of every handler whose class leaves it None
        (seconds each read or write on the connection may wait for the peer); None (the
        default) leaves the handlers' own. The command line's ``--timeout``.
      access_log: log one line per connection (and per datagram) to the
        ``trioserve.access`` logger at info level (format: :doc:`operations`). Default
        False. The command line's ``--access-log``.
      duration_histogram: measure each request's handler duration, for `statistics` and
        the Prometheus histogram (the access log measures it too). Default False.

    Names:
      Everything trioserve keeps on a server of its own is named ``_trioserve`` or
      ``_trioserve_*``, so no class mixed in beside it (``xmlrpc.server``'s dispatcher,
      ``http.server``, ``wsgiref``) can collide with it, nor it with them.
    """

    timeout: float | None = None
    max_connections: int | None = 10_000
    shutdown_grace: float | None = 5.0
    block_on_close: bool = True
    max_handler_threads: int | None = None
    handler_timeout: float | None = None
    max_buffered_input: int | None = DEFAULT_MAX_BUFFERED_INPUT
    access_log: bool = False
    duration_histogram: bool = False

    _trioserve_options: ClassVar[Mapping[str, _options.Check]] = {
        "timeout": _options.seconds_or_none,
        "max_connections": _options.positive_int_or_none,
        "shutdown_grace": _options.seconds_or_none,
        "block_on_close": _options.boolean,
        "max_handler_threads": _options.positive_int_or_none,
        "handler_timeout": _options.seconds_or_none,
        "max_buffered_input": _options.positive_int_or_none,
        "access_log": _options.boolean,
        "duration_histogram": _options.boolean,
    }

    #: The option that bounds how many requests a concurrent server handles at once: a
    #: fact of the transport (datagram servers: ``max_concurrent_datagrams``).
    _trioserve_limit_option: ClassVar[str] = "max_connections"
    #: How to release whatever a request holds, whatever the hooks did (None: nothing).
    #: (It returns None when it closed the request at once, or an awaitable to await.)
    _trioserve_discard: ClassVar[Callable[[Any], Awaitable[None] | None] | None] = None
    # How a worker thread closes a plain connection it served to its end; None: it may not.
    _trioserve_thread_close: ClassVar[Callable[[Any], None] | None] = None
    _trioserve: ServerState

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
        object.__setattr__(self, "_trioserve", ServerState())
        known = _options.collect_options(type(self))
        for name, value in options.items():
            check = known.get(name)
            if check is None:
                raise TypeError(
                    f"{type(self).__name__}() got an unexpected option {name!r}; "
                    f"it takes: {', '.join(sorted(known))}"
                )
            setattr(self, name, check(name, value))
        if not is_handler(RequestHandlerClass):
            raise TypeError(
                "RequestHandlerClass must be a subclass of trioserve.BaseRequestHandler or "
                "socketserver.BaseRequestHandler, or a functools.partial of one, or (as "
                "socketserver allows) a function taking (request, client_address, server), "
                f"not {RequestHandlerClass!r}"
            )
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass

    if not TYPE_CHECKING:  # (a type checker keeps checking attribute names)

        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, value)
            if name in HOOK_NAMES:
                state = self.__dict__.get("_trioserve")
                if state is not None:
                    state.path = None  # work the request path out again, with the new hook

        def __delattr__(self, name: str) -> None:
            object.__delattr__(self, name)
            if name in HOOK_NAMES:
                self._trioserve.path = None

    @property
    def concurrency(self) -> Concurrency:
        """How this server runs its requests, as its mix-ins select."""
        return policy_for(self).concurrency

    @property
    def draining(self) -> bool:
        """True from the moment `shutdown` begins (or the server is cancelled) until it stops.

        Handlers that serve several requests on one connection can look at it between
        requests and end early; `wait_draining` waits for it.
        """
        serving = self._trioserve.serving
        return serving is not None and serving.draining.is_set()

    async def wait_draining(self) -> None:
        """Wait until the server begins to stop (returns at once if it is stopping).

        For handlers that wait on something else too (a long poll, a keep-alive
        connection's next request), in a nursery or with ``trio.open_nursery`` racing
        both. Returns at once when the server is not serving.
        """
        serving = self._trioserve.serving
        if serving is None:
            await trio.lowlevel.checkpoint()
            return
        await serving.draining.wait()

    def statistics(self) -> Statistics:
        """A snapshot of the server's live figures: connections, threads, bytes, errors.

        Safe to call from any task or thread, serving or not. For a process pool, the
        figures are summed over its workers, as each last reported them (at most half a
        second ago), with each worker's own in ``workers``. See :doc:`operations`.
        """
        return self._trioserve.counters.snapshot(os.getpid(), running_handler_threads(self))

    # -- serving -----------------------------------------------------------------------

    def serve_forever(
        self,
        poll_interval: float = 0.5,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> Awaitable[None]:
        """Serve requests until `shutdown` is called or the surrounding scope is cancelled.

        Inside a Trio run, returns a coroutine to await: ``await server.serve_forever()``;
        ``await nursery.start(server.serve_forever)`` returns once the server accepts
        requests; ``trio.run(server.serve_forever)`` serves from a plain script. Outside a
        Trio run, serves right away and blocks until stopped, as socketserver's does (each
        call in a ``trio.run`` of its own); `shutdown` from another thread stops it.

        Args:
          poll_interval: seconds between calls of `service_actions` while no request
            comes, if `service_actions` is overridden (as in socketserver).

        Resource handling:
          When serving ends, every handler task and worker thread it started is finished
          and every connection it accepted is closed. The listening socket stays open
          until `server_close`.
        """
        coroutine = serve(
            self, policy_for(self), poll_interval=poll_interval, task_status=task_status
        )
        if trio.lowlevel.in_trio_run():
            return coroutine
        trio.run(_awaiting, coroutine)
        return _COMPLETE

    def handle_request(self) -> Awaitable[None]:
        """Wait for one request and handle it, honouring `timeout`.

        If no request comes within `timeout` seconds, call `handle_timeout` and return.
        The request is handled in the calling task, for every kind of server. Inside a
        Trio run, returns a coroutine to await; outside one, blocks, as socketserver's.
        """
        coroutine = self._trioserve_handle_request()
        if trio.lowlevel.in_trio_run():
            return coroutine
        trio.run(_awaiting, coroutine)
        return _COMPLETE

    async def _trioserve_handle_request(self) -> None:
        # socketserver's rule: the socket's own timeout (settimeout) bounds the wait too.
        timeouts = [self.timeout, getattr(getattr(self, "socket", None), "gettimeout", _none)()]
        known = [t for t in timeouts if t is not None]
        timeout = min(known) if known else math.inf
        path = request_path(self)
        with trio.move_on_after(timeout) as scope:
            request, client_address = await path.get_request()
        if scope.cancelled_caught:
            await call_hook(self.handle_timeout)
            return
        # A concurrent server's handler ends its own request with SystemExit, as there.
        concurrent = policy_for(self).concurrency is not Concurrency.SEQUENTIAL
        await path.dispatch(request, client_address, None, concurrent)

    def shutdown(self, grace: float | EllipsisType | None = ...) -> None:
        """Stop `serve_forever`: from any task or any thread.

        New requests are no longer taken at once; handlers still running get *grace*
        seconds to finish, then are cancelled. Called from the serving run, this returns
        at once and ``serve_forever`` returns soon after. Called from another thread, it
        waits until ``serve_forever`` has returned (socketserver's semantics), except from
        a thread that works for the serving run (a sync handler's, or one an async
        handler started with `trio.to_thread.run_sync`), where it returns at once. Called
        when the server is not serving, it returns at once and the next
        ``serve_forever`` stops as soon as it starts.

        Args:
          grace: seconds handlers may take to finish; None waits for them. The default is
            `shutdown_grace` (0 when `block_on_close` is false).
        """
        if isinstance(grace, EllipsisType):
            grace = self.shutdown_grace if self.block_on_close else 0.0
        else:
            grace = _options.seconds_or_none("grace", grace)
        state = self._trioserve
        with state.lock:
            serving = state.serving
            if serving is None:
                state.shutdown_pending = True
                return
        if _in_run_of(serving):
            serving.stop(grace)
            return
        try:
            serving.token.run_sync_soon(serving.stop, grace)
        except trio.RunFinishedError:
            return
        if serving.may_wait_here():
            serving.stopped.wait()

    def _trioserve_preparer(
        self,
    ) -> Callable[[Any, Any], Awaitable[tuple[Any, Any] | None]] | None:
        """The transport's step between ``verify_request`` and the handler, if it has one.

        Returns an async callable taking ``(request, client_address)`` and returning what
        the handler gets as ``(request, client_address)``, or None to close the request
        with no further hook called; it runs in the request's own task (a PROXY header, a
        TLS handshake). None (the default) when this server needs no such step. Asked once
        per serve.
        """
        return None

    # -- hooks, as socketserver names them -----------------------------------------------

    def server_activate(self) -> None:
        """Called by the constructor to activate the server (listen). Override as needed."""

    def server_close(self) -> None:
        """Clean up the server (close its socket). Override as needed."""

    def fileno(self) -> int:
        """The file descriptor of the server's socket."""
        raise NotImplementedError

    async def get_request(self) -> Any:
        """Wait for a request; return ``(request, client_address)``. Provided by subclasses."""
        raise NotImplementedError

    @trivial(True)
    def verify_request(self, request: Any, client_address: Any) -> bool | Awaitable[bool]:
        """Return False to refuse the request: it is closed and no handler runs.

        May be overridden with ``def`` or ``async def``.
        """
        return True

    @standard
    async def process_request(self, request: Any, client_address: Any) -> None:
        """Run the handler (`finish_request`), then `shutdown_request`.

        Concurrent servers call this in a task of its own for each request. May be
        overridden with ``def`` or ``async def``.
        """
        await call_hook(self.finish_request, request, client_address)
        await call_hook(self.shutdown_request, request)

    @standard
    async def finish_request(self, request: Any, client_address: Any) -> None:
        """Construct the handler and run its ``setup``, ``handle`` and ``finish``.

        Sync handlers run in a worker thread, async ones in the calling task.
        """
        await request_path(self).finish_request(request, client_address)

    def shutdown_request(self, request: Any) -> Any:
        """Shut down and close one request. May be overridden with def or async def."""
        return self.close_request(request)

    @trivial(None)
    def close_request(self, request: Any) -> Any:
        """Close one request. May be overridden with def or async def."""
        return None

    def handle_error(self, request: Any, client_address: Any) -> Awaitable[None] | None:
        """Report an exception raised while handling a request; the server keeps serving.

        Call it from an ``except`` block, as the server does. The default logs to the
        ``"trioserve"`` logger: a peer that disconnected (a `BrokenConnectionError`, a
        plain `ConnectionResetError` or `BrokenPipeError` from the handler's own socket
        calls, or an exception group of only such errors) at debug level, a peer too slow
        for the handler's ``timeout`` (`~trioserve.PeerTimeoutError`) at info level, and
        a line longer than ``max_line_length`` (or input past ``max_buffered_input``) at
        warning level, at most once a minute (debug otherwise), all three in one line;
        anything else (a `TimeoutError` of the handler's own too) at error level with its
        traceback.
        """
        exc = sys.exc_info()[1]
        if is_vanished_peer(exc):
            logger.debug("%s disconnected: %s", _peer(client_address), exc)
        elif isinstance(exc, PeerTimeoutError):
            logger.info("%s timed out: %s", _peer(client_address), exc)
        elif isinstance(exc, LineTooLongError):
            # A flood of them (an attack holding unfinished lines) is one warning a minute.
            now = time.monotonic()
            last = self._trioserve.refusal_logged
            level = logging.DEBUG
            if last is None or now - last >= REFUSAL_LOG_INTERVAL:
                self._trioserve.refusal_logged = now
                level = logging.WARNING
            logger.log(level, "request from %s refused: %s", _peer(client_address), exc)
        else:
            logger.error(
                "exception while handling a request from %s", _peer(client_address), exc_info=True
            )
        return None

    @trivial(None)
    def handle_timeout(self) -> Awaitable[None] | None:
        """Called when `handle_request` waited `timeout` seconds for nothing."""
        return None

    @trivial(None)
    def service_actions(self) -> Awaitable[None] | None:
        """Called by `serve_forever` after each request, and every ``poll_interval`` s idle.

        As socketserver calls it. Only a server that overrides it pays for the timer.
        """
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


async def _awaiting(awaitable: Awaitable[None]) -> None:
    await awaitable


def _none() -> None:
    return None


def _in_run_of(serving: Serving) -> bool:
    return trio.lowlevel.in_trio_run() and trio.lowlevel.current_trio_token() is serving.token


def _is_async(function: object) -> bool:
    return inspect.iscoroutinefunction(function)


def _peer(client_address: Any) -> str:
    return repr(client_address) if client_address not in ("", None) else "a local client"
