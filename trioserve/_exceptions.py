"""Every exception trioserve raises of its own, in one place.

Errors from the peer are translated once, at the boundary of the files a handler reads and
writes (`trioserve._files`), into `BrokenConnectionError`. It derives from both
`trio.BrokenResourceError` and `ConnectionError`, so code written for Trio
(``except trio.BrokenResourceError``) and code ported from socketserver (``except
ConnectionError`` or ``except OSError``) catch it unchanged. In the same way, a peer too slow
for the handler's ``timeout`` raises `PeerTimeoutError`, a built-in `TimeoutError` (which is
`socket.timeout`) that the server can tell apart from a timeout of the handler's own.
"""

from __future__ import annotations

import errno
import importlib

import trio

__all__ = [
    "BrokenConnectionError",
    "InputBudgetError",
    "LineTooLongError",
    "MissingExtraError",
    "PeerTimeoutError",
    "PortOutOfRangeError",
    "ProxyProtocolError",
    "WorkerStartupError",
]


class BrokenConnectionError(trio.BrokenResourceError, ConnectionError):
    """The peer went away (reset, broken pipe) while a handler read or wrote.

    Raised by ``rfile`` and ``wfile``. The server's default `~trioserve.BaseServer.handle_error`
    logs it at debug level without a traceback: a vanished client is not a server bug.
    """

    def __init__(self, message: str = "connection broken by the peer") -> None:
        ConnectionError.__init__(self, errno.ECONNRESET, message)

    def __str__(self) -> str:
        return str(self.strerror)


class LineTooLongError(ValueError):
    """``readline()`` found no line end within ``max_line_length`` bytes.

    Also raised by ``readuntil()`` when its separator does not come within its limit.
    Nothing is lost: the bytes stay in the reader's buffer, where ``read(n)`` can still get
    them. A handler that does not catch it ends, and the server logs it through
    `~trioserve.BaseServer.handle_error` and keeps serving other clients.

    Attributes:
      max_line_length: the limit that was exceeded.
      separator: what did not come within it (``b"\\n"`` for a line).
    """

    def __init__(self, max_line_length: int, separator: bytes = b"\n") -> None:
        if separator == b"\n":
            message = f"no end of line within {max_line_length} bytes (max_line_length)"
        else:
            message = f"no separator {separator!r} within {max_line_length} bytes"
        super().__init__(message)
        self.max_line_length = max_line_length
        self.separator = separator

    def __reduce__(self) -> tuple[type[LineTooLongError], tuple[int, bytes]]:
        return (type(self), (self.max_line_length, self.separator))


class PortOutOfRangeError(ValueError, OverflowError):
    """A port outside 0-65535 in a server's address.

    Both a `ValueError` (what trioserve documents for a malformed address) and an
    `OverflowError` (what `socket.socket.bind` raises, and socketserver code expects).
    """


class InputBudgetError(LineTooLongError):
    """A connection's unread input outgrew what the server may hold for it.

    Each connection may hold a few KiB of input it has not read yet for free (a
    partial line, a request not read to its end); what it holds beyond that comes out
    of the server's budget, ``max_buffered_input``, which all its connections share. When
    the budget is spent (clients holding unfinished lines), a read that would hold more
    raises this instead. It is a `LineTooLongError`, so handlers and the server treat it
    alike: nothing read is lost, and a handler that does not catch it ends, logged in one
    line.

    Attributes:
      max_line_length: the server's budget, in bytes.
      separator: ``b"\\n"``.
    """

    def __init__(self, max_line_length: int, separator: bytes = b"\n") -> None:
        super().__init__(max_line_length, separator)
        self.args = (
            f"the server holds {max_line_length} bytes of unread input already "
            "(max_buffered_input): no more for this connection",
        )


class PeerTimeoutError(TimeoutError):
    """The peer did not send or take data within the handler's ``timeout``.

    Raised by ``rfile`` and ``wfile`` (async and sync) when an idle or too slow client
    (slowloris) makes a read or write wait longer than ``timeout`` seconds. It is a
    `TimeoutError`, so ``except TimeoutError`` and ``except socket.timeout`` catch it
    unchanged. The server's default `~trioserve.BaseServer.handle_error` logs it at info
    level in one line, without a traceback: a slow client is not a server bug.

    Attributes:
      timeout: the seconds the peer was given.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the peer did not respond within {timeout} seconds")
        self.timeout = timeout

    def __reduce__(self) -> tuple[type[PeerTimeoutError], tuple[float]]:
        return type(self), (self.timeout,)


class WorkerStartupError(RuntimeError):
    """The worker processes of a process-pool server cannot start.

    Raised by ``serve_forever`` of a `~trioserve.ProcessPoolMixIn` server when a worker
    cannot load the server (its handler class does not import there, say), or when
    workers fail before serving several times in a row. The message carries the last
    worker's error. Every worker the server started has exited when it is raised.
    """


class ProxyProtocolError(ValueError):
    """A connection did not begin with a valid PROXY protocol header.

    Raised while a server with ``proxy_protocol=True`` reads the header a proxy sends
    before a connection's data, when the first bytes are not a PROXY header (version 1 or
    2) as HAProxy's specification defines it: a client that speaks its own protocol
    straight away, a malformed or oversized header, or a connection closed before its
    header was complete. The message says what was wrong. The server closes such a
    connection without calling the handler and logs the message once, at warning level.
    """


class MissingExtraError(ImportError):
    """An optional extra is not installed; the message says which, in one line."""

    @classmethod
    def check(cls, module: str, package: str, option: str, extra: str) -> None:
        """Raise this error unless *module* (of *package*) imports, for *option*'s sake."""
        try:
            importlib.import_module(module)
        except ImportError:
            raise cls(f"{option} needs {package}: pip install 'trioserve[{extra}]'") from None
