"""The one boundary where errors from the OS and from Trio become trioserve's.

Every adapter between a handler and its peer (the async files, the blocking files, the
socket-like view of a stream, the paced sockets, the datagram reply path) meets the same
handful of failures, and each must look the same to the handler whichever adapter it
went through. So the decisions are made here, once, and the adapters only call these:

* a peer that went away (reset, broken pipe, aborted) is `BrokenConnectionError`, which is
  both a `trio.BrokenResourceError` and a `ConnectionError`, so code written for Trio and
  code ported from socketserver both catch it (`broken`);
* a socket closed under the caller (``EBADF``) is `trio.ClosedResourceError`, as
  `trio.SocketStream` reports it (`from_socket_error`);
* a peer too slow for the handler's ``timeout`` is `PeerTimeoutError`, a `TimeoutError`
  (`peer_timeout`);
* whether an exception means "the client vanished", which the server logs at debug level
  without a traceback, whatever the adapter or handler it came through: a handler's own
  ``ConnectionResetError`` from ``self.request.sendall``, a `trio.BrokenResourceError`, or
  an exception group holding only such errors (`is_vanished_peer`).

The errno sets that sort the errors of a server's own socket live here too:
``accept()``'s (`IGNORED_ACCEPT_ERRNOS`, `CAPACITY_ERRNOS`) are Trio's own
(``trio._highlevel_socket`` and ``trio._highlevel_serve_listeners``), copied because Trio
does not export them, and checked against Trio's in the test suite so they cannot drift;
``recvfrom()``'s and a datagram reply's are the datagram servers' own.
"""

from __future__ import annotations

import errno
import sys

import trio

from ._exceptions import BrokenConnectionError, PeerTimeoutError

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "CAPACITY_ERRNOS",
    "CLIENT_GONE_ERRNOS",
    "IGNORED_ACCEPT_ERRNOS",
    "IGNORED_RECEIVE_ERRNOS",
    "VANISHED_PEER_ERRORS",
    "broken",
    "closed",
    "from_socket_error",
    "is_vanished_peer",
    "peer_timeout",
]


def _errnos(*names: str) -> frozenset[int]:
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


#: ``accept()`` errors that mean "that one connection failed": accept the next one.
#: Trio's list (``trio._highlevel_socket._ignorable_accept_errno_names``).
IGNORED_ACCEPT_ERRNOS = _errnos(
    "EPERM",  # Linux, when a firewall denies the connection
    "ECONNABORTED",  # the peer reset it while it waited in the queue
    "EPROTO",
    "ENETDOWN",
    "ENOPROTOOPT",
    "EHOSTDOWN",
    "ENONET",
    "EHOSTUNREACH",
    "EOPNOTSUPP",
    "ENETUNREACH",
    "ENOSR",
    "ESOCKTNOSUPPORT",
    "EPROTONOSUPPORT",
    "ETIMEDOUT",
    "ECONNRESET",
)

#: Errors that mean "out of resources": log, pause, try again (Trio's serve_listeners).
CAPACITY_ERRNOS = _errnos("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS")

#: ``recvfrom()`` errors on a datagram socket that report an earlier send's failure (an
#: ICMP "port unreachable" for a reply, say): receive the next datagram.
IGNORED_RECEIVE_ERRNOS = _errnos(
    "ECONNREFUSED",
    "ECONNRESET",
    "EHOSTUNREACH",
    "ENETUNREACH",
    "EHOSTDOWN",
    "ENETDOWN",
    "ENONET",
    "EPROTO",
    "ETIMEDOUT",
)

#: Errors from sending a datagram reply that mean the client is gone: drop the reply.
CLIENT_GONE_ERRNOS = _errnos(
    "ECONNREFUSED",
    "ECONNRESET",
    "ENOENT",
    "EHOSTUNREACH",
    "ENETUNREACH",
    "EHOSTDOWN",
    "ENETDOWN",
)

#: What a vanished peer raises, through any adapter or a handler's own socket calls.
VANISHED_PEER_ERRORS: tuple[type[BaseException], ...] = (
    trio.BrokenResourceError,  # BrokenConnectionError too
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


def broken(exc: BaseException) -> BrokenConnectionError:
    """The `BrokenConnectionError` for *exc*, a failure caused by the peer.

    *exc* is an `OSError` of the socket, or a `trio.BrokenResourceError` whose cause is one:
    the message names the underlying error.
    """
    if isinstance(exc, BrokenConnectionError):
        return exc
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return BrokenConnectionError(f"connection broken by the peer: {cause}")


def closed() -> trio.ClosedResourceError:
    """The error for an operation on a connection that was closed under it."""
    return trio.ClosedResourceError("the connection was closed")


def from_socket_error(exc: OSError) -> trio.ClosedResourceError | BrokenConnectionError:
    """Translate an `OSError` of a connection's socket, as `trio.SocketStream` sorts it.

    ``EBADF`` means the socket was closed under the caller; anything else, that the
    connection broke.
    """
    if exc.errno == errno.EBADF:
        return closed()
    return broken(exc)


def peer_timeout(timeout: float | None) -> PeerTimeoutError:
    """The error for a peer that did not send or take data within *timeout* seconds."""
    return PeerTimeoutError(0.0 if timeout is None else timeout)


def is_vanished_peer(exc: BaseException | None) -> bool:
    """Whether *exc* only says that the peer went away (logged at debug, not as an error).

    True for the errors in `VANISHED_PEER_ERRORS`, and for an exception group (a handler
    that used a nursery) every leaf of which is one.
    """
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(VANISHED_PEER_ERRORS)[1]
        return rest is None
    return isinstance(exc, VANISHED_PEER_ERRORS)
