"""`DatagramRequestHandler`: one handler body for streams and datagrams.

`DatagramRequestHandler` gives a handler ``rfile`` and ``wfile`` with the very interface
of `StreamRequestHandler`'s (`AsyncReader` and `AsyncWriter`), over two tiny in-memory
streams: one that yields the packet and then end-of-file, one that collects what the
handler writes. So the body ``async for line in self.rfile: await self.wfile.write(...)``
serves a TCP connection and a UDP datagram alike. What was written is sent back to
``client_address`` as one datagram, once, after ``finish()`` (the handler's last step,
in `trioserve._handlers.run_handler_life`), and only if the handler wrote something. In a sync
handler the files are `io.BytesIO` and ``finish()`` sends, as socketserver's handler does.

The reply path, one for both kinds, never lets one client hurt the server:

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

import io
import logging
import os
import socket
import weakref
from typing import Any, final

import trio

from ._errors import CLIENT_GONE_ERRNOS
from ._files import DEFAULT_MAX_LINE_LENGTH, AsyncReader, AsyncWriter
from ._handlers import DONE, BaseRequestHandler

__all__ = ["DatagramRequestHandler"]

logger = logging.getLogger("trioserve")

# The servers that have already logged a dropped reply to an unbound Unix client.
_told_of_unbound_clients: weakref.WeakSet[Any] = weakref.WeakSet()


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
    _trioserve_reply: _ReplyStream | None = None

    def setup(self) -> Any:
        """Set ``packet`` and ``socket`` from the request, and create ``rfile`` and ``wfile``."""
        handler: Any = self  # the files are typed as the async ones
        handler.packet, handler.socket = self.request
        if not isinstance(handler.socket, trio.socket.SocketType):  # a sync handler's
            if self.timeout is not None:
                handler.socket.settimeout(self.timeout)
            handler.rfile = io.BytesIO(self.packet)
            handler.wfile = _ReplyBuffer()
            return DONE
        self._trioserve_reply = _ReplyStream()
        self.rfile = AsyncReader(
            _PacketStream(self.packet),
            receive_size=max(len(self.packet), 1),
            max_line_length=self.max_line_length,
        )
        self.wfile = AsyncWriter(self._trioserve_reply)
        return DONE

    def finish(self) -> Any:
        """Close the files (async), or send the reply (sync). ``await super().finish()`` works.

        An async handler's reply is sent right after ``finish()`` returns, so what a
        ``finish()`` override writes before calling ``super().finish()`` is part of it.
        """
        wfile: AsyncWriter | _ReplyBuffer = getattr(self, "wfile")  # noqa: B009
        if isinstance(wfile, _ReplyBuffer):
            if wfile.written:
                _send_reply(self, wfile.getvalue())
            return DONE
        wfile.close()
        self.rfile.close()
        return DONE

    def _trioserve_end(self) -> Any:
        reply = self._trioserve_reply
        if reply is None or not reply.written:
            return DONE
        self._trioserve_reply = None
        return _send_async_reply(self, bytes(reply.data))


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
    """Whether a waiting send on *sock* would spin: a Unix datagram socket, non-blocking.

    A sync handler's socket is one too: it shares the server's non-blocking descriptor.
    """
    return sock.family == socket.AF_UNIX and not os.get_blocking(sock.fileno())


def _reply_failed(handler: DatagramRequestHandler, exc: OSError) -> None:
    """Drop the reply if the client cannot take it; raise anything else."""
    if not isinstance(exc, BlockingIOError) and exc.errno not in CLIENT_GONE_ERRNOS:
        raise exc
    logger.debug("reply to %r dropped: %s", handler.client_address, exc)


def _send_reply(handler: DatagramRequestHandler, data: bytes) -> None:
    """Send a reply from a sync handler's thread, or at once on a Unix socket."""
    if _unbound(handler):
        return
    sock: Any = handler.socket
    try:
        if _waits_in_a_busy_loop(sock):
            _send_unix_now(sock, data, handler.client_address)
        else:
            sock.sendto(data, handler.client_address)
    except OSError as exc:
        _reply_failed(handler, exc)


async def _send_async_reply(handler: DatagramRequestHandler, data: bytes) -> None:
    """Send an async handler's reply, waiting (up to its ``timeout``) for room."""
    sock = handler.socket
    if _waits_in_a_busy_loop(sock) or _unbound(handler):
        await trio.lowlevel.checkpoint_if_cancelled()
        _send_reply(handler, data)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return
    address = handler.client_address
    timeout = handler.timeout
    try:
        if timeout is None:
            await sock.sendto(data, address)
        else:
            with trio.fail_after(timeout):
                await sock.sendto(data, address)
    except trio.TooSlowError:
        raise TimeoutError(
            f"the reply to {address!r} could not be sent within {timeout} s"
        ) from None
    except OSError as exc:
        _reply_failed(handler, exc)
