"""The worker side of the process pool: what runs inside each worker process.

A worker is a fresh Python interpreter started by the pool (`trioserve._pool`) with
two file descriptors of its parent's: the server's listening socket, and one end of a
*control* socket pair whose other end the parent keeps. Nothing else is inherited, so a
worker holds no copy of its siblings' control sockets, and nothing of the parent's Trio
run: a worker is never a fork of a process with a live event loop.

The life of a worker
--------------------
1. Read two frames from the control socket: the *setup* (plain data: the parent's
   ``sys.path``, where its ``__main__`` came from, its logging levels), then the pickled
   `WorkerSpec` (server class, handler class, options, attributes). The setup comes first
   so that logging already reaches the parent, and ``sys.path`` is the parent's, when the
   spec is unpickled and the user's modules are imported.
2. Rebuild the server around the inherited socket with the server class's own
   ``from_socket``, and copy the parent server's public attributes onto it.
3. Serve with the nursery policy, as ``serve_forever`` does, in a Trio run of its own,
   and report *ready* to the parent once accepting.
4. Stop when told to: a *stop* frame with a grace period (the parent's ``shutdown``),
   SIGTERM (grace 0), or the control socket reaching end-of-file, which means the parent
   is gone, however it died (the kernel closes its end even after SIGKILL).

A daemon thread reads the control socket with blocking reads and hands what it reads to
the Trio run (``TrioToken.run_sync_soon``). Reading in a thread, not in the Trio loop,
keeps the parent-death watch alive when a handler blocks the loop (a CPU-bound handler, or
one stuck in a blocking call): after end-of-file the thread gives the worker its grace
period plus a margin to finish, then ends the process with ``os._exit``. No worker
outlives its parent by more than that.

Frames written by the worker (ready, failed, log records, a shutdown or a reload asked
for by a handler) are sent with blocking ``sendall`` under a lock, from whichever thread
logs: the Trio thread, a sync handler's worker thread, or the main thread before Trio
starts.

Logging
-------
The worker's root logger has one handler, which sends each record to the parent, where it
is handled by the logger of the same name, so it goes through the parent's logging
configuration (handlers, formats, pytest's ``caplog``). The record keeps the worker's pid
in ``process`` and says ``trioserve-worker-N`` in ``processName``. The worker starts with
the levels the parent's loggers had when the pool started, so records the parent would
drop are not even sent. When the parent cannot be reached, records go to stderr, prefixed
with the worker's pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import runpy
import signal
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Mapping
from typing import Any

import trio

from . import _frames
from ._frames import EXIT_MARGIN, HEADER, FrameError, WorkerSpec, check_size, encode_frame
from ._policy import Nursery, concurrency_limit
from ._server import BaseServer, serve
from ._stats import WorkerStatistics, push_statistics
from ._threads import running_handler_threads

__all__ = ["WorkerRun", "main"]

logger = logging.getLogger("trioserve")

#: The longest grace period an orphaned worker (its parent is gone) gives its handlers.
ORPHAN_GRACE = 10.0

_STDERR_FORMAT = "trioserve worker %(process)d: %(levelname)s %(name)s: %(message)s"


class _Channel:
    """The worker's end of the control socket, used with blocking calls only."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._rfile = sock.makefile("rb")
        self._send_lock = threading.Lock()

    def send(self, *message: Any) -> None:
        """Send one frame; safe from any thread. Raises OSError when the parent is gone."""
        frame = encode_frame(message)
        with self._send_lock:
            self._sock.sendall(frame)

    def receive(self) -> tuple[Any, ...] | None:
        """The next message, or None at end-of-file (the parent is gone)."""
        try:
            header = self._rfile.read(HEADER.size)
            if len(header) < HEADER.size:
                return None
            (size,) = HEADER.unpack(header)
            check_size(size)
            payload = self._rfile.read(size)
        except OSError:
            return None
        if len(payload) < size:
            return None
        return _frames.decode_payload(payload)


# -- logging -------------------------------------------------------------------------------

_PLAIN = (str, int, float, bool, type(None))


class _ForwardingHandler(logging.Handler):
    """Sends each record to the parent; to stderr when the parent cannot be reached."""

    def __init__(self, channel: _Channel, slot: int) -> None:
        super().__init__()
        self._channel = channel
        self._process_name = f"trioserve-worker-{slot}"
        self._fallback = logging.StreamHandler(sys.stderr)
        self._fallback.setFormatter(logging.Formatter(_STDERR_FORMAT))
        self._parent_gone = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self._parent_gone:
            try:
                self._channel.send("log", self._payload(record))
                return
            except OSError:
                self._parent_gone = True
            except Exception:
                self.handleError(record)
                return
        self._fallback.handle(record)

    def _payload(self, record: logging.LogRecord) -> dict[str, Any]:
        payload = dict(record.__dict__)
        payload["msg"] = record.getMessage()
        payload["args"] = None
        if record.exc_info and not record.exc_text:
            payload["exc_text"] = logging.Formatter().formatException(record.exc_info)
        payload["exc_info"] = None
        payload["processName"] = self._process_name
        for key, value in payload.items():
            if not isinstance(value, _PLAIN):
                payload[key] = repr(value)  # an ``extra=`` value that may not pickle
        return payload


def _configure_logging(setup: Mapping[str, Any], channel: _Channel, slot: int) -> None:
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.addHandler(_ForwardingHandler(channel, slot))
    root.setLevel(setup["root_level"])
    for name, level in setup["levels"].items():
        logging.getLogger(name).setLevel(level)
    logging.disable(setup["disable"])


# -- loading the spec ----------------------------------------------------------------------


def _prepare_main(main: tuple[str, str] | None) -> None:
    """Import the parent's ``__main__`` as ``__mp_main__``, as multiprocessing's spawn does.

    So a handler class defined in the script the parent runs can be unpickled here. The
    script's ``if __name__ == "__main__":`` block does not run again.
    """
    if main is None:
        return
    kind, where = main
    module = types.ModuleType("__mp_main__")
    sys.modules["__mp_main__"] = module
    _frames.importing_main = True
    try:
        if kind == "name":
            namespace = runpy.run_module(where, run_name="__mp_main__", alter_sys=True)
        else:
            namespace = runpy.run_path(where, run_name="__mp_main__")
    finally:
        _frames.importing_main = False
    module.__dict__.update(namespace)
    sys.modules["__main__"] = module


def _load_spec(setup: Mapping[str, Any], message: tuple[Any, ...] | None) -> WorkerSpec:
    sys.path[:] = setup["sys_path"]
    _prepare_main(setup["main"])
    if message is None or message[0] != "spec":
        raise FrameError(f"expected the server spec, got {message!r}")
    spec = pickle.loads(message[1])
    if not isinstance(spec, WorkerSpec):
        raise FrameError(f"expected a WorkerSpec, got {type(spec).__name__}")
    return spec


# -- serving -------------------------------------------------------------------------------


class WorkerRun:
    """This worker process's run, as the worker sees it; shared with the control thread."""

    def __init__(self, server: BaseServer, channel: _Channel) -> None:
        self.server = server
        self.channel = channel
        self.stopped_from_outside = False
        #: Where requests run: created here, so that a stop before serving is kept.
        self.policy = Nursery(concurrency_limit(server))
        default = server.shutdown_grace if server.block_on_close else 0.0
        self.orphan_grace = ORPHAN_GRACE if default is None else min(default, ORPHAN_GRACE)
        # What the server's reload_workers() does here: the parent reloads the pool.
        server._trioserve_reload_in_parent = self.ask_reload  # type: ignore[attr-defined]

    def ask_reload(self) -> None:
        """Ask the parent to reload the pool (a handler called ``reload_workers()``)."""
        try:
            self.channel.send("reload")
        except OSError:
            logger.warning("cannot ask the parent to reload the workers: it is gone")

    def stop(self, grace: float | None, take_queued: bool = True) -> None:
        """Stop serving; give running handlers *grace* seconds. In the Trio thread.

        *take_queued*: serve the connections queued on the shared listening socket (the
        whole pool stops), or leave them to the workers that go on serving (a reload).
        """
        if not take_queued:
            self.policy.take_queued = False
        if not self.stopped_from_outside:
            self.stopped_from_outside = True
            logger.info(
                "worker pid %d stops accepting; running handlers get %s",
                os.getpid(),
                "all the time they need" if grace is None else f"{grace:.3g} s",
            )
        BaseServer.shutdown(self.server, grace)

    def orphaned(self) -> None:
        logger.warning("the parent process is gone; this worker stops")
        self.stop(self.orphan_grace)

    def _stopping(self, grace: float | None) -> None:
        if not self.stopped_from_outside:
            # A handler called self.server.shutdown(): the whole pool stops.
            self.channel.send("shutdown", grace)

    async def serve(self) -> None:
        """Serve until stopped: the server's own lifecycle, with the nursery policy."""
        ready = _ReadyReporter(self.channel)
        await serve(self.server, self.policy, task_status=ready, on_stop=self._stopping)

    # -- statistics (docs/operations.md): this worker's figures, pushed to the parent.
    async def push_statistics(self) -> None:
        await push_statistics(self._figures, self._send_figures)

    def push_last_statistics(self) -> None:
        with contextlib.suppress(OSError):
            self._send_figures(self._figures())

    def _figures(self) -> WorkerStatistics:
        counters = self.server._trioserve.counters
        return counters.figures(os.getpid(), running_handler_threads(self.server))

    def _send_figures(self, figures: WorkerStatistics) -> None:
        self.channel.send("stats", figures)

    # -- end of statistics

    async def stop_on_signals(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()  # only now may the worker say it is ready
            async for _ in signals:
                # This worker alone stops, and the pool replaces it: what is queued on the
                # shared socket is for the workers that serve on.
                self.stop(0.0, take_queued=False)


class _ReadyReporter:
    """A task status that tells the parent the worker accepts requests."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def started(self, value: None = None) -> None:
        self._channel.send("ready")


def _listen_to_parent(worker: WorkerRun, token: trio.lowlevel.TrioToken) -> None:
    """The control thread: deliver the parent's commands; notice when it is gone."""
    while True:
        try:
            message = worker.channel.receive()
        except FrameError:
            message = None
        if message is None:
            break
        if message[0] == "stop":
            try:
                token.run_sync_soon(worker.stop, message[1], message[2])
            except trio.RunFinishedError:
                return
    try:
        token.run_sync_soon(worker.orphaned)
    except trio.RunFinishedError:
        return
    time.sleep(worker.orphan_grace + EXIT_MARGIN)
    os._exit(1)  # the run did not end in time: a handler blocks it


async def _run(worker: WorkerRun) -> None:
    token = trio.lowlevel.current_trio_token()
    thread = threading.Thread(
        target=_listen_to_parent, args=(worker, token), name="trioserve-control", daemon=True
    )
    thread.start()
    async with trio.open_nursery() as nursery:
        # Installed before the worker reports ready: SIGTERM from then on is a stop, never
        # the default action that kills the process mid-request.
        await nursery.start(worker.stop_on_signals)
        nursery.start_soon(worker.push_statistics)  # statistics
        await worker.serve()
        worker.push_last_statistics()  # statistics: the last figures, as it stops
        nursery.cancel_scope.cancel()


def _serve(channel: _Channel, listen_fd: int, slot: int) -> int:
    message = channel.receive()
    if message is None or message[0] != "setup":
        return 1
    setup: Mapping[str, Any] = message[1]
    _configure_logging(setup, channel, slot)
    try:
        spec = _load_spec(setup, channel.receive())
    except BaseException:
        channel.send("failed", _describe_current_error("cannot load the server"), True)
        return 1
    try:
        sock = socket.socket(fileno=listen_fd)
        sock.set_inheritable(False)
        server_class: Any = spec.server_class
        server: BaseServer = server_class.from_socket(sock, spec.handler_class, **spec.options)
        for name, value in spec.attributes.items():
            setattr(server, name, value)
    except BaseException:
        channel.send("failed", _describe_current_error("cannot rebuild the server"), False)
        return 1
    with server:
        try:
            trio.run(_run, WorkerRun(server, channel))
        except BaseException:
            logger.critical("worker stopped by an error", exc_info=True)
            return 1
    return 0


def _describe_current_error(what: str) -> str:
    return f"{what}:\n{traceback.format_exc()}".rstrip()


def main() -> None:
    """The entry point of a worker process: ``main()`` with argv ``CONTROL_FD LISTEN_FD SLOT``.

    Not for direct use: the pool starts workers with it.
    """
    control_fd, listen_fd, slot = (int(arg) for arg in sys.argv[1:4])
    os.set_inheritable(control_fd, False)
    control = socket.socket(fileno=control_fd)
    control.setblocking(True)
    status = 1
    try:
        status = _serve(_Channel(control), listen_fd, slot)
    except OSError as exc:  # the parent went away during start-up
        logger.error("worker pid %d cannot reach its parent: %s", os.getpid(), exc)
    finally:
        logging.shutdown()
        control.close()
    sys.exit(status)
