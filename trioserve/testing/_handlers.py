"""Run one handler without a server: `run_handler` and `run_datagram_handler`.

A handler needs a request, a client address and a server. For a stream handler the
request here is one end of `trio.testing.memory_stream_pair`: no socket, no port, no
kernel. The client end sends ``client_bytes`` and then end-of-file, so a handler that
reads until EOF finishes; after the handler the server end is closed, as a server closes
a connection, and everything the handler sent is read back. Memory streams have no flow
control (a send never waits for the peer to read), so all of this runs in order in the
calling task, with no nursery and no chance of a deadlock.

A datagram handler's request is ``(data, socket)``, and it replies with
``socket.sendto(reply, client_address)``, or whatever else the socket API allows. So
`run_datagram_handler` hands it a real UDP socket on the IPv4 loopback (a Trio socket, as
a server does; a sync handler gets a blocking socket on it, as from a server), and a real
client socket, whose address is the handler's ``client_address``, collects the replies: on
loopback a datagram is queued for its receiver before ``sendto`` returns, so every reply
is there once the handler has finished.

Both run the handler as a server does, through `trioserve._request.run_handler`: an
async handler in the calling task, a sync one (or one of socketserver's own classes) in a
worker thread. Unlike a server, they let the handler's exception propagate, so a test sees
it.
"""

from __future__ import annotations

import socket
import socketserver
from typing import Any

import trio
import trio.testing

from .._handlers import BaseRequestHandler
from .._request import run_handler as _run_handler
from .._server import BaseServer

__all__ = ["run_datagram_handler", "run_handler"]

AnyHandlerClass = type[BaseRequestHandler] | type[socketserver.BaseRequestHandler]

#: The ``server_address`` of the stand-in server `run_handler` makes when given none.
MEMORY_ADDRESS = "<memory>"
_MAX_DATAGRAM = 65536


async def run_handler(
    handler_class: AnyHandlerClass,
    client_bytes: bytes = b"",
    *,
    client_address: Any = ("127.0.0.1", 0),
    server: BaseServer | None = None,
) -> bytes:
    """Run a stream handler over an in-memory connection; return what it sent.

    ::

        assert await run_handler(UpperHandler, b"hello\\n") == b"HELLO\\n"

    Args:
      handler_class: the handler class, async or sync (a ``StreamRequestHandler``
        subclass, or any class a stream server accepts).
      client_bytes: what the client sends before it half-closes the connection.
      client_address: the handler's ``client_address``.
      server: the handler's ``server``; by default a `~trioserve.BaseServer` with no
        socket, whose ``server_address`` is ``"<memory>"``.

    Returns:
      Every byte the handler sent, in order.

    Raises:
      Exception: whatever the handler raised, as it raised it.

    Resource handling:
      Both ends of the in-memory connection are closed when this returns or raises.
    """
    if server is None:
        server = BaseServer(MEMORY_ADDRESS, handler_class)
    client, request = trio.testing.memory_stream_pair()
    try:
        await client.send_all(client_bytes)
        await client.send_eof()
        await _run_handler(handler_class, request, client_address, server)
        await request.aclose()
        sent = bytearray()
        while chunk := await client.receive_some():
            sent += chunk
        return bytes(sent)
    finally:
        await trio.aclose_forcefully(request)
        await trio.aclose_forcefully(client)


async def run_datagram_handler(
    handler_class: AnyHandlerClass, data: bytes, *, server: BaseServer | None = None
) -> list[bytes]:
    """Run a datagram handler for one datagram; return the datagrams it sent back.

    ::

        assert await run_datagram_handler(UpperHandler, b"ping") == [b"PING"]

    Args:
      handler_class: the handler class, async or sync (a ``DatagramRequestHandler``
        subclass, or a ``BaseRequestHandler`` one that uses ``self.request``).
      data: the datagram the handler receives.
      server: the handler's ``server``; by default a `~trioserve.BaseServer` whose
        ``server_address`` is the handler's socket's address.

    Returns:
      The datagrams the handler sent to its ``client_address``, in order; empty if it
      sent none.

    Raises:
      Exception: whatever the handler raised, as it raised it.

    Resource handling:
      Both loopback UDP sockets are closed when this returns or raises.
    """
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        raw.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        if server is None:
            server = BaseServer(raw.getsockname(), handler_class)
        sock = trio.socket.from_stdlib_socket(raw)
        await _run_handler(handler_class, (data, sock), client.getsockname(), server)
        replies: list[bytes] = []
        while True:
            try:
                replies.append(client.recv(_MAX_DATAGRAM))
            except BlockingIOError:
                return replies
