"""``http.server`` served by trioserve: a static file server in a few lines.

``http.server.SimpleHTTPRequestHandler`` is a socketserver handler from the standard
library, used here unchanged: trioserve runs it in a worker thread per connection, with a
blocking socket, so HTTP/1.1 keep-alive, ``sendfile`` and directory listings work as they
do under ``http.server``. `trioserve.ThreadingHTTPServer` is ``http.server``'s server of
the same name, rebuilt on Trio: Ctrl-C stops it gracefully, and no thread outlives it.

Run it to serve the current directory (or ``--directory DIR``) on 127.0.0.1:8000, or any
free port with 0; it prints the address::

    python examples/http_files.py
    python examples/http_files.py 0 --directory docs/_build/html

Then browse to http://127.0.0.1:8000/, or::

    curl http://127.0.0.1:8000/README.md

Each request is logged on stderr, as ``http.server`` logs it.
"""

from __future__ import annotations

import argparse
import os
import signal
from http.server import SimpleHTTPRequestHandler
from typing import Any

import trio

import trioserve


class FileServer(trioserve.ThreadingHTTPServer):
    """A `trioserve.ThreadingHTTPServer` that knows which directory it serves."""

    def __init__(self, address: Any, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        super().__init__(address, FileHandler)


class FileHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler``, serving its server's directory."""

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        # Typed Any: the standard library's stubs expect a socketserver.BaseServer.
        super().__init__(request, client_address, server, directory=server.directory)


async def serve(server: FileServer) -> None:
    """Serve until Ctrl-C or SIGTERM, then shut down gracefully."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            host, port = server.server_address[:2]
            print(
                f"http: serving {server.directory} on tcp {host}:{port} "
                f"(open http://{host}:{port}/)",
                flush=True,
            )
            async for _ in signals:
                server.shutdown(grace=2)  # idle keep-alive connections are closed after it
                return


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a directory over HTTP.")
    parser.add_argument("port", type=int, nargs="?", default=8000, help="TCP port (0: any)")
    parser.add_argument("--directory", default=".", help="the directory to serve")
    args = parser.parse_args()
    with FileServer(("127.0.0.1", args.port), args.directory) as server:
        trio.run(serve, server)


if __name__ == "__main__":
    main()
