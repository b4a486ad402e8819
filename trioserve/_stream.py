"""Stream servers: `TCPServer` and `UnixStreamServer`, and their accept loop.

Each accepted connection becomes a `trio.SocketStream` (which sets ``TCP_NODELAY``), the
``request`` of one handler.

Errors from ``accept()`` are sorted here, in one place, as Trio's own listeners sort them:

* errnos that mean "that one connection failed" (ECONNABORTED, EPROTO, ...) are ignored
  and the loop accepts the next;
* errnos that mean "out of resources" (EMFILE, ENFILE, ENOBUFS, ENOMEM) are logged, and
  accepting resumes after a pause: when file descriptors run out, the handlers that hold
  them get to finish instead of the loop spinning or the server crashing;
* anything else is a real problem and propagates out of ``serve_forever``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from typing import Any, ClassVar

import trio

from . import _options
from ._binding import SocketServer
from ._server import logger

__all__ = ["TCPServer", "UnixStreamServer"]

_IGNORED_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EPERM",
    )
    if hasattr(errno, name)
)
_CAPACITY_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: How long the accept loop pauses when the process is out of file descriptors or memory.
ACCEPT_CAPACITY_PAUSE = 0.1


class TCPServer(SocketServer):
    """A TCP server (IPv4, or IPv6 for an IPv6 host), handling one request at a time.

    ``ThreadingTCPServer`` (this with `NurseryMixIn`) handles each connection in its own
    task. See `SocketServer` for the arguments and the bind options.

    Options and class attributes:
      request_queue_size: the listen backlog (default 4096; the kernel caps it at
        ``net.core.somaxconn``).
    """

    socket_type: ClassVar[int] = socket.SOCK_STREAM
    allow_reuse_address: bool = True
    request_queue_size: int = 4096

    _options: ClassVar[Mapping[str, _options.Check]] = {
        "request_queue_size": _options.positive_int,
    }

    def server_activate(self) -> None:
        """Listen, with a backlog of `request_queue_size`."""
        self.socket.listen(self.request_queue_size)

    async def get_request(self) -> tuple[trio.SocketStream, Any]:
        """Accept a connection: return its `trio.SocketStream` and the peer's address."""
        complained = False
        while True:
            try:
                sock, client_address = await self.socket.accept()
            except OSError as exc:
                if exc.errno in _IGNORED_ACCEPT_ERRNOS:
                    continue
                if exc.errno not in _CAPACITY_ACCEPT_ERRNOS:
                    raise
                # Log the first failure of a run of them; then quietly keep trying.
                log = logger.debug if complained else logger.error
                log(
                    "accept() on %r failed: %s; pausing %.1f s before accepting again",
                    self.server_address,
                    exc,
                    ACCEPT_CAPACITY_PAUSE,
                )
                complained = True
                await trio.sleep(ACCEPT_CAPACITY_PAUSE)
                continue
            return trio.SocketStream(sock), client_address

    async def shutdown_request(self, request: trio.abc.Stream) -> None:
        """Send end-of-file to the peer, then `close_request`."""
        if isinstance(request, trio.abc.HalfCloseableStream):
            try:
                await request.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass  # the peer is gone or the stream is closed: nothing to say
        await self.close_request(request)

    async def close_request(self, request: trio.abc.Stream) -> None:
        """Close the connection."""
        await request.aclose()

    async def _discard_request(self, request: trio.abc.Stream) -> None:
        await trio.aclose_forcefully(request)


class UnixStreamServer(TCPServer):
    """A Unix stream socket server, on a socket file at ``server_address``.

    A stale socket file (its server is gone) is removed before binding; the server removes
    its own file on close. ``unix_socket_mode`` sets the file's mode.
    """

    address_family: int = socket.AF_UNIX
