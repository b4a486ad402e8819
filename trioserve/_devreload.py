"""``--reload``: restart the command's server when its code changes, for development.

An optional extra (``pip install trioserve[reload]``, which brings ``watchfiles``), and
never on by default.

How it works
------------
The command's process becomes a *supervisor*. It binds the listening socket itself (and
the metrics socket, with ``--metrics``) and keeps them open for its whole life, and serves
in a *server process*: a fresh interpreter that runs the command with the same arguments
on the inherited socket (``from_fd``, as a pool worker does), so the handler's module is
imported anew each time. When a ``.py`` file under the handler module's directory
changes, the supervisor starts a new server process, waits until it serves, and only then
stops the old one with SIGTERM, which gives its requests in flight the usual ``--grace``.

So a client never sees a refused connection: the listening socket never closes, and a
connection that arrives between two server processes waits in the kernel's queue until
one accepts it. A new server process that fails (a syntax error, an import error) is
reported and the old one keeps serving; saving the file again tries again. Server
processes run with ``python -B``, so a file saved twice within a second, at the same
size, is never served from a stale ``.pyc``.

Why not with ``--workers``: a pool already supervises processes of its own, which would
then be restarted by two supervisors with two ideas of when a process is ready; reload is
for development, where one process is what one wants to debug. The command refuses the
two together.

Stopping: SIGINT or SIGTERM to the supervisor stops the server process with its grace
(the server process is in a session of its own, so the terminal's Ctrl-C reaches the
supervisor only), and the supervisor exits with the server process's status. A server
process whose supervisor dies without that (SIGKILL) sees its standard input, a pipe
from the supervisor, reach end-of-file, and stops itself with the same grace
(`watch_lifeline`).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio

from ._exceptions import MissingExtraError

__all__ = [
    "ServerProcess",
    "require_watchfiles",
    "supervise",
    "watch_lifeline",
]

logger = logging.getLogger("trioserve")

#: How long a new server process may take to say it serves.
START_TIMEOUT: Final = 60.0
#: Beyond its grace, how long a stopped server process may take to exit before SIGKILL.
EXIT_MARGIN: Final = 5.0
#: What the server process prints once it serves (the command's own announcement).
READY_PREFIX: Final = b"trioserve: serving "

# The server process: the command's own code, on inherited sockets.
_CHILD = "from trioserve._cli import serve_inherited; serve_inherited()"


def require_watchfiles() -> None:
    """Check that ``watchfiles`` is installed (`MissingExtraError` if not)."""
    MissingExtraError.check("watchfiles", "watchfiles", "--reload", "reload")


def _is_python(change: object, path: str) -> bool:
    return path.endswith(".py")


class ServerProcess:
    """One server process, as the supervisor sees it."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.ready = trio.Event()

    async def relay(self) -> None:
        """Copy the process's standard output to ours; set `ready` at its announcement."""
        stdout = self.process.stdout
        assert stdout is not None
        pending = b""
        async with stdout:
            while chunk := await stdout.receive_some(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    sys.stdout.buffer.write(line + b"\n")
                    sys.stdout.flush()
                    if line.startswith(READY_PREFIX):
                        self.ready.set()

    async def stop(self, grace: float | None) -> int:
        """SIGTERM (a graceful stop), then SIGKILL after the grace; reap it; its status."""
        process = self.process
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            limit = math.inf if grace is None else grace + EXIT_MARGIN
            with trio.move_on_after(limit):
                await process.wait()
            if process.returncode is None:
                logger.warning(
                    "server process pid %d did not stop in time; killing it", process.pid
                )
                process.kill()
        status = await process.wait()
        if process.stdin is not None:
            await process.stdin.aclose()
        return status


def watch_lifeline(grace: float | None) -> None:
    """In a server process: stop gracefully when the supervisor is gone, however it died.

    The supervisor holds the write end of this process's standard input and never writes:
    end-of-file means it has exited (the kernel closes its end even after SIGKILL). Then
    this process SIGTERMs itself (a graceful stop), and exits anyway *grace* seconds plus
    a margin later. Runs in a daemon thread.
    """

    def watch() -> None:
        try:
            while os.read(0, 65536):  # the raw descriptor: no lock to hold at exit
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep((10.0 if grace is None else grace) + EXIT_MARGIN)
        os._exit(1)

    threading.Thread(target=watch, name="trioserve-lifeline", daemon=True).start()


async def _start(argv: Sequence[str], fds: Sequence[int], nursery: trio.Nursery) -> ServerProcess:
    process = await trio.lowlevel.open_process(
        # -B: no bytecode written for the user's modules, so a file saved twice within a
        # second, at the same size, is never served from a stale .pyc.
        [sys.executable, "-B", "-c", _CHILD, ",".join(str(fd) for fd in fds), *argv],
        pass_fds=tuple(fds),
        stdin=subprocess.PIPE,  # the lifeline (`watch_lifeline`): kept open, never written
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    server = ServerProcess(process)
    nursery.start_soon(server.relay)
    return server


async def _wait_started(server: ServerProcess) -> bool:
    """Wait until *server* serves (True) or exits, or `START_TIMEOUT` passes (False)."""
    with trio.move_on_after(START_TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def exited() -> None:
                await server.process.wait()
                nursery.cancel_scope.cancel()

            async def ready() -> None:
                await server.ready.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(exited)
            nursery.start_soon(ready)
    return server.ready.is_set() and server.process.returncode is None


async def supervise(
    argv: Sequence[str],
    sockets: Sequence[socket.socket],
    watch: Path,
    grace: float | None,
) -> int:
    """Serve the command *argv* in a server process on *sockets*; restart it on changes.

    Args:
      argv: the command's arguments, given to each server process unchanged.
      sockets: the bound listening sockets (the server's, then the metrics', if any),
        kept open here and inherited by each server process.
      watch: the directory whose ``.py`` files are watched.
      grace: the server's ``--grace``, for stopping a server process.

    Returns:
      The last server process's exit status (0 after a graceful stop).

    Resource handling:
      When this returns, no server process is left; *sockets* stay open (the caller's).
    """
    from watchfiles import awatch

    fds = [sock.fileno() for sock in sockets]
    for fd in fds:
        os.set_inheritable(fd, True)
    status = 0
    send_changes, changes = trio.open_memory_channel[set[tuple[Any, str]]](math.inf)
    stop_watching = trio.Event()

    async def watch_files() -> None:
        # Started before the first server process, so the watch is in place before
        # anyone can see the server serve (and change a file because of it).
        async with send_changes:
            async for batch in awatch(
                watch, watch_filter=_is_python, stop_event=stop_watching, debounce=200
            ):
                await send_changes.send(batch)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_files)
            current = await _start(argv, fds, nursery)
            live = [current]

            async def on_signals() -> None:
                async for signum in signals:
                    logger.info("%s: stopping the server process", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signals)
            try:
                if not await _wait_started(current):
                    status = 1
                    return status
                async for batch in changes:
                    names = ", ".join(sorted({Path(path).name for _, path in batch}))
                    logger.info("changed: %s; starting a new server process", names)
                    new = await _start(argv, fds, nursery)
                    live.append(new)
                    if await _wait_started(new):
                        old, current = current, new
                        await old.stop(grace)
                    else:
                        logger.error(
                            "the new server process failed to start; the old one keeps "
                            "serving (save the file again to retry)"
                        )
                        await new.stop(0.0)
                    live = [each for each in live if each.process.returncode is None]
            finally:
                stop_watching.set()
                with trio.CancelScope(shield=True):
                    for each in live:
                        ended = await each.stop(grace if each is current else 0.0)
                        if each is current and status == 0:
                            status = ended if ended >= 0 else 128 - ended
                nursery.cancel_scope.cancel()
    return status
