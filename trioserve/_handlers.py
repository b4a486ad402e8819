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
constructor only stores its arguments, and `run_handler_life`, the one driver of both
kinds, runs ``setup``, ``handle`` and ``finish``, with ``finish`` run even when ``handle``
raised. That keeps each step
awaitable and each one testable on its own.
"""

from __future__ import annotations

import functools
import inspect
import io
import socketserver
import weakref
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, TypeAlias, final

import trio

from ._buffer import input_budget
from ._direct import direct
from ._exceptions import BrokenConnectionError
from ._files import DEFAULT_MAX_LINE_LENGTH, DEFAULT_RECEIVE_SIZE, AsyncReader, AsyncWriter
from ._streamsocket import SyncConnection
from ._syncfiles import SyncReader, SyncWriter

if TYPE_CHECKING:
    from ._server import BaseServer

__all__ = [
    "DONE",
    "BaseRequestHandler",
    "EchoHandler",
    "HandlerClass",
    "StreamRequestHandler",
    "SyncStreamRequestHandler",
    "handler_type",
    "is_handler",
    "is_sync_handler",
    "run_async_handler",
    "run_handler_life",
    "run_sync_handler_life",
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
#: The complete awaitable the base hooks return (for the other modules of the package).
DONE = _DONE


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

    def _trioserve_end(self) -> Any:
        """The base classes' last step, after ``finish()`` (not for users to call).

        Stream handlers flush and close their files here, in case a ``finish()`` override
        did not call ``super().finish()``; `trioserve.DatagramRequestHandler` sends its
        reply, so it goes out once, after any ``finish()`` override. Returns an awaitable,
        as the hooks do. (Prefixed so it cannot collide with a name of a class mixed in.)
        """
        return _DONE

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


def is_handler(handler: object) -> bool:
    """Whether a server can run *handler* as its ``RequestHandlerClass``.

    A handler class (trioserve's or socketserver's), a `functools.partial` of one, or a
    callable that is not a class (a function, as socketserver allows). A class that is
    not a handler class, or a partial of one, is a mistake and is refused.
    """
    inner = handler
    for _ in range(16):
        if not isinstance(inner, functools.partial):
            break
        inner = inner.func
    if isinstance(inner, type):
        return handler_type(handler) is not None
    return callable(inner) and not isinstance(handler, functools.partial)


def is_sync_handler(cls: Any) -> bool:
    """Whether instances of *cls* run in a worker thread.

    True for a trioserve handler whose ``handle`` is a plain function, for a handler class
    of the standard library's ``socketserver`` (which runs in its constructor), and for
    any other callable a server is given as its ``RequestHandlerClass`` (socketserver
    calls whatever it is given, and so, in a worker thread, does trioserve). *cls* may
    also be a `functools.partial` of such a class, as socketserver allows.
    """
    if isinstance(cls, functools.partial):
        cls = handler_type(cls)
    if not isinstance(cls, type):
        return True
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


#: What a server runs per request: a handler class, a `functools.partial` of one, or (as
#: socketserver allows) any callable taking ``(request, client_address, server)``.
#: (`functools.partial` is invariant: ``partial[Any]`` lets a partial of a subclass in.)
HandlerClass: TypeAlias = (
    "type[BaseRequestHandler] | type[socketserver.BaseRequestHandler] "
    "| functools.partial[Any] | Callable[..., Any]"
)

# is_sync_handler's answers, per class, with the ``handle`` each was worked out from (a
# class whose ``handle`` is replaced later is asked again). Weak: classes may come and go.
_sync_handlers: weakref.WeakKeyDictionary[type[Any], tuple[object, bool]] = (
    weakref.WeakKeyDictionary()
)


async def run_handler_life(
    handler_class: HandlerClass,
    request: Any,
    client_address: Any,
    server: Any,
    sync: bool = False,
) -> None:
    """The life of one handler: the one driver of both kinds of handler.

    Constructs the handler, then runs ``setup()``, ``handle()``, ``finish()`` (run even
    when ``handle()`` raised) and the base classes' closing step, with Python's own
    ``try``/``finally``. For an async handler (the default) each step that returns an
    awaitable is awaited here, in the calling task: this is `run_async_handler`. For a
    sync handler (*sync*, in a worker thread: `run_sync_handler_life`) each step is done when it
    returns, nothing is awaited, and so the coroutine finishes without ever suspending; a
    step that returns a coroutine is a handler that mixes ``def`` and ``async def``, and
    raises `TypeError`. socketserver's own handler classes run everything in their
    constructor.

    The server's ``handler_timeout`` (if set) becomes the handler's ``timeout`` when the
    handler class leaves that None.

    Written flat, with each step awaited inline and the base classes' `_DONE` recognised
    without asking whether it is awaitable: it runs once per connection, and once per
    datagram, and every checkpoint of ``handle()`` passes through its frame. (Driving a
    generator of steps instead cost about 0.45 µs per datagram more.)
    """
    handler = handler_class(request, client_address, server)
    if not isinstance(handler, BaseRequestHandler):
        return  # socketserver's handlers (or any callable) do their work when called
    timeout = getattr(server, "handler_timeout", None)
    if timeout is not None and getattr(handler, "timeout", 0) is None:
        handler.timeout = timeout  # type: ignore[attr-defined]
    step = handler.setup()
    if step is not _DONE:
        if sync:
            _refuse_coroutine(step)
        elif inspect.isawaitable(step):
            await step
    try:
        step = handler.handle()
        if step is not _DONE:
            if sync:
                _refuse_coroutine(step)
            elif inspect.isawaitable(step):
                await step
    finally:
        step = handler.finish()
        if step is not _DONE:
            if sync:
                _refuse_coroutine(step)
            elif inspect.isawaitable(step):
                await step
        step = handler._trioserve_end()
        if step is not _DONE:
            if sync:
                _refuse_coroutine(step)
            elif inspect.isawaitable(step):
                await step


def _refuse_coroutine(step: object) -> None:
    if inspect.iscoroutine(step):
        step.close()
        raise TypeError(
            "a sync handler's step returned a coroutine: setup, handle and finish of a "
            "handler must be all async def or all def"
        )


#: Run an async handler for one request in the calling task (`is_sync_handler` false):
#: `run_handler_life` itself, so that no frame stands between the request path and it.
run_async_handler = run_handler_life


def run_sync_handler_life(
    handler_class: HandlerClass, request: Any, client_address: Any, server: Any
) -> None:
    """Run a sync handler's life (in a worker thread): each step is done when it returns.

    The same driver as an async handler's, `run_handler_life`, run without awaiting.

    Raises:
      TypeError: a step returned a coroutine (``setup``, ``handle`` and ``finish`` mix
        ``def`` and ``async def``).
    """
    life = run_handler_life(handler_class, request, client_address, server, sync=True)
    try:
        life.send(None)
    except StopIteration:
        return
    life.close()  # pragma: no cover - a sync life awaits nothing, so never suspends
    raise RuntimeError("a sync handler's life suspended")  # pragma: no cover


class _StreamHandlerBase(BaseRequestHandler):
    """What the async and the sync stream handler share: the options, setup and finish.

    ``setup()`` looks at what it was given, not at how the handler is written: over a
    `trio.abc.Stream` (an async handler's request) it makes `AsyncReader`/`AsyncWriter`,
    over a blocking socket (what the sync adapter hands a sync handler) `SyncReader` and
    `SyncWriter`.
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
        request = self.connection = self.request
        budget = input_budget(self.server)  # the server's bound on unread input
        if isinstance(request, trio.abc.Stream):
            # Over a plain socket stream both files share one DirectSocket: the pacing
            # count is the connection's, and a read after an answer gives the peer time
            # first (`trioserve._direct`). The files take it where a stream goes.
            stream: Any = direct(request) or request
            self.rfile = AsyncReader(
                stream,
                receive_size=receive_size,
                timeout=self.timeout,
                max_line_length=self.max_line_length,
                budget=budget,
            )
            self.wfile = AsyncWriter(stream, bufsize=self.wbufsize, timeout=self.timeout)
            return _DONE
        if self.timeout is not None:
            request.settimeout(self.timeout)
        self.rfile = SyncReader(
            request,
            receive_size=receive_size,
            max_line_length=self.max_line_length,
            budget=budget,
        )
        self.wfile = SyncWriter(request, bufsize=self.wbufsize)
        return _DONE

    def finish(self) -> Any:
        """Flush and close ``wfile``, close ``rfile``. Returns an awaitable to await."""
        wfile = self.wfile
        if isinstance(wfile, AsyncWriter) and wfile.bufsize and not wfile.closed:
            return self._trioserve_flush_and_close(wfile)
        return self._trioserve_end()

    def _trioserve_end(self) -> Any:
        # Also the safety net for a finish() override that forgot super().finish().
        wfile = getattr(self, "wfile", None)
        if wfile is None:
            return _DONE  # setup() never ran to the end
        if isinstance(wfile, AsyncWriter):
            if wfile.closed:
                return _DONE
            if wfile.bufsize:
                return self._trioserve_flush_and_close(wfile)
            wfile.close()
        elif not wfile.closed:
            try:
                wfile.flush()
            except OSError:
                pass  # as socketserver does: the peer is gone, there is no one to tell
            wfile.close()
        self.rfile.close()
        return _DONE

    async def _trioserve_flush_and_close(self, wfile: AsyncWriter) -> None:
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
      request: the connection: a blocking `socket.socket` (on the connection's own
        descriptor, with ``TCP_NODELAY`` on) for TCP and Unix connections, a
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
