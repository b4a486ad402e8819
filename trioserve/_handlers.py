"""Request handlers: `BaseRequestHandler`, `StreamRequestHandler`, and how a handler runs.

One class, two ways to write it
-------------------------------
socketserver handlers are synchronous: ``def handle(self)``. trioserve handlers are
usually ``async def handle(self)``. Both are subclasses of the same classes here, and the
server tells them apart by ``handle``: a handler whose ``handle`` is a coroutine function
is *async* and runs in a Trio task; one whose ``handle`` is a plain function is *sync* and
runs, ``setup`` to ``finish``, in a worker thread (`trioserve._sync`).

That leaves the base classes' own ``setup()`` and ``finish()``, which both kinds call with
``super()``: an async handler writes ``await super().setup()``, a ported sync handler
writes ``super().setup()``. So the base methods do their work when called and return an
awaitable that is already complete (`_DONE`). Awaiting it costs nothing, and dropping it
(the sync way) raises no "never awaited" warning, as it is not a coroutine. The only
base-class step that must wait for I/O is the final flush of a buffered ``wfile`` in an
async handler: ``finish()`` then returns a coroutine to await; as a safety net the runner
flushes a buffered ``wfile`` itself if a ``finish()`` override forgot to call ``super()``.

The same goes for ``rfile`` and ``wfile``: `StreamRequestHandler`'s ``setup()`` asks how the
handler runs and creates `AsyncReader`/`AsyncWriter` over the Trio stream for an async
handler, blocking `SyncReader`/`SyncWriter` over the blocking socket the worker thread got
for a sync one. The attributes of `StreamRequestHandler` are typed for async code; a typed
sync handler derives from `SyncStreamRequestHandler`, which shares the options and the
``setup``/``finish`` logic (`_StreamHandlerBase`) and types them as blocking files.

The handler's work is not done in ``__init__`` (socketserver does it there): the
constructor only stores its arguments, and `run_handler` drives ``setup``, ``handle`` and
``finish``, with ``finish`` run even when ``handle`` raised. That keeps each step
awaitable and each one testable on its own.
"""

from __future__ import annotations

import functools
import inspect
import io
import socketserver
import weakref
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, cast, final

import trio

from ._exceptions import BrokenConnectionError
from ._files import DEFAULT_MAX_LINE_LENGTH, DEFAULT_RECEIVE_SIZE, AsyncReader, AsyncWriter
from ._sync import SyncConnection, SyncReader, SyncWriter, run_sync_handler

if TYPE_CHECKING:
    from ._server import BaseServer, HandlerClass

__all__ = [
    "BaseRequestHandler",
    "EchoHandler",
    "StreamRequestHandler",
    "SyncStreamRequestHandler",
    "run_handler",
]


@final
class _Done:
    """An awaitable that is complete already: what the base hooks return."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator function

    def __repr__(self) -> str:
        return "<done>"


_DONE = _Done()


class BaseRequestHandler:
    """The base of every request handler: ``setup()``, ``handle()``, ``finish()``.

    The server constructs one handler per request (a connection, or a datagram) and runs
    ``setup()``, then ``handle()``, then ``finish()``, which runs even when ``handle()``
    raised. Override them with ``async def`` (the handler runs in a Trio task) or with
    plain ``def`` (the handler runs in a worker thread, as ported socketserver code does).

    Attributes:
      request: what the server received: on stream servers the connection's
        `trio.abc.Stream` (a socket-like object for sync handlers); on datagram servers the
        pair ``(data, socket)``.
      client_address: the peer's address.
      server: the server that accepted the request.
    """

    def __init__(self, request: Any, client_address: Any, server: BaseServer) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server

    def setup(self) -> Any:
        """Prepare for `handle`. Returns an awaitable: ``await super().setup()`` works."""
        return _DONE

    def handle(self) -> Any:
        """Serve the request. Override this (``async def`` or ``def``)."""
        return _DONE

    def finish(self) -> Any:
        """Clean up after `handle`, even when it raised. ``await super().finish()`` works."""
        return _DONE

    async def _after_finish(self) -> None:
        """A step for base classes, run by `run_handler` after ``finish()`` (not for users).

        `trioserve.DatagramRequestHandler` sends its reply here, so the reply goes out once,
        after any ``finish()`` override, whether or not it called ``super().finish()``.
        """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_handler_class(cls)


def _is_coroutine_function(func: object) -> bool:
    return inspect.iscoroutinefunction(func)


def _check_handler_class(cls: type[BaseRequestHandler]) -> None:
    """Reject a handler that mixes a sync ``handle`` with an async ``setup``/``finish``."""
    if is_sync_handler(cls):
        for name in ("setup", "finish"):
            if _is_coroutine_function(getattr(cls, name)):
                raise TypeError(
                    f"{cls.__qualname__}.handle is a plain def but {name} is async def: "
                    "a handler's setup, handle and finish must be all async or all sync"
                )


def handler_type(handler_class: object) -> type[Any] | None:
    """The handler class behind *handler_class*: itself, or what a `functools.partial` wraps.

    None when it is neither a subclass of `BaseRequestHandler` or of socketserver's, nor
    a (nested) `functools.partial` of one, so not something a server can run.
    """
    for _ in range(16):  # partial(partial(...)): a few levels, never a cycle
        if not isinstance(handler_class, functools.partial):
            break
        handler_class = handler_class.func
    if isinstance(handler_class, type) and issubclass(
        handler_class, (BaseRequestHandler, socketserver.BaseRequestHandler)
    ):
        return handler_class
    return None


def is_sync_handler(cls: Any) -> bool:
    """Whether instances of *cls* run in a worker thread.

    True for a trioserve handler whose ``handle`` is a plain function, and for a handler
    class of the standard library's ``socketserver`` (which runs in its constructor).
    *cls* may also be a `functools.partial` of such a class, as socketserver allows.
    """
    if isinstance(cls, functools.partial):
        cls = handler_type(cls)
    handle = getattr(cls, "handle", None)
    cached = _sync_handlers.get(cls)
    if cached is not None and cached[0] is handle:
        return cached[1]
    if not issubclass(cls, BaseRequestHandler):
        sync = True
    else:
        sync = handle is not BaseRequestHandler.handle and not _is_coroutine_function(handle)
    _sync_handlers[cls] = (handle, sync)
    return sync


# is_sync_handler's answers, per class, with the ``handle`` each was worked out from (a
# class whose ``handle`` is replaced later is asked again). Weak: classes may come and go.
_sync_handlers: weakref.WeakKeyDictionary[type[Any], tuple[object, bool]] = (
    weakref.WeakKeyDictionary()
)


async def run_handler(
    handler_class: HandlerClass,
    request: Any,
    client_address: Any,
    server: BaseServer,
) -> None:
    """Run one handler for one request: ``setup``, ``handle``, then ``finish`` always.

    Sync handlers and socketserver's own handler classes go to a worker thread
    (`trioserve._sync`); async handlers run in the calling task.
    """
    if is_sync_handler(handler_class):
        await run_sync_handler(handler_class, request, client_address, server)
        return
    # Not sync, so a trioserve handler (socketserver's own always run in a thread).
    await run_async_handler(
        cast("type[BaseRequestHandler] | functools.partial[BaseRequestHandler]", handler_class),
        request,
        client_address,
        server,
    )


async def run_async_handler(
    handler_class: type[BaseRequestHandler] | functools.partial[BaseRequestHandler],
    request: Any,
    client_address: Any,
    server: BaseServer,
) -> None:
    """`run_handler` for a class known to be an async handler (`is_sync_handler` is false)."""
    handler = handler_class(request, client_address, server)
    # Each step is awaited here, not in a helper: one frame fewer under each checkpoint,
    # and the base classes' _DONE is recognised without asking whether it is awaitable.
    step = handler.setup()
    if step is not _DONE and inspect.isawaitable(step):
        await step
    try:
        step = handler.handle()
        if step is not _DONE and inspect.isawaitable(step):
            await step
    finally:
        step = handler.finish()
        if step is not _DONE and inspect.isawaitable(step):
            await step
        if isinstance(handler, _StreamHandlerBase) and hasattr(handler, "wfile"):
            await handler._flush_and_close()
        if type(handler)._after_finish is not BaseRequestHandler._after_finish:
            await handler._after_finish()


class _StreamHandlerBase(BaseRequestHandler):
    """What the async and the sync stream handler share: the options, setup and finish.

    ``setup()`` and ``finish()`` look at how the handler runs (`is_sync_handler`): an
    async handler gets `AsyncReader`/`AsyncWriter` over the Trio stream, a sync one
    `SyncReader`/`SyncWriter` over its blocking socket.
    """

    rbufsize: int = -1
    wbufsize: int = 0
    timeout: float | None = None
    disable_nagle_algorithm: bool = False
    max_line_length: int | None = DEFAULT_MAX_LINE_LENGTH

    # Each subclass narrows these to the types of its own kind of handler.
    request: Any
    connection: Any
    rfile: AsyncReader | io.BufferedIOBase
    wfile: AsyncWriter | io.BufferedIOBase

    def setup(self) -> Any:
        """Create ``self.connection``, ``self.rfile`` and ``self.wfile``."""
        receive_size = self.rbufsize if self.rbufsize > 0 else DEFAULT_RECEIVE_SIZE
        self.connection = self.request
        if is_sync_handler(type(self)):
            if self.timeout is not None:
                self.request.settimeout(self.timeout)
            self.rfile = SyncReader(
                self.request, receive_size=receive_size, max_line_length=self.max_line_length
            )
            self.wfile = SyncWriter(self.request, bufsize=self.wbufsize)
            return _DONE
        self.rfile = AsyncReader(
            self.request,
            receive_size=receive_size,
            timeout=self.timeout,
            max_line_length=self.max_line_length,
        )
        self.wfile = AsyncWriter(self.request, bufsize=self.wbufsize, timeout=self.timeout)
        return _DONE

    def finish(self) -> Any:
        """Flush and close ``wfile``, close ``rfile``. Returns an awaitable to await."""
        wfile, rfile = self.wfile, self.rfile
        if not isinstance(wfile, AsyncWriter):
            if not wfile.closed:
                try:
                    wfile.flush()
                except OSError:
                    pass  # as socketserver does: the peer is gone, there is no one to tell
                wfile.close()
            rfile.close()
            return _DONE
        if wfile.bufsize:
            return self._flush_and_close()
        wfile.close()
        rfile.close()
        return _DONE

    async def _flush_and_close(self) -> None:
        wfile = self.wfile
        if not isinstance(wfile, AsyncWriter):
            return
        if not wfile.closed:
            try:
                await wfile.flush()
            except (BrokenConnectionError, trio.ClosedResourceError):
                pass  # as socketserver does: the peer is gone, there is no one to tell
            wfile.close()
        self.rfile.close()


class StreamRequestHandler(_StreamHandlerBase):
    """A handler for stream servers, with ``rfile`` and ``wfile``.

    ``setup()`` creates the files over ``self.request``; ``finish()`` flushes and closes
    them. In an async handler they are `AsyncReader` and `AsyncWriter`
    (``await self.rfile.readline()``, ``async for line in self.rfile``,
    ``await self.wfile.write(data)``). A subclass with a plain-``def`` ``handle`` is a
    sync handler (ported socketserver code): it runs in a worker thread, its ``request``
    is a blocking socket and its files are blocking `SyncReader` and `SyncWriter`, though
    typed here as the async ones; typed sync code derives from `SyncStreamRequestHandler`.

    Class attributes:
      rbufsize: how much one receive asks for; -1 (the default) means 64 KiB.
      wbufsize: 0 (the default) sends every ``wfile.write`` at once; a positive size
        buffers writes until that many bytes wait (or ``flush()``, or ``finish()``).
      timeout: seconds any one read or write may wait for the peer before raising
        `TimeoutError`, which ends the handler; None (the default) waits forever. An
        async handler's ``rfile.readline()`` must get its whole line within it.
      disable_nagle_algorithm: accepted for compatibility; Trio's socket streams always
        set ``TCP_NODELAY``, so small responses are never held back.
      max_line_length: the longest line ``rfile.readline()`` without a limit accepts,
        terminator included, before it raises `LineTooLongError`; None for no limit.
    """

    request: trio.abc.Stream
    connection: trio.abc.Stream
    rfile: AsyncReader
    wfile: AsyncWriter


class SyncStreamRequestHandler(_StreamHandlerBase):
    """A typed sync stream handler: ``def handle(self)``, blocking files, a real socket.

    The same machinery as a sync `StreamRequestHandler`, with the attribute types a type
    checker needs for blocking code: ``self.rfile.readline()`` is `bytes`, not a
    coroutine. ``setup``, ``handle`` and ``finish`` run in a worker thread; ``handle``
    must be a plain ``def``. The class attributes are `StreamRequestHandler`'s.

    Attributes:
      request: the connection: a blocking `socket.socket` (on a duplicate of the
        connection's descriptor, with ``TCP_NODELAY`` on) for TCP and Unix connections, a
        `StreamSocket` with the same methods over other streams (TLS).
      connection: the same as ``request``.
      rfile: a `SyncReader` (`io.BufferedIOBase`): ``read``, ``readline(limit)``,
        ``readlines``, iteration.
      wfile: a `SyncWriter` (`io.BufferedIOBase`): ``write``, ``writelines``,
        ``flush``.
    """

    request: SyncConnection
    connection: SyncConnection
    rfile: io.BufferedIOBase
    wfile: io.BufferedIOBase

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if _is_coroutine_function(cls.handle):
            raise TypeError(
                f"{cls.__qualname__} derives from SyncStreamRequestHandler, so its handle "
                "must be a plain def; derive from StreamRequestHandler for async def"
            )

    def handle(self) -> None:
        """Serve the connection, blocking. Override this with a plain ``def``."""


class EchoHandler(StreamRequestHandler):
    """Send back every byte received, until the peer closes. The built-in demo handler."""

    async def handle(self) -> None:
        while data := await self.rfile.read1():
            await self.wfile.write(data)
