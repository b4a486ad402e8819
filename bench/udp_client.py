"""The datagram test's client: keep a window of datagrams in flight, count the echoes.

``python -m bench.udp_client --port P --seconds S`` sends 32-byte datagrams to an echo
server on 127.0.0.1, keeping ``--window`` of them unanswered at most, for S seconds or
until ``--max-datagrams`` are sent, whichever comes first. A datagram lost on the way
(loopback UDP drops under load) is given up after ``--loss-timeout`` seconds and the
window refilled. It prints ``ANSWERED <n> SENT <m> SECONDS <t>``.
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import time

from bench._common import HOST

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the client; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.udp_client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--max-datagrams", type=int, default=5_000_000)
    parser.add_argument("--loss-timeout", type=float, default=0.05)
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((HOST, args.port))  # only the server's answers reach this socket
    sock.setblocking(False)
    payload = b"%032d" % 0
    sent = answered = in_flight = 0
    start = time.perf_counter()
    deadline = start + args.seconds
    try:
        while sent < args.max_datagrams and time.perf_counter() < deadline:
            while in_flight < args.window and sent < args.max_datagrams:
                try:
                    sock.send(payload)
                except BlockingIOError:
                    break
                sent += 1
                in_flight += 1
            readable, _, _ = select.select([sock], [], [], args.loss_timeout)
            if not readable:
                in_flight = 0  # the rest were lost: refill the window
                continue
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    print("FAIL the server is not listening", flush=True)
                    return 1
                if data == payload:
                    answered += 1
                    in_flight = max(0, in_flight - 1)
    finally:
        elapsed = time.perf_counter() - start
        sock.close()
    print(f"ANSWERED {answered} SENT {sent} SECONDS {elapsed:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
