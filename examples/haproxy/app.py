"""An HTTP app to run behind HAProxy: ``GET /whoami`` says who asked and who answered.

It is ``http.server`` code, unchanged: trioserve runs it in worker threads. Start two
instances with the PROXY protocol on, then HAProxy with the configuration next to this
file (from this directory, so that ``app`` imports)::

    cd examples/haproxy
    python -m trioserve app:Handler --tcp 127.0.0.1:9001 --proxy-protocol \\
        --proxy-trusted 127.0.0.1/32 &
    python -m trioserve app:Handler --tcp 127.0.0.1:9002 --proxy-protocol \\
        --proxy-trusted 127.0.0.1/32 &
    haproxy -f haproxy.cfg -db

and ask, through HAProxy::

    curl http://127.0.0.1:8080/whoami

``/whoami`` answers with JSON: ``client``, the ``client_address`` the handler sees (with
the PROXY protocol, the client's own address and port, not HAProxy's), ``server``, the
instance's own address, ``pid``, the process that answered (a worker's, with
``--workers``), and ``version``, this module's `VERSION`, which shows which code answered
after a reload. ``/whoami?delay=0.2`` waits that long first (at most 5 s): a slow request
to be in flight when the instance is stopped or reloaded. ``/health`` answers ``ok``, for
HAProxy's health checks. The connections keep alive (HTTP/1.1).
"""

from __future__ import annotations

import json
import logging
import os
import time
from http.server import BaseHTTPRequestHandler
from typing import cast
from urllib.parse import parse_qs, urlsplit

#: Which code answers: the tests change it in a copy of this file, then reload.
VERSION = "1"

#: The longest ``delay`` a request may ask for, in seconds.
MAX_DELAY = 5.0

logger = logging.getLogger(__name__)


class Handler(BaseHTTPRequestHandler):
    """``GET /whoami`` and ``GET /health``, over HTTP/1.1 keep-alive connections."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/health":
            self._send(200, "text/plain", b"ok\n")
        elif url.path == "/whoami":
            query = parse_qs(url.query)
            try:
                delay = min(float(query.get("delay", ["0"])[0]), MAX_DELAY)
            except ValueError:
                self._send(400, "text/plain", b"delay must be a number of seconds\n")
                return
            if delay > 0:
                time.sleep(delay)
            host, port = self.client_address[:2]
            server_host, server_port = cast("tuple[str, int]", self.server.server_address)[:2]
            body = {
                "client": [host, port],
                "server": [server_host, server_port],
                "pid": os.getpid(),
                "version": VERSION,
            }
            self._send(200, "application/json", json.dumps(body).encode() + b"\n")
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Log each request at debug level (http.server writes them to stderr)."""
        logger.debug("%s %s", self.address_string(), format % args)
