"""The process pool: start worker processes, supervise them, stop them.

The `~trioserve._policy.ProcessPool` policy serves with `serve_pool`: nothing else
imports this module. The parent has bound and activated the socket in the constructor,
as for any server; `serve_pool` then starts ``max_children`` worker processes, each a
fresh interpreter running `trioserve._worker`, hands each the listening socket, and
supervises them until it is stopped. Each worker rebuilds the server around that socket
and serves it with the nursery policy, so one worker serves many requests at once, with
async and sync handlers alike. The two sides talk in frames (`trioserve._frames`).

Names: a `WorkerProcess` is a worker as the parent sees it (its process, its control
stream, its state); the worker's own side is `trioserve._worker.WorkerRun`.

Why these choices
-----------------
*How workers start.* ``subprocess`` (through `trio.lowlevel.open_process`) running a small
entry point, not ``multiprocessing``. The listening socket and the control socket reach
the child with ``pass_fds`` (no fd-passing thread, unlike multiprocessing's socket
pickling), the parent waits for each child with `trio.Process.wait` (a pidfd on Linux:
nothing polls, and only our own children are reaped, never ``waitpid(-1)``), and the
child starts in a new session (``start_new_session``), so the terminal's Ctrl-C reaches
the parent only: the parent then stops the workers itself, with their grace period. That
is hypercorn's "ignore SIGINT around the spawn" done by the kernel, with no window in
which the parent's own SIGINT disposition is changed (Trio spawns from a thread, where it
could not be). What multiprocessing's spawn does for ``__main__`` is done here too: a
handler defined in the script being run is importable in the worker.

*How connections reach workers.* Every worker accepts on the one listening socket it
inherits. The kernel queues connections once, and whichever worker is free takes the next
one: a busy worker takes fewer. With ``SO_REUSEPORT`` each worker would have a queue of
its own, filled by a hash of the peer's address whatever the worker is doing, and the
connections queued for a worker that dies are reset; passing each accepted fd from the
parent puts one process (and one core) in the path of every connection. The table in
``docs/process-pool.md`` measures the first two side by side (``bench/pool_cpu.py``).
Datagram servers need nothing more: the pool itself never listens or accepts, and each
worker receives on the one bound socket, where the kernel queues each datagram once for
whichever worker reads it first.

What is sent
------------
A worker gets a `~trioserve._frames.WorkerSpec`: the server class, the handler class,
the value of every constructor option, and the server's other public instance attributes
(names without a leading underscore), all pickled. Classes are pickled by reference, so
they must be importable in a fresh interpreter: that is checked here before any worker
starts, and what fails is named in a `TypeError`. A worker that still cannot load the
spec ends ``serve_forever`` at once with `WorkerStartupError`, rather than being retried.

Supervision
-----------
Workers come in *generations*: the ``max_children`` workers ``serve_forever`` starts are
the first, and each reload starts the next. One task per slot of a generation starts a
worker, waits until it reports *ready*, then waits for it to exit. A worker that exits
while the pool serves (an exception in the loop, ``os._exit``, SIGKILL) is logged and
replaced at once; one that keeps dying within a second of starting is replaced after a
backoff that doubles up to a few seconds. A worker that fails before it is ready (its spec
does not load, ``from_socket`` raises, it exits, it is silent for a minute) is a start-up
failure: retried after the same backoff, until several in a row make ``serve_forever``
raise `WorkerStartupError` with the last worker's error. A generation *retires* when its
workers are to stop (a reload replaced it, or the pool stops): its slots replace nobody.

Reloading
---------
``reload_workers()`` (or SIGHUP) asks for a new generation, as gunicorn's HUP does: the
spec is packed again (the classes by reference, so the parent imports nothing again, and
the server's public attributes as they are now), a new generation of ``max_children``
workers starts *on trial*, and once every one of them is ready the old generation retires
with the server's default grace (``shutdown_grace``). Each old worker stops accepting at
once, finishes what it had accepted, and exits; the reload is over when all of them have
been reaped. While the two generations overlap, both accept on the one listening socket.
The kernel's queue belongs to that socket, not to a worker, and the parent holds it open
throughout: a connection no worker has accepted yet waits for whichever accepts next, and
one an old worker has accepted is that worker's to finish, within the grace. So nothing is
refused, and nothing is reset (unless a handler outlasts the grace).

A generation on trial that fails to start (a spec that does not load is fatal at once, as
at ``serve_forever``; other start-up failures after the usual retries) fails the reload,
not the pool: it retires (those of its workers already serving get the grace too), the
old generation never stopped, and the error is logged and handed to a caller waiting in
another thread. Requests for reloads go through a channel from the policy, and are taken
one reload at a time: every request waiting when a reload begins is answered by that
reload, so a burst of SIGHUPs makes one reload, not one each.

Stopping
--------
``shutdown(grace)`` cancels the pool's accept scope, as it does for any server; the pool
then sends each worker a *stop* with that grace: the worker stops accepting and cancels
its handlers after ``grace`` seconds. A worker still alive ``grace`` plus a margin later
gets SIGTERM, then SIGKILL. Cancelling ``serve_forever`` does the same with a grace of 0,
inside a shielded, bounded cleanup, so when ``serve_forever`` returns or raises every
worker has exited and been reaped. SIGTERM to the parent, while it serves in the main
thread and nobody else handles SIGTERM, is a ``shutdown()`` (SIGHUP, likewise, is a
``reload_workers()``); Ctrl-C is ``KeyboardInterrupt``, that is, cancellation. If the
parent dies without any of this (SIGKILL), each worker sees its control socket close and
stops on its own.
"""

from __future__ import annotations

import enum
import importlib.util
import io
import logging
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import trio

from . import _frames, _options
from ._exceptions import WorkerStartupError
from ._frames import EXIT_MARGIN, FrameBuffer, FrameError, WorkerSpec, encode_frame
from ._handlers import handler_type

if TYPE_CHECKING:
    from ._serving import Serving

__all__ = ["WorkerProcess", "serve_pool"]

logger = logging.getLogger("trioserve")

#: How long a worker may take to report that it serves.
START_TIMEOUT = 60.0
#: After SIGTERM, how long a worker may take to exit before SIGKILL.
KILL_TIMEOUT = 2.0
#: The first backoff after a worker failed; it doubles with each failure in a row.
BACKOFF_FIRST = 0.1
#: The longest backoff.
BACKOFF_MAX = 5.0
#: How many start-up failures in a row make ``serve_forever`` give up.
MAX_STARTUP_FAILURES = 5
#: A worker that dies sooner than this after it was ready counts as a failure in a row.
QUICK_DEATH = 1.0
#: How long to read the last frames of a worker that exited (logs, its last error).
_DRAIN_TIMEOUT = 1.0

# Attributes the worker's server gets from ``from_socket`` itself, or that are the pool's.
_NOT_SENT = frozenset(
    {"server_address", "RequestHandlerClass", "socket", "address_family", "worker_pids"}
)

# A worker imports trioserve from where the parent did, before it gets the parent's sys.path.
_BOOTSTRAP = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); "
    "from trioserve._worker import main; main()"
)


# -- what a worker is sent -------------------------------------------------------------------


class _ReferencePickler(pickle.Pickler):
    """A pickler that records the module of every class and function pickled by name."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.modules: dict[str, object] = {}

    def reducer_override(self, obj: object) -> Any:
        if isinstance(obj, type) or callable(obj):
            module = getattr(obj, "__module__", None)
            if isinstance(module, str):
                self.modules.setdefault(module, obj)
        return NotImplemented


def _dumps(value: object) -> tuple[bytes, dict[str, object]]:
    buffer = io.BytesIO()
    pickler = _ReferencePickler(buffer)
    pickler.dump(value)
    return buffer.getvalue(), pickler.modules


def _main_reference() -> tuple[str, str] | None:
    """How a worker can import this process's ``__main__``; None if it cannot."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name != "__main__" and not name.endswith(".__main__"):
        return ("name", name)
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and Path(path).is_file():
        return ("path", os.path.abspath(path))
    return None


def _check_importable(server_class: type, module: str, example: object) -> None:
    what = getattr(example, "__qualname__", repr(example))
    if module == "__main__":
        if _main_reference() is None:
            raise TypeError(
                f"{server_class.__name__} cannot send {what} to its worker processes: it is "
                "defined in the __main__ of an interactive session or of `python -c`, which "
                "a worker cannot import; define it in a module or a script file"
            )
        return
    loaded = sys.modules.get(module)
    try:
        found = loaded is not None and getattr(loaded, "__spec__", None) is not None
        found = found or importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise TypeError(
            f"{server_class.__name__} cannot send {what} to its worker processes: its module "
            f"{module!r} cannot be imported by a new interpreter; define it in an "
            "importable module"
        )


def _handler_name(handler: object) -> str:
    found = handler_type(handler)
    return found.__qualname__ if found is not None else repr(handler)


def pack_spec(server: Any) -> tuple[bytes, tuple[str, str] | None]:
    """Pickle what a worker needs to rebuild *server*; and where ``__main__`` is, if needed.

    Raises:
      TypeError: something cannot be sent to a worker process: a handler or server class
        that is not importable (defined in a function, or in an interactive
        ``__main__``), or an attribute that does not pickle. The message names it.
    """
    server_class = type(server)
    option_names = _options.collect_options(server_class)
    options = {name: getattr(server, name) for name in option_names}
    attributes = {
        name: value
        for name, value in vars(server).items()
        if not name.startswith("_") and name not in _NOT_SENT and name not in option_names
    }
    parts: dict[str, object] = {
        f"the handler class {_handler_name(server.RequestHandlerClass)}": (
            server.RequestHandlerClass
        ),
        f"the server class {server_class.__qualname__}": server_class,
    }
    parts.update({f"the option {name}={value!r}": value for name, value in options.items()})
    parts.update({f"the server attribute {name!r}": value for name, value in attributes.items()})
    modules: dict[str, object] = {}
    for what, value in parts.items():
        try:
            _, found = _dumps(value)
        except Exception as exc:
            raise TypeError(
                f"{server_class.__name__} cannot send {what} to its worker processes: {exc}. "
                "Handler and server classes must be defined at the top level of a module, "
                "and server attributes must be picklable (each worker gets a copy)"
            ) from exc
        for module, example in found.items():
            modules.setdefault(module, example)
    for module, example in modules.items():
        _check_importable(server_class, module, example)
    spec = WorkerSpec(server_class, server.RequestHandlerClass, options, attributes)
    data, _ = _dumps(spec)
    return data, _main_reference() if "__main__" in modules else None


def _logging_setup() -> dict[str, Any]:
    """The parent's logging levels, for workers to start with."""
    manager = logging.getLogger().manager
    levels = {
        name: each.level
        for name, each in list(manager.loggerDict.items())
        if isinstance(each, logging.Logger) and each.level != logging.NOTSET
    }
    return {
        "root_level": logging.getLogger().level,
        "levels": levels,
        "disable": manager.disable,
    }


def _relog(payload: Mapping[str, Any]) -> None:
    """Hand a worker's log record to the parent's logger of the same name."""
    record = logging.makeLogRecord(dict(payload))
    target = logging.getLogger(record.name)
    if target.isEnabledFor(record.levelno):
        target.handle(record)


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


# -- the pool ------------------------------------------------------------------------------


class _Outcome(enum.Enum):
    STOPPED = "stopped"
    START_FAILED = "start failed"
    DIED = "died"
    DIED_QUICKLY = "died quickly"


#: What a reload request carries: called with the reload's error, or None, once it is over.
ReloadDone = Callable[[Exception | None], object]


@final
class WorkerProcess:
    """One worker process, as the parent sees it."""

    def __init__(self, slot: int, process: trio.Process, stream: trio.SocketStream) -> None:
        self.slot = slot
        self.process = process
        self.stream = stream
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.drained = trio.Event()
        self.ready_at = math.inf
        self.failure: str | None = None
        self.fatal = False

    @property
    def pid(self) -> int:
        return self.process.pid

    async def send(self, *message: Any) -> bool:
        """Send one frame; False if the worker cannot be reached any more."""
        try:
            await self.stream.send_all(encode_frame(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            return False
        return True


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Wait until the first of *waits* returns."""
    async with trio.open_nursery() as nursery:

        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)


@final
class _Generation:
    """The workers started together: by ``serve_forever``, or by one reload.

    One supervising task per slot keeps a worker running in that slot until the generation
    retires. A generation *on trial* is one a reload is starting: its start-up failure
    fails the reload, while the generation before it keeps serving.
    """

    def __init__(self, number: int, spec: bytes, setup: Mapping[str, Any], on_trial: bool) -> None:
        self.number = number
        self.spec = spec
        self.setup = setup
        self.on_trial = on_trial
        self.workers: dict[int, WorkerProcess] = {}
        self.ready_slots: set[int] = set()
        #: Set once every slot has had a worker ready.
        self.all_ready = trio.Event()
        #: Set when its workers are to stop (with `grace`), and none is to be replaced.
        self.retiring = trio.Event()
        self.grace: float | None = 0.0
        #: Whether it retired because a newer generation serves in its place (a reload).
        self.replaced = False
        self.startup_failures = 0
        #: Why it could not start, when on trial.
        self.error: WorkerStartupError | None = None
        #: Set once every worker it started has exited and been reaped.
        self.done = trio.Event()

    def retire(self, grace: float | None, *, replaced: bool = False) -> None:
        """Stop its workers with *grace* (the shorter, if retired twice); replace none.

        *replaced*: a newer generation serves in its place, so its workers leave the
        connections queued on the listening socket to that one.
        """
        if not self.retiring.is_set():
            self.grace = grace
            self.replaced = replaced
            self.retiring.set()
        elif grace is not None and (self.grace is None or grace < self.grace):
            self.grace = grace

    def takes_queued(self) -> bool:
        """Whether its workers, stopping now, serve the connections still queued: only
        when the pool stops. A worker replaced, or stopped on its own (it failed), leaves
        them to the workers that serve on."""
        return self.retiring.is_set() and not self.replaced

    def live_pids(self) -> list[int]:
        """The pids of its workers that have been ready and have not exited."""
        return [
            worker.pid
            for worker in self.workers.values()
            if worker.ready.is_set() and not worker.exited.is_set()
        ]


def _default_grace(server: Any) -> float | None:
    """The grace ``shutdown()`` gives by default: what retired workers get."""
    grace: float | None = server.shutdown_grace if server.block_on_close else 0.0
    return grace


@final
class _Pool:
    def __init__(
        self,
        server: Any,
        size: int,
        on_pids: Callable[[tuple[int, ...]], object],
        reloads: trio.MemoryReceiveChannel[ReloadDone | None],
    ) -> None:
        self.server = server
        self.on_pids = on_pids
        self.size = size
        self.listen_fd = server.fileno()
        self.reloads = reloads
        self.stopping = trio.Event()
        self.grace: float | None = 0.0
        #: The generations with workers left, oldest first.
        self.generations: list[_Generation] = []
        self.error: WorkerStartupError | None = None
        self.control_scope = trio.CancelScope()
        self.accept_scope = trio.CancelScope()

    # -- the pool's life

    async def run(
        self,
        serving: Serving,
        spec: bytes,
        main: tuple[str, str] | None,
        task_status: trio.TaskStatus[None],
    ) -> None:
        self.accept_scope = serving.accept_scope
        started = False
        first = self._new_generation(spec, main, on_trial=False)
        async with trio.open_nursery() as nursery:
            with serving.accept_scope:
                nursery.start_soon(self._control, nursery, first)
                nursery.start_soon(self._run_generation, first)
                await first.all_ready.wait()
                task_status.started()
                started = True
                await trio.sleep_forever()
            if not self.stopping.is_set():
                self.begin_stop(serving.remaining_grace())
            if serving.draining.is_set():
                self._close_listener()
        if self.error is not None:
            raise self.error
        if not started:
            task_status.started()  # shutdown() came before the workers were ready

    def begin_stop(self, grace: float | None) -> None:
        if not self.stopping.is_set():
            self.grace = grace
            self.stopping.set()
        for generation in self.generations:
            generation.retire(self.grace)
        self.control_scope.cancel()
        self.accept_scope.cancel()

    def _close_listener(self) -> None:
        """A graceful stop: the parent lets go of the listening socket at once.

        Each worker, told to stop, takes what is queued and closes its own copy (the nursery
        policy's drain); once the last copy is closed the kernel refuses new connections,
        and a load balancer sends them elsewhere. The next ``serve_forever`` binds again.
        """
        close = getattr(self.server, "_trioserve_close_listener", None)
        if close is not None:
            close()

    def fail(self, error: WorkerStartupError) -> None:
        if self.error is None:
            self.error = error
        self.begin_stop(0.0)

    @property
    def current(self) -> _Generation:
        """The generation serving now (the newest that is not on trial)."""
        return [each for each in self.generations if not each.on_trial][-1]

    async def _control(self, nursery: trio.Nursery, first: _Generation) -> None:
        """Signals, and reload requests (once the *first* generation is ready)."""
        with self.control_scope:
            async with trio.open_nursery() as control:
                if _may_handle(signal.SIGTERM):
                    control.start_soon(self._shutdown_on_sigterm)
                if _may_handle(signal.SIGHUP):
                    control.start_soon(self._reload_on_sighup)
                await first.all_ready.wait()
                control.start_soon(self._reload_when_asked, nursery)

    async def _shutdown_on_sigterm(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                logger.info("SIGTERM: shutting down %r", self.server)
                self.server.shutdown()

    async def _reload_on_sighup(self) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                logger.info("SIGHUP: reloading the workers of %r", self.server)
                self.server.reload_workers()

    def _update_pids(self) -> None:
        self.on_pids(tuple(sorted(pid for each in self.generations for pid in each.live_pids())))

    def _new_generation(
        self, spec: bytes, main: tuple[str, str] | None, *, on_trial: bool
    ) -> _Generation:
        setup = {"sys_path": list(sys.path), "main": main, **_logging_setup()}
        number = self.generations[-1].number + 1 if self.generations else 0
        generation = _Generation(number, spec, setup, on_trial)
        self.generations.append(generation)
        if self.stopping.is_set():
            generation.retire(self.grace)
        return generation

    async def _run_generation(self, generation: _Generation) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for slot in range(self.size):
                    nursery.start_soon(self._supervise, generation, slot)
        finally:
            self.generations.remove(generation)
            generation.done.set()
            self._update_pids()

    # -- reloading

    async def _reload_when_asked(self, nursery: trio.Nursery) -> None:
        """Reload when asked; every request waiting when a reload begins shares it."""
        async for first in self.reloads:
            batch = [first]
            for _ in range(self.reloads.statistics().current_buffer_used):
                batch.append(self.reloads.receive_nowait())
            outcome: Exception | None = None
            try:
                outcome = await self._reload(nursery)
            finally:
                _tell(batch, outcome)

    async def _reload(self, nursery: trio.Nursery) -> Exception | None:
        """Start a new generation; once it serves, retire the old one. Its error, or None."""
        old = self.current
        try:
            spec, main = pack_spec(self.server)
        except TypeError as exc:
            logger.error(
                "cannot reload the workers of %r; the old workers keep serving: %s",
                self.server,
                exc,
            )
            return exc
        new = self._new_generation(spec, main, on_trial=True)
        logger.info(
            "reloading %r: starting %d new workers (generation %d)",
            self.server,
            self.size,
            new.number,
        )
        nursery.start_soon(self._run_generation, new)
        await _first(new.all_ready.wait, new.done.wait)
        if not new.all_ready.is_set():  # it failed to start, or the pool stops
            await new.done.wait()
            if new.error is not None:
                logger.error(
                    "the new workers of %r failed to start; the old workers keep serving: %s",
                    self.server,
                    new.error,
                )
            return new.error
        new.on_trial = False
        grace = _default_grace(self.server)
        logger.info(
            "reloading %r: new workers %s serve; old workers %s stop accepting and get %s "
            "to finish their requests",
            self.server,
            sorted(new.live_pids()),
            sorted(old.live_pids()),
            "all the time they need" if grace is None else f"{grace:.3g} s",
        )
        old.retire(grace, replaced=True)
        await old.done.wait()
        logger.info("reloaded the workers of %r", self.server)
        return None

    # -- one slot

    async def _supervise(self, generation: _Generation, slot: int) -> None:
        strikes = 0
        while not generation.retiring.is_set():
            if strikes:
                with trio.move_on_after(min(BACKOFF_FIRST * 2 ** (strikes - 1), BACKOFF_MAX)):
                    await generation.retiring.wait()
                if generation.retiring.is_set():
                    return
            outcome = await self._run_worker(generation, slot)
            if outcome is _Outcome.STOPPED:
                return
            if outcome is _Outcome.DIED:
                strikes = 0
            else:
                strikes += 1

    async def _run_worker(self, generation: _Generation, slot: int) -> _Outcome:
        try:
            with trio.CancelScope(shield=True):
                worker = await self._spawn(slot)
        except OSError as exc:
            return self._start_failed(generation, None, f"cannot start a worker process: {exc}")
        generation.workers[slot] = worker
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, worker)
                nursery.start_soon(self._wait_exit, worker)
                await worker.send("setup", generation.setup)
                await worker.send("spec", generation.spec)
                outcome = await self._watch(generation, worker)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if worker.process.returncode is None:
                    grace = generation.grace if generation.retiring.is_set() else 0
                    await self._stop_worker(worker, generation, grace)
                await worker.stream.aclose()
                self.server._trioserve.counters.worker_gone(worker.pid)  # statistics
                if generation.workers.get(slot) is worker:
                    del generation.workers[slot]
                self._update_pids()
        return outcome

    async def _spawn(self, slot: int) -> WorkerProcess:
        parent_end, child_end = socket.socketpair()
        try:
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-c",
                    _BOOTSTRAP,
                    str(child_end.fileno()),
                    str(self.listen_fd),
                    str(slot),
                ],
                pass_fds=(child_end.fileno(), self.listen_fd),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent_end))
        return WorkerProcess(slot, process, stream)

    async def _watch(self, generation: _Generation, worker: WorkerProcess) -> _Outcome:
        """Follow *worker* from its start to its end; say how it ended."""
        retiring = generation.retiring
        with trio.move_on_after(START_TIMEOUT) as start:
            await _first(worker.ready.wait, worker.exited.wait, retiring.wait)
        if not worker.ready.is_set() and not worker.exited.is_set():
            if retiring.is_set():
                await self._stop_worker(worker, generation, 0)
                await self._drain(worker)
                return _Outcome.STOPPED
            if start.cancelled_caught:
                worker.failure = f"it did not report ready within {START_TIMEOUT:.0f} s"
                await self._stop_worker(worker, generation, 0)
        if not worker.ready.is_set():
            await self._drain(worker)
            if retiring.is_set():
                return _Outcome.STOPPED
            return self._start_failed(generation, worker, worker.failure)
        worker.ready_at = trio.current_time()
        generation.startup_failures = 0
        generation.ready_slots.add(worker.slot)
        if len(generation.ready_slots) == self.size:
            generation.all_ready.set()
        self._update_pids()
        await _first(worker.exited.wait, retiring.wait)
        if not worker.exited.is_set():
            await self._stop_worker(worker, generation, generation.grace)
        await self._drain(worker)
        if retiring.is_set():
            return _Outcome.STOPPED
        status = _describe_exit(worker.process.returncode)
        log = logger.warning if worker.process.returncode == 0 else logger.error
        log("worker %d (pid %d) exited (%s); starting a new one", worker.slot, worker.pid, status)
        if trio.current_time() - worker.ready_at < QUICK_DEATH:
            return _Outcome.DIED_QUICKLY
        return _Outcome.DIED

    def _start_failed(
        self, generation: _Generation, worker: WorkerProcess | None, failure: str | None
    ) -> _Outcome:
        if worker is not None:
            status = _describe_exit(worker.process.returncode)
            failure = f"worker pid {worker.pid} ({status}): {failure or 'no error reported'}"
        generation.startup_failures += 1
        failures = generation.startup_failures
        if (worker is not None and worker.fatal) or failures >= MAX_STARTUP_FAILURES:
            error = WorkerStartupError(
                f"worker processes of {self.server!r} failed to start "
                f"({failures} in a row); the last one: {failure}"
            )
            if generation.on_trial:
                # A reload's new workers: those already serving finish their requests.
                generation.error = generation.error or error
                generation.retire(_default_grace(self.server))
            else:
                self.fail(error)
            return _Outcome.STOPPED
        logger.error("a worker failed to start; starting another: %s", failure)
        return _Outcome.START_FAILED

    async def _drain(self, worker: WorkerProcess) -> None:
        """Wait, briefly, for the last frames of a worker that exited."""
        with trio.move_on_after(_DRAIN_TIMEOUT):
            await worker.drained.wait()

    async def _wait_exit(self, worker: WorkerProcess) -> None:
        await worker.process.wait()
        worker.exited.set()
        self._update_pids()

    async def _receive(self, worker: WorkerProcess) -> None:
        frames = FrameBuffer()
        try:
            while data := await worker.stream.receive_some(65536):
                for message in frames.feed(data):
                    self._handle(worker, message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except FrameError as exc:
            logger.error("worker pid %d sent a malformed frame (%s); killing it", worker.pid, exc)
            worker.process.kill()
        finally:
            worker.drained.set()

    def _handle(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            worker.ready.set()
        elif kind == "log":
            _relog(message[1])
        elif kind == "failed":
            worker.failure, worker.fatal = message[1], bool(message[2])
        elif kind == "shutdown":
            grace = message[1]
            self.server.shutdown(grace)
            self.begin_stop(grace)
        elif kind == "reload":
            self.server.reload_workers()
        elif kind == "stats":  # statistics (docs/operations.md): the worker's figures
            self.server._trioserve.counters.worker_update(message[1])

    async def _stop_worker(
        self, worker: WorkerProcess, generation: _Generation, grace: float | None
    ) -> None:
        """Stop *worker* with *grace*, then SIGTERM, then SIGKILL; reap it in any case."""
        process = worker.process
        if await worker.send("stop", grace, generation.takes_queued()):
            with trio.move_on_after(math.inf if grace is None else grace + EXIT_MARGIN):
                await process.wait()
                return
            logger.warning("worker pid %d did not stop in time; terminating it", worker.pid)
        process.terminate()
        with trio.move_on_after(KILL_TIMEOUT):
            await process.wait()
            return
        logger.warning("worker pid %d did not terminate; killing it", worker.pid)
        process.kill()
        await process.wait()


def _tell(requests: list[ReloadDone | None], outcome: Exception | None) -> None:
    """Tell each waiting caller of ``reload_workers`` how its reload ended."""
    for done in requests:
        if done is not None:
            done(outcome)


def _may_handle(signum: signal.Signals) -> bool:
    """Whether the pool may handle *signum*: in the main thread, with nobody else handling it."""
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signum) == signal.SIG_DFL
    )


async def serve_pool(
    server: Any,
    serving: Serving,
    size: int,
    on_pids: Callable[[tuple[int, ...]], object],
    reloads: trio.MemoryReceiveChannel[ReloadDone | None],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *server* from a pool of *size* worker processes until *serving* stops.

    What the `~trioserve._policy.ProcessPool` policy runs. *on_pids* is called with the
    pids of the workers serving, sorted, whenever they change, and with ``()`` at the end.
    Each item received from *reloads* asks for a reload (see `_Pool._reload`); a callable
    item is called with the reload's error, or None, once the reload is over, or the pool
    has stopped without it.

    Raises:
      TypeError: the handler class, the server class or an attribute of the server cannot
        be sent to a worker process (see `pack_spec`).
      WorkerStartupError: the workers cannot start: the spec does not load in a worker,
        or several start-up failures in a row.

    Resource handling:
      When this returns or raises, every worker process it started has exited and has
      been reaped, every reload request received has been answered, and *reloads* is
      closed. The listening socket stays open until ``server_close``.
    """
    try:
        if _frames.importing_main:
            raise RuntimeError(
                f"{server!r} was started while a worker process imported the main script: "
                "start servers under `if __name__ == '__main__':` in a script that uses a "
                "process pool"
            )
        spec, main = pack_spec(server)
        pool = _Pool(server, size, on_pids, reloads)
        try:
            await pool.run(serving, spec, main, task_status)
        finally:
            on_pids(())
    finally:
        # Requests the pool never took: no reload happens now. Closed at once after, so
        # any later request is refused at once (the channel is broken).
        for _ in range(reloads.statistics().current_buffer_used):
            _tell([reloads.receive_nowait()], None)
        reloads.close()
