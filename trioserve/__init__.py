"""trioserve: Python's socketserver, rebuilt on Trio's structured concurrency.

``import trioserve as socketserver`` ports socketserver code: the server classes, the
handler classes and the mix-ins keep their names. Servers are served with ``await
server.serve_forever()``, and stopped by `~BaseServer.shutdown` or by cancelling the scope
around them.
"""

from ._binding import SocketServer as SocketServer
from ._compat import ThreadingTCPServer as ThreadingTCPServer
from ._compat import ThreadingUnixStreamServer as ThreadingUnixStreamServer
from ._exceptions import BrokenConnectionError as BrokenConnectionError
from ._exceptions import LineTooLongError as LineTooLongError
from ._files import AsyncReader as AsyncReader
from ._files import AsyncWriter as AsyncWriter
from ._handlers import BaseRequestHandler as BaseRequestHandler
from ._handlers import EchoHandler as EchoHandler
from ._handlers import StreamRequestHandler as StreamRequestHandler
from ._policy import Concurrency as Concurrency
from ._policy import ForkingMixIn as ForkingMixIn
from ._policy import NurseryMixIn as NurseryMixIn
from ._policy import ProcessPoolMixIn as ProcessPoolMixIn
from ._policy import ThreadingMixIn as ThreadingMixIn
from ._server import BaseServer as BaseServer
from ._stream import TCPServer as TCPServer
from ._stream import UnixStreamServer as UnixStreamServer

__version__ = "0.1.0.dev0"

__all__ = [
    "AsyncReader",
    "AsyncWriter",
    "BaseRequestHandler",
    "BaseServer",
    "BrokenConnectionError",
    "Concurrency",
    "EchoHandler",
    "ForkingMixIn",
    "LineTooLongError",
    "NurseryMixIn",
    "ProcessPoolMixIn",
    "SocketServer",
    "StreamRequestHandler",
    "TCPServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUnixStreamServer",
    "UnixStreamServer",
]
