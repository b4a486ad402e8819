"""socketserver's combined class names: a transport with a concurrency policy.

Each is one line: the policy comes from the mix-in, whatever the order of the bases (see
`trioserve._policy`), so these exist for the names, and for ``isinstance`` checks that
ported code makes.
"""

from __future__ import annotations

from ._policy import NurseryMixIn
from ._stream import TCPServer, UnixStreamServer

__all__ = ["ThreadingTCPServer", "ThreadingUnixStreamServer"]


class ThreadingTCPServer(NurseryMixIn, TCPServer):
    """A TCP server handling each connection in its own task."""


class ThreadingUnixStreamServer(NurseryMixIn, UnixStreamServer):
    """A Unix stream server handling each connection in its own task."""
