"""``python -m trioserve``: serve a handler from the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from ._compat import ThreadingTCPServer
from ._handlers import EchoHandler

__all__ = ["main"]


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="trioserve", description="Serve a trioserve handler.")
    parser.add_argument("--tcp", type=_host_port, default=("127.0.0.1", 9000), metavar="HOST:PORT")
    args = parser.parse_args(argv)
    try:
        server = ThreadingTCPServer(args.tcp, EchoHandler)
    except (OSError, ValueError) as exc:
        print(f"trioserve: {exc}", file=sys.stderr)
        return 2
    with server:
        host, port = server.server_address[:2]
        print(f"trioserve: serving EchoHandler on tcp {host}:{port} (try: nc {host} {port})")
        sys.stdout.flush()
        try:
            trio.run(server.serve_forever)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
