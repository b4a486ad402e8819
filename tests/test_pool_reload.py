"""Reloading a process pool's workers: ``reload_workers()`` and SIGHUP.

The handler lives in a module written into ``tmp_path`` for each test, so a test can
change the code on disk between two generations of workers: each worker imports it
afresh, and the parent never imports it again. Every test starts real worker processes,
so the pools are small (2 workers).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from trioserve import ForkingTCPServer, WorkerStartupError
from trioserve.testing import connect

from .helpers import PATIENCE, LineReader, read_line, trioserve_records
from .test_workers import ROOT, assert_reaped

pytestmark = pytest.mark.usefixtures("fd_leak_check")

#: The handler module; ``{version}`` is the code's version, ``{tail}`` what follows it.
HANDLER_MODULE = """
import os

import trioserve

VERSION = {version!r}
{tail}

class Handler(trioserve.StreamRequestHandler):
    '''Answers its first line with "PID VERSION"; "hold" then waits for a second line,
    "reload" asks for a reload first.'''

    async def handle(self):
        line = (await self.rfile.readline()).strip()
        if line == b"reload":
            self.server.reload_workers()
        await self.wfile.write(f"{{os.getpid()}} {{VERSION}}\\n".encode())
        if line == b"hold":
            await self.wfile.write(b"finished " + await self.rfile.readline())
"""

BROKEN = 'raise RuntimeError("a broken deploy")'

#: How many clients keep the server busy during a reload.
CLIENTS = 3
#: How many requests each client makes once the reload is over.
AFTER_RELOAD = 10
#: A bound on each client's requests; reaching it fails the test.
MAX_REQUESTS = 20_000


@dataclass
class HandlerModule:
    """The handler module of one test, which the test rewrites between generations."""

    path: Path
    name: str

    def write(self, version: str, *, broken: bool = False) -> None:
        code = HANDLER_MODULE.format(version=version, tail=BROKEN if broken else "")
        self.path.write_text(textwrap.dedent(code))

    def handler(self) -> type[Any]:
        handler: type[Any] = importlib.import_module(self.name).Handler
        return handler


@pytest.fixture
def handler_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HandlerModule]:
    """A handler module at version "one", importable by this process and by workers."""
    # No bytecode cache, here or in the workers (they inherit the environment): each
    # import compiles what is on disk.
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    name = f"reload_handler_{uuid.uuid4().hex}"
    module = HandlerModule(tmp_path / f"{name}.py", name)
    module.write("one")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(name, None)


async def ask(server: ForkingTCPServer, line: bytes = b"version?") -> tuple[int, str]:
    """One request on a new connection: the answering worker's pid and code version."""
    async with await connect(server) as stream:
        await stream.send_all(line + b"\n")
        pid, version = (await read_line(stream)).decode().split()
    return int(pid), version


async def hold(stream: trio.SocketStream) -> tuple[LineReader, tuple[int, str]]:
    """Ask on *stream* for an answer that waits for a second line: the worker stays busy."""
    await stream.send_all(b"hold\n")
    reader = LineReader(stream)
    pid, version = (await reader.readline()).decode().split()
    return reader, (int(pid), version)


def stops_accepting(pid: int) -> Callable[[logging.LogRecord], bool]:
    """For `log_event`: worker *pid* says it stops accepting."""
    return lambda record: record.process == pid and "stops accepting" in record.msg


@contextmanager
def log_event(predicate: Callable[[logging.LogRecord], bool]) -> Iterator[trio.Event]:
    """An event set when the ``trioserve`` logger handles a record matching *predicate*.

    Records from workers are handled in the parent's Trio thread, as the pool's own are.
    """
    event = trio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if predicate(record):
                event.set()

    watch = Watch()
    logger = logging.getLogger("trioserve")
    logger.addHandler(watch)
    try:
        yield event
    finally:
        logger.removeHandler(watch)


@dataclass
class Load:
    """Clients making one request per connection, one after another, until told to stop."""

    server: ForkingTCPServer
    #: (phase, pid, version) of each answer; the phase is "before", "during" or "after".
    answers: list[tuple[str, int, str]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    phase: str = "before"
    warmed_up: trio.Event = field(default_factory=trio.Event)

    async def client(self) -> None:
        after = 0
        for _ in range(MAX_REQUESTS):
            phase = self.phase
            try:
                pid, version = await ask(self.server)
            except (OSError, trio.BrokenResourceError, ValueError) as exc:
                self.failures.append(exc)  # refused, reset, or closed without an answer
            else:
                self.answers.append((phase, pid, version))
            if len(self.answers) >= 2 * CLIENTS:
                self.warmed_up.set()
            if phase == "after":
                after += 1
                if after == AFTER_RELOAD:
                    return
        raise AssertionError(f"still no reload after {MAX_REQUESTS} requests")

    def answered_in(self, phase: str) -> set[tuple[int, str]]:
        return {(pid, version) for each, pid, version in self.answers if each == phase}


async def reload_under_load(server: ForkingTCPServer, reload: Callable[[], object]) -> Load:
    """Run *reload* while `CLIENTS` clients make requests; return what they saw."""
    load = Load(server)
    async with trio.open_nursery() as nursery:
        for _ in range(CLIENTS):
            nursery.start_soon(load.client)
        with trio.fail_after(PATIENCE):
            await load.warmed_up.wait()
        load.phase = "during"
        try:
            await trio.to_thread.run_sync(reload)
        finally:
            load.phase = "after"
    return load


# -- reloading -----------------------------------------------------------------------------


async def test_reload_under_load_serves_the_new_code_from_new_workers_and_drops_nothing(
    handler_module: HandlerModule, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(("127.0.0.1", 0), handler_module.handler(), max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            old = set(server.worker_pids)
            handler_module.write("two-two")  # the deploy: new code on disk
            load = await reload_under_load(server, server.reload_workers)
            new = set(server.worker_pids)
            assert len(new) == 2
            assert not new & old
            assert_reaped(old)  # reload_workers() returned: the old workers are gone
            assert load.failures == []  # no connection refused, reset or left unanswered
            assert load.answered_in("during")  # the reload did happen under load
            assert {version for _, version in load.answered_in("before")} == {"one"}
            assert load.answered_in("after") <= {(pid, "two-two") for pid in new}
            # Every answer came from a worker of one generation, with that one's code.
            assert {(p, v) for _, p, v in load.answers} <= (
                {(pid, "one") for pid in old} | {(pid, "two-two") for pid in new}
            )
            server.shutdown()
        assert_reaped(new)
        assert server.worker_pids == ()
    messages = [r.getMessage() for r in trioserve_records(caplog, logging.INFO)]
    assert any("reloaded the workers of" in message for message in messages)
    assert not trioserve_records(caplog, logging.WARNING)


async def test_a_request_in_flight_in_an_old_worker_finishes_during_the_reload(
    handler_module: HandlerModule, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(("127.0.0.1", 0), handler_module.handler(), max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            old = set(server.worker_pids)
            handler_module.write("two-two")
            async with await connect(server) as held:
                reader, (held_pid, version) = await hold(held)
                assert (held_pid, version) in {(p, "one") for p in old}

                stopping: set[int] = set()

                def old_workers_stop(record: logging.LogRecord) -> bool:
                    if "stops accepting" in record.msg and record.process in old:
                        stopping.add(record.process)
                    return stopping == old

                reloaded = trio.Event()

                async def reload() -> None:
                    await trio.to_thread.run_sync(server.reload_workers)
                    reloaded.set()

                with log_event(old_workers_stop) as stopped:
                    nursery.start_soon(reload)
                    with trio.fail_after(PATIENCE):
                        await stopped.wait()  # no old worker accepts any more
                # The new generation serves, and the old worker drains: worker_pids has both.
                new = set(server.worker_pids) - old
                assert len(new) == 2
                assert held_pid in server.worker_pids
                assert not reloaded.is_set()  # the reload waits for the old worker
                assert await ask(server) in {(p, "two-two") for p in new}
                await held.send_all(b"end\n")
                assert await reader.readline() == b"finished end\n"
            with trio.fail_after(PATIENCE):
                await reloaded.wait()
            assert set(server.worker_pids) == new
            assert_reaped(old)
            server.shutdown()
        assert_reaped(new)
    grace = f"{server.shutdown_grace:g} s"
    assert f"worker pid {held_pid} stops accepting; running handlers get {grace}" in [
        r.getMessage() for r in trioserve_records(caplog, logging.INFO)
    ]


async def test_connections_queued_when_the_old_workers_stop_are_served_by_the_new_code(
    handler_module: HandlerModule, caplog: pytest.LogCaptureFixture
) -> None:
    # One connection per worker: the old worker is full, so the next two connections wait
    # in the kernel's queue on the shared socket. The new worker takes the first and is
    # full in turn. When the old worker stops, the second is still queued: it must be left
    # to the new worker, not taken and served with the old code.
    caplog.set_level(logging.INFO, logger="trioserve")  # workers log "stops accepting"
    with ForkingTCPServer(
        ("127.0.0.1", 0), handler_module.handler(), max_children=1, max_connections=1
    ) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            (old,) = server.worker_pids
            handler_module.write("two")
            reloaded = trio.Event()

            async def reload() -> None:
                await trio.to_thread.run_sync(server.reload_workers)
                reloaded.set()

            async with (
                await connect(server) as held,
                await connect(server) as first,
                await connect(server) as second,
            ):
                held_reader, answer = await hold(held)
                assert answer == (old, "one")
                await first.send_all(b"hold\n")
                await second.send_all(b"version?\n")

                with log_event(stops_accepting(old)) as stopped:
                    nursery.start_soon(reload)
                    with trio.fail_after(PATIENCE):
                        await stopped.wait()
                (new,) = set(server.worker_pids) - {old}
                first_reader = LineReader(first)
                assert (await first_reader.readline()).split() == [str(new).encode(), b"two"]
                await first.send_all(b"end\n")
                assert await first_reader.readline() == b"finished end\n"
                # The new worker is free again, and takes the connection left queued.
                assert (await read_line(second)).decode().split() == [str(new), "two"]
                await held.send_all(b"end\n")
                assert await held_reader.readline() == b"finished end\n"
            with trio.fail_after(PATIENCE):
                await reloaded.wait()  # once the old worker has exited
            assert server.worker_pids == (new,)
            assert_reaped({old})
            server.shutdown()
        assert_reaped({new})


async def test_connections_queued_when_the_pool_stops_are_served_within_the_grace(
    handler_module: HandlerModule, caplog: pytest.LogCaptureFixture
) -> None:
    # The other side of the test above: when the whole pool stops, nobody else will serve
    # what is queued, so the workers take it and serve it, as a plain server does.
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(
        ("127.0.0.1", 0),
        handler_module.handler(),
        max_children=1,
        max_connections=1,
        shutdown_grace=PATIENCE,
    ) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            (pid,) = server.worker_pids
            async with await connect(server) as held, await connect(server) as queued:
                held_reader, answer = await hold(held)
                assert answer == (pid, "one")
                await queued.send_all(b"version?\n")
                with log_event(stops_accepting(pid)) as stopped:
                    server.shutdown()
                    with trio.fail_after(PATIENCE):
                        await stopped.wait()  # from now on only the drain takes connections
                await held.send_all(b"end\n")
                assert await held_reader.readline() == b"finished end\n"
                assert (await read_line(queued)).decode().split() == [str(pid), "one"]
        assert_reaped({pid})


async def test_a_reload_whose_new_workers_cannot_start_keeps_the_old_ones_serving(
    handler_module: HandlerModule, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(("127.0.0.1", 0), handler_module.handler(), max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            old = set(server.worker_pids)
            handler_module.write("three", broken=True)  # a deploy that does not import
            raised: list[WorkerStartupError] = []

            def reload() -> None:
                with pytest.raises(WorkerStartupError, match="a broken deploy") as caught:
                    server.reload_workers()
                raised.append(caught.value)

            load = await reload_under_load(server, reload)
            assert raised
            assert set(server.worker_pids) == old
            assert load.failures == []
            assert {(p, v) for _, p, v in load.answers} <= {(pid, "one") for pid in old}
            assert load.answered_in("after")
            server.shutdown()
        assert_reaped(old)
    errors = [r.getMessage() for r in trioserve_records(caplog, logging.ERROR)]
    (error,) = [e for e in errors if "failed to start; the old workers keep serving" in e]
    assert 'RuntimeError("a broken deploy")' in error or "a broken deploy" in error
    # The new workers that failed were reaped too.
    failed = {int(pid) for pid in re.findall(r"worker pid (\d+)", error)}
    assert failed
    assert not failed & old
    assert_reaped(failed)


async def test_a_handler_in_a_worker_can_ask_for_a_reload(
    handler_module: HandlerModule, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(("127.0.0.1", 0), handler_module.handler(), max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            old = set(server.worker_pids)
            handler_module.write("two-two")

            def reloaded(record: logging.LogRecord) -> bool:
                return record.msg.startswith("reloaded the workers of")

            with log_event(reloaded) as done:
                # Answered: the reload waits for this request, and returns at once in it.
                assert (await ask(server, b"reload"))[1] == "one"
                with trio.fail_after(PATIENCE):
                    await done.wait()
            new = set(server.worker_pids)
            assert len(new) == 2
            assert not new & old
            assert_reaped(old)
            assert await ask(server) in {(pid, "two-two") for pid in new}
            server.shutdown()
        assert_reaped(new)


async def test_a_reload_that_cannot_send_the_server_keeps_the_old_workers(
    handler_module: HandlerModule, caplog: pytest.LogCaptureFixture
) -> None:
    with ForkingTCPServer(("127.0.0.1", 0), handler_module.handler(), max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            old = set(server.worker_pids)
            server.lock = threading.Lock()  # type: ignore[attr-defined]
            with pytest.raises(TypeError, match="cannot send the server attribute 'lock'"):
                await trio.to_thread.run_sync(server.reload_workers)
            assert set(server.worker_pids) == old
            assert await ask(server) in {(pid, "one") for pid in old}
            server.shutdown()
        assert_reaped(old)
    (error,) = [r.getMessage() for r in trioserve_records(caplog, logging.ERROR)]
    assert "the old workers keep serving: ForkingTCPServer cannot send" in error


async def test_reloads_asked_for_together_make_one_reload(
    handler_module: HandlerModule, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(("127.0.0.1", 0), handler_module.handler(), max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            old = set(server.worker_pids)

            def reloaded(record: logging.LogRecord) -> bool:
                return record.msg.startswith("reloaded the workers of")

            with log_event(reloaded) as done:
                for _ in range(3):
                    server.reload_workers()
                with trio.fail_after(PATIENCE):
                    await done.wait()
            assert len(server.worker_pids) == 2
            assert not set(server.worker_pids) & old
            server.shutdown()
    starts = [r for r in caplog.records if "starting 2 new workers" in r.getMessage()]
    assert len(starts) == 1


async def test_shutdown_during_a_reload_cuts_the_old_workers_grace_short(
    handler_module: HandlerModule, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(
        ("127.0.0.1", 0), handler_module.handler(), max_children=2, shutdown_grace=10 * PATIENCE
    ) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            old = set(server.worker_pids)
            async with await connect(server) as held:
                reader, (held_pid, _) = await hold(held)
                with log_event(stops_accepting(held_pid)) as stopped:
                    nursery.start_soon(trio.to_thread.run_sync, server.reload_workers)
                    with trio.fail_after(PATIENCE):
                        await stopped.wait()  # draining, with a grace of 300 s
                new = set(server.worker_pids) - old
                with trio.fail_after(PATIENCE):
                    await trio.to_thread.run_sync(server.shutdown, 0.1)
                    assert await reader.rest() == b""  # cancelled after 0.1 s, and closed
        assert_reaped(old | new)


async def test_reload_workers_when_not_serving_does_nothing(
    handler_module: HandlerModule,
) -> None:
    with ForkingTCPServer(("127.0.0.1", 0), handler_module.handler(), max_children=2) as server:
        server.reload_workers()
        await trio.to_thread.run_sync(server.reload_workers)
        assert server.worker_pids == ()


async def test_shutdown_during_a_reload_stops_both_generations(
    handler_module: HandlerModule,
) -> None:
    with ForkingTCPServer(("127.0.0.1", 0), handler_module.handler(), max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            old = set(server.worker_pids)
            server.reload_workers()  # in the serving run: returns at once
            server.shutdown()
        assert_reaped(old)
        assert server.worker_pids == ()


# -- SIGHUP --------------------------------------------------------------------------------

SIGHUP_SCRIPT = """
import json, logging, os, signal, sys
from pathlib import Path
import trio, trioserve

VERSION = Path(__file__).with_name("version.txt").read_text().strip()

class Handler(trioserve.StreamRequestHandler):  # in __main__: workers import this script
    async def handle(self):
        await self.wfile.write(f"{os.getpid()} {VERSION}\\n".encode())

async def main():
    with trioserve.ForkingTCPServer(("127.0.0.1", 0), Handler, max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            print(json.dumps([server.server_address, server.worker_pids]), flush=True)

if __name__ == "__main__":
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # even when started ignoring it (nohup)
    trio.run(main)
"""


async def test_sighup_to_the_parent_reloads_the_workers(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(SIGHUP_SCRIPT))
    (tmp_path / "version.txt").write_text("one\n")
    with (tmp_path / "stderr.txt").open("wb") as stderr:
        parent = await trio.lowlevel.open_process(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT
        )
    try:
        assert parent.stdout is not None
        output = LineReader(parent.stdout)
        (host, port), old = json.loads(await output.wait_for(b"[["))

        async def ask_parent() -> tuple[int, str]:
            async with await trio.open_tcp_stream(host, port) as stream:
                pid, version = (await read_line(stream)).decode().split()
            return int(pid), version

        assert (await ask_parent())[1] == "one"
        (tmp_path / "version.txt").write_text("two\n")
        parent.send_signal(signal.SIGHUP)
        await output.wait_for(b"SIGHUP: reloading the workers of")
        await output.wait_for(b"reloaded the workers of")
        assert_reaped(old)  # the parent reaped them
        pid, version = await ask_parent()
        assert version == "two"
        assert pid not in old
        parent.send_signal(signal.SIGTERM)
        with trio.fail_after(PATIENCE):
            assert await parent.wait() == 0
        assert_reaped([pid])
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if parent.stdout is not None:
            await parent.stdout.aclose()
    assert b"Traceback" not in (tmp_path / "stderr.txt").read_bytes()
