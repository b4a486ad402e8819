"""Sync handlers: socketserver code, unchanged, in worker threads.

A handler whose ``handle`` is a plain ``def`` (and any handler class of the standard
library's ``socketserver``) blocks: ``self.request.recv(1024)`` waits for the peer. It runs
in a worker thread, ``setup`` to ``finish``, while the Trio task that owns the request
waits for it. This module is that adapter: it is not a second server. The request still
goes through the server's one async path (``verify_request``, ``process_request``,
``shutdown_request``...); only `run_sync_handler`, called by ``finish_request``, differs.

The request a sync handler sees
-------------------------------
A round trip from the thread into the Trio loop for every ``recv`` would cost tens of
microseconds, and a busy HTTP handler makes several per request. So when the connection is
a `trio.SocketStream` (plain TCP or Unix), the thread gets a real, blocking
`socket.socket` on a duplicate of the connection's file descriptor: every method of a
socket works (``recv``, ``sendall``, ``makefile``, ``settimeout``, ``setsockopt``,
``sendfile``...), at the speed of socketserver, and ``TCP_NODELAY``, which Trio sets, stays
on. The duplicate belongs to the thread: whatever the handler does with it (even
``close()``) cannot close the server's descriptor, and it is closed when the handler
returns. The descriptor is put back in non-blocking mode before the Trio side touches the
connection again.

Any other stream (`trio.SSLStream`, a stream of the user's own) gets a `StreamSocket`:
the same methods, each a call into the Trio loop with `trio.from_thread.run`. Slower, but
correct over any `trio.abc.Stream`.

A datagram request (``(data, socket)``) is passed through as it is: the datagram server
prepares it.

Threads, limits, cancellation
-----------------------------
Worker threads come from Trio's thread cache (`trio.lowlevel.start_thread_soon`), and
how many run handlers at once is bounded per server by ``max_handler_threads`` (a
`trio.CapacityLimiter`). A request past the limit waits, accepted and unrefused, until a
thread is free: the accept loop keeps accepting up to ``max_connections``.

Cancelling the task of a sync handler (``serve_forever``'s scope cancelled, or the
shutdown grace run out) cannot interrupt Python code in another thread. What it can do is
reach the place where such a thread nearly always waits, its connection: the connection is
shut down (``SHUT_RDWR``), so a blocked ``recv`` or ``readline`` returns end of file at
once and a blocked ``send`` fails; the handler then returns. The Trio side waits for that,
so normally no handler thread outlives ``serve_forever``. A thread stuck somewhere the
server cannot reach (``time.sleep(3600)``, a lock, another socket) is waited for
`ABANDON_AFTER` seconds, then logged as an error and abandoned: the server never waits
forever for a stuck thread. Its thread slot is only given back when it really ends.

`trio.to_thread.run_sync` is not used because its cancellation is all or nothing: with
``abandon_on_cancel=False`` the task cannot react to being cancelled until the thread is
done, which is exactly when the connection needs to be shut down. Here the task waits on an
event that the thread sets when it ends; cancellation interrupts that wait, shuts the
connection down, and then waits again, shielded, for the thread.

While a thread runs a handler it is marked as one of the server's handler threads
(`trioserve._server.mark_handler_thread`), so that ``self.server.shutdown()`` called from
the handler returns at once instead of waiting for ``serve_forever``, which waits for this
very handler.
"""

from __future__ import annotations

import contextvars
import errno
import io
import math
import os
import socket
import socketserver
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, TypeVar, final

import trio

from . import _server
from ._exceptions import BrokenConnectionError, LineTooLongError, PeerTimeoutError
from ._files import DEFAULT_RECEIVE_SIZE

if TYPE_CHECKING:
    import outcome
    from typing_extensions import Buffer

    from ._server import BaseServer

__all__ = [
    "ABANDON_AFTER",
    "StreamSocket",
    "SyncConnection",
    "SyncReader",
    "SyncWriter",
    "run_in_handler_thread",
    "run_sync_handler",
    "running_handler_threads",
]

T = TypeVar("T")

#: Seconds a cancelled sync handler may take to return once its connection is shut down,
#: before its thread is abandoned (and logged).
ABANDON_AFTER = 5.0


def _broken(exc: BaseException) -> BrokenConnectionError:
    return BrokenConnectionError(f"connection broken by the peer: {exc}")


def _timed_out(sock: object) -> PeerTimeoutError:
    """The `PeerTimeoutError` for a timeout of *sock* (its ``gettimeout()``, if it has one)."""
    gettimeout = getattr(sock, "gettimeout", None)
    timeout = gettimeout() if gettimeout is not None else None
    return PeerTimeoutError(0.0 if timeout is None else timeout)


# -- blocking files ------------------------------------------------------------------------


class _ConnectionRaw(io.RawIOBase):
    """The unbuffered receive side of a connection, under a `SyncReader`'s buffer.

    ``readinto`` receives once (``recv_into``, or ``recv`` on an object without it), at
    most ``receive_size`` bytes, and sorts the errors as the async files do. Before the
    connection, it serves the bytes the `SyncReader` gave back (``pending``). The receives
    of one ``readline`` share one timeout. A timeout does not raise through the C reader,
    which would drop what it had read so far: it is kept in ``error`` and reported as end
    of file, and the `SyncReader` gives the bytes back and raises it. Not for use on its
    own.
    """

    __slots__ = (
        "_gettimeout",
        "_recv_into",
        "deadline",
        "error",
        "holding",
        "line_state",
        "line_timeout",
        "pending",
        "per_receive",
        "receive_size",
        "sock",
    )

    def __init__(self, sock: SyncConnection, receive_size: int) -> None:
        super().__init__()
        self.sock = sock
        self.receive_size = receive_size
        self._recv_into: Callable[[Buffer, int], int] = getattr(
            sock, "recv_into", self._recv_into_with_recv
        )
        self._gettimeout: Callable[[], float | None] = getattr(
            sock, "gettimeout", self._no_timeout
        )
        #: Bytes given back by the `SyncReader`, read before anything more is received.
        self.pending = b""
        #: While True, ``readinto`` returns None ("no data now"): the reader's buffer can be
        #: drained without blocking.
        self.holding = False
        #: True while ``read``, ``read1`` or ``readinto`` runs: each receive gets the
        #: socket's own timeout. Otherwise a ``readline`` runs, and its receives share one.
        self.per_receive = False
        #: Within a ``readline`` on a socket with a timeout: 0 before its first receive; 1
        #: after it (the line must end by ``deadline``); 2 once a later receive lowered the
        #: socket's timeout to what is left (`end_line` restores ``line_timeout``).
        self.line_state = 0
        self.deadline = 0.0
        self.line_timeout = 0.0
        #: The timeout that ended a receive, for the `SyncReader` to raise.
        self.error: PeerTimeoutError | None = None

    def readable(self) -> bool:
        """Always True."""
        return True

    def readinto(self, buffer: Buffer) -> int | None:
        """Receive once into *buffer*; return how many bytes came, 0 at end of file.

        Returns 0 as well when the receive timed out (``error`` tells), and None while
        ``holding``.
        """
        if self.holding or self.pending:
            return self._give_pending(buffer)
        size = len(buffer)  # type: ignore[arg-type]  # a memoryview or a bytearray
        if size > self.receive_size:
            size = self.receive_size
        if not self.per_receive:
            if self.line_state:
                if not self._lower_timeout():
                    return 0
            else:
                # The first receive of a line waits the socket's own timeout, unchanged.
                timeout = self._gettimeout()
                if timeout is not None:
                    self.line_timeout = timeout
                    self.deadline = time.monotonic() + timeout
                    self.line_state = 1
        try:
            return self._recv_into(buffer, size)
        except BrokenConnectionError:
            raise
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            raise _broken(exc) from exc
        except TimeoutError as exc:
            if self.line_state == 2:
                self.error = PeerTimeoutError(self.line_timeout)
            elif isinstance(exc, PeerTimeoutError):
                self.error = exc
            else:
                self.error = _timed_out(self.sock)
            if not self.per_receive and not self.line_state:
                self.line_state = 1  # so that the readline looks at error
            return 0

    def _recv_into_with_recv(self, buffer: Buffer, size: int) -> int:
        data = self.sock.recv(size)
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    @staticmethod
    def _no_timeout() -> None:
        return None

    def _give_pending(self, buffer: Buffer) -> int | None:
        if self.holding:
            return None
        pending = self.pending
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(pending))
        view[:size] = pending[:size]
        self.pending = pending[size:]
        return size

    def _lower_timeout(self) -> bool:
        """Before a later receive of a line: let it wait only what is left of the timeout.

        Returns False (with ``error`` set) if nothing is left.
        """
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.error = PeerTimeoutError(self.line_timeout)
            return False
        self.sock.settimeout(remaining)
        self.line_state = 2
        return True

    def end_line(self) -> None:
        """After a ``readline`` that received: give the socket its own timeout back."""
        if self.line_state == 2:
            self.sock.settimeout(self.line_timeout)
        self.line_state = 0


class SyncReader(io.BufferedIOBase):
    """A buffered, blocking reader over a socket (a sync handler's ``rfile``).

    The methods of `io.BufferedReader` (``read``, ``read1``, ``readinto``,
    ``readline(limit)``, ``readlines``, iteration), at its speed, and the async reader's
    ``readuntil(separator, limit)``. The buffering is an `io.BufferedReader` over the
    connection, with a buffer of `io.DEFAULT_BUFFER_SIZE` bytes at most. The rules are
    those of the async `~trioserve.AsyncReader`: a peer that resets the connection raises
    `~trioserve.BrokenConnectionError` (a `ConnectionError`), the socket's timeout raises
    `~trioserve.PeerTimeoutError` (a `TimeoutError`), and ``readline()`` without a limit
    raises `~trioserve.LineTooLongError` when no line end comes within
    ``max_line_length`` bytes (``readuntil()`` when its separator does not come within
    its limit). ``readline()`` and ``readuntil()`` apply the socket's timeout to the
    whole call, not to each receive; ``read``, ``read1`` and ``readinto`` apply it to
    each receive.

    Nothing read is lost to an error a handler may catch and go on from: after a
    `LineTooLongError` or a `PeerTimeoutError`, the bytes the call had read are still
    there, in order, for the next call (for a too long line, about ``max_line_length``
    plus one buffer of bytes are held). After a `BrokenConnectionError`, what the call had
    read may be lost, as with the standard library's own ``rfile``.

    Args:
      sock: a `socket.socket` or a `StreamSocket`; its ``recv_into`` (or ``recv``) is
        used, and its ``gettimeout``/``settimeout`` (if it has them) to bound a whole line.
      receive_size: the most bytes one receive asks for.
      max_line_length: the longest line ``readline()`` without a limit accepts; None for
        no limit.
    """

    # Slots, not the instance dict, for what readline() touches on every call: faster.
    __slots__ = ("_line_limit", "_max_line_length", "_raw", "_reader", "_readline")

    def __init__(
        self,
        sock: SyncConnection,
        *,
        receive_size: int = DEFAULT_RECEIVE_SIZE,
        max_line_length: int | None = None,
    ) -> None:
        super().__init__()
        if receive_size < 1:
            raise ValueError(f"receive_size must be >= 1, not {receive_size}")
        self._raw = _ConnectionRaw(sock, receive_size)
        # Each open connection of a sync handler holds this buffer, idle or not, and the
        # C reader allocates it up front: io.DEFAULT_BUFFER_SIZE at most, as
        # socketserver's rfile has, not receive_size (64 KiB by default) per connection.
        self._reader = io.BufferedReader(
            self._raw, buffer_size=min(receive_size, io.DEFAULT_BUFFER_SIZE)
        )
        self._readline = self._reader.readline
        self.max_line_length = max_line_length

    @property
    def max_line_length(self) -> int | None:
        """The longest line ``readline()`` without a limit accepts; None for no limit."""
        return self._max_line_length

    @max_line_length.setter
    def max_line_length(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"max_line_length must be >= 1 or None, not {value}")
        self._max_line_length = value
        self._line_limit = value or -1

    @property
    def receive_size(self) -> int:
        """The most bytes one receive asks for."""
        return self._raw.receive_size

    @receive_size.setter
    def receive_size(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"receive_size must be >= 1, not {value}")
        self._raw.receive_size = value

    def readable(self) -> bool:
        """Always True."""
        return True

    def close(self) -> None:
        """Close the reader (not the socket); what it had buffered is dropped."""
        if not self.closed:
            super().close()
            self._reader.close()
            self._raw.pending = b""

    def _give_back(self, data: bytes) -> None:
        """Put *data*, read by a call that does not return it, back in front of the rest."""
        raw = self._raw
        raw.holding = True
        try:
            rest = self._reader.read1(-1)  # all the reader still holds, without receiving
        finally:
            raw.holding = False
        raw.pending = data + rest + raw.pending

    def _raise_error(self, data: bytes) -> NoReturn:
        """Give *data* back and raise the timeout that cut the last call short."""
        raw = self._raw
        error = raw.error
        assert error is not None
        raw.error = None
        self._give_back(data)
        raise error

    def _read_per_receive(self, read: Callable[[int], bytes], size: int) -> bytes:
        """``read(size)`` on the C reader, each receive with the socket's own timeout."""
        raw = self._raw
        raw.per_receive = True
        try:
            data = read(size)
        finally:
            raw.per_receive = False
        if raw.error is not None:
            self._raise_error(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Read *size* bytes, fewer only at end of file; all until end of file if negative."""
        return self._read_per_receive(self._reader.read, -1 if size is None else size)

    def read1(self, size: int = -1) -> bytes:
        """Read up to *size* bytes with at most one receive; b"" only at end of file."""
        return self._read_per_receive(self._reader.read1, size)

    def readinto(self, buffer: Buffer) -> int:
        """Read into *buffer* until it is full or end of file; return how many bytes came."""
        raw = self._raw
        raw.per_receive = True
        try:
            size = self._reader.readinto(buffer)
        finally:
            raw.per_receive = False
        if raw.error is not None:
            self._raise_error(memoryview(buffer).cast("B")[:size].tobytes())
        return size

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line, with its b"\\n"; the unterminated rest at end of file; b"" at EOF.

        Args:
          size: with ``size >= 0`` return at most *size* bytes, as
            `io.BufferedReader.readline` does.

        Raises:
          LineTooLongError: no limit was given and no line end came within
            ``max_line_length`` bytes. The bytes stay readable, in order.
          PeerTimeoutError: the socket has a timeout and the whole line did not arrive
            within it, however the peer dripped it (one timeout per call, not per
            receive). It carries the socket's timeout, which is the socket's again when
            this returns or raises. What did arrive of the line stays readable.
        """
        # The hot path of every line-based handler: one call into the C reader (which
        # refuses a closed file), a look at the raw state, one length check. (The C
        # readline is called through a local: a call through the attribute is slower.)
        raw = self._raw
        readline = self._readline
        limit = self._line_limit if size == -1 or size is None or size < 0 else size
        try:
            line = readline(limit)
        except BaseException:
            if raw.line_state:
                raw.end_line()
            raise
        if raw.line_state:
            # This line took receives under a timeout: restore it; did it run out?
            raw.end_line()
            if raw.error is not None:
                self._raise_error(line)
        if len(line) == limit and (size is None or size < 0) and line[-1] != 10:  # b"\n"
            self._give_back(line)
            raise LineTooLongError(limit)
        return line

    def readuntil(self, separator: bytes = b"\n", limit: int | None = -1) -> bytes:
        """Read up to and including *separator*; the unterminated rest at end of file.

        As the async `~trioserve.AsyncReader.readuntil`, for framing such as an HTTP head
        (``rfile.readuntil(b"\\r\\n\\r\\n")``): at end of file the bytes left come back
        without the separator (b"" when none are left), and a piece that is too long
        raises `LineTooLongError`.

        Args:
          separator: the non-empty byte string that ends the piece.
          limit: with ``limit >= 0``, the most bytes the piece, separator included, may
            hold; None or negative uses ``max_line_length`` (no limit if that is None).

        Returns:
          The bytes up to and including the first *separator*, or the rest at end of file.

        Raises:
          LineTooLongError: no separator came within the limit. The bytes stay readable,
            in order, and the call never holds more than the limit of them: a receive asks
            for no more than the piece may still take.
          PeerTimeoutError: the socket has a timeout and the whole piece did not arrive
            within it, however the peer dripped it (one timeout per call, not per
            receive). It carries the socket's timeout, which is the socket's again when
            this returns or raises. What did arrive stays readable.
          ValueError: *separator* is empty, or the file is closed.
        """
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if not separator:
            raise ValueError("separator must not be empty")
        if limit is None or limit < 0:
            limit = self._line_limit
        raw = self._raw
        receive_size = raw.receive_size
        try:
            return self._read_until(separator, limit, receive_size)
        finally:
            raw.receive_size = receive_size
            if raw.line_state:
                raw.end_line()  # the receives shared one timeout: give the socket its own

    def _read_until(self, separator: bytes, limit: int, receive_size: int) -> bytes:
        """`readuntil` once its arguments are checked; *limit* negative for none.

        Looks at what the C reader holds (``peek``, which receives once when it holds
        nothing) and takes from it (``read1``) only what the piece needs. The receives run
        in ``readline``'s mode, under one timeout for the call.
        """
        reader = self._reader
        raw = self._raw
        size = len(separator)
        data = bytearray()  # taken from the reader so far: no separator within it yet
        begin = 0  # where the next search in data starts: earlier bytes were searched
        while True:
            held = len(data)
            if limit >= 0:
                if held >= limit:
                    self._give_back(bytes(data))
                    raise LineTooLongError(limit, separator)
                if limit - held < receive_size:
                    raw.receive_size = limit - held  # no receive past the limit
            buffered = reader.peek()
            if not buffered:  # end of file, or the call's timeout ran out
                if raw.error is not None:
                    self._raise_error(bytes(data))
                return bytes(data)
            room = len(buffered)
            if 0 <= limit < held + room:
                room = limit - held
            if not held:  # the usual case: the whole piece is already buffered
                end = buffered.find(separator, 0, room)
                if end >= 0:
                    return reader.read1(end + size)
                data += reader.read1(room)
            else:
                data += memoryview(buffered)[:room]
                end = data.find(separator, begin)
                if end >= 0:
                    cut = end + size
                    reader.read1(cut - held)  # take only what the piece holds
                    del data[cut:]
                    return bytes(data)
                reader.read1(room)
            # A separator split across two receives starts in the last size - 1 bytes.
            begin = max(0, len(data) - size + 1)


class SyncWriter(io.BufferedIOBase):
    """A blocking writer over a socket (a sync handler's ``wfile``).

    With ``bufsize`` 0 every ``write`` is sent at once, as socketserver's ``wfile`` does
    with ``wbufsize = 0``; otherwise writes are collected until ``bufsize`` bytes wait, or
    ``flush()``. A peer that is gone raises `~trioserve.BrokenConnectionError`, one that
    does not take the data within the socket's timeout `~trioserve.PeerTimeoutError`.

    Args:
      sock: a `socket.socket` or a `StreamSocket`; only its ``sendall`` is used.
      bufsize: 0 for unbuffered; a positive size to buffer; negative for
        `io.DEFAULT_BUFFER_SIZE`.
    """

    def __init__(self, sock: SyncConnection, *, bufsize: int = 0) -> None:
        super().__init__()
        self._sock = sock
        self._pending = bytearray()
        self.bufsize = io.DEFAULT_BUFFER_SIZE if bufsize < 0 else bufsize

    def writable(self) -> bool:
        """Always True."""
        return True

    def _send(self, data: Buffer) -> None:
        try:
            self._sock.sendall(data)
        except (BrokenConnectionError, PeerTimeoutError):
            raise
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            raise _broken(exc) from exc
        except TimeoutError:
            raise _timed_out(self._sock) from None

    def write(self, data: Buffer) -> int:
        """Write *data*; return how many bytes it holds. Unbuffered writes are sent now."""
        if self.closed:
            raise ValueError("write to closed file")
        size = memoryview(data).nbytes
        if not self.bufsize:
            self._send(data)
            return size
        self._pending += data
        if len(self._pending) >= self.bufsize:
            self.flush()
        return size

    def flush(self) -> None:
        """Send whatever buffered writes are waiting."""
        if self.closed:
            raise ValueError("flush of closed file")
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            self._send(data)


# -- the socket-like request over any Trio stream -------------------------------------------


class _ShutDownError(Exception):
    """The connection was shut down from the Trio side (the handler was cancelled)."""


def _socket_under(stream: object) -> trio.socket.SocketType | None:
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
            raise PeerTimeoutError(self._timeout or 0.0) from None
        except trio.ClosedResourceError:
            raise OSError(errno.EBADF, "Bad file descriptor") from None
        except BrokenConnectionError:
            raise
        except trio.BrokenResourceError as exc:
            raise _broken(exc) from exc

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
        sock = _socket_under(self._stream)
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
        sock = _socket_under(self._stream)
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


# -- running a handler in a thread ---------------------------------------------------------


class _ThreadState:
    """One server's sync handlers within one Trio run."""

    __slots__ = ("limiter", "lock", "running", "token")

    def __init__(self, token: trio.lowlevel.TrioToken, total: float) -> None:
        self.token = token
        self.limiter = trio.CapacityLimiter(total)
        self.lock = threading.Lock()
        self.running = 0


_states: weakref.WeakKeyDictionary[BaseServer, _ThreadState] = weakref.WeakKeyDictionary()


def _thread_state(server: BaseServer) -> _ThreadState:
    limit = server.max_handler_threads
    total = math.inf if limit is None else limit
    token = trio.lowlevel.current_trio_token()
    state = _states.get(server)
    if state is None or state.token is not token:
        state = _states[server] = _ThreadState(token, total)
    elif state.limiter.total_tokens != total:
        state.limiter.total_tokens = total
    return state


def running_handler_threads(server: BaseServer) -> int:
    """How many threads are running a sync handler of *server* right now."""
    state = _states.get(server)
    return 0 if state is None else state.running


async def run_in_handler_thread(
    server: BaseServer, work: Callable[[], T], on_cancel: Callable[[], object]
) -> T:
    """Run *work* in a worker thread marked as one of *server*'s handler threads.

    Waits for one of the server's ``max_handler_threads`` slots first (cancellable).

    Args:
      server: the server whose thread limit and shutdown apply.
      work: what to run in the thread.
      on_cancel: called in the Trio thread, once, if this task is cancelled while *work*
        runs: it must make *work* return soon (shut its connection down).

    Returns:
      What *work* returned; what it raised is raised here.

    Error handling:
      When cancelled, this waits up to `ABANDON_AFTER` seconds for *work* to return, then
      raises `trio.Cancelled`; what *work* raised meanwhile is logged at debug level. A
      thread still running then is abandoned, and logged as an error.
    """
    state = _thread_state(server)
    borrower = object()
    await state.limiter.acquire_on_behalf_of(borrower)
    done = trio.Event()
    results: list[outcome.Outcome[T]] = []
    context = contextvars.copy_context()
    token = state.token

    def run() -> T:
        with state.lock:
            state.running += 1
        _server.mark_handler_thread(server)
        try:
            return context.run(work)
        finally:
            _server.mark_handler_thread(None)
            with state.lock:
                state.running -= 1

    def report(result: outcome.Outcome[T]) -> None:
        state.limiter.release_on_behalf_of(borrower)
        results.append(result)
        done.set()

    def deliver(result: outcome.Outcome[T]) -> None:
        try:
            token.run_sync_soon(report, result)
        except trio.RunFinishedError:
            pass  # an abandoned thread, ending after the run: no one is waiting

    try:
        trio.lowlevel.start_thread_soon(run, deliver)
    except BaseException:
        state.limiter.release_on_behalf_of(borrower)
        raise
    try:
        await done.wait()
    except trio.Cancelled:
        on_cancel()
        with trio.move_on_after(ABANDON_AFTER, shield=True):
            await done.wait()
        if not results:
            _server.logger.error(
                "a sync handler of %r did not return within %.1f s of its connection being "
                "shut down; abandoning its thread",
                server,
                ABANDON_AFTER,
            )
        else:
            error = getattr(results[0], "error", None)
            if error is not None:
                _server.logger.debug("a cancelled sync handler ended with %r", error)
        raise
    return results[0].unwrap()


def _blocking_socket(stream: trio.SocketStream) -> socket.socket:
    """A blocking socket on a duplicate of *stream*'s descriptor, for the worker thread."""
    trio_sock = stream.socket
    fd = os.dup(trio_sock.fileno())
    try:
        sock = socket.socket(trio_sock.family, trio_sock.type, trio_sock.proto, fileno=fd)
    except BaseException:
        os.close(fd)
        raise
    sock.settimeout(socket.getdefaulttimeout())
    return sock


def _release_blocking_socket(sock: socket.socket) -> None:
    """Close the thread's duplicate, even if files made by ``makefile`` still hold it."""
    fd = sock.detach()
    if fd >= 0:
        os.close(fd)


def _run_handler(
    handler_class: Callable[..., Any], request: Any, client_address: Any, server: BaseServer
) -> None:
    """In the worker thread: construct the handler and run it, as socketserver does."""
    handler = handler_class(request, client_address, server)
    if isinstance(handler, socketserver.BaseRequestHandler):
        return  # socketserver's handlers run setup, handle and finish in __init__
    handler.setup()
    try:
        handler.handle()
    finally:
        try:
            handler.finish()
        finally:
            wfile = getattr(handler, "wfile", None)
            if isinstance(wfile, SyncWriter) and not wfile.closed:
                try:  # a finish() override that did not call super().finish()
                    wfile.flush()
                except OSError:
                    pass
                wfile.close()


async def run_sync_handler(
    handler_class: Callable[..., Any], request: Any, client_address: Any, server: BaseServer
) -> None:
    """Run a sync handler (or a socketserver handler class) for one request, in a thread.

    The handler gets a blocking, socket-like ``request`` (see the module documentation);
    ``setup``, ``handle`` and ``finish`` run in a worker thread, ``finish`` even when
    ``handle`` raised.

    Args:
      handler_class: a trioserve handler class with a plain-``def`` ``handle``, or a
        subclass of ``socketserver.BaseRequestHandler``.
      request: the request as the server received it: a Trio stream, or a datagram
        request prepared by the datagram server (passed through).
      client_address: the peer's address.
      server: the server.

    Raises:
      Exception: whatever the handler raised, for the server's ``handle_error``.

    Resource handling:
      A socket given to the handler is closed when the handler returns; *request* itself
      stays open, for the server to shut down and close.
    """
    if isinstance(request, trio.SocketStream):
        stream = request
        trio_sock = stream.socket

        def work() -> None:
            sock = _blocking_socket(stream)
            try:
                _run_handler(handler_class, sock, client_address, server)
            finally:
                _release_blocking_socket(sock)

        def shut_down() -> None:
            try:
                trio_sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected any more: the handler's calls return already

        try:
            await run_in_handler_thread(server, work, shut_down)
        finally:
            if trio_sock.fileno() >= 0:
                os.set_blocking(trio_sock.fileno(), False)
        return
    if isinstance(request, trio.abc.Stream):
        view = StreamSocket(request, trio.lowlevel.current_trio_token())
        await run_in_handler_thread(
            server,
            lambda: _run_handler(handler_class, view, client_address, server),
            view.cancel,
        )
        return
    await run_in_handler_thread(
        server, lambda: _run_handler(handler_class, request, client_address, server), _nothing
    )


def _nothing() -> None:
    return None
