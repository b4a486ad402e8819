"""``rfile`` and ``wfile`` for async handlers: file-like adapters over Trio streams.

`AsyncReader` is a buffered reader over a `trio.abc.ReceiveStream`, and `AsyncWriter` an
unbuffered (or buffered) writer over a `trio.abc.SendStream`. Their methods are the ones
socketserver handlers call on their files, made ``async``, and return what
`io.BufferedReader` and socketserver's ``_SocketWriter`` return on the same bytes, however
the peer chunks them.

Error handling, decided once for every handler:

* a peer that resets the connection or stops reading raises `BrokenConnectionError`
  (a `trio.BrokenResourceError` and a `ConnectionError`);
* a read or write that takes longer than the handler's ``timeout`` raises `PeerTimeoutError`,
  a built-in `TimeoutError` (which is `socket.timeout`, what a stdlib handler sees);
* ``readline()`` and ``readuntil()`` without a limit raise `LineTooLongError` when no line
  end (separator) comes within ``max_line_length`` bytes;
* using a file after ``close()`` raises `ValueError`, as closed files do.

Reads served from the buffer return without a Trio checkpoint, as any hand-written
buffered reader does. Over a plain `trio.SocketStream` (every TCP and Unix connection
without TLS) the files make their system calls on its socket through
`trioserve._direct.DirectSocket`: each receive and send checks for cancellation, one that
has to wait for the peer yields to other tasks, and one that completes at once yields only
every eighth time in a row, where the stream's own methods would yield every time. Over
any other stream (TLS, test doubles) they call the stream's ``receive_some`` and
``send_all``.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterable
from typing import final

import trio

from ._buffer import INPUT_ALLOWANCE, InputBudget, ReceiveBuffer
from ._direct import DirectSocket, direct
from ._errors import broken, peer_timeout
from ._exceptions import BrokenConnectionError, LineTooLongError

__all__ = [
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_RECEIVE_SIZE",
    "AsyncReader",
    "AsyncWriter",
    "BytesLike",
]

#: What ``wfile.write`` takes, as Trio's ``send_all`` does.
BytesLike = bytes | bytearray | memoryview

#: How much one receive asks the stream for, unless ``rbufsize`` says otherwise.
DEFAULT_RECEIVE_SIZE = 65536
#: The longest line ``readline()`` without a limit returns (asyncio's default too).
DEFAULT_MAX_LINE_LENGTH = 65536

#: The allowance of a reader with no budget: every size is within it.
_UNBOUNDED = 1 << 62


_Receiver = DirectSocket | trio.abc.ReceiveStream
_Sender = DirectSocket | trio.abc.SendStream


@final
class AsyncReader:
    """A buffered, async file-like reader over a Trio receive stream (a handler's ``rfile``).

    Args:
      stream: what to read from.
      receive_size: the most bytes one receive asks the stream for.
      timeout: seconds a read may wait for the peer before `PeerTimeoutError`; None waits forever.
        ``readline()`` must receive its whole line within it.
      max_line_length: the longest line, terminator included, that ``readline()`` without
        a limit accepts; None accepts any length (and buffers without bound).
      budget: the server's budget for unread input (`trioserve._buffer.input_budget`):
        the reader holds `INPUT_ALLOWANCE` bytes unread for free and reserves the rest
        from it, until they are read; a read that would hold more than the budget has
        left raises `InputBudgetError`. None for no such bound.

    Scheduling:
      A read served from the buffer returns without a checkpoint. A read that receives
      checks for cancellation; over a plain `trio.SocketStream` it yields to other tasks
      when it has to wait, and otherwise only every eighth time in a row (Trio's own
      streams yield every time), which saves a trip through the scheduler per request.
      The first receive after the connection's ``wfile`` sent an answer lets the other
      tasks run first, then reads: on a busy server the next request has come by then,
      and is read without waiting for the socket (`trioserve._direct`).
    """

    __slots__ = (
        "_allowance",
        "_budget",
        "_buffer",
        "_closed",
        "_eof",
        "_reserved",
        "_stream",
        "max_line_length",
        "receive_size",
        "timeout",
    )

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        *,
        receive_size: int = DEFAULT_RECEIVE_SIZE,
        timeout: float | None = None,
        max_line_length: int | None = DEFAULT_MAX_LINE_LENGTH,
        budget: InputBudget | None = None,
    ) -> None:
        self._reserved = 0  # first: __del__ looks at it, even if this raises
        if receive_size < 1:
            raise ValueError(f"receive_size must be >= 1, not {receive_size}")
        if max_line_length is not None and max_line_length < 1:
            raise ValueError(f"max_line_length must be >= 1 or None, not {max_line_length}")
        self._stream: _Receiver = direct(stream) or stream
        self._buffer = ReceiveBuffer()
        self._eof = False
        self._closed = False
        self._budget = budget
        #: Bytes held beyond this were reserved from the budget (``_reserved`` of them).
        self._allowance = INPUT_ALLOWANCE if budget is not None else _UNBOUNDED
        self.receive_size = receive_size
        self.timeout = timeout
        self.max_line_length = max_line_length

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    def close(self) -> None:
        """Close this file; the stream itself stays open (the server closes it).

        What it reserved of the server's budget is given back.
        """
        self._closed = True
        if self._reserved:
            self._unreserve(0)

    def __del__(self) -> None:
        # A reader dropped without close() (a handler whose setup failed half-way) must
        # not keep its share of the server's budget.
        if self._reserved:
            self._unreserve(0)

    def _reserve(self) -> None:
        """After a receive: reserve what the buffer holds beyond the allowance, or refuse."""
        budget = self._budget
        assert budget is not None
        wanted = len(self._buffer) - self._allowance - self._reserved
        granted = budget.reserve(wanted)
        self._reserved += granted
        if granted < wanted:
            raise budget.refusal()

    def _unreserve(self, keep: int) -> None:
        """Give back what is reserved beyond *keep* bytes."""
        budget = self._budget
        assert budget is not None
        budget.release(self._reserved - keep)
        self._reserved = keep

    def _settle(self) -> None:
        """After bytes were read: give back the reservation they no longer need."""
        keep = len(self._buffer) - self._allowance
        if keep < self._reserved:
            self._unreserve(keep if keep > 0 else 0)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed file")

    async def _fill(self, size: int = 0, deadline: float | None = None) -> bool:
        """Receive once into the buffer; False at end of file.

        Asks for *size* bytes (``receive_size`` if 0); with a timeout, waits until
        *deadline* (``timeout`` seconds from now if None).
        """
        if self._eof:
            return False
        try:
            if self.timeout is None:
                data = await self._stream.receive_some(size or self.receive_size)
            else:
                if deadline is None:
                    deadline = trio.current_time() + self.timeout
                with trio.fail_at(deadline):
                    data = await self._stream.receive_some(size or self.receive_size)
        except trio.TooSlowError:
            raise peer_timeout(self.timeout) from None
        except trio.BrokenResourceError as exc:
            if isinstance(exc, BrokenConnectionError):
                raise
            raise broken(exc) from exc
        if not data:
            self._eof = True
            return False
        buffer = self._buffer
        buffer.feed(data)
        if len(buffer) > self._allowance + self._reserved:
            self._reserve()
        return True

    async def read(self, size: int | None = -1) -> bytes:
        """Read *size* bytes, fewer only at end of file; all until end of file if negative."""
        self._check_open()
        buffer = self._buffer
        if size is None or size < 0:
            while await self._fill():
                pass
            data = buffer.take_all()
        else:
            while len(buffer) < size and await self._fill():
                pass
            data = buffer.take(size)
        if self._reserved:
            self._settle()
        return data

    async def read1(self, size: int = -1) -> bytes:
        """Read up to *size* bytes with at most one receive; b"" only at end of file."""
        self._check_open()
        if not self._buffer:
            await self._fill()
        data = self._buffer.take(len(self._buffer) if size < 0 else size)
        if self._reserved:
            self._settle()
        return data

    async def readline(self, limit: int | None = -1) -> bytes:
        """Read one line, with its b"\\n"; the unterminated rest at end of file; b"" at EOF.

        Args:
          limit: with ``limit >= 0`` return at most *limit* bytes, so a longer line comes
            back in pieces, as with `io.BufferedReader.readline`.

        Raises:
          LineTooLongError: no limit was given and no line end came within
            ``max_line_length`` bytes. The bytes stay buffered, and never more than
            ``max_line_length`` of them: a receive for a line asks for no more than the
            line may still take.
          PeerTimeoutError: ``timeout`` is set and the whole line did not arrive within it,
            however the peer dripped it (one timeout per call, not per receive).
        """
        # The hot path of every line-based handler, so it is written flat: the receive is
        # inlined (no `_fill` frame to create and to pass every Trio checkpoint through).
        if self._closed:
            raise ValueError("I/O operation on closed file")
        if limit is None:
            limit = -1
        buffer = self._buffer
        deadline: float | None = None
        while True:
            line = buffer.take_line(limit)
            if line is not None:
                if self._reserved:
                    self._settle()
                return line
            size = self.receive_size
            if limit < 0 and self.max_line_length:
                if buffer.line_too_long(self.max_line_length):
                    raise LineTooLongError(self.max_line_length)
                # The buffer holds no line end and less than the limit: receive no more
                # than the line may still take, so a too-long line never buffers more.
                size = min(size, self.max_line_length - len(buffer))
            if self._eof:
                return self._take_rest()
            if self.timeout is not None:
                if deadline is None:  # a slow drip must not renew the timeout per byte
                    deadline = trio.current_time() + self.timeout
                if not await self._fill(size, deadline):
                    return self._take_rest()
                continue
            try:
                data = await self._stream.receive_some(size)
            except trio.BrokenResourceError as exc:
                if isinstance(exc, BrokenConnectionError):
                    raise
                raise broken(exc) from exc
            if not data:
                self._eof = True
                return self._take_rest()
            buffer.feed(data)
            if len(buffer) > self._allowance + self._reserved:
                self._reserve()

    def _take_rest(self) -> bytes:
        """Everything buffered (at end of file), the budget's share given back."""
        data = self._buffer.take_all()
        if self._reserved:
            self._unreserve(0)
        return data

    async def readuntil(self, separator: bytes = b"\n", limit: int | None = -1) -> bytes:
        """Read up to and including *separator*; the unterminated rest at end of file.

        As `asyncio.StreamReader.readuntil`, for framing such as an HTTP head
        (``await rfile.readuntil(b"\\r\\n\\r\\n")``), with two differences that match
        ``readline()``: at end of file the bytes left come back without the separator
        (b"" when none are left) instead of raising `asyncio.IncompleteReadError`, and a
        piece that is too long raises `LineTooLongError`.

        Args:
          separator: the non-empty byte string that ends the piece.
          limit: with ``limit >= 0``, the most bytes the piece, separator included, may
            hold; None or negative uses ``max_line_length`` (no limit if that is None).

        Returns:
          The bytes up to and including the first *separator*, or the rest at end of file.

        Raises:
          LineTooLongError: no separator came within the limit. The bytes stay buffered,
            and never more than the limit of them: a receive asks for no more than the
            piece may still take.
          PeerTimeoutError: ``timeout`` is set and the whole piece did not arrive within it
            (one timeout per call, not per receive).
          ValueError: *separator* is empty, or the file is closed.
        """
        if self._closed:
            raise ValueError("I/O operation on closed file")
        if limit is None or limit < 0:
            limit = -1 if self.max_line_length is None else self.max_line_length
        buffer = self._buffer
        deadline: float | None = None
        while True:
            piece = buffer.take_until(separator, limit)
            if piece is not None:
                if self._reserved:
                    self._settle()
                return piece
            if self._eof:
                return self._take_rest()
            size = self.receive_size
            if limit >= 0:
                size = min(size, limit - len(buffer))
            if self.timeout is not None and deadline is None:
                deadline = trio.current_time() + self.timeout  # one timeout for the call
            if not await self._fill(size, deadline):
                return self._take_rest()

    async def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read lines until end of file, or until they add up to more than *hint* bytes."""
        lines: list[bytes] = []
        total = 0
        while line := await self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


@final
class AsyncWriter:
    """An async file-like writer over a Trio send stream (a handler's ``wfile``).

    Args:
      stream: what to write to.
      bufsize: 0 sends every write at once (socketserver's default, ``wbufsize = 0``); a
        positive size collects writes until that many bytes are waiting; negative uses
        `io.DEFAULT_BUFFER_SIZE`.
      timeout: seconds a send may wait for the peer before `PeerTimeoutError`; None waits.

    Scheduling:
      Every write that sends checks for cancellation. Over a plain `trio.SocketStream` it
      yields to other tasks when it has to wait for room, and otherwise only every eighth
      time in a row (Trio's own streams yield every time). A task that writes while
      another task's write to the same connection waits for room gets
      `trio.BusyResourceError`: bytes of two writes never interleave.
    """

    __slots__ = ("_closed", "_pending", "_stream", "bufsize", "timeout")

    def __init__(
        self, stream: trio.abc.SendStream, *, bufsize: int = 0, timeout: float | None = None
    ) -> None:
        self._stream: _Sender = direct(stream) or stream
        self._pending = bytearray()
        self._closed = False
        self.bufsize = io.DEFAULT_BUFFER_SIZE if bufsize < 0 else bufsize
        self.timeout = timeout

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    def close(self) -> None:
        """Close this file; unflushed bytes are dropped (call `flush` first)."""
        self._closed = True
        self._pending.clear()

    async def _send(self, data: BytesLike) -> None:
        try:
            if self.timeout is None:
                await self._stream.send_all(data)
            else:
                with trio.fail_after(self.timeout):
                    await self._stream.send_all(data)
        except trio.TooSlowError:
            raise peer_timeout(self.timeout) from None
        except trio.BrokenResourceError as exc:
            if isinstance(exc, BrokenConnectionError):
                raise
            raise broken(exc) from exc

    async def write(self, data: BytesLike) -> int:
        """Write *data*; return how many bytes it holds. Unbuffered writes are sent now."""
        if self._closed:
            raise ValueError("write to closed file")
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        if not self.bufsize:
            if self.timeout is not None:
                await self._send(data)
                return size
            # The hot path: sent from here, with no `_send` frame in between.
            try:
                await self._stream.send_all(data)
            except trio.BrokenResourceError as exc:
                if isinstance(exc, BrokenConnectionError):
                    raise
                raise broken(exc) from exc
            return size
        self._pending += data
        if len(self._pending) >= self.bufsize:
            await self.flush()
        return size

    async def writelines(self, lines: Iterable[BytesLike]) -> None:
        """Write each of *lines* (no separators are added)."""
        if self._closed:
            raise ValueError("write to closed file")
        self._pending.extend(b"".join(lines))
        if not self.bufsize or len(self._pending) >= self.bufsize:
            await self.flush()

    async def flush(self) -> None:
        """Send whatever buffered writes are waiting."""
        if self._closed:
            raise ValueError("flush of closed file")
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            await self._send(data)
