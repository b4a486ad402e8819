"""`HTTPServer` and `ThreadingHTTPServer`: ``http.server``'s servers on trioserve.

The handler classes of ``http.server`` (``BaseHTTPRequestHandler``,
``SimpleHTTPRequestHandler``) are socketserver handlers: trioserve runs them unchanged in
worker threads (`trioserve._sync`). What they need from their server is small:
``http.server.HTTPServer`` only adds ``server_name`` and ``server_port``, set when it binds,
which the CGI handler and ``wsgiref`` read. These classes add the same, so that a server
built from ``http.server`` names ports by changing its import::

    from trioserve import ThreadingHTTPServer
    from http.server import SimpleHTTPRequestHandler

    server = ThreadingHTTPServer(("127.0.0.1", 8000), SimpleHTTPRequestHandler)
    trio.run(server.serve_forever)

A WSGI application runs under ``wsgiref.simple_server.WSGIRequestHandler`` with a
three-method subclass of `ThreadingHTTPServer` (see the porting guide).

Unlike ``http.server``'s, these servers have timeouts by default, as a web server facing
the internet needs: ``handler_timeout`` is 60 s (each read and write of a request; nginx's
``client_header_timeout`` and ``send_timeout``), and ``keep_alive_timeout`` 75 s (how long
an idle keep-alive connection waits for its next request; nginx's ``keepalive_timeout``).
Between two requests an ``http.server`` handler's connection holds no thread (see
`trioserve._sync`).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import ClassVar

from . import _options
from ._policy import NurseryMixIn
from ._stream import TCPServer

__all__ = ["HTTPServer", "ThreadingHTTPServer"]


class HTTPServer(TCPServer):
    """``http.server.HTTPServer``: a `TCPServer` that records its host name and port.

    Handles one connection at a time; `ThreadingHTTPServer` is what a real HTTP server
    wants (keep-alive connections would otherwise wait for each other).

    Options and class attributes (besides `TCPServer`'s):
      handler_timeout: as on every server, but 60 s by default here: each read and write
        of a request may wait that long for the client (None waits forever, as
        ``http.server`` does). A handler class's own ``timeout`` wins.
      keep_alive_timeout: seconds an idle keep-alive connection waits for its next
        request before it is closed (quietly); default 75. None leaves it to the
        handler's timeout, as in ``http.server``. Applies to ``http.server`` handlers
        that the server runs request by request (see `trioserve._sync`).

    Attributes:
      server_name: the fully qualified name of the bound host (`socket.getfqdn`).
      server_port: the bound port.
    """

    server_name: str
    server_port: int
    handler_timeout: float | None = 60.0
    keep_alive_timeout: float | None = 75.0

    _trioserve_options: ClassVar[Mapping[str, _options.Check]] = {
        "keep_alive_timeout": _options.seconds_or_none,
    }

    def server_bind(self) -> None:
        """Bind, then set ``server_name`` and ``server_port``."""
        super().server_bind()
        host, port = self.server_address[:2]
        self.server_name = socket.getfqdn(host)
        self.server_port = port


class ThreadingHTTPServer(NurseryMixIn, HTTPServer):
    """``http.server.ThreadingHTTPServer``: each connection in its own task.

    With ``http.server``'s handlers (sync), each request is read and answered in a worker
    thread, and a keep-alive connection waits for its next request in Trio, holding no
    thread.
    """
