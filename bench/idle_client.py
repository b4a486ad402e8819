"""The memory test's client: hold N idle keep-alive connections, then use them all.

``python -m bench.idle_client --port P --connections N`` opens N connections to the
server, sends one request on each and reads the answer, so every connection has been
served once and is idle in keep-alive. It then prints ``OPEN <n>`` and waits for a line on
stdin; on it, it sends a second request on every connection, reads every answer, prints
``ANSWERED <n>`` and exits. The whole run is bounded by ``--deadline`` seconds (SIGALRM).

It is a separate process from the runner and the server, so neither's memory includes
the client's sockets.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys

from bench._common import HOST, REQUEST, raise_open_file_limit

__all__ = ["main", "read_response"]


def read_response(sock: socket.socket, pending: bytearray) -> None:
    """Read one HTTP response (headers, then a Content-Length body) from *sock*.

    Bytes past the response stay in *pending*.

    Raises:
      ConnectionError: the server closed the connection first.
      ValueError: the answer has no Content-Length.
    """
    while (end := pending.find(b"\r\n\r\n")) < 0:
        _receive_into(sock, pending)
    length = None
    for line in bytes(pending[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ValueError("an answer without Content-Length")
    total = end + 4 + length
    while len(pending) < total:
        _receive_into(sock, pending)
    del pending[:total]


def _receive_into(sock: socket.socket, pending: bytearray) -> None:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    pending += data


def main(argv: list[str] | None = None) -> int:
    """Run the client; return the exit status (0 when every connection was answered)."""
    parser = argparse.ArgumentParser(prog="python -m bench.idle_client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument(
        "--wait", type=float, default=5.0, help="seconds to wait for any one answer"
    )
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds, in all")
    args = parser.parse_args(argv)
    limit = raise_open_file_limit(args.connections + 100)
    if limit < args.connections + 20:
        print(f"FAIL the open-file limit is {limit}: too low for {args.connections}", flush=True)
        return 1
    signal.setitimer(signal.ITIMER_REAL, args.deadline)  # SIGALRM ends a stuck run
    socks: list[socket.socket] = []
    pendings: list[bytearray] = []
    try:
        for _ in range(args.connections):
            sock = socket.create_connection((HOST, args.port), timeout=args.wait)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(sock)
            pending = bytearray()
            pendings.append(pending)
            sock.sendall(REQUEST)
            read_response(sock, pending)
        print(f"OPEN {len(socks)}", flush=True)
        sys.stdin.readline()
        for sock in socks:
            sock.sendall(REQUEST)
        answered = 0
        for sock, pending in zip(socks, pendings, strict=True):
            read_response(sock, pending)
            answered += 1
        print(f"ANSWERED {answered}", flush=True)
    except (OSError, ValueError) as exc:
        print(f"FAIL after {len(socks)} connections: {exc}", flush=True)
        return 1
    finally:
        for sock in socks:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
