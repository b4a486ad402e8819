"""trioserve: Python's socketserver, rebuilt on Trio's structured concurrency.

``import trioserve as socketserver`` ports socketserver code: the server classes, the
handler classes and the mix-ins keep their names. Servers are served with ``await
server.serve_forever()``, and stopped by `~BaseServer.shutdown` or by cancelling the scope
around them.
"""

from ._activation import listen_fds as listen_fds
from ._binding import SocketServer as SocketServer
from ._compat import ForkingTCPServer as ForkingTCPServer
from ._compat import ForkingUDPServer as ForkingUDPServer
from ._compat import ForkingUnixDatagramServer as ForkingUnixDatagramServer
from ._compat import ForkingUnixStreamServer as ForkingUnixStreamServer
from ._compat import ThreadingTCPServer as ThreadingTCPServer
from ._compat import ThreadingUDPServer as ThreadingUDPServer
from ._compat import ThreadingUnixDatagramServer as ThreadingUnixDatagramServer
from ._compat import ThreadingUnixStreamServer as ThreadingUnixStreamServer
from ._datagram import UDPServer as UDPServer
from ._datagram import UnixDatagramServer as UnixDatagramServer
from ._datagram_handler import DatagramRequestHandler as DatagramRequestHandler
from ._exceptions import BrokenConnectionError as BrokenConnectionError
from ._exceptions import InputBudgetError as InputBudgetError
from ._exceptions import LineTooLongError as LineTooLongError
from ._exceptions import PeerTimeoutError as PeerTimeoutError
from ._exceptions import ProxyProtocolError as ProxyProtocolError
from ._exceptions import WorkerStartupError as WorkerStartupError
from ._files import AsyncReader as AsyncReader
from ._files import AsyncWriter as AsyncWriter
from ._handlers import BaseRequestHandler as BaseRequestHandler
from ._handlers import EchoHandler as EchoHandler
from ._handlers import StreamRequestHandler as StreamRequestHandler
from ._handlers import SyncStreamRequestHandler as SyncStreamRequestHandler
from ._http import HTTPServer as HTTPServer
from ._http import ThreadingHTTPServer as ThreadingHTTPServer
from ._policy import Concurrency as Concurrency
from ._policy import ForkingMixIn as ForkingMixIn
from ._policy import NurseryMixIn as NurseryMixIn
from ._policy import ProcessPoolMixIn as ProcessPoolMixIn
from ._policy import ThreadingMixIn as ThreadingMixIn
from ._server import BaseServer as BaseServer
from ._serversocket import ServerSocket as ServerSocket
from ._stats import Statistics as Statistics
from ._stats import WorkerStatistics as WorkerStatistics
from ._stream import TCPServer as TCPServer
from ._stream import UnixStreamServer as UnixStreamServer
from ._streamsocket import StreamSocket as StreamSocket
from ._syncfiles import SyncReader as SyncReader
from ._syncfiles import SyncWriter as SyncWriter

__version__ = "0.1.0.dev0"

__all__ = [
    "AsyncReader",
    "AsyncWriter",
    "BaseRequestHandler",
    "BaseServer",
    "BrokenConnectionError",
    "Concurrency",
    "DatagramRequestHandler",
    "EchoHandler",
    "ForkingMixIn",
    "ForkingTCPServer",
    "ForkingUDPServer",
    "ForkingUnixDatagramServer",
    "ForkingUnixStreamServer",
    "HTTPServer",
    "InputBudgetError",
    "LineTooLongError",
    "NurseryMixIn",
    "PeerTimeoutError",
    "ProcessPoolMixIn",
    "ProxyProtocolError",
    "ServerSocket",
    "SocketServer",
    "Statistics",
    "StreamRequestHandler",
    "StreamSocket",
    "SyncReader",
    "SyncStreamRequestHandler",
    "SyncWriter",
    "TCPServer",
    "ThreadingHTTPServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "ThreadingUnixDatagramServer",
    "ThreadingUnixStreamServer",
    "UDPServer",
    "UnixDatagramServer",
    "UnixStreamServer",
    "WorkerStartupError",
    "WorkerStatistics",
    "listen_fds",
]
