"""trioserve's pytest plugin: fixtures that serve a handler for the length of a test.

pytest loads this plugin in every session where trioserve is installed (the ``pytest11``
entry point named ``trioserve``), so it only adds fixtures, all named ``trioserve_...``:
no hooks, nothing autouse, no change to any test that does not ask for them. The fixtures
are async, so they need pytest-trio (with ``trio_mode = true``, or tests marked
``@pytest.mark.trio``).

``trioserve_server_factory``
    A `~trioserve.testing.ServerFactory`: ``await trioserve_server_factory(Handler)``
    returns a `~trioserve.ThreadingTCPServer` serving ``Handler`` on an ephemeral
    loopback port; pass a server class for another transport or policy, and server
    options as keywords. Every server it made is stopped by cancellation at the end of the
    test, checked for leaks and closed.

``trioserve_server``
    One server, for tests that need just one: the ``trioserve_handler`` fixture gives the
    handler class (override it in a module or ``conftest.py``, or parametrize it), and
    ``trioserve_server_class`` the server class (default `~trioserve.ThreadingTCPServer`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from .._binding import SocketServer
from .._compat import ThreadingTCPServer
from ._factory import ServerFactory
from ._handlers import AnyHandlerClass

__all__ = [
    "trioserve_handler",
    "trioserve_server",
    "trioserve_server_class",
    "trioserve_server_factory",
]


@pytest.fixture
async def trioserve_server_factory() -> AsyncIterator[ServerFactory]:
    """Make servers that serve until the end of the test (see `ServerFactory`)."""
    async with trio.open_nursery() as nursery:
        factory = ServerFactory(nursery)
        try:
            yield factory
        finally:
            await factory.stop_all()
    factory.check()


@pytest.fixture
def trioserve_handler() -> AnyHandlerClass:
    """The handler class ``trioserve_server`` serves. Override this fixture to set it."""
    pytest.fail(
        "the trioserve_server fixture needs a handler class: define a trioserve_handler "
        "fixture that returns it (in the test module or conftest.py), or parametrize "
        "trioserve_handler",
        pytrace=False,
    )


@pytest.fixture
def trioserve_server_class() -> type[SocketServer]:
    """The server class ``trioserve_server`` builds: `~trioserve.ThreadingTCPServer`."""
    return ThreadingTCPServer


@pytest.fixture
async def trioserve_server(
    trioserve_server_factory: ServerFactory,
    trioserve_handler: AnyHandlerClass,
    trioserve_server_class: type[SocketServer],
) -> SocketServer:
    """A server for ``trioserve_handler`` on an ephemeral address, serving for the test."""
    return await trioserve_server_factory(trioserve_handler, trioserve_server_class)
