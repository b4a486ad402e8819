"""`ServerSocket`: a server's own socket, Trio's inside a Trio run, a standard one outside.

A server's ``socket`` attribute is what socketserver code reaches for: ``setsockopt``
before binding, ``getsockname``, ``fileno``, ``close``; an overridden ``get_request``
that calls ``self.socket.accept()``; a datagram handler's ``sendto``. Inside Trio those
must be Trio's (``await sock.accept()``); in a plain script, or in the worker thread of a
sync hook, they must block, as a standard socket's do. `ServerSocket` is both, by the same
rule as ``serve_forever``: where a Trio run is active in the calling thread, the I/O
methods are Trio's (they return awaitables); anywhere else they block, honouring
`settimeout`, and return what `socket.socket`'s return.

It is a `trio.socket.SocketType`, so code written for Trio keeps working. The descriptor
itself always stays non-blocking (the server's Trio run waits on it): blocking calls
wait with ``poll`` and then make the call.
"""

from __future__ import annotations

import builtins
import select
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, final

import trio

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self

__all__ = ["ServerSocket"]

T = TypeVar("T")


@final
class ServerSocket(trio.socket.SocketType):
    """A server's socket: Trio's methods inside a Trio run, blocking ones outside.

    Args:
      sock: the standard socket it owns (made non-blocking).

    Attributes:
      trio_socket: the `trio.socket.SocketType` over the same socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._raw = sock
        self.trio_socket = trio.socket.from_stdlib_socket(sock)
        self._timeout: float | None = None

    # -- plain methods, the same everywhere -------------------------------------------------

    def detach(self) -> int:
        return self._raw.detach()

    def fileno(self) -> int:
        return self._raw.fileno()

    def getpeername(self) -> Any:
        return self._raw.getpeername()

    def getsockname(self) -> Any:
        return self._raw.getsockname()

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        if buflen is None:
            return self._raw.getsockopt(level, optname)
        return self._raw.getsockopt(level, optname, buflen)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        if optlen is None:
            self._raw.setsockopt(level, optname, value)
        else:
            self._raw.setsockopt(level, optname, value, optlen)

    def listen(self, backlog: int = min(socket.SOMAXCONN, 128)) -> None:
        self._raw.listen(backlog)

    def get_inheritable(self) -> bool:
        return self._raw.get_inheritable()

    def set_inheritable(self, inheritable: bool) -> None:
        self._raw.set_inheritable(inheritable)

    @property
    def family(self) -> socket.AddressFamily:
        return self._raw.family

    @property
    def type(self) -> socket.SocketKind:
        return self._raw.type

    @property
    def proto(self) -> int:
        return self._raw.proto

    @property
    def did_shutdown_SHUT_WR(self) -> bool:
        return self.trio_socket.did_shutdown_SHUT_WR

    def dup(self) -> trio.socket.SocketType:
        return self.trio_socket.dup()

    def shutdown(self, flag: int) -> None:
        self.trio_socket.shutdown(flag)

    def is_readable(self) -> bool:
        return self.trio_socket.is_readable()

    def close(self) -> None:
        """Close the socket: inside Trio, waking any task that waits on it; anywhere."""
        if trio.lowlevel.in_trio_run():
            self.trio_socket.close()
        else:
            self._raw.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._raw).replace("socket.socket", "trioserve.ServerSocket", 1)

    # -- timeouts, for the blocking methods -----------------------------------------------

    def settimeout(self, value: float | None) -> None:
        """Seconds a blocking call (outside Trio) waits; None: for ever. As a socket's."""
        if value is not None and value < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        """The timeout `settimeout` set."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """As a socket's: blocking calls wait for ever (True) or not at all (False)."""
        self._timeout = None if flag else 0.0

    def _blocking(self, events: int, call: Callable[[], T]) -> T:
        """Make *call* on the socket, waiting (up to the timeout) until it can complete."""
        timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._raw.fileno(), events)
        while True:
            try:
                return call()
            except BlockingIOError:
                if timeout == 0:
                    raise
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("timed out")
            poller.poll(None if remaining is None else remaining * 1000)

    # -- I/O: Trio's inside a run, blocking outside -----------------------------------------

    def accept(self) -> Any:
        """Inside Trio: ``await sock.accept()``. Outside: a blocking `socket.socket.accept`.

        Outside Trio the new connection is a `socket.socket` in blocking mode, as
        socketserver's ``get_request`` returns it.
        """
        if trio.lowlevel.in_trio_run():
            return self.trio_socket.accept()

        def accept() -> tuple[socket.socket, Any]:
            connection, address = self._raw.accept()
            connection.setblocking(True)
            return connection, address

        return self._blocking(select.POLLIN, accept)

    def recv(self, buflen: int, flags: int = 0, /) -> Any:
        if trio.lowlevel.in_trio_run():
            return self.trio_socket.recv(buflen, flags)
        return self._blocking(select.POLLIN, lambda: self._raw.recv(buflen, flags))

    def recv_into(self, buffer: Buffer, nbytes: int = 0, flags: int = 0) -> Any:
        if trio.lowlevel.in_trio_run():
            return self.trio_socket.recv_into(buffer, nbytes, flags)
        return self._blocking(select.POLLIN, lambda: self._raw.recv_into(buffer, nbytes, flags))

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> Any:
        if trio.lowlevel.in_trio_run():
            return self.trio_socket.recvfrom(bufsize, flags)
        return self._blocking(select.POLLIN, lambda: self._raw.recvfrom(bufsize, flags))

    def recvfrom_into(self, buffer: Buffer, nbytes: int = 0, flags: int = 0) -> Any:
        if trio.lowlevel.in_trio_run():
            return self.trio_socket.recvfrom_into(buffer, nbytes, flags)
        return self._blocking(
            select.POLLIN, lambda: self._raw.recvfrom_into(buffer, nbytes, flags)
        )

    def send(self, data: Buffer, flags: int = 0, /) -> Any:
        if trio.lowlevel.in_trio_run():
            return self.trio_socket.send(data, flags)
        return self._blocking(select.POLLOUT, lambda: self._raw.send(data, flags))

    def sendto(self, *args: Any) -> Any:
        """Inside Trio: ``await sock.sendto(data, address)``. Outside: blocking."""
        if trio.lowlevel.in_trio_run():
            return self.trio_socket.sendto(*args)
        return self._blocking(select.POLLOUT, lambda: self._raw.sendto(*args))

    def bind(self, address: Any) -> Any:
        """Inside Trio: ``await sock.bind(address)``. Outside: `socket.socket.bind`."""
        if trio.lowlevel.in_trio_run():
            return self.trio_socket.bind(address)
        self._raw.bind(address)
        return None

    def connect(self, address: Any) -> Any:
        return self.trio_socket.connect(address)

    def wait_writable(self) -> Any:
        return self.trio_socket.wait_writable()
