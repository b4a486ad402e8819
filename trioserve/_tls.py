"""TLS for stream servers: the ``ssl_context`` option and the handshake of each connection.

A stream server given ``ssl_context=`` wraps every accepted connection in a
`trio.SSLStream` (server side), and its handler's ``request`` is that stream: ``rfile``
and ``wfile`` read and write plaintext, and a sync handler gets a socket-like object over
it (`trioserve.StreamSocket`).

Where the handshake runs
------------------------
Not in the accept loop. A TLS handshake takes a network round trip or two and some
public-key arithmetic, and a client may start one and never finish it. If the loop that
calls ``accept()`` waited for it, one silent client would stop the server from taking
anyone else. So the accept loop only accepts, and the handshake runs in the connection's
own task (`BaseServer._prepare_request`), after ``verify_request`` (a refused client never
costs a handshake), under a deadline of its own: ``ssl_handshake_timeout``, 10 seconds
unless set. On a sequential server (no `NurseryMixIn`) every connection is handled in the
serving task, so there the handshake does hold up the next client, for at most that long.

What a failed handshake is
--------------------------
A client that is not speaking TLS, that offers nothing the context accepts, that closes
half-way, or that is too slow: all of them are the client's doing, and the internet is
full of them (scanners, health checks, plain-HTTP requests on the TLS port). None of
them is a server error, so none reaches ``handle_error``: the connection is closed and
one line is logged at debug level, naming the peer and the reason. The handler never
runs. The connection still counts against ``max_connections`` while its handshake runs,
since it holds a file descriptor.

Closing
-------
Closing a TLS stream sends ``close_notify``, which needs room in the socket's send
buffer; a peer that stops reading can leave none. The stream servers bound that close
(`trioserve._stream`), so such a peer cannot pin a connection slot.
"""

from __future__ import annotations

import logging
import math
import ssl
from typing import Any

import trio

logger = logging.getLogger("trioserve")


__all__ = ["DEFAULT_SSL_HANDSHAKE_TIMEOUT", "check_ssl_context", "tls_handshake"]

#: Seconds a client has to complete the TLS handshake, unless ``ssl_handshake_timeout``
#: says otherwise.
DEFAULT_SSL_HANDSHAKE_TIMEOUT = 10.0


def check_ssl_context(name: str, value: Any) -> ssl.SSLContext | None:
    """The check of the ``ssl_context`` option: None, or a server-side `ssl.SSLContext`."""
    if value is None:
        return None
    if not isinstance(value, ssl.SSLContext):
        raise TypeError(f"{name} must be an ssl.SSLContext or None, not {type(value).__name__}")
    if value.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ValueError(
            f"{name} is a client context (PROTOCOL_TLS_CLIENT); a server needs one made with "
            "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), with its certificate "
            "loaded by load_cert_chain()"
        )
    return value


async def tls_handshake(
    stream: trio.abc.Stream,
    client_address: Any,
    context: ssl.SSLContext,
    *,
    handshake_timeout: float | None,
    https_compatible: bool = False,
) -> trio.SSLStream[trio.abc.Stream] | None:
    """Wrap *stream* in a server-side `trio.SSLStream` and complete its handshake.

    Args:
      stream: an accepted connection.
      client_address: the peer's address, for the log.
      context: the server's `ssl.SSLContext`.
      handshake_timeout: seconds the peer has to complete the handshake; None waits
        forever.
      https_compatible: passed to `trio.SSLStream`: True treats a peer that closes
        without ``close_notify`` as a clean end of file, as HTTPS clients expect.

    Returns:
      The TLS stream, ready for a handler; or None when the handshake failed or timed
      out, in which case *stream* has been closed.

    Error handling:
      A failed or timed-out handshake is logged at debug level on the ``"trioserve"``
      logger and is not raised: it is the client's doing, not the server's.
    """
    tls = trio.SSLStream(stream, context, server_side=True, https_compatible=https_compatible)
    reason: object
    with trio.move_on_after(math.inf if handshake_timeout is None else handshake_timeout) as scope:
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            reason = exc.__cause__ if exc.__cause__ is not None else exc
        else:
            return tls
    if scope.cancelled_caught:
        reason = f"no handshake within {handshake_timeout} seconds"
    logger.debug("TLS handshake with %s failed: %s", _peer(client_address), reason)
    await trio.aclose_forcefully(tls)
    return None


def _peer(client_address: Any) -> str:
    return repr(client_address) if client_address not in ("", None) else "a local client"
