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

On top of those rules sits one limit of our own, ``max_line_length``: an unbounded
``readline()`` on a peer that never sends ``b"\\n"`` would buffer without end, so the
reader asks `line_too_long` and raises `trioserve.LineTooLongError` instead, leaving the
bytes where they are.
"""

from __future__ import annotations

__all__ = ["ReceiveBuffer"]


class ReceiveBuffer:
    """Bytes received from a peer and not consumed yet."""

    __slots__ = ("_data", "_scanned")

    def __init__(self) -> None:
        self._data = bytearray()
        # Every byte before this offset is known not to be b"\n": searching for the end of a
        # line restarts here, so a long line arriving in many pieces is scanned once.
        self._scanned = 0

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer."""
        self._data += data

    def _take(self, count: int) -> bytes:
        piece = bytes(self._data[:count])
        del self._data[:count]
        self._scanned = max(0, self._scanned - count)
        return piece

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
        if limit == 0:
            return b""
        end = self._data.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._data)
            if 0 < limit <= len(self._data):
                return self._take(limit)
            return None
        if 0 < limit <= end:
            return self._take(limit)
        return self._take(end + 1)

    def line_too_long(self, max_length: int) -> bool:
        """Whether the buffer holds *max_length* bytes or more with no ``b"\\n"`` among them.

        A line, terminator included, may then never fit in *max_length* bytes.
        """
        return len(self._data) >= max_length and self._data.find(b"\n", 0, max_length) < 0
