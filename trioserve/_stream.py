"""Stream servers: `TCPServer` and `UnixStreamServer`, and their accept loop.

Each accepted connection becomes a `trio.SocketStream` (which sets ``TCP_NODELAY``), the
``request`` of one handler. The server's own socket is accepted from with
`trioserve._direct.PacedListener`: a burst of connections is taken several at a time, not
one per turn of the scheduler, which under load is a turn of every open connection; a
socket a subclass puts in place of ``self.socket`` is accepted from with its own
``accept``.

Errors from ``accept()`` are sorted here, in one place, as Trio's own listeners sort them
(the errno sets are Trio's, in `trioserve._errors`):

* errnos that mean "that one connection failed" (ECONNABORTED, EPROTO, ...) are ignored
  and the loop accepts the next;
* errnos that mean "out of resources" (EMFILE, ENFILE, ENOBUFS, ENOMEM) are logged, and
  accepting resumes after a pause (`ACCEPT_CAPACITY_PAUSE`): when file descriptors run
  out, the handlers that hold them get to finish instead of the loop spinning or the
  server crashing. The connections not accepted meanwhile wait in the kernel's backlog.
  The first such error is logged at error level, the rest of them for a minute
  (`ACCEPT_COMPLAINT_INTERVAL`) at debug level only, so the log is not flooded;
* anything else is a real problem and propagates out of ``serve_forever``.

With ``ssl_context`` set, each connection is wrapped in a `trio.SSLStream` and its
handshake runs in the connection's own task, never in the accept loop (`trioserve._tls`).

Closing a connection is bounded in time (`CLOSE_TIMEOUT`): closing a TLS stream sends
``close_notify``, which waits for room in the send buffer, and a peer that never reads
must not keep its connection, and its slot under ``max_connections``, for ever.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, ClassVar, final

import trio

from . import _options
from ._binding import SocketServer
from ._errors import CAPACITY_ERRNOS, IGNORED_ACCEPT_ERRNOS
from ._exceptions import ProxyProtocolError
from ._handlers import DONE
from ._proxied import proxied_address, receive_proxy_header
from ._proxy import DEFAULT_TRUSTED, IPNetwork, is_trusted, parse_networks
from ._request import call_hook, closes_plainly
from ._tls import DEFAULT_SSL_HANDSHAKE_TIMEOUT, check_ssl_context, tls_handshake

__all__ = ["TCPServer", "UnixStreamServer"]

logger = logging.getLogger("trioserve")

#: How long the accept loop pauses when the process is out of file descriptors or memory.
ACCEPT_CAPACITY_PAUSE = 0.1
#: After logging an out-of-resources ``accept()`` error, further ones in this many seconds
#: are logged at debug level only.
ACCEPT_COMPLAINT_INTERVAL = 60.0
#: Seconds closing one connection may take before it is closed abruptly.
CLOSE_TIMEOUT = 1.0


def _close_in_thread(sock: trio.socket.SocketType) -> None:
    """`StreamServer.shutdown_request` for a plain connection, in a worker thread.

    End-of-file to the peer, then the descriptor is closed without a call into Trio
    (which a worker thread may not make): no task waits on the socket, as a thread owns
    the connection.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the peer is gone: nothing to say
    fd = sock.detach()
    if fd >= 0:
        os.close(fd)


def _discard(request: Any) -> Awaitable[None] | None:
    """Close a connection at the end of its request, however it was left.

    A plain socket is closed at once (None is returned: nothing to await, no cancel scope
    to pay for); a stream of another kind returns its forceful close, to be awaited.
    """
    sock = _plain_socket(request)
    if sock is not None:
        # What a plain stream's aclose does, without the checkpoint that a forceful
        # close cancels anyway; closing an already closed socket does nothing.
        sock.close()
        return None
    if isinstance(request, trio.abc.AsyncResource):
        return _Later(trio.aclose_forcefully, request)
    request.close()  # pragma: no cover - whatever else a socketserver get_request returned
    return None


def _check_networks(name: str, value: Any) -> tuple[IPNetwork, ...]:
    """The check of ``proxy_trusted``: networks, as strings or `ipaddress` objects."""
    try:
        return parse_networks(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from None


class TCPServer(SocketServer):
    """A TCP server (IPv4, or IPv6 for an IPv6 host), handling one request at a time.

    ``ThreadingTCPServer`` (this with `NurseryMixIn`) handles each connection in its own
    task. See `SocketServer` for the arguments and the bind options.

    Options and class attributes:
      request_queue_size: the listen backlog (default 4096; the kernel caps it at
        ``net.core.somaxconn``).
      ssl_context: serve TLS: a server-side `ssl.SSLContext` with its certificate loaded
        (``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)``, then
        ``load_cert_chain``). Each connection is then a `trio.SSLStream`, handshaken in
        its own task. None (the default) serves plain TCP.
      ssl_handshake_timeout: seconds a client has to complete the TLS handshake before it
        is disconnected; None waits forever. Default 10. A failed or timed-out handshake
        is logged at debug level and never reaches `handle_error`.
      proxy_protocol: True expects every connection to begin with a PROXY protocol
        header (HAProxy's, version 1 or 2, told apart by their signatures), as a load
        balancer in TCP mode sends it, and serves the connection as the client's: the
        handler's ``client_address`` is the address the header gives (a version 2
        LOCAL header, a balancer's health check, keeps the balancer's own). A connection
        without a valid header, or from a peer not in ``proxy_trusted``, is closed
        without reaching the handler, with one line logged at warning. Default False.
        Never turn it on for a port clients can reach directly: the header is a claim.
      proxy_trusted: the networks allowed to send a PROXY header (strings such as
        ``"10.0.0.0/8"`` or `ipaddress` networks); default loopback only
        (``127.0.0.0/8``, ``::1``). Unix socket peers are always trusted.
      proxy_header_timeout: seconds a connection has to send its PROXY header; None waits
        forever. Default 5 (the specification asks for at least 3).
      ssl_https_compatible: True treats a TLS peer that closes without ``close_notify``
        as a clean end of file, as HTTPS clients expect; False (the default) reports it
        as a broken connection (see `trio.SSLStream`).
    """

    socket_type: ClassVar[int] = socket.SOCK_STREAM
    allow_reuse_address: bool = True
    request_queue_size: int = 4096
    ssl_context: ssl.SSLContext | None = None
    ssl_handshake_timeout: float | None = DEFAULT_SSL_HANDSHAKE_TIMEOUT
    ssl_https_compatible: bool = False
    proxy_protocol: bool = False
    proxy_trusted: tuple[IPNetwork, ...] = parse_networks(DEFAULT_TRUSTED)
    proxy_header_timeout: float | None = 5.0
    # When an out-of-resources accept() error was last logged as an error (time.monotonic).
    _trioserve_capacity_complaint: float | None = None
    # Whatever the hooks did, a connection is closed at the end of its request.
    _trioserve_discard: ClassVar[Callable[[Any], Awaitable[None] | None] | None] = staticmethod(
        _discard
    )
    _trioserve_thread_close: ClassVar[Callable[[Any], None] | None] = staticmethod(
        _close_in_thread
    )

    _trioserve_options: ClassVar[Mapping[str, _options.Check]] = {
        "request_queue_size": _options.positive_int,
        "ssl_context": check_ssl_context,
        "ssl_handshake_timeout": _options.seconds_or_none,
        "ssl_https_compatible": _options.boolean,
        "proxy_protocol": _options.boolean,
        "proxy_trusted": _check_networks,
        "proxy_header_timeout": _options.seconds_or_none,
    }

    def server_activate(self) -> None:
        """Listen, with a backlog of `request_queue_size`."""
        self.socket.listen(self.request_queue_size)

    async def get_request(self) -> tuple[trio.SocketStream, Any]:
        """Accept a connection: return its `trio.SocketStream` and the peer's address."""
        paced = self._trioserve_paced
        while True:
            listener = self.socket
            try:
                if paced.owner is listener:
                    sock, client_address = await paced.accept()
                else:  # a socket a subclass put in place of the server's own
                    sock, client_address = await listener.accept()
            except OSError as exc:
                if exc.errno in IGNORED_ACCEPT_ERRNOS:
                    continue
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                self._trioserve_out_of_capacity(exc)
                await trio.sleep(ACCEPT_CAPACITY_PAUSE)
                continue
            return trio.SocketStream(sock), client_address

    def _trioserve_out_of_capacity(self, exc: OSError) -> None:
        # An error the first time, then at debug level for ACCEPT_COMPLAINT_INTERVAL: a
        # server at its file limit, or a client cycling connections to keep it there,
        # must not flood the log with a line every pause.
        now = time.monotonic()
        last = self._trioserve_capacity_complaint
        if last is None or now - last >= ACCEPT_COMPLAINT_INTERVAL:
            self._trioserve_capacity_complaint = now
            level = logging.ERROR
        else:
            level = logging.DEBUG
        logger.log(
            level,
            "accept() on %r failed: %s; pausing %.1f s before accepting again",
            self.server_address,
            exc,
            ACCEPT_CAPACITY_PAUSE,
        )

    def _trioserve_drain(self) -> list[tuple[trio.SocketStream, Any]]:
        """At a graceful stop: accept what the kernel holds for us, then stop listening.

        Returns the connections that were waiting (at most ``request_queue_size``), to be
        served within the grace; then closes the listening socket, so new connections are
        refused at once. (Another process that holds the same socket, such as a systemd
        socket unit or the pool's other processes, keeps it listening until it closes it
        too.) The next ``serve_forever`` binds it again.
        """
        waiting: list[tuple[trio.SocketStream, Any]] = []
        raw = self._trioserve_raw_socket
        if self.socket.fileno() < 0:
            return waiting
        if self._trioserve_paced.owner is self.socket:
            for _ in range(self.request_queue_size):
                try:
                    sock, client_address = raw.accept()
                except OSError:
                    break  # nothing more is waiting (or it failed: it is the client's)
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                waiting.append((stream, client_address))
        self._trioserve_close_listener()
        return waiting

    def _trioserve_close_listener(self) -> None:
        """Close the listening socket for a drain; the next serve binds it again."""
        self.socket.close()
        self._trioserve_drained = True

    def _trioserve_preparer(
        self,
    ) -> Callable[[Any, Any], Awaitable[tuple[Any, Any] | None]] | None:
        if self.ssl_context is None and not self.proxy_protocol:
            return None
        return self._trioserve_prepare

    async def _trioserve_prepare(
        self, request: trio.abc.Stream, client_address: Any
    ) -> tuple[Any, Any] | None:
        if self.proxy_protocol:
            client_address = await self._trioserve_proxy_header(request, client_address)
            if client_address is None:
                return None
        context = self.ssl_context
        if context is None:
            return request, client_address
        stream = await tls_handshake(
            request,
            client_address,
            context,
            handshake_timeout=self.ssl_handshake_timeout,
            https_compatible=self.ssl_https_compatible,
        )
        return None if stream is None else (stream, client_address)

    async def _trioserve_proxy_header(self, request: trio.abc.Stream, peer: Any) -> Any:
        """The client's address from the connection's PROXY header; None to close it."""
        if not is_trusted(peer, self.proxy_trusted):
            logger.warning(
                "%r: connection from %r closed: it may not send a PROXY header "
                "(not in proxy_trusted)",
                self.server_address,
                peer,
            )
            return None
        if not isinstance(request, trio.SocketStream):
            raise TypeError(f"proxy_protocol needs a socket connection, not {request!r}")
        timeout = self.proxy_header_timeout
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                header = await receive_proxy_header(request)
        except (ProxyProtocolError, trio.TooSlowError, OSError) as exc:
            reason = (
                f"no PROXY header within {timeout} s"
                if isinstance(exc, trio.TooSlowError)
                else f"bad PROXY header: {exc}"
            )
            logger.warning("%r: connection from %r closed: %s", self.server_address, peer, reason)
            return None
        return proxied_address(header, peer)

    @closes_plainly
    def shutdown_request(self, request: trio.abc.Stream) -> Awaitable[None]:
        """Send end-of-file to the peer, then `close_request`.

        May be overridden with ``def`` or ``async def``, and ``super().shutdown_request``
        called either way: for a plain TCP or Unix connection the work is done when this
        returns (what it returns is complete already); over TLS it is done when what it
        returns is awaited.
        """
        sock = _plain_socket(request)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the peer is gone or the socket is closed: nothing to say
            return self.close_request(request)
        return _Later(self._trioserve_shutdown_stream, request)

    @closes_plainly
    def close_request(self, request: trio.abc.Stream) -> Awaitable[None]:
        """Close the connection (abruptly if a clean close takes over `CLOSE_TIMEOUT` s).

        As `shutdown_request`: done on return for a plain connection, when awaited over
        TLS.
        """
        sock = _plain_socket(request)
        if sock is not None:
            sock.close()
            return DONE
        return _Later(self._trioserve_close_stream, request)

    async def _trioserve_shutdown_stream(self, request: trio.abc.Stream) -> None:
        if isinstance(request, trio.abc.HalfCloseableStream):
            try:
                await request.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass  # the peer is gone or the stream is closed: nothing to say
        await call_hook(self.close_request, request)

    async def _trioserve_close_stream(self, request: trio.abc.Stream) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            await request.aclose()  # a cancelled aclose still closes (Trio's rule)


def _plain_socket(request: Any) -> Any:
    """The socket of a plain connection (no TLS), or None: closing it needs no Trio."""
    if type(request) is trio.SocketStream:
        return request.socket
    if isinstance(request, (socket.socket, trio.socket.SocketType)):
        return request  # from a get_request of socketserver code
    return None


@final
class _Later:
    """An awaitable that runs ``function(*args)`` when awaited, and nothing if it is not.

    What a hook returns when its work needs Trio: an override written with ``def`` that
    calls ``super()`` and drops the result leaves no "never awaited" coroutine behind (the
    request is still closed, forcefully, at its end).
    """

    __slots__ = ("_args", "_function")

    def __init__(self, function: Callable[..., Awaitable[None]], *args: Any) -> None:
        self._function = function
        self._args = args

    def __await__(self) -> Generator[Any, None, None]:
        return self._function(*self._args).__await__()


class UnixStreamServer(TCPServer):
    """A Unix stream socket server, on a socket file at ``server_address``.

    A stale socket file (its server is gone) is removed before binding; the server removes
    its own file on close. ``unix_socket_mode`` sets the file's mode.
    """

    address_family: int = socket.AF_UNIX
