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

The server's own socket is read with `trioserve._direct.PacedListener`: under a flood it
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
``(data, sock)`` where ``sock`` is a blocking `socket.socket` on the server's descriptor:
``sock.sendto(reply, self.client_address)`` blocks the thread, not the server. (The
descriptor is the server's Trio socket's, so blocking mode is emulated: see
`trioserve._threads.ThreadSocket`.) Closing it leaves the server's socket open; it is let
go of when the handler returns.

`DatagramRequestHandler` (`trioserve._datagram_handler`) gives datagram handlers the
``rfile``/``wfile`` interface of stream handlers.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any, ClassVar

import trio

from . import _options
from ._binding import SocketServer
from ._errors import CAPACITY_ERRNOS, IGNORED_RECEIVE_ERRNOS
from ._request import trivial

__all__ = ["UDPServer", "UnixDatagramServer"]

logger = logging.getLogger("trioserve")

#: How long the receive loop pauses when the kernel is out of buffers or memory.
RECEIVE_CAPACITY_PAUSE = 0.1


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
    _trioserve_limit_option: ClassVar[str] = "max_concurrent_datagrams"

    _trioserve_options: ClassVar[Mapping[str, _options.Check]] = {
        "max_packet_size": _options.positive_int,
        "max_concurrent_datagrams": _options.positive_int_or_none,
    }

    async def get_request(self) -> tuple[tuple[bytes, trio.socket.SocketType], Any]:
        """Receive one datagram: return ``((data, socket), client_address)``.

        Error handling:
          See the class documentation: errors about earlier sends are skipped, resource
          exhaustion pauses, anything else propagates.
        """
        complained = False
        size = self.max_packet_size
        paced = self._trioserve_paced
        while True:
            sock = self.socket
            try:
                # One byte more than the handler may get tells a truncated datagram.
                if paced.owner is sock:
                    data, client_address = await paced.recvfrom(size + 1)
                else:  # a socket a subclass put in place of the server's own
                    data, client_address = await sock.recvfrom(size + 1)
            except OSError as exc:
                if exc.errno in IGNORED_RECEIVE_ERRNOS:
                    logger.debug("recvfrom() on %r: %s; ignored", self.server_address, exc)
                    continue
                if exc.errno not in CAPACITY_ERRNOS:
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

    @trivial(None)
    def shutdown_request(self, request: Any) -> None:
        """Nothing to shut down: the socket is the server's, closed by `server_close`."""

    @trivial(None)
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
