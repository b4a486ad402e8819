"""`serving`: run a server for the length of an ``async with`` block.

The block is the test; the server serves in a nursery around it. Leaving the block
cancels ``serve_forever``, as cancelling any scope would, and waits until it has returned,
so every handler has ended and every connection the server accepted is closed. Then the
leak check (`trioserve.testing._leaks`) looks for anything the block left running or open.

Exceptions come out as they were raised, never wrapped in an `ExceptionGroup`: a failing
``assert`` in the block is an `AssertionError`, as ``pytest.raises`` expects, and a server
that crashes raises its own error. To get there, nothing is allowed to escape into the
nursery: the block's exception is held while the server is cancelled and raised again
once the nursery has closed, and the task running ``serve_forever`` catches the server's
exception, cancels the block and hands the exception over the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from .._server import BaseServer
from ._leaks import ResourceSnapshot

__all__ = ["serving"]

ServerT = TypeVar("ServerT", bound=BaseServer)


class _Status(trio.TaskStatus[None]):
    """Passes ``started()`` on to *inner*, and remembers that it was called."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self.inner = inner
        self.called = False

    def started(self, value: None = None) -> None:
        self.called = True
        self.inner.started()


async def _serve(
    server: BaseServer,
    crashed: list[Exception],
    cancel_block: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    status = _Status(task_status)
    try:
        await server.serve_forever(task_status=status)
    except Exception as exc:
        if not status.called:
            raise  # nursery.start raises it in the caller: the server never served
        crashed.append(exc)
        cancel_block.cancel()


@asynccontextmanager
async def serving(server: ServerT, *, check_leaks: bool = True) -> AsyncIterator[ServerT]:
    """Serve *server* for the length of an ``async with`` block; stop it by cancellation.

    ::

        with TCPServer(("127.0.0.1", 0), Handler) as server:
            async with serving(server):
                async with await connect(server) as client:
                    ...

    The block starts once the server accepts requests. Leaving it cancels
    ``serve_forever`` and waits for it to return; the server itself stays open (close it
    with ``server_close()`` or its own ``with`` block), so it can be served again.

    Args:
      server: the server to serve; it must not be serving already.
      check_leaks: after a block that ended without an exception, check that nothing it
        started is left (see Resource handling). False skips the check.

    Returns:
      An async context manager that yields *server*.

    Raises:
      AssertionError: the leak check found something left behind; the message names
        each file descriptor, task and thread.
      Exception: whatever ``serve_forever`` raised (before or while serving), and
        whatever the block raised, unwrapped. When the server crashes, the block is
        cancelled and the server's exception is raised.

    Resource handling:
      When the block ends, the server has ended every handler task, waited for every
      worker thread of its sync handlers and closed every connection it accepted. The
      leak check then fails on file descriptors opened during the block and still open
      (except the client ends of connections to this server, which are the test's to
      close, so a test can still read the server's end-of-file from them), on Trio tasks
      started in the subtree of the task that entered the block and still running, and on
      threads started or woken during the block that are still busy (Trio's idle cached
      worker threads do not count). File descriptors are checked where the system lists
      them in ``/proc/self/fd``, as on Linux; elsewhere that part is skipped.
    """
    before = ResourceSnapshot.take() if check_leaks else None
    crashed: list[Exception] = []
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(_serve, server, crashed, nursery.cancel_scope)
        except BaseException as exc:
            error = exc
        else:
            try:
                yield server
            except GeneratorExit:
                raise
            except BaseException as exc:
                error = exc
        nursery.cancel_scope.cancel()
    if crashed:
        raise crashed[0]
    if error is not None:
        raise error
    if before is not None:
        leaks = before.leaks_since([server.server_address])
        if leaks:
            raise AssertionError(f"serving({server!r}) left behind: " + "; ".join(leaks))
