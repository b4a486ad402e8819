"""The request path: from a received request to the closing of it, hook for hook.

socketserver's path, which every policy runs for every request::

    verify_request -> process_request (finish_request, then shutdown_request)
                   -> handle_error, then shutdown_request, when processing raised

with the transport's own step between ``verify_request`` and the handler (a TLS handshake,
a PROXY header), and a last, forceful close that releases whatever the request holds,
whatever the hooks did. `RequestPath.dispatch` is that path; the policies
(`trioserve._policy`) only decide where it runs.

Skipping what does nothing
--------------------------
A hook that is still the library's own often does nothing that calling it would show:
``verify_request`` returns True, ``service_actions`` returns None, a datagram server's
``shutdown_request`` closes nothing. Paying a call and an ``await`` for each on every
request is measurable, so the library's own implementations *declare* what they are
(`trivial` and `standard`), and `RequestPath` works out once which calls it may leave
out. A hook overridden on the class, or replaced on the instance (before or while the
server serves: the server forgets its path when one of these attributes is set), is
always called. Transports declare their facts the same way, as class attributes of the
server (``_trioserve_discard``, ``_trioserve_preparer``), rather than by overriding a
private predicate.

Hooks may be ``def`` or ``async def`` (`call_hook`), as ported code overrides them with
``def`` and new code with ``async def``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, final

import trio

from ._access import CLOSED, CUT, REFUSED, ending_of, log_access, transport_name
from ._handlers import HandlerClass, is_sync_handler, run_async_handler
from ._stats import Counters, Tally, tcp_bytes
from ._sync import HandOff, run_sync_handler
from ._threads import OwnedConnections, Tokens

__all__ = [
    "CLOSE_TIMEOUT",
    "HOOK_NAMES",
    "RequestPath",
    "call_hook",
    "closes_plainly",
    "run_handler",
    "standard",
    "trivial",
]

logger = logging.getLogger("trioserve")

F = TypeVar("F", bound=Callable[..., Any])

#: How long closing a request may take once its handler is done or cancelled (a TLS
#: close_notify to a peer that never reads, a user's shutdown_request that blocks).
CLOSE_TIMEOUT = 1.0

#: The server attributes a `RequestPath` is worked out from: setting one on a server
#: makes it work its path out again.
HOOK_NAMES = frozenset(
    {
        "RequestHandlerClass",
        "verify_request",
        "process_request",
        "finish_request",
        "shutdown_request",
        "close_request",
        "service_actions",
        "handle_error",
        "get_request",
        "access_log",
        "duration_histogram",
    }
)

_NOT_TRIVIAL = object()


def trivial(result: object) -> Callable[[F], F]:
    """Declare that calling the decorated hook only returns *result*: it may be skipped."""

    def mark(func: F) -> F:
        func.__trioserve_trivial__ = result  # type: ignore[attr-defined]
        return func

    return mark


def standard(func: F) -> F:
    """Declare that the decorated hook does exactly what the request path does without it."""
    func.__trioserve_standard__ = True  # type: ignore[attr-defined]
    return func


def closes_plainly(func: F) -> F:
    """Declare that the decorated closing hook, on a plain socket connection, only does
    what the transport's ``_trioserve_thread_close`` does (so a worker thread may do that
    instead)."""
    func.__trioserve_plain_close__ = True  # type: ignore[attr-defined]
    return func


def _closes_plainly(method: object) -> bool:
    return getattr(_function(method), "__trioserve_plain_close__", False) is True


def _function(method: object) -> object:
    return getattr(method, "__func__", None)


def _trivial_result(method: object) -> object:
    return getattr(_function(method), "__trioserve_trivial__", _NOT_TRIVIAL)


def _is_standard(method: object) -> bool:
    return getattr(_function(method), "__trioserve_standard__", False) is True


async def call_hook(hook: Callable[..., object], *args: Any) -> Any:
    """Call *hook* and await what it returns if that is awaitable.

    So a hook may be overridden with ``def`` (as socketserver code does) or ``async def``.
    """
    result = hook(*args)
    if inspect.isawaitable(result):
        return await result
    return result


_Runner = Callable[[HandlerClass, Any, Any, Any], Awaitable[object]]


async def run_handler(
    handler_class: HandlerClass, request: Any, client_address: Any, server: Any
) -> None:
    """Run one handler for one request, as a server does.

    Sync handlers (and socketserver's own classes, and other callables) run in a worker
    thread (`trioserve._sync`), async handlers in the calling task.
    """
    runner = run_sync_handler if is_sync_handler(handler_class) else run_async_handler
    await runner(handler_class, request, client_address, server)


def _count_tcp(sock: Any, tally: Tally) -> tuple[int, int | None] | None:
    """Add a TCP connection's bytes (the kernel's count) to the Trio thread's *tally*."""
    sizes = tcp_bytes(sock)
    if sizes is not None:
        tally.bytes_in += sizes[0]
        tally.bytes_out += sizes[1]
    return sizes


def _report_exit(exc: BaseException) -> None:
    """A handler's SystemExit, in a request of its own: as a thread of socketserver's
    ``ThreadingMixIn`` ends, reported to `threading.excepthook` (which ignores
    SystemExit by default)."""
    threading.excepthook(threading.ExceptHookArgs((type(exc), exc, exc.__traceback__, None)))


@final
class RequestPath:
    """One server's request path, with the steps that may be skipped worked out once.

    Args:
      server: the server (a `~trioserve.BaseServer`).
    """

    __slots__ = (
        "access_log",
        "counters",
        "datagram",
        "direct",
        "discard",
        "get_request",
        "handler_class",
        "noop_shutdown",
        "plain_verify",
        "preparer",
        "run_handler",
        "server",
        "service_actions",
        "tally",
        "tcp",
        "thread_close",
        "timed",
        "transport",
    )

    def __init__(self, server: Any) -> None:
        self.server = server
        self.plain_verify = _trivial_result(server.verify_request) is True
        #: ``service_actions`` to call after each request (and while idle); None to skip.
        self.service_actions: Callable[[], object] | None = (
            None if _trivial_result(server.service_actions) is None else server.service_actions
        )
        self.noop_shutdown = _trivial_result(server.shutdown_request) is None
        #: The transport's step before the handler (TLS, PROXY header), if any.
        self.preparer: Callable[[Any, Any], Awaitable[Any]] | None = server._trioserve_preparer()
        #: How to release whatever a request holds, whatever the hooks did.
        self.discard: Callable[[Any], Awaitable[None] | None] | None = server._trioserve_discard
        self.handler_class: HandlerClass = server.RequestHandlerClass
        #: Whether process_request and finish_request are the library's own, so the
        #: handler may be run without calling them.
        self.direct = _is_standard(server.process_request) and _is_standard(server.finish_request)
        #: How to wait for the next request: the server's ``get_request``, awaited; or, for
        #: one overridden with ``def`` (socketserver code), called in a worker thread once
        #: the socket is readable, as socketserver calls it once ``select`` says so.
        self.get_request: Callable[[], Awaitable[Any]] = (
            server.get_request
            if inspect.iscoroutinefunction(server.get_request)
            else self._get_request_in_thread
        )
        #: What runs the handler: decided once, here, for the server's handler class.
        self.run_handler: _Runner = (
            run_sync_handler if is_sync_handler(self.handler_class) else run_async_handler
        )
        #: How a worker thread closes a plain connection it served to its end (the
        #: transport's `_trioserve_thread_close`), when the closing hooks are the
        #: transport's own and ``handle_error`` may be called in that thread (it is not
        #: ``async def``): sync handlers of a concurrent server then run to the
        #: connection's end in their thread (`trioserve._sync`). None otherwise.
        self.thread_close: Callable[[Any], None] | None = None
        if (
            self.direct
            and is_sync_handler(self.handler_class)
            and _closes_plainly(server.shutdown_request)
            and _closes_plainly(server.close_request)
            and not inspect.iscoroutinefunction(server.handle_error)
        ):
            self.thread_close = server._trioserve_thread_close
        #: The server's statistics, counted here (`trioserve._stats`): in the Trio
        #: thread, in `tally`, without a lock.
        self.counters: Counters = server._trioserve.counters
        self.tally: Tally = self.counters.own
        #: ``tcp``, ``unix``, ``udp`` or ``unix-dgram``, for the access log.
        self.transport = transport_name(server)
        self.tcp = self.transport == "tcp"
        self.datagram = self.transport in ("udp", "unix-dgram")
        self.access_log = bool(getattr(server, "access_log", False))
        #: Whether each request's duration is measured (a clock read, a float).
        self.timed = self.access_log or bool(getattr(server, "duration_histogram", False))

    async def dispatch(
        self,
        request: Any,
        client_address: Any,
        slots: Tokens | None = None,
        contain_exit: bool = False,
        may_hand_off: bool = False,
    ) -> None:
        """The life of one request, from ``verify_request`` to the closing of it.

        Releases one of *slots* (the policy's concurrency limit) when done. With
        *contain_exit* (a request in a task of its own), a handler's `SystemExit` ends
        this request only, as it ends only its thread under socketserver's
        ``ThreadingMixIn``; otherwise it propagates, as from socketserver's plain servers.
        With *may_hand_off* (a task of a serving run's nursery, which nobody waits for), a
        sync handler's connection may be handed to its worker thread, which then ends it
        (`thread_close`): this returns at once, and the run waits for it instead.

        Counts the request in the server's statistics (`trioserve._stats`): a few integer
        operations, and for a TCP connection one ``getsockopt`` as its handler ends; with
        the access log or the duration histogram on, a clock read and its line too.
        """
        server = self.server
        tally = self.tally
        tally.active += 1
        tally.total += 1
        if self.datagram and type(request) is tuple:
            tally.bytes_in += len(request[0])
        # A TCP connection's bytes are the kernel's count, read as its handler ends.
        sock = request.socket if self.tcp and type(request) is trio.SocketStream else None
        sizes: tuple[int, int | None] | None = None
        started = time.perf_counter() if self.timed else 0.0
        ending = CLOSED
        handed = False  # to a worker thread, which ends the connection: nothing left here
        try:
            if self.plain_verify or await call_hook(
                server.verify_request, request, client_address
            ):
                if self.preparer is not None:
                    prepared = await self.preparer(request, client_address)
                    if prepared is None:
                        ending = REFUSED
                        return  # refused by the transport (a failed TLS handshake): close
                    request, client_address = prepared
                try:
                    if self.direct:
                        # What process_request and finish_request would do, two coroutine
                        # frames shallower: every checkpoint of the handler passes them.
                        try:
                            if (
                                may_hand_off
                                and self.thread_close is not None
                                and type(request) is trio.SocketStream
                            ):
                                hand_off = self._hand_off(request, client_address, slots, started)
                                handed = await run_sync_handler(
                                    self.handler_class, request, client_address, server, hand_off
                                )
                            else:
                                await self.run_handler(
                                    self.handler_class, request, client_address, server
                                )
                        finally:
                            if sock is not None and not handed:
                                sizes = _count_tcp(sock, tally)
                        if handed:
                            return
                        if not self.noop_shutdown:
                            await call_hook(server.shutdown_request, request)
                    else:
                        await call_hook(server.process_request, request, client_address)
                except Exception as exc:
                    tally.errors += 1
                    if self.timed:
                        ending = ending_of(exc)
                    await self.report(request, client_address)
                    if not self.noop_shutdown:
                        await self.close(request)
                except BaseException as exc:
                    if not self.noop_shutdown:
                        await self.close(request)
                    if isinstance(exc, trio.Cancelled):
                        self.server._trioserve.cut += 1
                        ending = CUT
                    elif isinstance(exc, SystemExit) and contain_exit:
                        _report_exit(exc)
                        return
                    raise
            else:
                ending = REFUSED
                if not self.noop_shutdown:
                    await self.close(request)
        finally:
            if not handed:  # (inline: a coroutine more per datagram is measurable)
                if sock is not None and sizes is None:
                    sizes = _count_tcp(sock, tally)  # not run directly: read it if still open
                self._ended(started, request, client_address, sizes, ending)
                if self.discard is not None:
                    # At once for a plain socket; a TLS stream's close is awaited, shielded.
                    closing = self.discard(request)
                    if closing is not None:
                        with trio.CancelScope(shield=True):
                            await closing
                if slots is not None:
                    slots.release()

    def _hand_off(
        self, request: trio.SocketStream, client_address: Any, slots: Tokens | None, started: float
    ) -> HandOff:
        """What a worker thread needs to serve *request* to its end (`trioserve._sync`)."""
        serving = self.server._trioserve.serving
        nursery = trio.lowlevel.current_task().parent_nursery
        assert nursery is not None  # a task of the serving run's nursery (may_hand_off)
        return HandOff(
            serving.owned,
            nursery,
            functools.partial(
                self._end_in_thread, request, client_address, slots, started, serving.owned
            ),
        )

    def _end_in_thread(
        self,
        request: trio.SocketStream,
        client_address: Any,
        slots: Tokens | None,
        started: float,
        owned: OwnedConnections,
        connection: Any,
        error: BaseException | None,
    ) -> None:
        """`dispatch`'s last steps, in the worker thread that served *request* to its end.

        Called with what the handler raised from the ``except`` block that caught it (so
        ``handle_error`` sees it as socketserver's does, in the handler's thread), or with
        None. ``shutdown_request`` and ``close_request`` are the transport's own here:
        its `thread_close` does what they do. Counted in the worker threads' tally.
        """
        sock = request.socket
        sizes = tcp_bytes(sock) if self.tcp else None  # before it is closed
        ending = CLOSED
        try:
            if isinstance(error, Exception):
                if self.timed:
                    ending = ending_of(error)
                try:
                    self.server.handle_error(request, client_address)
                except Exception:
                    logger.exception(
                        "%r: handle_error raised while reporting an error", self.server
                    )
            elif error is not None:
                _report_exit(error)
        finally:
            assert self.thread_close is not None
            owned.discard(connection, functools.partial(self.thread_close, sock))
            duration = time.perf_counter() - started if self.timed else 0.0
            counters = self.counters
            with counters.lock:
                tally = counters.threads
                tally.active -= 1
                if isinstance(error, Exception):
                    tally.errors += 1
                if sizes is not None:
                    tally.bytes_in += sizes[0]
                    tally.bytes_out += sizes[1]
                if self.timed:
                    tally.observe(duration)
            if self.access_log:
                self._log(duration, request, client_address, sizes, ending)
            if slots is not None:
                slots.release()

    def _ended(
        self,
        started: float,
        request: Any,
        client_address: Any,
        sizes: tuple[int, int | None] | None,
        ending: str,
    ) -> None:
        """A request is no longer active; when asked to, it is measured: the duration
        histogram, and the access log. (In the Trio thread.)"""
        tally = self.tally
        tally.active -= 1
        if self.timed:
            duration = time.perf_counter() - started
            tally.observe(duration)
            if self.access_log:
                self._log(duration, request, client_address, sizes, ending)

    def _log(
        self,
        duration: float,
        request: Any,
        client_address: Any,
        sizes: tuple[int, int | None] | None,
        ending: str,
    ) -> None:
        if sizes is None and self.datagram and type(request) is tuple:
            sizes = (len(request[0]), None)
        received, sent = sizes if sizes is not None else (None, None)
        log_access(client_address, self.transport, duration, received, sent, ending)

    async def _get_request_in_thread(self) -> Any:
        server = self.server
        sock = getattr(server, "socket", None)
        if sock is not None and sock.fileno() >= 0:
            await trio.lowlevel.wait_readable(sock)
        return await trio.to_thread.run_sync(server.get_request, abandon_on_cancel=True)

    async def finish_request(self, request: Any, client_address: Any) -> None:
        """What `~trioserve.BaseServer.finish_request` does: run the handler."""
        await self.run_handler(self.handler_class, request, client_address, self.server)

    async def report(self, request: Any, client_address: Any) -> None:
        """Call ``handle_error`` from an ``except`` block; contain what *it* raises.

        A ``handle_error`` override that fails must not take the server down with it
        (socketserver's threading servers lose one thread to it, not the server): what it
        raises is logged with its traceback and the server goes on.
        """
        server = self.server
        try:
            await call_hook(server.handle_error, request, client_address)
        except Exception:
            logger.exception("%r: handle_error raised while reporting an error", server)

    async def close(self, request: Any) -> None:
        """``shutdown_request`` after a failure or a refusal: shielded, bounded in time."""
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await call_hook(self.server.shutdown_request, request)
