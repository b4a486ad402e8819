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
"""

from __future__ import annotations

import socket

from ._policy import NurseryMixIn
from ._stream import TCPServer

__all__ = ["HTTPServer", "ThreadingHTTPServer"]


class HTTPServer(TCPServer):
    """``http.server.HTTPServer``: a `TCPServer` that records its host name and port.

    Handles one connection at a time; `ThreadingHTTPServer` is what a real HTTP server
    wants (keep-alive connections would otherwise wait for each other).

    Attributes:
      server_name: the fully qualified name of the bound host (`socket.getfqdn`).
      server_port: the bound port.
    """

    server_name: str
    server_port: int

    def server_bind(self) -> None:
        """Bind, then set ``server_name`` and ``server_port``."""
        super().server_bind()
        host, port = self.server_address[:2]
        self.server_name = socket.getfqdn(host)
        self.server_port = port


class ThreadingHTTPServer(NurseryMixIn, HTTPServer):
    """``http.server.ThreadingHTTPServer``: each connection in its own task.

    With ``http.server``'s handlers (sync), each connection's handler runs in a worker
    thread, at most ``max_handler_threads`` at once.
    """
