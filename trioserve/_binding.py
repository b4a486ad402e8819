"""Opening server sockets: address checks, bind options, Unix socket files.

`SocketServer` is the base of every server that owns a socket (TCP, UDP, Unix stream,
Unix datagram). It creates the socket in its constructor, binds and activates it there,
inside or outside `trio.run`, and closes it in `server_close`. What differs between
transports (listen and accept, or receive from) lives in `trioserve._stream` and
`trioserve._datagram`.

Bind defaults differ from socketserver's where socketserver's are a trap:

* ``allow_reuse_address`` is true for stream servers, as Trio's listeners and
  ``http.server`` have it, so a restarted server does not fail on a port in TIME_WAIT. It
  stays false for datagram servers, where on Linux it would let two servers share a port
  silently.
* ``request_queue_size`` (the listen backlog) is 4096, not 5: the kernel caps it at
  ``net.core.somaxconn``, and a burst of clients is not refused.
* IPv6 sockets set ``IPV6_V6ONLY`` (``ipv6_only = True``), as Trio does, so ``::`` means
  IPv6; serve IPv4 with a second server, or set ``ipv6_only = False`` for a dual-stack
  socket.
* A Unix socket file left behind by a server that is gone is removed before binding; one
  that a live server still listens on is left alone and the bind fails with
  ``EADDRINUSE``. The server removes its own file on close.

Every bind error is raised again with the address in its message, keeping its type and
errno: a bad host is a `socket.gaierror`, a port in use an `OSError` with ``EADDRINUSE``, a
missing directory a `FileNotFoundError`; a malformed address or an out-of-range port is a
`ValueError` or `TypeError` raised before any socket is made.

Adopting a socket
-----------------
A server can also be built around a socket someone else bound: a supervisor (systemd
socket activation, see `trioserve._activation`), a parent process, a test. `from_socket`
and `from_fd` do that. They run the class's constructor as usual, so a subclass's
``__init__`` still runs, but the constructor takes the adopted socket instead of making
one (it is handed over through a context variable, so no constructor signature changes).
An adopted Unix socket's file is not removed on close: it belongs to whoever bound it
(systemd keeps it across restarts of the service).
"""

from __future__ import annotations

import contextvars
import errno
import os
import socket
import stat
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from . import _options
from ._direct import PacedListener
from ._exceptions import PortOutOfRangeError
from ._handlers import HandlerClass
from ._server import BaseServer
from ._serversocket import ServerSocket

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["SocketServer", "check_address", "family_for"]


def family_for(default: int, address: Any) -> int:
    """The address family for *address*: an IPv6 literal host selects AF_INET6."""
    if (
        default == socket.AF_INET
        and isinstance(address, tuple)
        and address
        and isinstance(address[0], str)
        and ":" in address[0]
    ):
        return socket.AF_INET6
    return default


def check_address(family: int, address: Any) -> Any:
    """Return *address* in the form ``bind`` takes, or raise naming what is wrong with it."""
    if family == socket.AF_UNIX:
        if not isinstance(address, (str, bytes, os.PathLike)):
            raise TypeError(f"a Unix socket address is a path, not {address!r}")
        path = os.fspath(address)
        if not path:
            raise ValueError("a Unix socket path must not be empty")
        return path
    expected = 4 if family == socket.AF_INET6 else 2
    if not isinstance(address, tuple) or len(address) not in (2, expected):
        raise TypeError(f"a TCP/UDP address is a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    if not isinstance(host, str):
        raise TypeError(f"the host in {address!r} must be a str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"the port in {address!r} must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise PortOutOfRangeError(f"the port in {address!r} is out of range: it must be 0-65535")
    return address


# The socket `from_socket` hands to the constructor: a list so that exactly one
# `SocketServer.__init__` (the outermost server being built) takes it.
_adopting: contextvars.ContextVar[list[socket.socket]] = contextvars.ContextVar("_adopting")


def _rephrase(exc: OSError, address: Any) -> OSError:
    if exc.errno is None:  # such as "AF_UNIX path too long"
        return type(exc)(f"cannot bind to {address!r}: {exc}")
    return type(exc)(exc.errno, f"cannot bind to {address!r}: {exc.strerror}")


def _remove_stale_unix_socket(path: str | bytes, socket_type: int) -> None:
    """Remove the socket file at *path* if no one is serving on it any more."""
    if (isinstance(path, str) and path.startswith("\0")) or (
        isinstance(path, bytes) and path.startswith(b"\0")
    ):
        return  # the abstract namespace has no files
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # not ours to remove: bind fails with EADDRINUSE and says so
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket_type)
    probe.setblocking(False)  # a live server with a full backlog must not hang us
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # a socket file whose server is gone
    except OSError:
        pass  # someone is there, or we cannot tell: leave it for bind to report
    finally:
        probe.close()


def _is_path(address: str | bytes) -> bool:
    return address[:1] not in ("\0", b"\0")


class SocketServer(BaseServer):
    """A server that owns a socket: binds it in the constructor, closes it on close.

    Args:
      server_address: ``(host, port)`` for TCP and UDP (an IPv6 literal host selects
        IPv6; port 0 picks a free port, and `server_address` then holds the real one), or
        a path for Unix sockets.
      RequestHandlerClass: the handler class.
      bind_and_activate: bind and activate the socket now (the default); with False, call
        `server_bind` and `server_activate` yourself, after setting socket options.
      **options: the class's options, checked (see `BaseServer`).

    Options and class attributes:
      allow_reuse_address: set ``SO_REUSEADDR`` (stream servers: True).
      allow_reuse_port: set ``SO_REUSEPORT``, to share a port between processes.
      ipv6_only: on IPv6 sockets, set ``IPV6_V6ONLY`` (default True).
      unix_socket_mode: a file mode for a Unix socket file, such as ``0o660``. The file
        is created with it (never, even briefly, with a wider one); the umask can only
        narrow it while binding, and it is then widened to exactly this mode.

    Attributes:
      socket: the server's socket, a `trio.socket.SocketType` (a
        `~trioserve._serversocket.ServerSocket`): Trio's methods inside a Trio run
        (``await server.socket.accept()``), and, as socketserver code expects, blocking
        ones outside one (``settimeout``, ``accept``, ``close``).
      address_family, socket_type: as in socketserver.
    """

    address_family: int = socket.AF_INET
    socket_type: ClassVar[int] = socket.SOCK_STREAM
    allow_reuse_address: bool = False
    allow_reuse_port: bool = False
    ipv6_only: bool = True
    unix_socket_mode: int | None = None

    _trioserve_options: ClassVar[Mapping[str, _options.Check]] = {
        "allow_reuse_address": _options.boolean,
        "allow_reuse_port": _options.boolean,
        "ipv6_only": _options.boolean,
        "unix_socket_mode": _options.file_mode_or_none,
    }

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: HandlerClass,
        bind_and_activate: bool = True,
        **options: Any,
    ) -> None:
        adopting = _adopting.get(None)
        adopted = adopting.pop() if adopting else None
        super().__init__(server_address, RequestHandlerClass, **options)
        self._trioserve_unix_path: tuple[str | bytes, int] | None = None
        #: Whether the socket was adopted (it cannot be made again after a drain closed it).
        self._trioserve_adopted = adopted is not None
        #: Whether a graceful stop closed the listening socket (the next serve reopens it).
        self._trioserve_drained = False
        if adopted is not None:
            self.address_family = adopted.family
        else:
            self.address_family = family_for(self.address_family, server_address)
            self.server_address = check_address(self.address_family, server_address)
            adopted = socket.socket(self.address_family, self.socket_type)
        self._trioserve_use(adopted)
        if bind_and_activate:
            self._trioserve_bind_and_activate()

    def _trioserve_bind_and_activate(self) -> None:
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def _trioserve_use(self, raw: socket.socket) -> None:
        self._trioserve_raw_socket = raw
        self.socket: trio.socket.SocketType = ServerSocket(raw)
        # accept/recvfrom on this socket, paced; used while self.socket is still this one.
        self._trioserve_paced = PacedListener(raw, self.socket)

    def _trioserve_reopen(self) -> None:
        """Before serving again: make, bind and activate the socket a drain closed."""
        if not self._trioserve_drained:
            return
        if self._trioserve_adopted:
            raise RuntimeError(
                f"{self!r} closed its adopted listening socket when it stopped gracefully; "
                "it cannot be bound again here: build a new server from a new socket"
            )
        self._trioserve_drained = False
        self._trioserve_use(socket.socket(self.address_family, self.socket_type))
        self._trioserve_bind_and_activate()

    @classmethod
    def from_socket(
        cls, sock: socket.socket, RequestHandlerClass: HandlerClass, **options: Any
    ) -> Self:
        """Build a server around a socket that is already bound (and maybe listening).

        Any address family works with any stream (or datagram) server class: the server
        takes the socket's family, and `server_address` is the socket's own address. The
        subclass's ``__init__`` runs as usual, with ``bind_and_activate=False``, and a
        stream socket that is not listening yet is activated (`server_activate`).

        Args:
          sock: a bound socket of this server's type (stream or datagram).
          RequestHandlerClass: the handler class.
          **options: the class's options, checked (see `BaseServer`).

        Returns:
          The server, ready to serve.

        Raises:
          ValueError: *sock* is of another type than this server's, or not bound.

        Resource handling:
          The server owns *sock* from then on and closes it in `server_close`; it does
          not remove an adopted Unix socket's file. If this raises, *sock* is left open
          and still the caller's.
        """
        if sock.type != cls.socket_type:
            raise ValueError(
                f"{cls.__name__} needs a socket of type {cls.socket_type!r}, not {sock.type!r}"
            )
        address = sock.getsockname()
        if not address or (isinstance(address, tuple) and address[1] == 0):
            raise ValueError(f"{cls.__name__}.from_socket needs a bound socket, not {sock!r}")
        adopting = [sock]
        token = _adopting.set(adopting)
        try:
            server = cls(address, RequestHandlerClass, bind_and_activate=False, **options)
        finally:
            _adopting.reset(token)
        if adopting:  # pragma: no cover - a subclass that never called SocketServer.__init__
            raise TypeError(f"{cls.__name__}.__init__ did not call SocketServer.__init__")
        server.server_address = address
        if cls.socket_type == socket.SOCK_STREAM and not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            server.server_activate()  # if this raises, *sock* is still the caller's
        return server

    @classmethod
    def from_fd(cls, fd: int, RequestHandlerClass: HandlerClass, **options: Any) -> Self:
        """Build a server around the bound socket behind file descriptor *fd*.

        For a socket inherited from a parent process or a supervisor: systemd socket
        activation (see `listen_fds`), ``pass_fds`` of `subprocess`. The family and type
        are read from the socket itself; otherwise this is `from_socket`.

        Args:
          fd: the descriptor of a bound socket.
          RequestHandlerClass: the handler class.
          **options: the class's options, checked (see `BaseServer`).

        Returns:
          The server, ready to serve.

        Raises:
          ValueError: *fd* is not a socket, or not one this server can serve (see
            `from_socket`).
          OSError: *fd* is not an open descriptor (``EBADF``).

        Resource handling:
          The server owns *fd* from then on, closes it in `server_close`, and marks it
          non-inheritable, so processes a handler starts do not keep the port open. If
          this raises, *fd* is left open and still the caller's.
        """
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            if exc.errno == errno.ENOTSOCK:
                raise ValueError(f"file descriptor {fd} is not a socket") from None
            raise type(exc)(exc.errno, f"file descriptor {fd}: {exc.strerror}") from None
        try:
            server = cls.from_socket(sock, RequestHandlerClass, **options)
        except BaseException:
            sock.detach()
            raise
        sock.set_inheritable(False)
        return server

    def server_bind(self) -> None:
        """Set the socket options and bind to `server_address`; then record the real one."""
        sock = self._trioserve_raw_socket
        family = self.address_family
        if self.allow_reuse_address and family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - not on Linux
                raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT is not supported here")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(self.ipv6_only))
        address = self.server_address
        mode = self.unix_socket_mode if family == socket.AF_UNIX else None
        if family == socket.AF_UNIX:
            _remove_stale_unix_socket(address, self.socket_type)
            if mode is not None:
                # Linux creates the socket file with the socket's own mode (less the
                # umask): set it before bind, so the file never exists with a wider one.
                os.fchmod(sock.fileno(), mode)
        try:
            sock.bind(address)
        except socket.gaierror as exc:
            raise socket.gaierror(
                exc.errno, f"cannot bind to {address!r}: unknown host ({exc.strerror})"
            ) from None
        except OverflowError as exc:
            raise ValueError(f"cannot bind to {address!r}: {exc}") from None
        except OSError as exc:
            raise _rephrase(exc, address) from None
        if family == socket.AF_UNIX and _is_path(address):
            if mode is not None and stat.S_IMODE(os.stat(address).st_mode) != mode:
                os.chmod(address, mode)  # only widens what the umask narrowed
            self._trioserve_unix_path = (address, os.stat(address).st_ino)
        self.server_address = sock.getsockname()

    def server_close(self) -> None:
        """Close the socket, and remove the Unix socket file this server created.

        Safe inside or outside `trio.run`, and more than once. Called from another thread
        while the server serves, it stops serving first (as `shutdown` does, with the
        default grace) and closes the socket in the serving run, so ``serve_forever``
        returns rather than waiting on a closed socket.
        """
        if self._trioserve_close_elsewhere():
            return
        if trio.lowlevel.in_trio_run():
            self.socket.close()  # also wakes any task still waiting on the socket
        else:
            self._trioserve_raw_socket.close()
        own = self._trioserve_unix_path
        if own is not None:
            self._trioserve_unix_path = None
            path, inode = own
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def _trioserve_close_elsewhere(self) -> bool:
        """From outside a serving run: close in the run, after stopping it. True if done."""
        serving = self._trioserve.serving
        if serving is None or (
            trio.lowlevel.in_trio_run() and trio.lowlevel.current_trio_token() is serving.token
        ):
            return False
        closed = threading.Event()

        def close_in_run() -> None:
            try:
                serving.stop(self.shutdown_grace if self.block_on_close else 0.0)
                self.server_close()
            finally:
                closed.set()

        try:
            serving.token.run_sync_soon(close_in_run)
        except trio.RunFinishedError:
            return False
        if serving.may_wait_here():
            closed.wait()
        return True

    def fileno(self) -> int:
        """The file descriptor of the server's socket."""
        return self.socket.fileno()
