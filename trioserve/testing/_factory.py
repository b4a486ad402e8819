"""`ServerFactory`: servers on ephemeral addresses that live until the end of a test.

This is the engine of the ``trioserve_server_factory`` fixture
(`trioserve.testing.pytest_plugin`). The fixture owns a nursery; each call of the factory
builds a server on a fresh address and starts, in that nursery, a task that serves it
inside `~trioserve.testing.serving` until the fixture stops it, newest first, by
cancellation.

The leak check is one check for all the servers of a test, not one per server: a test
with two servers holds connections to both, and what one server's check would see of the
other (its listening socket, its connections) is not a leak. So the snapshot is taken when
the first server is made, and compared once every server is stopped and closed; the
client ends of connections to any of them are the test's own, as in ``serving``.

A failure at the end of a test (a leak, or a server that crashed while the test ran) is
kept and raised by `ServerFactory.check` once every server is stopped: it reaches pytest
as itself, from the fixture's teardown.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, TypeVar, final, overload

import trio

from .._binding import SocketServer
from .._compat import ThreadingTCPServer
from ._handlers import AnyHandlerClass
from ._leaks import ResourceSnapshot
from ._serving import serving

__all__ = ["ServerFactory"]

SocketServerT = TypeVar("SocketServerT", bound=SocketServer)


@final
class _Served:
    """One server the factory made, and the means to stop it."""

    def __init__(self, server: SocketServer) -> None:
        self.server = server
        self.stop = trio.Event()
        self.done = trio.Event()


@final
class ServerFactory:
    """Make servers that serve until the end of the test; what the fixture gives a test.

    ::

        async def test_upper(trioserve_server_factory: ServerFactory) -> None:
            server = await trioserve_server_factory(UpperHandler)
            async with await connect(server) as client:
                ...

    Args:
      nursery: where the servers serve; it must stay open until `stop_all` returns.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._task = trio.lowlevel.current_task()
        self._before: ResourceSnapshot | None = None
        self._check_leaks = True
        self._addresses: list[Any] = []
        self._names: list[str] = []
        self._served: list[_Served] = []
        self._errors: list[Exception] = []
        self._directories: list[tempfile.TemporaryDirectory[str]] = []

    @overload
    async def __call__(
        self,
        handler_class: AnyHandlerClass,
        *,
        address: Any = None,
        check_leaks: bool = True,
        **options: Any,
    ) -> ThreadingTCPServer: ...

    @overload
    async def __call__(
        self,
        handler_class: AnyHandlerClass,
        server_class: type[SocketServerT],
        *,
        address: Any = None,
        check_leaks: bool = True,
        **options: Any,
    ) -> SocketServerT: ...

    async def __call__(
        self,
        handler_class: AnyHandlerClass,
        server_class: type[SocketServer] = ThreadingTCPServer,
        *,
        address: Any = None,
        check_leaks: bool = True,
        **options: Any,
    ) -> SocketServer:
        """Build a server for *handler_class* and return it once it is serving.

        Args:
          handler_class: the handler class the server runs.
          server_class: any socket server class: TCP, UDP or Unix, with any concurrency
            policy. The default is `~trioserve.ThreadingTCPServer`.
          address: where to bind. By default an ephemeral port on the loopback address of
            the class's family (``127.0.0.1``, or ``::1`` for an IPv6 class), or, for Unix
            servers, a socket file in a temporary directory removed at the end of the test.
          check_leaks: check, at the end of the test, that the servers left nothing
            behind (as `~trioserve.testing.serving` does, for all of the test's servers
            at once); False for any server turns the check off for the test.
          **options: server options, passed to the constructor (``max_connections=4``).

        Returns:
          The server, serving. Its ``server_address`` is the real address.

        Raises:
          Exception: whatever the constructor or ``serve_forever`` raised before serving.
        """
        self._check_leaks = self._check_leaks and check_leaks
        if self._before is None and self._check_leaks:
            self._before = ResourceSnapshot.take(self._task)
        if address is None:
            address = self._fresh_address(server_class)
        server = server_class(address, handler_class, **options)
        served = _Served(server)
        try:
            await self._nursery.start(self._serve, served)
        except BaseException:
            server.server_close()
            raise
        self._served.append(served)
        self._addresses.append(server.server_address)
        self._names.append(repr(server))
        return server

    def _fresh_address(self, server_class: type[SocketServer]) -> Any:
        family = server_class.address_family
        if family == socket.AF_UNIX:
            directory = tempfile.TemporaryDirectory(prefix="trioserve-")
            self._directories.append(directory)
            return os.path.join(directory.name, "server.sock")
        return ("::1" if family == socket.AF_INET6 else "127.0.0.1", 0)

    async def _serve(
        self,
        served: _Served,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        try:
            async with serving(served.server, check_leaks=False):
                task_status.started()
                started = True
                await served.stop.wait()
        except Exception as exc:
            if not started:
                raise
            self._errors.append(exc)
        finally:
            served.server.server_close()
            served.done.set()

    async def stop_all(self) -> None:
        """Stop every server, newest first, each by cancellation; close it; check for leaks.

        Failures are kept for `check`.
        """
        while self._served:
            served = self._served.pop()
            served.stop.set()
            await served.done.wait()
        while self._directories:
            self._directories.pop().cleanup()
        if self._before is not None and self._check_leaks:
            leaks = self._before.leaks_since(self._addresses)
            if leaks:
                servers = ", ".join(self._names)
                self._errors.append(
                    AssertionError(
                        f"the test's servers ({servers}) left behind: " + "; ".join(leaks)
                    )
                )

    def check(self) -> None:
        """Raise the first failure of a server that has stopped (a leak or a crash).

        Raises:
          Exception: that failure.
        """
        if self._errors:
            raise self._errors[0]
