"""`StreamSocket`: a blocking, socket-like view of any Trio stream, for sync handlers.

A sync handler's ``request`` is a real socket when its connection is a plain
`trio.SocketStream` (see `trioserve._sync`). Over any other stream (`trio.SSLStream`, a
user's own) it is a `StreamSocket`: a socket's methods, each running the stream
operation in the Trio loop with `trio.from_thread.run`. Slower, but correct over any
`trio.abc.Stream`, with the errors of `trioserve._errors`.
"""

from __future__ import annotations

import errno
import io
import math
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, final

import trio

from ._errors import broken, peer_timeout
from ._exceptions import BrokenConnectionError
from ._syncfiles import SyncReader, SyncWriter

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["StreamSocket", "SyncConnection", "socket_under"]

T = TypeVar("T")


class _ShutDownError(Exception):
    """The connection was shut down from the Trio side (the handler was cancelled)."""


def socket_under(stream: object) -> trio.socket.SocketType | None:
    """The socket beneath *stream* (through ``transport_stream`` layers), if any."""
    for _ in range(8):
        if isinstance(stream, trio.SocketStream):
            return stream.socket
        stream = getattr(stream, "transport_stream", None)
        if stream is None:
            return None
    return None


@final
class StreamSocket:
    """A blocking, socket-like view of a Trio stream, for sync handlers.

    The ``request`` of a sync handler when the connection is not a plain socket (TLS, a
    user's own stream). Each call runs the stream operation in the Trio loop with
    `trio.from_thread.run`, so it works over any `trio.abc.Stream`, more slowly than a
    real socket. The methods behave as a socket's: ``recv`` returns b"" at end of file, a
    vanished peer raises `~trioserve.BrokenConnectionError` (a `ConnectionError`), an
    expired timeout raises `~trioserve.PeerTimeoutError` (a `TimeoutError`), a closed one
    `OSError` (``EBADF``). Socket
    options and addresses come from the socket under the stream, if there is one
    (``ENOTSOCK`` otherwise).

    Args:
      stream: the connection.
      trio_token: the token of the Trio run that owns *stream*.
    """

    def __init__(self, stream: trio.abc.Stream, trio_token: trio.lowlevel.TrioToken) -> None:
        self._stream = stream
        self._token = trio_token
        self._timeout: float | None = socket.getdefaulttimeout()
        self._closed = False
        self._read_shut = False
        self._write_shut = False
        self._cancelled = False
        self._scopes: set[trio.CancelScope] = set()

    # Runs in the Trio thread.
    def cancel(self) -> None:
        """Shut the connection down for the handler: pending and later calls return."""
        self._cancelled = True
        for scope in self._scopes:
            scope.cancel()

    async def _in_trio(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._cancelled:
            raise _ShutDownError
        timeout = math.inf if self._timeout is None else self._timeout
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                with trio.fail_after(timeout):
                    return await operation(*args)
            finally:
                self._scopes.discard(scope)
        raise _ShutDownError

    def _call(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        try:
            return trio.from_thread.run(self._in_trio, operation, *args, trio_token=self._token)
        except trio.TooSlowError:
            raise peer_timeout(self._timeout) from None
        except trio.ClosedResourceError:
            raise OSError(errno.EBADF, "Bad file descriptor") from None
        except BrokenConnectionError:
            raise
        except trio.BrokenResourceError as exc:
            raise broken(exc) from exc

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Receive up to *bufsize* bytes; b"" at end of file."""
        if flags:
            raise OSError(errno.EOPNOTSUPP, "recv flags are not supported on this stream")
        if self._read_shut:
            return b""
        try:
            return bytes(self._call(self._stream.receive_some, bufsize))
        except _ShutDownError:
            self._read_shut = True
            return b""

    def recv_into(self, buffer: Buffer, nbytes: int = 0, flags: int = 0) -> int:
        """Receive into *buffer* (up to *nbytes* bytes); return how many came."""
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view), flags)
        view[: len(data)] = data
        return len(data)

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        """Send all of *data*."""
        if flags:
            raise OSError(errno.EOPNOTSUPP, "send flags are not supported on this stream")
        if self._write_shut:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        try:
            self._call(self._stream.send_all, bytes(data))
        except _ShutDownError:
            self._write_shut = True
            raise BrokenPipeError(errno.EPIPE, "Broken pipe") from None

    def send(self, data: Buffer, flags: int = 0) -> int:
        """Send all of *data* (a stream sends all or fails); return its size."""
        self.sendall(data, flags)
        return memoryview(data).nbytes

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """A file over this connection, as `socket.socket.makefile` returns.

        ``"rb"`` gives a `SyncReader`, ``"wb"`` a `SyncWriter` (unbuffered when *buffering*
        is 0); without ``"b"`` the file is wrapped in an `io.TextIOWrapper`.
        """
        if not set(mode) <= {"r", "w", "b"} or ("r" in mode) == ("w" in mode):
            raise ValueError(f"invalid mode {mode!r} (only r, w, b)")
        binary: io.BufferedIOBase
        if "r" in mode:
            binary = SyncReader(self)
        else:
            binary = SyncWriter(self, bufsize=-1 if buffering is None else buffering)
        if "b" in mode:
            return binary
        return io.TextIOWrapper(binary, encoding, errors, newline, write_through="w" in mode)

    def settimeout(self, value: float | None) -> None:
        """Seconds each later operation may wait; None waits forever."""
        if value is not None and value < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        """The timeout set by `settimeout`."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """``setblocking(True)`` waits forever; ``False`` is not supported here."""
        if not flag:
            raise OSError(errno.EOPNOTSUPP, "non-blocking mode is not supported on this stream")
        self._timeout = None

    def _socket(self) -> trio.socket.SocketType:
        sock = socket_under(self._stream)
        if sock is None:
            raise OSError(errno.ENOTSOCK, "the stream is not over a socket")
        return sock

    def setsockopt(self, level: int, optname: int, value: int | Buffer) -> None:
        """Set an option on the socket under the stream."""
        self._socket().setsockopt(level, optname, value)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int | bytes:
        """Read an option of the socket under the stream."""
        if buflen is None:
            return self._socket().getsockopt(level, optname)
        return self._socket().getsockopt(level, optname, buflen)

    def getsockname(self) -> Any:
        """The local address of the socket under the stream."""
        return self._socket().getsockname()

    def getpeername(self) -> Any:
        """The peer's address."""
        return self._socket().getpeername()

    def fileno(self) -> int:
        """The file descriptor of the socket under the stream, or -1 without one."""
        sock = socket_under(self._stream)
        return -1 if sock is None or self._closed else sock.fileno()

    def shutdown(self, how: int) -> None:
        """Stop reading (``SHUT_RD``), writing (``SHUT_WR``, sends end of file), or both."""
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._read_shut = True
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and not self._write_shut:
            self._write_shut = True
            stream = self._stream
            if isinstance(stream, trio.abc.HalfCloseableStream):
                try:
                    self._call(stream.send_eof)
                except (OSError, _ShutDownError):
                    pass

    def close(self) -> None:
        """Close this view; the server closes the stream itself once the handler returns."""
        self._closed = True

    def __enter__(self) -> StreamSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: What a sync stream handler's ``request`` is: a real socket, or a `StreamSocket`.
SyncConnection: TypeAlias = "socket.socket | StreamSocket"
