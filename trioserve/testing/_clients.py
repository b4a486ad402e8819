"""Clients for tests: `connect` to a stream server, `exchange_datagram` with a datagram one.

Both read the transport from the server itself (its ``address_family``, ``socket_type``
and ``server_address``), so one test body works against TCP, IPv6 and Unix servers alike.
A server bound to a wildcard host (``0.0.0.0``, ``::``) is reached over the loopback
address of its family.

A Unix datagram client must have an address of its own for the server's reply to reach
it. On Linux the client socket is bound to an autobind address in the abstract namespace,
which leaves no file behind; elsewhere it is bound to a path in a temporary directory that
is removed afterwards.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from typing import Any

import trio

from .._binding import SocketServer

__all__ = ["connect", "exchange_datagram"]

_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def _reachable(server: SocketServer, socket_type: int, helper: str) -> Any:
    """The address a client uses to reach *server*, after checking its socket type."""
    if server.socket_type != socket_type:
        kind = "stream" if socket_type == socket.SOCK_STREAM else "datagram"
        other = "exchange_datagram()" if helper == "connect()" else "connect()"
        raise TypeError(f"{helper} needs a {kind} server, not {server!r}; use {other}")
    address = server.server_address
    if server.address_family == socket.AF_UNIX:
        return address
    host, port = address[0], address[1]
    return (_LOOPBACK.get(host, host), port)


async def connect(server: SocketServer) -> trio.SocketStream:
    """Open a client connection to a stream server (TCP over IPv4 or IPv6, or Unix).

    Args:
      server: a stream server, serving or at least listening.

    Returns:
      A connected `trio.SocketStream`; the caller closes it (``async with await
      connect(server) as client:``).

    Raises:
      TypeError: *server* is a datagram server.
      OSError: the connection was refused.
    """
    address = _reachable(server, socket.SOCK_STREAM, "connect()")
    if server.address_family == socket.AF_UNIX:
        return await trio.open_unix_socket(address)
    host, port = address
    return await trio.open_tcp_stream(host, port)


async def exchange_datagram(server: SocketServer, data: bytes, *, max_size: int = 65536) -> bytes:
    """Send one datagram to a datagram server (UDP or Unix) and return its reply.

    The client socket is connected to the server, so only a datagram from the server's
    address counts as the reply. This waits for the reply as long as it takes; bound it
    with `trio.fail_after` if the server might not answer.

    Args:
      server: a datagram server, serving.
      data: the datagram to send.
      max_size: the largest reply to receive; a longer one is truncated to this size.

    Returns:
      The first datagram the server sends back.

    Raises:
      TypeError: *server* is a stream server.

    Resource handling:
      The client socket (and, for a Unix server off Linux, its temporary socket file) is
      gone when this returns or raises.
    """
    address = _reachable(server, socket.SOCK_DGRAM, "exchange_datagram()")
    family = server.address_family
    with socket.socket(family, socket.SOCK_DGRAM) as raw:
        sock = trio.socket.from_stdlib_socket(raw)
        if family == socket.AF_UNIX and sys.platform == "linux":
            raw.bind("")  # autobind: an abstract address, no file (Trio's bind rejects "")
        elif family == socket.AF_UNIX:  # pragma: no cover - Linux has autobind
            with tempfile.TemporaryDirectory(prefix="trioserve-") as directory:
                await sock.bind(os.path.join(directory, "client.sock"))
                return await _exchange(sock, address, data, max_size)
        return await _exchange(sock, address, data, max_size)


async def _exchange(
    sock: trio.socket.SocketType, address: Any, data: bytes, max_size: int
) -> bytes:
    await sock.connect(address)
    await sock.send(data)
    return await sock.recv(max_size)
