"""socketserver's combined class names: a transport with a concurrency policy.

Each is one line: the policy comes from the mix-in, whatever the order of the bases (see
`trioserve._policy`), so these exist for the names, and for ``isinstance`` checks that
ported code makes.
"""

from __future__ import annotations

from ._datagram import UDPServer, UnixDatagramServer
from ._policy import NurseryMixIn, ProcessPoolMixIn
from ._stream import TCPServer, UnixStreamServer

__all__ = [
    "ForkingTCPServer",
    "ForkingUDPServer",
    "ForkingUnixDatagramServer",
    "ForkingUnixStreamServer",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "ThreadingUnixDatagramServer",
    "ThreadingUnixStreamServer",
]


class ThreadingTCPServer(NurseryMixIn, TCPServer):
    """A TCP server handling each connection in its own task."""


class ThreadingUnixStreamServer(NurseryMixIn, UnixStreamServer):
    """A Unix stream server handling each connection in its own task."""


class ThreadingUDPServer(NurseryMixIn, UDPServer):
    """A UDP server handling each datagram in its own task (``max_concurrent_datagrams``)."""


class ThreadingUnixDatagramServer(NurseryMixIn, UnixDatagramServer):
    """A Unix datagram server handling each datagram in its own task."""


class ForkingTCPServer(ProcessPoolMixIn, TCPServer):
    """A TCP server serving from a pool of worker processes (``max_children``)."""


class ForkingUnixStreamServer(ProcessPoolMixIn, UnixStreamServer):
    """A Unix stream server serving from a pool of worker processes (``max_children``)."""


class ForkingUDPServer(ProcessPoolMixIn, UDPServer):
    """A UDP server serving from a pool of worker processes (``max_children``)."""


class ForkingUnixDatagramServer(ProcessPoolMixIn, UnixDatagramServer):
    """A Unix datagram server serving from a pool of worker processes (``max_children``)."""
