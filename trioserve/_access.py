"""The access log: one line per connection (and per datagram), to ``trioserve.access``.

The line
--------
::

    PEER TRANSPORT DURATION in=RECEIVED out=SENT ENDING

for instance ``127.0.0.1:5555 tcp 0.012s in=120 out=3400 closed``. Fields are separated
by one space and never contain one; the format is stable (new fields, if any, are added at
the end):

* PEER: the client as the handler saw it (``client_address``: the real client behind a
  PROXY header): ``HOST:PORT``, ``[IPV6]:PORT``, a Unix socket's path, or ``-`` for an
  unnamed Unix client.
* TRANSPORT: ``tcp``, ``unix``, ``udp`` or ``unix-dgram``.
* DURATION: from the request's start (accepted, or received) to the end of its handler,
  in seconds, with three decimals and an ``s``.
* RECEIVED, SENT: bytes, from the kernel's own count for TCP (``TCP_INFO``): what the peer
  sent and what the handler handed to the kernel, TLS records and a PROXY header
  included. ``-`` where they are not known: a Unix stream socket (the kernel keeps no
  count), a datagram's reply (SENT).
* ENDING: ``closed`` (the handler returned), ``reset`` (the peer vanished: reset, broken
  pipe), ``timeout`` (the peer was too slow for the handler's ``timeout``), ``cut`` (cut
  short by cancellation: the shutdown grace ran out, or the server was cancelled),
  ``error`` (the handler raised anything else) or ``refused`` (``verify_request``, the
  TLS handshake or the PROXY header refused it).

The record is logged at INFO level, with the figures also as attributes of the record
(``peer``, ``transport``, ``duration``, ``bytes_received``, ``bytes_sent``, ``ending``;
the byte counts None where not known) for a structured formatter.

The log is off by default, and costs nothing then: the request path makes no clock read
and no allocation for it (`trioserve._request`).
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Final

from ._errors import is_vanished_peer
from ._exceptions import PeerTimeoutError

__all__ = [
    "CLOSED",
    "CUT",
    "ERROR",
    "REFUSED",
    "access_logger",
    "ending_of",
    "format_peer",
    "log_access",
    "transport_name",
]

access_logger = logging.getLogger("trioserve.access")

CLOSED: Final = "closed"
RESET: Final = "reset"
TIMEOUT: Final = "timeout"
CUT: Final = "cut"
ERROR: Final = "error"
REFUSED: Final = "refused"


def ending_of(exc: BaseException) -> str:
    """How a request whose handler raised *exc* (an `Exception`) ended."""
    if is_vanished_peer(exc):
        return RESET
    if isinstance(exc, PeerTimeoutError):
        return TIMEOUT
    return ERROR


def transport_name(server: Any) -> str:
    """``tcp``, ``unix``, ``udp`` or ``unix-dgram``: the transport of *server*'s socket."""
    family = getattr(server, "address_family", socket.AF_INET)
    datagram = getattr(server, "socket_type", socket.SOCK_STREAM) == socket.SOCK_DGRAM
    if family == getattr(socket, "AF_UNIX", None):
        return "unix-dgram" if datagram else "unix"
    return "udp" if datagram else "tcp"


def format_peer(client_address: Any) -> str:
    """*client_address* as one field: ``HOST:PORT``, ``[IPV6]:PORT``, a path, or ``-``."""
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        host, port = client_address[0], client_address[1]
        host = str(host)
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{port}"
    if isinstance(client_address, bytes):
        client_address = client_address.decode(errors="backslashreplace")
    if not client_address:
        return "-"
    text = str(client_address)
    return "".join(f"\\x{ord(c):02x}" if c.isspace() else c for c in text)


def log_access(
    peer: Any,
    transport: str,
    duration: float,
    received: int | None,
    sent: int | None,
    ending: str,
) -> None:
    """Log one access line (see the module documentation)."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    shown_peer = format_peer(peer)
    access_logger.info(
        "%s %s %.3fs in=%s out=%s %s",
        shown_peer,
        transport,
        duration,
        "-" if received is None else received,
        "-" if sent is None else sent,
        ending,
        extra={
            "peer": shown_peer,
            "transport": transport,
            "duration": duration,
            "bytes_received": received,
            "bytes_sent": sent,
            "ending": ending,
        },
    )
