"""An echo server: every line a client sends comes back to it.

Run it (TCP on 127.0.0.1:9000, or any free port with 0, or a Unix socket)::

    python examples/echo.py
    python examples/echo.py 0
    python examples/echo.py --unix /tmp/echo.sock

It prints where it listens. Talk to it from another terminal, type lines, and each comes
back::

    nc 127.0.0.1 9000
    nc -U /tmp/echo.sock

Ctrl-C (or SIGTERM) stops it gracefully: no new connections are taken, and the ones open
get a few seconds (``shutdown_grace``) to finish before they are closed.
"""

from __future__ import annotations

import argparse
import signal

import trio

import trioserve


class EchoHandler(trioserve.StreamRequestHandler):
    """Send each line back, until the client closes the connection."""

    async def handle(self) -> None:
        async for line in self.rfile:
            await self.wfile.write(line)


async def serve(server: trioserve.SocketServer, where: str) -> None:
    """Serve until Ctrl-C or SIGTERM, then shut down gracefully."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            print(f"echo: listening on {where} (Ctrl-C to stop)", flush=True)
            async for _ in signals:
                server.shutdown()  # serve_forever returns once open connections finish
                return


def main() -> None:
    parser = argparse.ArgumentParser(description="An echo server.")
    parser.add_argument("port", type=int, nargs="?", default=9000, help="TCP port (0: any)")
    parser.add_argument("--unix", metavar="PATH", help="serve a Unix socket instead")
    args = parser.parse_args()
    server: trioserve.SocketServer
    if args.unix:
        server = trioserve.ThreadingUnixStreamServer(args.unix, EchoHandler)
        where = f"unix {args.unix}"
    else:
        server = trioserve.ThreadingTCPServer(("127.0.0.1", args.port), EchoHandler)
        host, port = server.server_address
        where = f"tcp {host}:{port}"
    with server:
        trio.run(serve, server, where)


if __name__ == "__main__":
    main()
