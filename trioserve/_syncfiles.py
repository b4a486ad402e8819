"""Blocking ``rfile`` and ``wfile`` for sync handlers: `SyncReader` and `SyncWriter`.

A sync handler (``def handle``) runs in a worker thread and reads and writes its
connection with blocking calls. Its files are these: the methods of `io.BufferedReader`
and socketserver's ``_SocketWriter``, over anything with a socket's ``recv_into`` (or
``recv``) and ``sendall``: a real `socket.socket` on the connection's descriptor, or a
`~trioserve.StreamSocket` over a TLS stream. Errors follow the async files' rules, decided
in `trioserve._errors`: a vanished peer is `~trioserve.BrokenConnectionError`, an expired
timeout `~trioserve.PeerTimeoutError`, a line past ``max_line_length``
`~trioserve.LineTooLongError`, and nothing read is lost to an error a handler can go on
from.

Both files have ``fileno()``, the socket's, so ``select([self.rfile], ...)`` works as
with socketserver's files (what the reader has buffered is, as there, not seen by
``select``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from ._buffer import INPUT_ALLOWANCE, InputBudget
from ._errors import broken, peer_timeout
from ._exceptions import (
    BrokenConnectionError,
    InputBudgetError,
    LineTooLongError,
    PeerTimeoutError,
)
from ._files import DEFAULT_RECEIVE_SIZE

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["SocketLike", "SyncReader", "SyncWriter"]


class SocketLike(Protocol):
    """What the blocking files need of a connection: a socket's ``recv`` and ``sendall``.

    ``recv_into``, ``gettimeout``, ``settimeout`` and ``fileno`` are used when present.
    """

    def recv(self, bufsize: int, flags: int = ..., /) -> bytes: ...

    def sendall(self, data: Buffer, flags: int = ..., /) -> None: ...


def _gettimeout(sock: object) -> float | None:
    gettimeout = getattr(sock, "gettimeout", None)
    return gettimeout() if gettimeout is not None else None


def _fileno(sock: object) -> int:
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        raise io.UnsupportedOperation("the connection has no file descriptor")
    result: int = fileno()
    return result


class _ConnectionRaw(io.RawIOBase):
    """The unbuffered receive side of a connection, under a `SyncReader`'s buffer.

    ``readinto`` receives once (``recv_into``, or ``recv`` on an object without it), at
    most ``receive_size`` bytes, and sorts the errors as the async files do. Before the
    connection, it serves the bytes the `SyncReader` gave back (``pending``). The receives
    of one ``readline`` share one timeout. A timeout does not raise through the C reader,
    which would drop what it had read so far: it is kept in ``error`` and reported as end
    of file, and the `SyncReader` gives the bytes back and raises it. Not for use on its
    own.

    With a *budget* (the server's, for unread input), the bytes one call of the
    `SyncReader` receives beyond `INPUT_ALLOWANCE` are reserved from it until the call
    returns (`end_call`): a call that needs more than the budget has left ends as a
    timeout does, with `InputBudgetError` in ``error``.
    """

    __slots__ = (
        "_gettimeout",
        "_recv_into",
        "budget",
        "deadline",
        "error",
        "holding",
        "line_state",
        "line_timeout",
        "pending",
        "per_receive",
        "receive_size",
        "received",
        "reserved",
        "sock",
    )

    def __init__(
        self, sock: SocketLike, receive_size: int, budget: InputBudget | None = None
    ) -> None:
        super().__init__()
        self.sock: Any = sock
        self.receive_size = receive_size
        self.budget = budget
        #: Bytes received by the current call of the reader, and reserved for it.
        self.received = 0
        self.reserved = 0
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
        #: The timeout (or the spent budget) that ended a receive, for the `SyncReader` to raise.
        self.error: PeerTimeoutError | InputBudgetError | None = None

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
        if self.budget is not None and self.received + size > INPUT_ALLOWANCE + self.reserved:
            size = self._within_budget(size)
            if not size:
                return 0
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
            count = self._recv_into(buffer, size)
            self.received += count
            return count
        except BrokenConnectionError:
            raise
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            raise broken(exc) from exc
        except TimeoutError as exc:
            if self.line_state == 2:
                self.error = PeerTimeoutError(self.line_timeout)
            elif isinstance(exc, PeerTimeoutError):
                self.error = exc
            else:
                self.error = peer_timeout(_gettimeout(self.sock))
            if not self.per_receive and not self.line_state:
                self.line_state = 1  # so that the readline looks at error
            return 0

    def _within_budget(self, size: int) -> int:
        """How much of *size* this receive may take, reserving it; 0 (``error`` set) if none."""
        budget = self.budget
        assert budget is not None
        room = INPUT_ALLOWANCE + self.reserved - self.received
        granted = budget.reserve(size - room)
        self.reserved += granted
        if room + granted > 0:
            return room + granted
        self.error = budget.refusal()
        if not self.per_receive and not self.line_state:
            self.line_state = 1  # so that the readline looks at error
        return 0

    def end_call(self) -> None:
        """After a call of the reader that received: give its reservation back."""
        self.received = 0
        if self.reserved:
            assert self.budget is not None
            self.budget.release(self.reserved)
            self.reserved = 0

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
      budget: the server's budget for unread input (`trioserve._buffer.input_budget`):
        what one call receives beyond `INPUT_ALLOWANCE` bytes is reserved from it until
        the call returns, and a call that needs more than it has left raises
        `InputBudgetError` (the bytes stay readable). None for no such bound.
    """

    # Slots, not the instance dict, for what readline() touches on every call: faster.
    __slots__ = ("_line_limit", "_max_line_length", "_raw", "_reader", "_readline")

    def __init__(
        self,
        sock: SocketLike,
        *,
        receive_size: int = DEFAULT_RECEIVE_SIZE,
        max_line_length: int | None = None,
        budget: InputBudget | None = None,
    ) -> None:
        super().__init__()
        if receive_size < 1:
            raise ValueError(f"receive_size must be >= 1, not {receive_size}")
        self._raw = _ConnectionRaw(sock, receive_size, budget)
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

    def fileno(self) -> int:
        """The connection's file descriptor (for ``select``)."""
        return _fileno(self._raw.sock)

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
            if raw.received:
                raw.end_call()
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
            if raw.received:
                raw.end_call()
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
            if raw.received:
                raw.end_call()
            raise
        if raw.received:
            raw.end_call()
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
            if raw.received:
                raw.end_call()
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

    def __init__(self, sock: SocketLike, *, bufsize: int = 0) -> None:
        super().__init__()
        self._sock = sock
        self._pending = bytearray()
        self.bufsize = io.DEFAULT_BUFFER_SIZE if bufsize < 0 else bufsize

    def writable(self) -> bool:
        """Always True."""
        return True

    def fileno(self) -> int:
        """The connection's file descriptor (for ``select``)."""
        return _fileno(self._sock)

    def _send(self, data: Buffer) -> None:
        try:
            self._sock.sendall(data)
        except (BrokenConnectionError, PeerTimeoutError):
            raise
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
            raise broken(exc) from exc
        except TimeoutError:
            raise peer_timeout(_gettimeout(self._sock)) from None

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
