"""A line-based chat server: what one client says, every other client reads.

Run it, then connect two or more clients (each in its own terminal)::

    python examples/chat.py            # TCP on 127.0.0.1:9001; 0 for any free port
    nc 127.0.0.1 9001

Each client is asked for a name, then every line it sends reaches the others as
``name: line``; joins and departures are announced with ``*``.

Shared state, the Trio way
--------------------------
Every handler runs as a task in the one Trio thread, so the state they share (the
server's ``clients``: a bounded memory channel and a cancel scope per client) needs no
lock: between two ``await``s nothing else runs. A handler never writes to another
client's connection, which could block it on a slow reader; it puts the message in
that client's outbox without waiting (``send_nowait``), and a task of that client's own
handler delivers it. A client so slow that its outbox fills up is disconnected (its
handler's scope is cancelled), instead of slowing everyone down or making the server
buffer without bound.
"""

from __future__ import annotations

import argparse
import signal
from dataclasses import dataclass
from typing import Any

import trio

import trioserve

OUTBOX_SIZE = 100
MAX_NAME = 32


@dataclass
class Client:
    """A connected client: its outbox, and the scope that disconnects it when cancelled."""

    outbox: trio.MemorySendChannel[bytes]
    scope: trio.CancelScope


class ChatServer(trioserve.ThreadingTCPServer):
    """A TCP server that knows its clients, by name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clients: dict[str, Client] = {}

    def unique_name(self, wanted: str) -> str:
        """*wanted*, or *wanted* with a number if that name is taken."""
        name, number = wanted, 1
        while name in self.clients:
            number += 1
            name = f"{wanted}#{number}"
        return name

    def broadcast(self, sender: str, message: bytes) -> None:
        """Queue *message* for every client but *sender*; disconnect any that fell behind."""
        for name, client in self.clients.items():
            if name != sender:
                try:
                    client.outbox.send_nowait(message)
                except trio.WouldBlock:
                    client.scope.cancel()


class ChatHandler(trioserve.StreamRequestHandler):
    """One chat client: ask its name, then relay its lines and deliver the others'."""

    server: ChatServer
    max_line_length = 4096

    async def handle(self) -> None:
        await self.wfile.write(b"What is your name?\n")
        wanted = (await self.rfile.readline()).decode(errors="replace").strip()
        name = self.server.unique_name(wanted[:MAX_NAME] or "anonymous")
        outbox, inbox = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        async with trio.open_nursery() as nursery:
            others = len(self.server.clients)
            self.server.clients[name] = Client(outbox, nursery.cancel_scope)
            try:
                await self.wfile.write(f"Welcome, {name}! {others} others here.\n".encode())
                self.server.broadcast(name, f"* {name} joined\n".encode())
                nursery.start_soon(self.deliver, inbox)
                async for line in self.rfile:
                    text = line.rstrip(b"\r\n")
                    self.server.broadcast(name, name.encode() + b": " + text + b"\n")
                nursery.cancel_scope.cancel()  # the client left: stop delivering
            finally:
                del self.server.clients[name]
                outbox.close()
                self.server.broadcast(name, f"* {name} left\n".encode())

    async def deliver(self, inbox: trio.MemoryReceiveChannel[bytes]) -> None:
        """Write what the others say to this client, in order."""
        async with inbox:
            async for message in inbox:
                await self.wfile.write(message)


async def serve(server: ChatServer) -> None:
    """Serve until Ctrl-C or SIGTERM, then shut down gracefully."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            host, port = server.server_address
            print(f"chat: listening on tcp {host}:{port} (Ctrl-C to stop)", flush=True)
            async for _ in signals:
                server.shutdown(grace=1)  # chat clients never finish by themselves
                return


def main() -> None:
    parser = argparse.ArgumentParser(description="A line-based chat server.")
    parser.add_argument("port", type=int, nargs="?", default=9001, help="TCP port (0: any)")
    args = parser.parse_args()
    with ChatServer(("127.0.0.1", args.port), ChatHandler) as server:
        trio.run(serve, server)


if __name__ == "__main__":
    main()
