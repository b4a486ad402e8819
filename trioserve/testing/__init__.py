"""Helpers for testing trioserve handlers and servers, in the style of `trio.testing`.

* `serving`: serve a server for the length of an ``async with`` block, stop it by
  cancellation, and check that nothing was left behind.
* `connect` and `exchange_datagram`: a client for any stream or datagram server.
* `run_handler` and `run_datagram_handler`: run one handler with no server at all.

The pytest plugin (`trioserve.testing.pytest_plugin`, loaded automatically) adds the
``trioserve_server_factory`` and ``trioserve_server`` fixtures.
"""

from ._clients import connect as connect
from ._clients import exchange_datagram as exchange_datagram
from ._factory import ServerFactory as ServerFactory
from ._handlers import run_datagram_handler as run_datagram_handler
from ._handlers import run_handler as run_handler
from ._serving import serving as serving

__all__ = [
    "ServerFactory",
    "connect",
    "exchange_datagram",
    "run_datagram_handler",
    "run_handler",
    "serving",
]
