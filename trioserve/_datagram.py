"""Datagram servers: `UDPServer` and `UnixDatagramServer`, and `DatagramRequestHandler`.

One datagram is one request
---------------------------
A datagram server has one socket and no connections. ``get_request`` receives one datagram
(at most ``max_packet_size`` bytes of it) and returns ``((data, socket), client_address)``:
the handler answers with ``await socket.sendto(reply, self.client_address)``. The socket is
the server's own and is never closed per request, so ``shutdown_request`` and
``close_request`` do nothing here; the server closes the socket in ``server_close``. The
lifecycle is the stream servers' (`trioserve._server`): ``serve_forever``, ``shutdown``,
cancellation, ``handle_request``, the hooks and ``handle_error`` all work unchanged,
because they never knew what a request was.

Receiving, and what can go wrong with it
----------------------------------------
Errors from ``recvfrom`` are sorted here, in one place, as the stream servers sort
``accept``'s:

* errnos that report the fate of an earlier *send* (ECONNREFUSED from an ICMP "port
  unreachable", ECONNRESET, EHOSTUNREACH...) say nothing about the next datagram: they are
  logged at debug level and the loop receives the next one;
* "out of resources" (ENOBUFS, ENOMEM) is logged, and receiving resumes after a pause;
* anything else is a real problem and propagates out of ``serve_forever``.

A datagram longer than ``max_packet_size`` is truncated, as the kernel (and socketserver)
truncates it: the rest is discarded. The server asks for one byte more than
``max_packet_size``, so it notices, logs it at debug level and cuts that byte off; the
handler sees the first ``max_packet_size`` bytes.

The server's own socket is read with `trioserve._direct.ServerSocket`: under a flood it
receives several queued datagrams before it yields to the handlers' tasks, rather than
yielding once per datagram (see that module for the rule). A socket a subclass puts in
place of ``self.socket`` is read with its own ``recvfrom``.

Concurrency and backpressure
----------------------------
A nursery server (``ThreadingUDPServer``) runs each datagram's handler in a task of its
own, and at most ``max_concurrent_datagrams`` of them at once: the serve loop takes a slot
*before* it receives. At the limit it stops receiving until a handler finishes, so a flood
waits in the kernel's receive buffer, and past that the kernel drops datagrams, which is
what UDP promises anyway. Memory stays bounded whatever the peers send.

Sync handlers
-------------
A sync handler (``def handle``) runs in a worker thread (`trioserve._sync`) and gets
``(data, sock)`` where ``sock`` is a `socket.socket` on a duplicate of the server's
descriptor: ``sock.sendto(reply, self.client_address)`` blocks the thread, not the server.
The descriptor is shared with the server's Trio socket, so it must stay non-blocking at
the system level; the socket emulates blocking mode with a long timeout, and refuses to
put the descriptor in blocking mode (``settimeout(None)`` and ``setblocking(True)`` keep
the emulation). It is closed when the handler returns.

`DatagramRequestHandler`: one body, two transports
--------------------------------------------------
`DatagramRequestHandler` gives a handler ``rfile`` and ``wfile`` with the very interface
of `StreamRequestHandler`'s (`AsyncReader` and `AsyncWriter`), over two tiny in-memory
streams: one that yields the packet and then end-of-file, one that collects what the
handler writes. So the body ``async for line in self.rfile: await self.wfile.write(...)``
serves a TCP connection and a UDP datagram alike. What was written is sent back to
``client_address`` as one datagram, once, after ``finish()`` (run by `run_handler`
through the handler's ``_after_finish`` step), and only if the handler wrote something.
In a sync handler the files are `io.BytesIO` and ``finish()`` sends, as socketserver's
handler does.

The reply path never lets one client hurt the server:

* a Unix datagram client that did not bind an address of its own (``client_address`` is
  None or empty) cannot be answered; the reply is dropped, and the server says so once, at
  debug level, rather than once per datagram;
* a client that is gone (ECONNREFUSED, ENOENT, EHOSTUNREACH...) loses its reply, logged at
  debug level, as a stream handler's final flush to a departed peer is;
* a Unix datagram client whose receive queue is full (it holds only
  ``net.unix.max_dgram_qlen`` datagrams, 10 by default on Linux) loses the reply too, as
  UDP loses a datagram the receiver has no room for. Waiting is not an option: on an
  unconnected Unix datagram socket the kernel never reports when room frees up, so a
  waiting send (Trio's ``sendto`` included) retries in a busy loop;
* anything else (EMSGSIZE for a reply too long for one datagram) goes to ``handle_error``.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, final

import trio

from . import _options
from ._binding import SocketServer
from ._files import DEFAULT_MAX_LINE_LENGTH, AsyncReader, AsyncWriter
from ._handlers import _DONE, BaseRequestHandler, is_sync_handler, run_handler
from ._server import HandlerClass, _method_is, logger

if TYPE_CHECKING:
    from ._server import BaseServer

__all__ = ["DatagramRequestHandler", "UDPServer", "UnixDatagramServer"]

#: Errnos from ``recvfrom`` that report an earlier send's failure: receive the next datagram.
_IGNORED_RECEIVE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "EHOSTDOWN",
        "ENETDOWN",
        "ENONET",
        "EPROTO",
        "ETIMEDOUT",
    )
    if hasattr(errno, name)
)
_CAPACITY_RECEIVE_ERRNOS = frozenset({errno.ENOBUFS, errno.ENOMEM})
#: How long the receive loop pauses when the kernel is out of buffers or memory.
RECEIVE_CAPACITY_PAUSE = 0.1

#: Errnos from sending a reply that mean the client is gone: the reply is dropped.
_CLIENT_GONE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ENOENT",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "EHOSTDOWN",
        "ENETDOWN",
    )
    if hasattr(errno, name)
)

#: The timeout that stands for "blocking" on a sync handler's socket (see `_ThreadSocket`).
_BLOCKING_TIMEOUT = 24 * 3600.0

# The servers that have already logged a dropped reply to an unbound Unix client.
_told_of_unbound_clients: weakref.WeakSet[BaseServer] = weakref.WeakSet()


class UDPServer(SocketServer):
    """A UDP server (IPv4, or IPv6 for an IPv6 host), handling one datagram at a time.

    Each datagram is one request: the handler gets ``request == (data, socket)``, with the
    server's `trio.socket.SocketType`, and answers with
    ``await socket.sendto(reply, self.client_address)`` (or uses
    `DatagramRequestHandler`'s ``rfile`` and ``wfile``). ``ThreadingUDPServer`` (this with
    `NurseryMixIn`) handles each datagram in its own task. See `SocketServer` for the
    arguments and the bind options; ``allow_reuse_address`` stays false, as on Linux it
    would let a second server silently share the port.

    Options and class attributes:
      max_packet_size: the most bytes of one datagram the handler gets (default 8192, as
        socketserver's). A longer datagram is truncated, as the kernel truncates it, and
        logged at debug level; the server keeps serving. Each receive asks the kernel for
        this many bytes, so keep it near the datagrams you expect.
      max_concurrent_datagrams: for concurrent servers, how many datagrams are handled at
        once (default 1024). At the limit the server stops receiving until a handler
        finishes: datagrams wait in the kernel's receive buffer, and when that is full the
        kernel drops them. None for no limit (not recommended: a flood then creates tasks
        without bound). ``max_connections`` does not apply to datagram servers.

    Error handling:
      Receive errors that report an earlier send's failure (ECONNREFUSED...) are logged at
      debug level and skipped; ENOBUFS and ENOMEM are logged and receiving resumes after a
      pause; any other error propagates out of ``serve_forever``.
    """

    socket_type: ClassVar[int] = socket.SOCK_DGRAM
    allow_reuse_address: bool = False
    max_packet_size: int = 8192
    # 1024 in flight keeps a handler that awaits a slow backend (100 ms) at about 10,000
    # datagrams a second, more than one Trio thread handles, while the packets held stay
    # small: at most 1024 * max_packet_size bytes (8 MiB at the default), plus one task each.
    max_concurrent_datagrams: int | None = 1024

    _options: ClassVar[Mapping[str, _options.Check]] = {
        "max_packet_size": _options.positive_int,
        "max_concurrent_datagrams": _options.positive_int_or_none,
    }

    def _concurrency_limit(self) -> int | None:
        return self.max_concurrent_datagrams

    async def get_request(self) -> tuple[tuple[bytes, trio.socket.SocketType], Any]:
        """Receive one datagram: return ``((data, socket), client_address)``.

        Error handling:
          See the class documentation: errors about earlier sends are skipped, resource
          exhaustion pauses, anything else propagates.
        """
        complained = False
        size = self.max_packet_size
        paced = self._paced
        while True:
            sock = self.socket
            try:
                # One byte more than the handler may get tells a truncated datagram.
                if paced.owner is sock:
                    data, client_address = await paced.recvfrom(size + 1)
                else:  # a socket a subclass put in place of the server's own
                    data, client_address = await sock.recvfrom(size + 1)
            except OSError as exc:
                if exc.errno in _IGNORED_RECEIVE_ERRNOS:
                    logger.debug("recvfrom() on %r: %s; ignored", self.server_address, exc)
                    continue
                if exc.errno not in _CAPACITY_RECEIVE_ERRNOS:
                    raise
                # Log the first failure of a run of them; then quietly keep trying.
                log = logger.debug if complained else logger.error
                log(
                    "recvfrom() on %r failed: %s; pausing %.1f s before receiving again",
                    self.server_address,
                    exc,
                    RECEIVE_CAPACITY_PAUSE,
                )
                complained = True
                await trio.sleep(RECEIVE_CAPACITY_PAUSE)
                continue
            if len(data) > size:
                data = data[:size]
                logger.debug(
                    "a datagram from %r was longer than max_packet_size; truncated to %d bytes",
                    client_address,
                    size,
                )
            return (data, sock), client_address

    async def finish_request(self, request: Any, client_address: Any) -> None:
        """Construct the handler and run its ``setup``, ``handle`` and ``finish``.

        A sync handler gets ``(data, sock)`` with a blocking `socket.socket` of its own on
        the server's socket (see the module documentation), closed when it returns.
        """
        handler_class = self.RequestHandlerClass
        if not is_sync_handler(handler_class):
            await run_handler(handler_class, request, client_address, self)
            return
        data = request[0]
        sock = _ThreadSocket.on(self.socket)
        try:
            await run_handler(handler_class, (data, sock), client_address, self)
        finally:
            # Detached first, so a thread that still holds the object gets EBADF, not
            # whatever socket reuses the descriptor's number.
            os.close(sock.detach())

    def _runs_handler_directly(self, handler_class: HandlerClass) -> bool:
        # For an async handler, this class's finish_request only runs it.
        return super()._runs_handler_directly(handler_class) or (
            _method_is(self, "finish_request", UDPServer.finish_request)
            and not is_sync_handler(handler_class)
        )

    def _shutdown_is_noop(self) -> bool:
        return _method_is(self, "shutdown_request", UDPServer.shutdown_request)

    def shutdown_request(self, request: Any) -> None:
        """Nothing to shut down: the socket is the server's, closed by `server_close`."""

    def close_request(self, request: Any) -> None:
        """Nothing to close: the socket is the server's, closed by `server_close`."""


class UnixDatagramServer(UDPServer):
    """A Unix datagram socket server, on a socket file at ``server_address``.

    A client that wants replies must bind an address of its own (a path, or on Linux an
    abstract address); replies to an unbound client, whose ``client_address`` is None,
    are dropped (see `DatagramRequestHandler`). A stale socket file is removed before
    binding and the server removes its own file on close, as `UnixStreamServer` does.
    """

    address_family: int = socket.AF_UNIX


@final
class _ThreadSocket(socket.socket):
    """A sync handler's socket: blocking for the handler, non-blocking for the descriptor.

    It is a duplicate of the server's descriptor, and a duplicate shares the file status
    flags: putting it in blocking mode would make the server's next receive block the
    whole Trio loop. So blocking mode is emulated with a timeout of `_BLOCKING_TIMEOUT`
    (``gettimeout()`` still says None), which keeps ``O_NONBLOCK`` set.
    """

    @classmethod
    def on(cls, sock: trio.socket.SocketType) -> _ThreadSocket:
        """A new socket object on a duplicate of *sock*'s descriptor, in blocking mode."""
        fd = os.dup(sock.fileno())
        try:
            thread_socket = cls(sock.family, sock.type, sock.proto, fileno=fd)
        except BaseException:
            os.close(fd)
            raise
        thread_socket.settimeout(None)
        return thread_socket

    def settimeout(self, value: float | None) -> None:
        """As `socket.socket.settimeout`; None is emulated (the descriptor stays non-blocking)."""
        super().settimeout(_BLOCKING_TIMEOUT if value is None else value)

    def setblocking(self, flag: bool) -> None:
        """As `socket.socket.setblocking`; blocking mode is emulated with a long timeout."""
        self.settimeout(None if flag else 0.0)

    def gettimeout(self) -> float | None:
        """As `socket.socket.gettimeout`: None in (emulated) blocking mode."""
        timeout = super().gettimeout()
        return None if timeout == _BLOCKING_TIMEOUT else timeout


@final
class _PacketStream(trio.abc.ReceiveStream):
    """A receive stream that yields one packet, then end-of-file: a datagram's ``rfile``."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        data = self._data
        if max_bytes is None or max_bytes >= len(data):
            self._data = b""
            return data
        self._data = data[max_bytes:]
        return data[:max_bytes]

    async def aclose(self) -> None:
        self._data = b""
        await trio.lowlevel.checkpoint()


@final
class _ReplyStream(trio.abc.SendStream):
    """A send stream that collects what is written: a datagram's ``wfile``."""

    __slots__ = ("data", "written")

    def __init__(self) -> None:
        self.data = bytearray()
        self.written = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.data += data
        self.written = True

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@final
class _ReplyBuffer(io.BytesIO):
    """A sync handler's ``wfile``: a `io.BytesIO` that remembers whether it was written to."""

    written = False

    def write(self, data: Any, /) -> int:
        self.written = True
        return super().write(data)

    def writelines(self, lines: Any, /) -> None:
        for line in lines:
            self.write(line)


class DatagramRequestHandler(BaseRequestHandler):
    """A handler for datagram servers, with ``rfile`` and ``wfile`` as stream handlers have.

    ``self.packet`` is the datagram and ``self.socket`` the server's socket. In an async
    handler ``rfile`` and ``wfile`` are the `AsyncReader` and `AsyncWriter` of
    `StreamRequestHandler` (``await self.rfile.readline()``, ``async for line in
    self.rfile``, ``await self.wfile.write(data)``): ``rfile`` reads the packet and then
    end-of-file, and ``wfile`` collects the reply. So one handler body can serve a stream
    server and a datagram server; derive a class for each from the same mix-in::

        class Upper:
            async def handle(self) -> None:
                async for line in self.rfile:
                    await self.wfile.write(line.upper())

        class StreamUpper(Upper, StreamRequestHandler): ...
        class DatagramUpper(Upper, DatagramRequestHandler): ...

    What the handler wrote to ``wfile`` is sent to ``client_address`` as one datagram,
    once, after ``finish()`` (even when ``handle()`` raised, as a stream handler's
    ``wfile`` is flushed); a handler that wrote nothing sends nothing. ``wfile.flush()``
    sends nothing by itself: one request, one reply.

    A sync handler (``def handle``, ported socketserver code) gets `io.BytesIO` files and
    a blocking socket, and ``finish()`` sends the reply, as socketserver's
    ``DatagramRequestHandler`` does.

    Class attributes:
      timeout: seconds sending the reply may wait before raising `TimeoutError` (reads
        never wait: the packet is in memory); None (the default) waits as long as needed.
      max_line_length: the longest line ``rfile.readline()`` without a limit accepts,
        terminator included, before it raises `LineTooLongError`; None for no limit.
        (A datagram is never longer than the server's ``max_packet_size`` anyway.)

    Attributes:
      packet: the datagram's bytes.
      socket: the server's socket: a `trio.socket.SocketType` in an async handler, a
        blocking `socket.socket` in a sync one.
      rfile: an `AsyncReader` over the packet (`io.BytesIO` in a sync handler).
      wfile: an `AsyncWriter` that collects the reply (`io.BytesIO` in a sync handler).

    Error handling:
      A client that cannot be answered (unbound, gone, or with a full receive queue)
      loses its reply, logged at debug level; for an unbound Unix client, once per
      server. Any other error from sending the reply (EMSGSIZE: too long for one
      datagram) goes to the server's ``handle_error``.
    """

    timeout: float | None = None
    max_line_length: int | None = DEFAULT_MAX_LINE_LENGTH

    packet: bytes
    socket: trio.socket.SocketType
    rfile: AsyncReader
    wfile: AsyncWriter
    _reply: _ReplyStream | None = None

    def setup(self) -> Any:
        """Set ``packet`` and ``socket`` from the request, and create ``rfile`` and ``wfile``."""
        self.packet, self.socket = self.request
        handler: Any = self  # the files are typed as the async ones
        if is_sync_handler(type(self)):
            if self.timeout is not None:
                handler.socket.settimeout(self.timeout)
            handler.rfile = io.BytesIO(self.packet)
            handler.wfile = _ReplyBuffer()
            return _DONE
        self._reply = _ReplyStream()
        self.rfile = AsyncReader(
            _PacketStream(self.packet),
            receive_size=max(len(self.packet), 1),
            max_line_length=self.max_line_length,
        )
        self.wfile = AsyncWriter(self._reply)
        return _DONE

    def finish(self) -> Any:
        """Close the files (async), or send the reply (sync). ``await super().finish()`` works.

        An async handler's reply is sent right after ``finish()`` returns, so what a
        ``finish()`` override writes before calling ``super().finish()`` is part of it.
        """
        wfile: AsyncWriter | _ReplyBuffer = getattr(self, "wfile")  # noqa: B009
        if isinstance(wfile, _ReplyBuffer):
            if wfile.written:
                _send_reply_sync(self, wfile.getvalue())
            return _DONE
        wfile.close()
        self.rfile.close()
        return _DONE

    async def _after_finish(self) -> None:
        reply = self._reply
        if reply is None or not reply.written:
            return
        self._reply = None
        await _send_reply(self, bytes(reply.data))


def _unbound(handler: BaseRequestHandler) -> bool:
    """Whether the client has no address to reply to (an unbound Unix datagram client)."""
    address = handler.client_address
    if address is None or address in ("", b""):
        server = handler.server
        if server not in _told_of_unbound_clients:
            _told_of_unbound_clients.add(server)
            logger.debug(
                "%r: a Unix datagram client with no address of its own cannot be answered; "
                "its replies are dropped (the client must bind a path or an abstract "
                "address). Logged once per server.",
                server,
            )
        return True
    return False


def _dropped(handler: BaseRequestHandler, exc: OSError) -> None:
    logger.debug("reply to %r dropped: %s", handler.client_address, exc)


def _send_unix_now(sock: Any, data: bytes, address: Any) -> None:
    """Send on *sock*'s non-blocking descriptor without waiting; BlockingIOError if full.

    On an unconnected Unix datagram socket ``poll`` reports "writable" even when the
    receiver's queue is full, so every waiting send (Trio's, or a socket's with a timeout)
    spins. A temporary socket object in non-blocking mode sends once and never waits.
    """
    raw = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())
    try:
        raw.settimeout(0.0)
        raw.sendto(data, address)
    finally:
        raw.detach()


def _waits_in_a_busy_loop(sock: Any) -> bool:
    """Whether a waiting send on *sock* would spin: a non-blocking Unix datagram socket."""
    return sock.family == socket.AF_UNIX and not os.get_blocking(sock.fileno())


async def _send_reply(handler: DatagramRequestHandler, data: bytes) -> None:
    """Send an async handler's reply; drop it if the client cannot take it."""
    if _unbound(handler):
        return
    sock = handler.socket
    address = handler.client_address
    try:
        if _waits_in_a_busy_loop(sock):
            await trio.lowlevel.checkpoint_if_cancelled()
            _send_unix_now(sock, data, address)
            await trio.lowlevel.cancel_shielded_checkpoint()
        elif handler.timeout is None:
            await sock.sendto(data, address)
        else:
            try:
                with trio.fail_after(handler.timeout):
                    await sock.sendto(data, address)
            except trio.TooSlowError:
                raise TimeoutError(
                    f"the reply to {address!r} could not be sent within {handler.timeout} s"
                ) from None
    except BlockingIOError as exc:
        _dropped(handler, exc)
    except OSError as exc:
        if exc.errno not in _CLIENT_GONE_ERRNOS:
            raise
        _dropped(handler, exc)


def _send_reply_sync(handler: DatagramRequestHandler, data: bytes) -> None:
    """Send a sync handler's reply, from its worker thread; drop it if it cannot be taken."""
    if _unbound(handler):
        return
    sock: Any = handler.socket
    address = handler.client_address
    try:
        if _waits_in_a_busy_loop(sock):
            _send_unix_now(sock, data, address)
        else:
            sock.sendto(data, address)
    except BlockingIOError as exc:
        _dropped(handler, exc)
    except OSError as exc:
        if exc.errno not in _CLIENT_GONE_ERRNOS:
            raise
        _dropped(handler, exc)
