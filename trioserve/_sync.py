"""Sync handlers: socketserver code, unchanged, in worker threads.

A handler whose ``handle`` is a plain ``def`` (and any handler class of the standard
library's ``socketserver``, or any other callable given as ``RequestHandlerClass``)
blocks: ``self.request.recv(1024)`` waits for the peer. It runs in a worker thread,
``setup`` to ``finish``, while the Trio task that owns the request waits for it.

This module is an adapter over the one request path, not a second server: the request
still goes through the server's hooks (``verify_request``, ``process_request``,
``shutdown_request``...), and the handler's life is the same steps as an async handler's
(`trioserve._handlers.run_handler_life`), driven in the thread. What the adapter adds is the
request a blocking handler can use, and the thread:

* a plain `trio.SocketStream` (TCP, Unix) becomes a real, blocking `socket.socket` on
  its descriptor (`trioserve._threads.ThreadSocket`): every method of a socket works
  (``recv``, ``sendall``, ``makefile``, ``settimeout``, ``sendfile``...) at socketserver's
  speed, with ``TCP_NODELAY`` still on. Cancelling the handler shuts the connection down,
  which wakes the thread;
* any other stream (`trio.SSLStream`, a user's own) becomes a `StreamSocket`;
* a datagram request ``(data, socket)`` gets a blocking socket on the server's socket;
* anything else is passed through.

The blocking socket is made in the thread, once a thread is free, on the request's own
descriptor: a sync connection holds one descriptor, and closing the thread's socket
leaves it open (`trioserve._threads`). A server's ``handler_timeout`` becomes the socket's
timeout before the handler runs (socketserver's own handler classes set theirs in their
constructor, over it, if their ``timeout`` is not None).

How many threads
----------------
At most ``server.max_handler_threads`` handlers run at once. None, the default, follows
the server's bound on concurrent requests (``max_connections``, or a datagram server's
``max_concurrent_datagrams``), as socketserver's ``ThreadingMixIn`` gives every
connection a thread: a handler holds its thread for its connection's whole life, idle or
not, so a lower bound lets idle clients lock new ones out. ``http.server`` handlers run
request by request (below) are the exception: their threads serve requests, never idle
connections, and None bounds them at `REQUEST_THREADS` (256).

Keep-alive HTTP without a thread
--------------------------------
``http.server``'s handlers are the exception, and the common case: their ``handle`` loops
over ``handle_one_request()`` until the connection closes, and a keep-alive client is
idle between requests most of its life. When the handler class is a
``BaseHTTPRequestHandler`` whose ``handle`` and ``__init__`` are the standard library's
own (``SimpleHTTPRequestHandler``, and any subclass that only adds ``do_GET``...), over
a plain TCP or Unix connection, this module runs that loop itself, as gunicorn's threaded
worker does (`_KeepAlive`): ``setup()``, then each ``handle_one_request()``, then
``finish()``, each in a worker thread, and between two requests the connection waits in
Trio (``epoll``), holding no thread, until its next request arrives. A request then takes
a thread only while it is read and answered, and an idle keep-alive connection costs a
few KiB instead of a thread. The wait between requests lasts the server's
``keep_alive_timeout`` (`trioserve.HTTPServer` has one, 75 s), or else the handler's
timeout, as in ``http.server``; when it runs out the connection is closed quietly. Once
the server is draining, a connection closes after its request instead of waiting.
Bytes of a next request already in the handler's buffer (pipelining) are served at once.
A handler that overrides ``handle`` or ``__init__`` runs as any other sync handler.
"""

from __future__ import annotations

import functools
import http.server
import io
import logging
import math
import select
import socket
import socketserver
from collections.abc import Callable
from typing import Any, Final, final

import trio

from ._handlers import HandlerClass, run_sync_handler_life
from ._streamsocket import StreamSocket
from ._threads import (
    ABANDON_AFTER,
    OwnedConnections,
    ThreadSocket,
    run_in_handler_thread,
    start_handler_thread,
    take_handler_thread,
)

__all__ = [
    "REQUEST_THREADS",
    "HandOff",
    "keep_alive_handler",
    "run_sync_handler",
    "thread_limit",
]

logger = logging.getLogger("trioserve")


#: The default bound on the threads of ``http.server`` handlers run request by request: a
#: thread there serves one request, never an idle connection, so it need not follow
#: ``max_connections``; and a request being read holds its thread and what
#: ``http.server`` buffered of it (up to 64 KiB a line), so ten thousand slow clients
#: must not take ten thousand threads (measured: 795 MiB).
REQUEST_THREADS = 256


def thread_limit(server: Any, *, per_request: bool = False) -> int | None:
    """How many sync handlers of *server* may run at once; None for no limit.

    ``max_handler_threads``, or when that is None the server's bound on concurrent
    requests (``max_connections``; ``max_concurrent_datagrams`` on datagram servers), at
    most `REQUEST_THREADS` for handlers run request by request (*per_request*).
    """
    limit: int | None = getattr(server, "max_handler_threads", None)
    if limit is None:
        option = getattr(server, "_trioserve_limit_option", "max_connections")
        limit = getattr(server, option, None)
        if per_request and (limit is None or limit > REQUEST_THREADS):
            limit = REQUEST_THREADS
    return limit


@final
class HandOff:
    """What a worker thread needs to serve a connection to its end (the request path's).

    Args:
      owned: where the connection is registered while threads own it: the serving run
        waits for it there, and cancelling the run shuts it down.
      nursery: where a keep-alive connection waits for its next request, in a task of
        its own, between two threads.
      end: the request path's last steps, called in the thread once the connection is
        done with (`run_to_end`): with the connection (to `OwnedConnections.discard` as
        it closes its socket) and what the handler raised (from the ``except`` block that
        caught it), or None.
    """

    __slots__ = ("end", "nursery", "owned", "task")

    def __init__(
        self,
        owned: OwnedConnections,
        nursery: trio.Nursery,
        end: Callable[[Any, BaseException | None], None],
    ) -> None:
        self.owned = owned
        self.nursery = nursery
        self.end = end
        #: The task the connection's threads work for (`trioserve._threads.waiting_task`):
        #: the one that handed it off.
        self.task = trio.lowlevel.current_task()

    async def hand_over(
        self,
        connection: _Connection,
        limit: int | None,
        work: Callable[[], object],
        *,
        registered: bool = False,
    ) -> None:
        """Register *connection* (unless *registered*), and run *work* for it to its end
        (`run_to_end`) in one of its server's at most *limit* handler threads, once one
        is free."""
        if not registered:
            self.owned.add(connection)
        try:
            await take_handler_thread(connection.server, limit)
            self.start(connection, limit, work, taken=True)
        except BaseException:
            if not registered:
                self.owned.discard(connection)  # no thread: the caller ends it
            raise

    def start(
        self,
        connection: _Connection,
        limit: int | None,
        work: Callable[[], object],
        *,
        taken: bool,
    ) -> None:
        """In the Trio thread: `run_to_end` in a handler thread (`start_handler_thread`)."""
        start_handler_thread(
            connection.server,
            limit,
            self.task,
            self.owned,
            lambda: self.run_to_end(connection, work),
            taken=taken,
        )

    def run_to_end(self, connection: _Connection, work: Callable[[], object]) -> None:
        """In the thread: *work*, then the request path ends *connection* (`end`), with
        what *work* raised; unless *work* returned False: the connection lives on."""
        try:
            if work() is False:
                return
        except BaseException as exc:
            self.end(connection, exc)
        else:
            self.end(connection, None)


async def run_sync_handler(
    handler_class: HandlerClass,
    request: Any,
    client_address: Any,
    server: Any,
    hand_off: HandOff | None = None,
) -> bool:
    """Run a sync handler (or a socketserver handler class) for one request, in a thread.

    The handler gets a blocking, socket-like ``request`` (see the module documentation);
    ``setup``, ``handle`` and ``finish`` run in a worker thread, ``finish`` even when
    ``handle`` raised, at most `thread_limit` at once. An ``http.server`` handler on a
    TCP or Unix connection runs request by request instead, and waits for each next
    request in Trio (`keep_alive_handler`).

    Args:
      handler_class: a trioserve handler class with a plain-``def`` ``handle``, a
        subclass of ``socketserver.BaseRequestHandler``, or another callable.
      request: the request as the server received it: a Trio stream, or a datagram
        ``(data, socket)``.
      client_address: the peer's address.
      server: the server.
      hand_off: for a `trio.SocketStream`, what a worker thread needs to serve the
        connection to its end; None to return to the caller for that.

    Returns:
      True if the connection was handed to a worker thread with *hand_off*, which ends
      it (the caller must leave it alone); False once it was served here.

    Raises:
      Exception: whatever the handler raised, for the server's ``handle_error``.

    Resource handling:
      A socket given to the handler is closed when the handler returns; *request* itself
      stays open, for the server to shut down and close (unless handed off).
    """
    timeout: float | None = getattr(server, "handler_timeout", None)
    if isinstance(request, trio.SocketStream):
        http_handler = keep_alive_handler(handler_class)
        if http_handler is not None:
            connection = _KeepAlive(http_handler, request.socket, client_address, server, timeout)
            return await connection.serve(thread_limit(server, per_request=True), hand_off)
        if hand_off is not None:
            whole = _Whole(handler_class, request.socket, client_address, server, timeout)
            await hand_off.hand_over(whole, thread_limit(server), whole.handle)
            return True
    limit = thread_limit(server)

    def run(blocking_request: Any) -> None:
        run_sync_handler_life(handler_class, blocking_request, client_address, server)

    thread_socket: list[ThreadSocket] = []  # for an abandoned thread (_adopt)

    def run_on(trio_sock: trio.socket.SocketType, *, datagram: bytes | None = None) -> None:
        sock = ThreadSocket.lend(trio_sock, timeout=timeout, shared=datagram is not None)
        thread_socket.append(sock)
        try:
            run(sock if datagram is None else (datagram, sock))
        finally:
            sock.release()

    if isinstance(request, trio.SocketStream):
        trio_sock = request.socket

        def shut_down() -> None:
            _shut_down(trio_sock)

        await run_in_handler_thread(
            server,
            limit,
            lambda: run_on(trio_sock),
            shut_down,
            lambda: _adopt(thread_socket, trio_sock),
        )
    elif isinstance(request, trio.abc.Stream):
        view = StreamSocket(request, trio.lowlevel.current_trio_token())
        if timeout is not None:
            view.settimeout(timeout)
        await run_in_handler_thread(server, limit, lambda: run(view), view.cancel)
    elif _is_datagram(request):
        data, trio_sock = request
        await run_in_handler_thread(
            server, limit, lambda: run_on(trio_sock, datagram=data), _nothing
        )
    else:
        await run_in_handler_thread(server, limit, lambda: run(request), _nothing)
    return False


class _Connection:
    """A plain connection a sync handler serves, as its threads and the Trio side see it."""

    __slots__ = ("client_address", "server", "trio_sock")

    def __init__(self, trio_sock: trio.socket.SocketType, client_address: Any, server: Any):
        self.trio_sock = trio_sock
        self.client_address = client_address
        self.server = server

    def shut_down(self) -> None:
        """From the Trio thread: make the handler's socket calls return."""
        _shut_down(self.trio_sock)


@final
class _Whole(_Connection):
    """A sync handler's connection, served to its end by one worker thread (`HandOff`)."""

    __slots__ = ("handler_class", "timeout")

    def __init__(
        self,
        handler_class: HandlerClass,
        trio_sock: trio.socket.SocketType,
        client_address: Any,
        server: Any,
        timeout: float | None,
    ) -> None:
        super().__init__(trio_sock, client_address, server)
        self.handler_class = handler_class
        self.timeout = timeout

    def handle(self) -> None:
        """In the thread: the handler, on a socket lent for its life."""
        sock = ThreadSocket.lend(self.trio_sock, timeout=self.timeout)
        try:
            run_sync_handler_life(self.handler_class, sock, self.client_address, self.server)
        finally:
            sock.release()


def _is_datagram(request: Any) -> bool:
    return (
        type(request) is tuple
        and len(request) == 2
        and isinstance(request[1], trio.socket.SocketType)
    )


def _nothing() -> None:
    return None


def _adopt(sockets: list[ThreadSocket], trio_sock: trio.socket.SocketType) -> None:
    """An abandoned thread keeps the descriptor it was lent: the Trio side lets go of it."""
    if sockets and sockets[0].adopt():
        trio_sock.detach()


def _shut_down(trio_sock: trio.socket.SocketType) -> None:
    try:
        trio_sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more: the handler's calls return already


# -- http.server handlers, request by request ------------------------------------------------

#: How long (seconds) a thread that answered a keep-alive request waits for the next one
#: before it hands the connection back to Trio: a busy client's next request comes within
#: it, and is served with no trip through Trio; an idle connection holds no thread longer.
LINGER = 0.002
_LINGER_MS: Final = math.ceil(LINGER * 1000)

#: The ``__init__`` of the standard library's handler classes: they only store their
#: arguments (and ``directory``) before socketserver's runs the connection.
_STDLIB_MODULES: Final = frozenset({"socketserver", "http.server"})

_BaseHTTP = http.server.BaseHTTPRequestHandler


@final
class _HTTPHandler:
    """How to construct an ``http.server`` handler without running its connection."""

    __slots__ = ("args", "cls", "keywords")

    def __init__(self, cls: type[_BaseHTTP], args: tuple[Any, ...], keywords: dict[str, Any]):
        self.cls = cls
        self.args = args
        self.keywords = keywords

    def construct(self, request: Any, client_address: Any, server: Any) -> _BaseHTTP:
        """The handler, set up as its constructor leaves it, minus the connection's loop.

        socketserver's ``__init__`` stores its arguments, then runs ``setup()``,
        ``handle()`` and ``finish()``: those three are shadowed on the instance by no-ops
        while it runs, so ``__init__`` (``SimpleHTTPRequestHandler``'s sets
        ``directory``) does everything but serve.
        """
        cls = self.cls
        handler = cls.__new__(cls)
        shadows = handler.__dict__
        for name in ("setup", "handle", "finish"):
            shadows[name] = _nothing
        try:
            init: Any = cls.__init__
            init(handler, *self.args, request, client_address, server, **self.keywords)
        finally:
            for name in ("setup", "handle", "finish"):
                shadows.pop(name, None)
        return handler


def keep_alive_handler(handler_class: object) -> _HTTPHandler | None:
    """How to run *handler_class* request by request; None if it is not that simple.

    Not None for a subclass of ``http.server.BaseHTTPRequestHandler`` (or a
    `functools.partial` of one) whose ``handle`` and ``__init__`` are the standard
    library's own: its connection is ``setup()``, ``handle_one_request()`` until
    ``close_connection``, ``finish()``, and nothing else.
    """
    args: tuple[Any, ...] = ()
    keywords: dict[str, Any] = {}
    if isinstance(handler_class, functools.partial):
        args, keywords = handler_class.args, handler_class.keywords
        handler_class = handler_class.func
    if not (isinstance(handler_class, type) and issubclass(handler_class, _BaseHTTP)):
        return None
    if handler_class.handle is not _BaseHTTP.handle:
        return None
    if getattr(handler_class.__init__, "__module__", None) not in _STDLIB_MODULES:
        return None
    return _HTTPHandler(handler_class, args, keywords)


def _close_when_draining(handler: _BaseHTTP, server: Any) -> None:
    """Make a response begun while the server drains say ``Connection: close``.

    So the client (or the load balancer) sends its next request elsewhere rather than on
    a connection about to close.
    """
    end_headers = handler.end_headers

    def end_headers_then_close() -> None:
        if not handler.close_connection and getattr(server, "draining", False):
            handler.send_header("Connection", "close")  # sets close_connection too
        end_headers()

    handler.end_headers = end_headers_then_close  # type: ignore[method-assign]


def _idle_file() -> io.BufferedReader:
    reader: io.BufferedReader = io.BufferedReader(io.BytesIO(), buffer_size=1)
    reader.close()
    return reader


#: What an idle connection's ``rfile`` is while its buffer is released: a closed file,
#: so that a ``finish()`` meanwhile closes it again, which does nothing.
_IDLE_RFILE: Final = _idle_file()

#: The ``setup`` whose ``rfile`` is ``connection.makefile("rb", rbufsize)``: an idle
#: connection's may be dropped, and made again for the next request.
_STDLIB_SETUP: Final = socketserver.StreamRequestHandler.setup


def _readable(trio_sock: trio.socket.SocketType, milliseconds: int = 0) -> bool:
    """Whether *trio_sock* has bytes, or its end, to read: one poll(2), waiting at most
    *milliseconds* (by default, not at all)."""
    poller = select.poll()
    poller.register(trio_sock.fileno(), select.POLLIN)
    return bool(poller.poll(milliseconds))


def _has_buffered_input(rfile: Any, sock: socket.socket) -> bool:
    """Whether *rfile* holds bytes of a next request already (the client pipelines).

    Peeks without blocking: the socket is non-blocking for the moment, so a peek at an
    empty buffer reads what the kernel holds, or nothing. A file without ``peek`` counts
    as holding bytes: the thread then waits in it, as ``http.server`` does.
    """
    if isinstance(rfile, socket.SocketIO):
        return False  # unbuffered (rbufsize = 0): it holds nothing
    peek = getattr(rfile, "peek", None)
    if peek is None or getattr(rfile, "closed", False):
        return peek is None
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        return bool(peek(1))
    except OSError:
        return True  # let the next request find out what is wrong, and report it
    finally:
        sock.settimeout(timeout)


@final
class _KeepAlive(_Connection):
    """One ``http.server`` connection, served request by request (see the module docs).

    The state between thread hops: the handler and its socket. ``busy`` is True while a
    thread works on them, so the Trio side never touches them at the same time, even
    when a thread was abandoned.
    """

    __slots__ = ("busy", "handler", "http", "request_timeout", "sock")

    def __init__(
        self,
        http: _HTTPHandler,
        trio_sock: trio.socket.SocketType,
        client_address: Any,
        server: Any,
        timeout: float | None,
    ) -> None:
        super().__init__(trio_sock, client_address, server)
        self.http = http
        #: The socket's timeout: the handler class's own, or else the server's.
        own = getattr(http.cls, "timeout", None)
        self.request_timeout: float | None = own if own is not None else timeout
        self.handler: _BaseHTTP | None = None
        self.sock: ThreadSocket | None = None
        self.busy = False

    async def serve(self, limit: int | None, hand_off: HandOff | None = None) -> bool:
        """Serve the connection until it closes; ``finish()`` runs whatever happens.

        With *hand_off*, the connection goes to a worker thread for good once its first
        request can be read (`_hand_over`): True is returned then.
        """
        keep_alive: float | None = getattr(self.server, "keep_alive_timeout", None)
        wait = self.request_timeout
        try:
            while True:  # one turn per request, until the connection ends
                if not await self._wait_for_request(wait):
                    break
                if hand_off is not None:
                    await self._hand_over(limit, hand_off)
                    return True
                if await run_in_handler_thread(
                    self.server, limit, self._serve_one, self.shut_down, self._adopt
                ):
                    return False
                if keep_alive is not None:
                    wait = keep_alive
        finally:
            if self.handler is not None and not self.busy and hand_off is None:
                # (a busy one was abandoned)
                with trio.move_on_after(ABANDON_AFTER, shield=True):
                    await run_in_handler_thread(self.server, limit, self._end, _nothing)
        return False

    # -- a connection handed off: its threads end it (HandOff)

    async def _hand_over(
        self, limit: int | None, hand_off: HandOff, *, again: bool = False
    ) -> None:
        """Start a thread that serves the request that came, and the next ones there.

        *again*: the connection is registered already (a thread handed it back to wait
        for its next request in Trio).
        """
        await hand_off.hand_over(self, limit, lambda: self._own(limit, hand_off), registered=again)

    def _own(self, limit: int | None, hand_off: HandOff) -> bool:
        """In the thread: requests, for as long as the next one is here already.

        Returns False once the connection was handed back to a task of its own, to wait
        for its next request (`_wait_in_trio`); True once it ended.
        """
        while not self._serve_one():
            if getattr(self.server, "draining", False):
                self._end()  # no next request once the server stops (as gunicorn)
                return True
            if not self._next_is_here():
                if self._wait_in_trio(limit, hand_off):
                    return False
                self._end()  # the run is over: no task can wait for it
                return True
        return True

    def _next_is_here(self) -> bool:
        """In the thread: whether the next request can be read, waiting `LINGER` at most."""
        handler = self.handler
        assert handler is not None
        assert self.sock is not None
        return _has_buffered_input(handler.rfile, self.sock) or _readable(
            self.trio_sock, _LINGER_MS
        )

    def _wait_in_trio(self, limit: int | None, hand_off: HandOff) -> bool:
        """In the thread: let a new task wait for the next request; False if none can."""
        nursery = hand_off.nursery

        def start() -> None:
            try:
                nursery.start_soon(self._resume, limit, hand_off)
            except RuntimeError:  # the run is stopping: the nursery is closed to new tasks
                self._end_soon(limit, hand_off)

        try:
            hand_off.owned.token.run_sync_soon(start)
        except trio.RunFinishedError:
            return False
        return True

    async def _resume(self, limit: int | None, hand_off: HandOff) -> None:
        """A task of its own: wait for the next request, then hand the connection over again.

        Ends the connection (in a thread) if no request comes in time, the server
        stops, or the task is cancelled.
        """
        keep_alive: float | None = getattr(self.server, "keep_alive_timeout", None)
        try:
            if await self._wait_for_request(
                keep_alive if keep_alive is not None else self.request_timeout, looked=True
            ):
                await self._hand_over(limit, hand_off, again=True)
                return
        except BaseException:
            self._end_soon(limit, hand_off)
            raise
        self._end_soon(limit, hand_off)

    def _end_soon(self, limit: int | None, hand_off: HandOff) -> None:
        """In the Trio thread: ``finish()`` and the connection's end, in a thread started
        at once (not waiting for a free one)."""
        hand_off.start(self, limit, self._end, taken=False)

    async def _wait_for_request(
        self,
        timeout: float | None,  # noqa: ASYNC109
        *,
        looked: bool = False,
    ) -> bool:
        """Wait in Trio until the next request can be read; False if none came in time.

        *looked*: a thread has just found that none can be read yet (`_next_is_here`).
        """
        handler = self.handler
        if handler is not None and getattr(self.server, "draining", False):
            # The server is stopping: no *next* request (as gunicorn does). A connection's
            # first request is always served, even on a connection the drain took over.
            return False
        if handler is not None and not looked:
            assert self.sock is not None
            if _has_buffered_input(handler.rfile, self.sock):
                return True
        if not looked and _readable(self.trio_sock):
            # The request is there already (nearly always a connection's first: the
            # client sends it as it connects): no scope, no wait, no epoll registration.
            await trio.lowlevel.checkpoint_if_cancelled()
            return True
        if handler is not None:
            rfile = handler.rfile
            if type(handler).setup is _STDLIB_SETUP and type(rfile) is io.BufferedReader:
                # Its buffer (8 KiB) is most of what an idle connection costs: let it go
                # while the connection waits (`_serve_one` makes the file again).
                rfile.close()
                handler.rfile = _IDLE_RFILE
        # Only a connection waiting for its *next* request is idle: one that waits for its
        # first (accepted just before a drain, its bytes not there yet) is served.
        state = getattr(self.server, "_trioserve", None) if handler is not None else None
        serving = state.serving if state is not None else None
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            if serving is not None:
                serving.idle.add(scope)  # a drain cancels it: the connection closes at once
            try:
                await trio.lowlevel.wait_readable(self.trio_sock)
            finally:
                if serving is not None:
                    serving.idle.discard(scope)
            return True
        if serving is not None and serving.draining.is_set():
            logger.debug("%r: closing an idle connection: the server stops", self.client_address)
        else:
            logger.debug("%r: closing an idle connection after %s s", self.client_address, timeout)
        return False

    def _adopt(self) -> None:
        sock = self.sock
        if sock is not None and sock.adopt():
            self.trio_sock.detach()

    def _start(self) -> _BaseHTTP:
        """In the thread, before the first request: the socket, the handler, ``setup()``."""
        sock = self.sock = ThreadSocket.lend(self.trio_sock, timeout=self.request_timeout)
        try:
            handler = self.http.construct(sock, self.client_address, self.server)
            handler.setup()
        except BaseException:
            self.sock = None
            sock.release()
            raise
        handler.close_connection = True  # as BaseHTTPRequestHandler.handle begins
        _close_when_draining(handler, self.server)
        self.handler = handler
        return handler

    def _serve_one(self) -> bool:
        """In the thread: one ``handle_one_request()``; True once the connection ended."""
        self.busy = True
        try:
            handler = self.handler
            if handler is None:
                handler = self._start()
            elif handler.rfile is _IDLE_RFILE:
                handler.rfile = handler.connection.makefile("rb", handler.rbufsize)
            try:
                handler.handle_one_request()
            except BaseException:
                self._end()
                raise
            if handler.close_connection:
                self._end()
                return True
            return False
        finally:
            self.busy = False

    def _end(self) -> None:
        """In the thread: ``finish()``, then the thread's socket is closed."""
        handler = self.handler
        sock = self.sock
        self.handler = self.sock = None
        try:
            if handler is not None:
                handler.finish()
        finally:
            if sock is not None:
                sock.release()
