"""Reading a connection's PROXY header off its socket, consuming nothing past it.

The rules live in `trioserve._proxy` (no I/O); this is the I/O around them, for stream
servers with ``proxy_protocol=True``. It runs in the connection's own task, before any
TLS handshake (the header precedes it on the wire), under ``proxy_header_timeout``.

Nothing past the header is read: the handler's first read must see the client's first
byte, and a sync handler reads the socket itself, so no bytes can be held in a buffer of
ours. So each read first *peeks* at what has arrived, works out how much of it is header
(up to the line end for version 1, the length the fixed part gives for version 2), and
receives exactly that.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from ._proxy import V2_SIGNATURE, ProxyHeader, ProxyHeaderParser

__all__ = ["receive_proxy_header"]

_V2_FIXED = 16
_PEEK = 4096


def _header_bytes(consumed: bytes, peeked: bytes) -> int:
    """How many of *peeked* belong to the header, given the header bytes *consumed*."""
    start = consumed + peeked[:_V2_FIXED]
    if start[:1] == V2_SIGNATURE[:1]:
        if len(consumed) < _V2_FIXED:
            return min(len(peeked), _V2_FIXED - len(consumed))
        total = _V2_FIXED + int.from_bytes(consumed[14:16], "big")
        return min(len(peeked), total - len(consumed))
    end = peeked.find(b"\n")
    return len(peeked) if end < 0 else end + 1


async def receive_proxy_header(stream: trio.SocketStream) -> ProxyHeader:
    """Receive the PROXY header at the start of *stream*, and nothing after it.

    Raises:
      ProxyProtocolError: the bytes are not a valid header, or the peer closed first.
      OSError: the connection failed.
    """
    sock = stream.socket
    parser = ProxyHeaderParser()
    consumed = b""
    while True:
        peeked: bytes = await sock.recv(_PEEK, socket.MSG_PEEK)
        if not peeked:
            parser.feed(b"")  # raises: the peer closed before a whole header
        take = _header_bytes(consumed, peeked)
        data = await sock.recv(take)
        consumed += data
        header = parser.feed(data)
        if header is not None:
            return header


def proxied_address(header: ProxyHeader, client_address: Any) -> Any:
    """The address to serve the connection as: the client's, or the proxy's for LOCAL."""
    if header.local or header.source is None:
        return client_address
    return header.source
