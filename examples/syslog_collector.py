"""A syslog collector: receives syslog messages over UDP (or a Unix datagram socket).

Run it (UDP on 127.0.0.1:5514, or any free port with 0, or a Unix datagram socket)::

    python examples/syslog_collector.py
    python examples/syslog_collector.py 0
    python examples/syslog_collector.py --unix /tmp/log.sock

Then send it messages with a real syslog client, ``logger`` from util-linux::

    logger --udp --server 127.0.0.1 --port 5514 --tag myapp "hello, collector"
    logger --socket /tmp/log.sock --tag myapp "hello over a Unix socket"

Each message is printed as one line: ``facility.severity host app: message``. Both
syslog formats are read: RFC 5424 (``<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG``,
what ``logger`` sends over the network) and the older RFC 3164 (``<PRI>TIMESTAMP HOST
TAG: MSG``). Syslog over UDP has no replies, so the handler answers nothing; a datagram
that is not syslog is printed as it came, marked ``?``.
"""

from __future__ import annotations

import argparse
import re
import signal
from typing import NamedTuple

import trio

import trioserve

# fmt: off
FACILITIES = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "audit", "alert", "clock",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
]
# fmt: on
SEVERITIES = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]

_PRI = re.compile(rb"<(\d{1,3})>")
_RFC3164_TIME = re.compile(rb"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ")


class Message(NamedTuple):
    """One syslog message, as the collector prints it."""

    facility: str
    severity: str
    host: str
    app: str
    text: str

    def __str__(self) -> str:
        return f"{self.facility}.{self.severity} {self.host} {self.app}: {self.text}"


def parse(packet: bytes, peer: str) -> Message:
    """Parse one syslog datagram (RFC 5424 or RFC 3164); *peer* stands in for a missing host."""
    match = _PRI.match(packet)
    if match is None or int(match[1]) > 191:
        return Message("?", "?", peer, "-", _text(packet))
    facility = FACILITIES[int(match[1]) >> 3]
    severity = SEVERITIES[int(match[1]) & 7]
    rest = packet[match.end() :]
    if rest.startswith(b"1 "):  # RFC 5424
        fields = rest.split(b" ", 6)
        if len(fields) == 7:
            _, _, host, app, _, _, tail = fields
            message = _skip_structured_data(tail)
            return Message(facility, severity, _field(host, peer), _field(app, "-"), message)
    timestamp = _RFC3164_TIME.match(rest)
    host = b""
    if timestamp:
        rest = rest[timestamp.end() :]
        first, _, after = rest.partition(b" ")
        if not first.endswith(b":"):  # local messages (/dev/log) carry no host
            host, rest = first, after
    tag, colon, body = rest.partition(b": ")
    if not colon:
        tag, body = b"-", rest
    return Message(facility, severity, _field(host, peer), _text(tag), _text(body))


def _field(value: bytes, default: str) -> str:
    return default if value in (b"", b"-") else _text(value)


def _text(value: bytes) -> str:
    text = value.decode("utf-8", errors="replace").removeprefix("\ufeff")
    return " ".join(text.split())


def _skip_structured_data(tail: bytes) -> str:
    """The MSG of an RFC 5424 message, after its STRUCTURED-DATA (``-`` or ``[...]``)."""
    if tail.startswith(b"-"):
        return _text(tail[1:])
    depth, i = 0, 0
    while i < len(tail):
        char = tail[i : i + 1]
        if char == b"\\":
            i += 2
            continue
        if char == b"[":
            depth += 1
        elif char == b"]":
            depth -= 1
        elif char == b" " and depth == 0:
            break
        i += 1
    return _text(tail[i:])


class SyslogHandler(trioserve.DatagramRequestHandler):
    """Print each datagram as one syslog line."""

    async def handle(self) -> None:
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else "local"
        print(parse(self.packet, peer), flush=True)


async def serve(server: trioserve.SocketServer, where: str) -> None:
    """Serve until Ctrl-C or SIGTERM, then shut down gracefully."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            print(f"syslog: listening on {where} (Ctrl-C to stop)", flush=True)
            async for _ in signals:
                server.shutdown()
                return


def main() -> None:
    parser = argparse.ArgumentParser(description="A syslog collector.")
    parser.add_argument("port", type=int, nargs="?", default=5514, help="UDP port (0: any)")
    parser.add_argument("--unix", metavar="PATH", help="listen on a Unix datagram socket")
    args = parser.parse_args()
    server: trioserve.SocketServer
    if args.unix:
        server = trioserve.UnixDatagramServer(args.unix, SyslogHandler)
        where = f"unix-dgram {args.unix}"
    else:
        server = trioserve.UDPServer(("127.0.0.1", args.port), SyslogHandler)
        host, port = server.server_address
        where = f"udp {host}:{port}"
    with server:
        trio.run(serve, server, where)


if __name__ == "__main__":
    main()
