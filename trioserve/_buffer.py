"""The receive buffer behind ``rfile``: framing with no I/O at all.

`ReceiveBuffer` holds bytes that arrived from a peer but have not been consumed yet, and
knows how to cut lines and fixed-size pieces out of them. It never reads from anything:
the async reader (`trioserve._files`) and the blocking reader used by sync handlers feed
it, so both share one implementation of the rules, and the rules are tested with plain
bytes.

The rules are those of `io.BufferedReader`:

* ``take_line(limit)`` returns a line including its ``b"\\n"``, or at most *limit*
  bytes of it when the line is longer than *limit*;
* at end of file the unterminated rest is a line of its own;
* nothing is lost: a piece that cannot be returned yet stays in the buffer.

``take_until(separator, limit)`` cuts at any separator instead (``readuntil``, e.g. a whole
HTTP head at ``b"\r\n\r\n"``). It remembers where its search stopped, so bytes are
searched once however many receives a piece takes, backing off ``len(separator) - 1``
bytes so that a separator split across two receives is still found; with a *limit* it
raises `trioserve.LineTooLongError` once no separator can end within it.

On top of those rules sits one limit of our own, ``max_line_length``: an unbounded
``readline()`` on a peer that never sends ``b"\\n"`` would buffer without end, so the
reader asks `line_too_long` and raises `trioserve.LineTooLongError` instead, leaving the
bytes where they are.

How the bytes are kept
----------------------
This class is on the path of every request line and header line a server reads, so it is
built for the common case of a line protocol: a request arrives in one receive, and is
consumed line by line until the buffer is empty again.

* The buffered bytes are ``_data[_start:]``. Taking a line moves ``_start``; nothing is
  deleted from the front and moved down, line after line.
* A chunk fed into an empty buffer is kept as it came, a `bytes` object, without a copy:
  each line taken from it is then one slice, which is the copy the caller gets anyway.
* Only when bytes arrive while others wait (a line split across receives, a large
  ``read(n)``) are they gathered in a `bytearray`, compacted as new bytes come.
* When the last byte is taken the buffer drops its storage, so an idle connection holds
  no leftover request.

What a server may hold
----------------------
``max_line_length`` bounds one connection; ten thousand connections that each hold an
unfinished 64 KiB line still pin 640 MiB. So the input a server's readers hold, unread, is
bounded as a whole too (`InputBudget`, one per server, `input_budget`): each reader holds up
to `INPUT_ALLOWANCE` bytes for free, which covers a whole request of any ordinary protocol,
and reserves what it holds beyond that from the server's budget, ``max_buffered_input``
(`DEFAULT_MAX_BUFFERED_INPUT`), giving it back as soon as the bytes are read. When the
budget is spent, the read that would hold more raises `trioserve.InputBudgetError` (a
`trioserve.LineTooLongError`): the clients that hold the budget keep their connections until
their timeout, and a client with an ordinary request is served all along. The memory that
hostile clients can pin is then at most the budget plus the allowance of each connection:
32 MiB + 8 KiB x 10,000 = 112 MiB with the defaults.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, final

from ._exceptions import InputBudgetError, LineTooLongError

__all__ = [
    "DEFAULT_MAX_BUFFERED_INPUT",
    "INPUT_ALLOWANCE",
    "InputBudget",
    "ReceiveBuffer",
    "input_budget",
]

#: The bytes of unread input a server's connections may hold together beyond their
#: allowances (``max_buffered_input``).
DEFAULT_MAX_BUFFERED_INPUT = 32 * 1024 * 1024

#: The bytes of unread input each connection holds without asking the budget (a sync
#: reader's whole buffer, so its ordinary receives never do).
INPUT_ALLOWANCE = 8 * 1024


@final
class InputBudget:
    """The unread input a server's connections may hold beyond their allowance, shared.

    Readers in the Trio thread and in worker threads take from it, so it is locked.

    Args:
      total: bytes in all.
    """

    __slots__ = ("_lock", "available", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.available = total
        self._lock = threading.Lock()

    def reserve(self, wanted: int) -> int:
        """Take up to *wanted* bytes; return how many were granted (maybe 0)."""
        with self._lock:
            granted = wanted if wanted <= self.available else max(self.available, 0)
            self.available -= granted
        return granted

    def release(self, count: int) -> None:
        """Give back *count* bytes that were granted."""
        with self._lock:
            self.available += count

    def resize(self, total: int) -> None:
        """Change the total (what is reserved stays reserved)."""
        with self._lock:
            self.available += total - self.total
            self.total = total

    def refusal(self) -> InputBudgetError:
        """The error for a reader that needs more than the budget has left."""
        return InputBudgetError(self.total)


_budgets: weakref.WeakKeyDictionary[Any, InputBudget] = weakref.WeakKeyDictionary()


def input_budget(server: Any) -> InputBudget | None:
    """*server*'s budget for unread input (its ``max_buffered_input``); None for no limit."""
    total = getattr(server, "max_buffered_input", DEFAULT_MAX_BUFFERED_INPUT)
    if total is None:
        return None
    try:
        budget = _budgets.get(server)
    except TypeError:  # not weakly referenceable (a test's stand-in): no budget to share
        return None
    if budget is None:
        budget = _budgets[server] = InputBudget(total)
    elif budget.total != total:
        budget.resize(total)
    return budget


_EMPTY = b""


class ReceiveBuffer:
    """Bytes received from a peer and not consumed yet."""

    __slots__ = ("_data", "_scanned", "_start", "_until", "_until_separator")

    def __init__(self) -> None:
        self._data: bytes | bytearray = _EMPTY
        # _data[:_start] is consumed already.
        self._start = 0
        # Every byte of _data before this index is known not to be b"\n": searching for the
        # end of a line restarts here, so a long line arriving in many pieces is scanned once.
        self._scanned = 0
        # No occurrence of _until_separator starts before this index of _data (take_until).
        self._until = 0
        self._until_separator = _EMPTY

    def __len__(self) -> int:
        return len(self._data) - self._start

    def __bool__(self) -> bool:
        return len(self._data) > self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer."""
        held = self._data
        start = self._start
        if start == len(held):
            # Empty: keep the chunk itself (a copy only if it is mutable).
            self._data = data if type(data) is bytes else bytes(data)
            self._start = self._scanned = self._until = 0
            return
        if isinstance(held, bytes):
            held = self._data = bytearray(held[start:])
        elif start:
            del held[:start]
        else:
            held += data
            return
        self._scanned -= start
        self._until -= start
        self._start = 0
        held += data

    def _take(self, count: int) -> bytes:
        data = self._data
        start = self._start
        stop = min(start + count, len(data))
        if stop == len(data):
            piece = data[start:] if start else data
            self._data = _EMPTY
            self._start = self._scanned = 0
        else:
            piece = data[start:stop]
            self._start = stop
            if self._scanned < stop:
                self._scanned = stop
        return piece if type(piece) is bytes else bytes(piece)

    def take(self, count: int) -> bytes:
        """Remove and return up to *count* bytes from the front."""
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        return self._take(count)

    def take_all(self) -> bytes:
        """Remove and return everything buffered."""
        return self._take(len(self._data))

    def take_line(self, limit: int = -1) -> bytes | None:
        """Remove and return one line, or None when more bytes are needed to decide.

        Args:
          limit: with ``limit >= 0``, return at most *limit* bytes, as
            `io.BufferedReader.readline` does: a longer line comes back in pieces.

        Returns:
          The line with its ``b"\\n"``; a *limit*-sized piece of a longer line; or None when
          the buffer holds no complete line (and fewer than *limit* bytes). At end of file the
          caller takes the unterminated rest with `take_all`.
        """
        # The hot path of every line-based protocol: a whole line within the limit, or no
        # line yet. Both are decided with one search and no further method call.
        data = self._data
        start = self._start
        end = data.find(b"\n", self._scanned)
        if end >= 0:
            if limit < 0 or end - start < limit:
                end += 1
                if end == len(data):
                    line = data[start:] if start else data
                    self._data = _EMPTY
                    self._start = self._scanned = 0
                else:
                    line = data[start:end]
                    self._start = self._scanned = end
                return line if type(line) is bytes else bytes(line)
        elif limit < 0:
            self._scanned = len(data)
            return None
        return self._piece_of_line(end, limit)

    def _piece_of_line(self, end: int, limit: int) -> bytes | None:
        """`take_line` with a *limit* the line does not fit in, or no line end yet."""
        if limit == 0:
            return b""
        if end < 0:
            self._scanned = len(self._data)
            if limit <= len(self):
                return self._take(limit)
            return None
        return self._take(limit)

    def take_until(self, separator: bytes, limit: int = -1) -> bytes | None:
        """Remove and return the bytes up to and including *separator*, or None for now.

        The search is incremental: the bytes already searched are not searched again when
        more arrive, and a separator split across two `feed` calls is still found.

        Args:
          separator: the non-empty byte string that ends the piece.
          limit: with ``limit >= 0``, the most bytes the piece, separator included, may
            hold; negative for no limit.

        Returns:
          The piece ending with *separator*, or None when the buffer holds no separator
          (within *limit* bytes) yet. At end of file the caller takes the rest with
          `take_all`.

        Raises:
          LineTooLongError: the buffer holds *limit* bytes or more and no separator ends
            within the first *limit* of them, so none ever will. The bytes stay buffered.
          ValueError: *separator* is empty.
        """
        size = len(separator)
        if not size:
            raise ValueError("separator must not be empty")
        data = self._data
        start = self._start
        begin = self._until if separator == self._until_separator else start
        if begin < start:
            begin = start
        stop = len(data)
        if limit >= 0 and start + limit < stop:
            stop = start + limit
        end = data.find(separator, begin, stop)
        if end >= 0:
            return self._take(end + size - start)
        # No separator starts before the last size - 1 bytes searched: the next search
        # begins there, so a separator split across receives is found whole.
        self._until_separator = separator
        self._until = max(begin, stop - size + 1)
        if 0 <= limit <= len(data) - start:
            raise LineTooLongError(limit, separator)
        return None

    def line_too_long(self, max_length: int) -> bool:
        """Whether the buffer holds *max_length* bytes or more with no ``b"\\n"`` among them.

        A line, terminator included, may then never fit in *max_length* bytes.
        """
        start = self._start
        return (
            len(self._data) - start >= max_length
            and self._data.find(b"\n", start, start + max_length) < 0
        )
