"""The process pool: Forking* servers, supervision, shutdown, parent death.

Every test here starts real worker processes (fresh interpreters that import this module
to find the handler classes), so the pools are small (2 workers) and each test starts as
few as it can.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import trio

import trioserve
from trioserve import (
    DatagramRequestHandler,
    ForkingTCPServer,
    ForkingUDPServer,
    ForkingUnixDatagramServer,
    ForkingUnixStreamServer,
    StreamRequestHandler,
    WorkerStartupError,
)
from trioserve.testing import connect, exchange_datagram, serving

from .helpers import PATIENCE, read_line, receive_until_eof, trioserve_records

pytestmark = pytest.mark.usefixtures("fd_leak_check")

ROOT = Path(__file__).resolve().parent.parent


# -- handlers (module level: workers import them from here) ---------------------------------


class PidHandler(StreamRequestHandler):
    """Answers each line with the worker's pid; ``boom`` raises, ``quit`` stops the server."""

    async def handle(self) -> None:
        async for line in self.rfile:
            command = line.strip()
            if command == b"boom":
                raise ValueError("boom in a worker")
            if command == b"quit":
                self.server.shutdown()
            await self.wfile.write(b"%d\n" % os.getpid())


class SyncPidHandler(socketserver.StreamRequestHandler):
    """The same as `PidHandler`, as socketserver's own handler (runs in a thread)."""

    def handle(self) -> None:
        for _line in self.rfile:
            self.wfile.write(b"%d\n" % os.getpid())


class DatagramPidHandler(DatagramRequestHandler):
    """Answers each datagram with the worker's pid."""

    async def handle(self) -> None:
        await self.wfile.write(b"%d\n" % os.getpid())


class SyncDatagramPidHandler(socketserver.DatagramRequestHandler):
    """The same as `DatagramPidHandler`, as socketserver's own handler (runs in a thread)."""

    def handle(self) -> None:
        self.wfile.write(b"%d\n" % os.getpid())


class LoopBlockingHandler(StreamRequestHandler):
    """Sends the worker's pid, then blocks that worker's whole event loop until the client
    writes: until then, only another worker can accept a connection."""

    async def handle(self) -> None:
        assert isinstance(self.request, trio.SocketStream)
        fd = self.request.socket.fileno()
        os.write(fd, b"%d\n" % os.getpid())  # no checkpoint between this and the block
        select.select([fd], [], [], PATIENCE)
        await self.rfile.read1()


class StuckHandler(StreamRequestHandler):
    """Sends the worker's pid; at the next line, sets SIGTERM's disposition to the
    server's ``on_sigterm`` and blocks the worker's whole event loop (no checkpoint in
    sight) until the client writes again: a handler that ignores a stop."""

    async def handle(self) -> None:
        assert isinstance(self.request, trio.SocketStream)
        await self.wfile.write(b"%d\n" % os.getpid())
        await self.rfile.readline()
        signal.signal(signal.SIGTERM, self.server.on_sigterm)  # type: ignore[attr-defined]
        select.select([self.request.socket.fileno()], [], [], PATIENCE)


class StatefulHandler(StreamRequestHandler):
    """Reports the worker's pid, a server attribute set in the parent, and a counter kept
    on ``self.server`` by the handler."""

    async def handle(self) -> None:
        server: Any = self.server
        server.hits = getattr(server, "hits", 0) + 1
        reply = f"{os.getpid()} {server.greeting} {server.hits}\n"
        await self.wfile.write(reply.encode())


class SlowHandler(StreamRequestHandler):
    """Says ``started``, then answers the second line: a request that stays in flight."""

    async def handle(self) -> None:
        await self.rfile.readline()
        await self.wfile.write(b"%d started\n" % os.getpid())
        line = await self.rfile.readline()
        await self.wfile.write(b"finished " + line)


def _fail_to_unpickle() -> None:
    raise RuntimeError("this attribute does not load in a worker")


class LoadsNowhere:
    """Pickles fine; fails when a worker unpickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_fail_to_unpickle, ())


class NoDatabaseServer(ForkingTCPServer):
    """Cannot be rebuilt in a worker: every worker fails at start-up."""

    @classmethod
    def from_socket(cls, sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        sock.close()
        raise RuntimeError("no database here")


# -- helpers -------------------------------------------------------------------------------


async def ask_pid(server: trioserve.SocketServer) -> int:
    if server.socket_type == socket.SOCK_DGRAM:
        with trio.fail_after(PATIENCE):
            return int(await exchange_datagram(server, b"pid?\n"))
    async with await connect(server) as stream:
        await stream.send_all(b"pid?\n")
        return int(await read_line(stream))


def assert_reaped(pids: Iterable[int]) -> None:
    """Each pid is gone: neither running nor a zombie waiting to be reaped."""
    left = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not left, f"worker processes still there: {left}"


async def wait_exited(pid: int) -> None:
    """Wait until *pid*, not necessarily our child, has exited (running no more)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with trio.fail_after(PATIENCE):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


# -- serving -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_class", "handler_class"),
    [
        pytest.param(ForkingTCPServer, PidHandler, id="tcp-async"),
        pytest.param(ForkingUnixStreamServer, PidHandler, id="unix-async"),
        pytest.param(ForkingTCPServer, SyncPidHandler, id="tcp-sync"),
        pytest.param(ForkingUDPServer, DatagramPidHandler, id="udp-async"),
        pytest.param(ForkingUnixDatagramServer, DatagramPidHandler, id="unix-dgram-async"),
        pytest.param(ForkingUDPServer, SyncDatagramPidHandler, id="udp-sync"),
    ],
)
async def test_forking_servers_serve_from_worker_processes(
    server_class: type[trioserve.SocketServer], handler_class: type[Any], tmp_path: Path
) -> None:
    unix = server_class.address_family == socket.AF_UNIX
    address: Any = str(tmp_path / "s.sock") if unix else None
    with server_class(address or ("127.0.0.1", 0), handler_class, max_children=2) as server:
        async with serving(server):
            pids = server.worker_pids  # type: ignore[attr-defined]
            assert len(pids) == 2
            assert os.getpid() not in pids
            for _ in range(3):
                assert await ask_pid(server) in pids
        assert server.worker_pids == ()  # type: ignore[attr-defined]
    assert_reaped(pids)


async def test_requests_land_in_two_workers_under_concurrent_load() -> None:
    with ForkingTCPServer(("127.0.0.1", 0), LoopBlockingHandler, max_children=2) as server:
        async with serving(server), await connect(server) as first:
            first_pid = int(await read_line(first))
            # The worker answering the first holds its loop, so the second, open at
            # the same time, is accepted by the other worker.
            second = await connect(server)
            second_pid = int(await read_line(second))
            assert first_pid != second_pid
            assert {first_pid, second_pid} == set(server.worker_pids)
            await first.send_all(b"done\n")
            await second.send_all(b"done\n")
            await second.aclose()


async def test_default_worker_count_is_the_cpu_count() -> None:
    assert ForkingTCPServer.max_children is None
    with ForkingTCPServer(("127.0.0.1", 0), PidHandler) as server:
        async with serving(server):
            assert len(server.worker_pids) == (os.cpu_count() or 1)


async def test_server_attributes_are_copied_and_handler_state_stays_in_its_worker() -> None:
    with ForkingTCPServer(("127.0.0.1", 0), StatefulHandler, max_children=1) as server:
        server.greeting = "hello"  # type: ignore[attr-defined]
        async with serving(server):
            replies = []
            for _ in range(3):
                async with await connect(server) as stream:
                    replies.append((await read_line(stream)).split())
            (pid,) = server.worker_pids
            assert replies == [
                [b"%d" % pid, b"hello", b"1"],
                [b"%d" % pid, b"hello", b"2"],
                [b"%d" % pid, b"hello", b"3"],
            ]
            assert not hasattr(server, "hits")


async def test_worker_logs_reach_the_parents_logging_with_the_worker_pid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(("127.0.0.1", 0), PidHandler, max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            pids = server.worker_pids
            async with await connect(server) as stream:
                await stream.send_all(b"boom\n")
                assert await read_line(stream) == b""  # the handler failed; closed
            assert await ask_pid(server) in pids  # the worker keeps serving
            server.shutdown()
    records = trioserve_records(caplog, logging.INFO)
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in records]
    (error,) = errors
    assert error.getMessage().startswith("exception while handling a request from")
    assert "ValueError: boom in a worker" in (error.exc_text or "")
    assert error.process in pids
    assert (error.processName or "").startswith("trioserve-worker-")


# -- supervision ---------------------------------------------------------------------------


async def test_a_killed_worker_is_replaced_and_requests_are_still_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(("127.0.0.1", 0), LoopBlockingHandler, max_children=2) as server:
        async with serving(server):
            original = set(server.worker_pids)
            async with await connect(server) as doomed:
                victim = int(await read_line(doomed))
                os.kill(victim, signal.SIGKILL)
                assert await read_line(doomed) == b""
            # Two connections at once: the worker that takes the first blocks, so the
            # other is served by the other one; one of the two is the replacement.
            second = await connect(server)
            second_pid = int(await read_line(second))
            third = await connect(server)
            async with second, third:
                pids = {second_pid, int(await read_line(third))}
                assert len(pids) == 2
                assert victim not in pids
                assert len(pids - original) == 1
                await second.send_all(b"done\n")
                await third.send_all(b"done\n")
            assert_reaped([victim])
            assert set(server.worker_pids) == pids
    messages = [r.getMessage() for r in trioserve_records(caplog, logging.ERROR, exactly=True)]
    assert f"worker 0 (pid {victim}) exited (signal SIGKILL); starting a new one" in messages or (
        f"worker 1 (pid {victim}) exited (signal SIGKILL); starting a new one" in messages
    )


async def test_a_worker_stopped_by_sigterm_leaves_the_queued_connections_to_its_replacement() -> (
    None
):
    # One worker, one connection at a time: the second connection waits in the kernel's
    # queue. SIGTERM stops that worker alone, with no grace; the connection it holds ends,
    # but the queued one is not its to take: the replacement serves it.
    with ForkingTCPServer(
        ("127.0.0.1", 0), PidHandler, max_children=1, max_connections=1
    ) as server:
        async with serving(server):
            (victim,) = server.worker_pids
            async with await connect(server) as held, await connect(server) as queued:
                await held.send_all(b"pid?\n")
                assert int(await read_line(held)) == victim  # it holds the one slot
                await queued.send_all(b"pid?\n")
                os.kill(victim, signal.SIGTERM)
                assert await receive_until_eof(held) == b""  # cut: no grace
                replacement = int(await read_line(queued))
                assert replacement != victim
            assert_reaped([victim])  # before its replacement was started


def test_unpicklable_handler_fails_before_any_worker_starts() -> None:
    class LocalHandler(StreamRequestHandler):
        pass

    with ForkingTCPServer(("127.0.0.1", 0), LocalHandler) as server:
        with pytest.raises(TypeError, match=r"cannot send the handler class .*LocalHandler"):
            trio.run(server.serve_forever)
        assert server.worker_pids == ()


def test_handler_from_a_module_workers_cannot_import_fails_before_any_worker_starts() -> None:
    module = types.ModuleType("made_up_at_runtime")
    exec("import trioserve\nclass Handler(trioserve.StreamRequestHandler): pass", module.__dict__)
    sys.modules["made_up_at_runtime"] = module
    try:
        with (
            ForkingTCPServer(("127.0.0.1", 0), module.Handler) as server,
            pytest.raises(TypeError, match="'made_up_at_runtime' cannot be imported"),
        ):
            trio.run(server.serve_forever)
    finally:
        del sys.modules["made_up_at_runtime"]


def test_a_handler_defined_in_python_c_fails_before_any_worker_starts() -> None:
    script = textwrap.dedent(
        """
        import trio, trioserve

        class Handler(trioserve.StreamRequestHandler):
            pass

        with trioserve.ForkingTCPServer(("127.0.0.1", 0), Handler) as server:
            try:
                trio.run(server.serve_forever)
            except TypeError as exc:
                print(exc)
            print(server.worker_pids)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=PATIENCE
    )
    assert result.returncode == 0, result.stderr
    assert "ForkingTCPServer cannot send Handler to its worker processes" in result.stdout
    assert "`python -c`" in result.stdout
    assert result.stdout.endswith("()\n")  # no worker was started


def test_unpicklable_server_attribute_is_named() -> None:
    with ForkingTCPServer(("127.0.0.1", 0), PidHandler) as server:
        server.lock = threading.Lock()  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="cannot send the server attribute 'lock'"):
            trio.run(server.serve_forever)


async def test_a_spec_that_does_not_load_in_a_worker_ends_serve_forever_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(("127.0.0.1", 0), PidHandler, max_children=2) as server:
        server.config = LoadsNowhere()  # type: ignore[attr-defined]
        with pytest.raises(WorkerStartupError) as caught:
            await server.serve_forever()
    message = str(caught.value)
    assert "cannot load the server" in message
    assert "RuntimeError: this attribute does not load in a worker" in message
    # Not retried: it would fail the same way in every worker.
    records = trioserve_records(caplog, logging.INFO)
    assert not [r for r in records if "starting another" in r.getMessage()]
    assert server.worker_pids == ()


async def test_workers_failing_at_start_up_again_and_again_end_serve_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with NoDatabaseServer(("127.0.0.1", 0), PidHandler, max_children=2) as server:
        started = time.monotonic()
        with pytest.raises(WorkerStartupError, match="no database here") as caught:
            await server.serve_forever()
        elapsed = time.monotonic() - started
    assert "5 in a row" in str(caught.value)
    records = trioserve_records(caplog, logging.INFO)
    retries = [r for r in records if "failed to start; starting another" in r.msg]
    assert len(retries) == 4
    # Backoff between the attempts, not a hot loop: at least 0.1 s, then 0.2 s.
    assert elapsed >= 0.3


# -- stopping ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["shutdown-from-thread", "shutdown-in-task", "cancel"])
async def test_no_worker_outlives_serve_forever(how: str) -> None:
    with ForkingTCPServer(("127.0.0.1", 0), PidHandler, max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            pids = server.worker_pids
            assert await ask_pid(server) in pids
            if how == "shutdown-from-thread":
                # socketserver's semantics: returns once serve_forever has returned.
                await trio.to_thread.run_sync(server.shutdown)
                assert_reaped(pids)
            elif how == "shutdown-in-task":
                server.shutdown()
            else:
                nursery.cancel_scope.cancel()
        assert_reaped(pids)
        assert server.worker_pids == ()


async def test_a_handler_calling_shutdown_stops_the_whole_pool() -> None:
    with ForkingTCPServer(("127.0.0.1", 0), PidHandler, max_children=2) as server:
        with trio.fail_after(PATIENCE):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_forever)
                pids = server.worker_pids
                async with await connect(server) as stream:
                    await stream.send_all(b"quit\n")
                    assert int(await read_line(stream)) in pids
            # serve_forever returned by itself: nothing cancelled it.
        assert_reaped(pids)


async def test_shutdown_lets_in_flight_requests_finish_within_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    with ForkingTCPServer(("127.0.0.1", 0), SlowHandler, max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            pids = server.worker_pids
            async with await connect(server) as stream:
                await stream.send_all(b"start\n")
                pid = int((await read_line(stream)).split()[0])
                stopped = trio.Event()
                handler = logging.Handler()
                handler.emit = lambda record: (  # type: ignore[method-assign]
                    stopped.set()
                    if record.process == pid and "stops accepting" in record.getMessage()
                    else None
                )
                logging.getLogger("trioserve").addHandler(handler)
                try:
                    server.shutdown(grace=PATIENCE)
                    with trio.fail_after(PATIENCE):
                        await stopped.wait()  # the worker has stopped accepting
                finally:
                    logging.getLogger("trioserve").removeHandler(handler)
                await stream.send_all(b"end\n")
                assert await read_line(stream) == b"finished end\n"
        assert_reaped(pids)
    message = f"worker pid {pid} stops accepting; running handlers get {PATIENCE:g} s"
    assert message in [r.getMessage() for r in trioserve_records(caplog, logging.INFO)]


async def test_handlers_past_the_grace_are_cancelled() -> None:
    with ForkingTCPServer(("127.0.0.1", 0), SlowHandler, max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            pids = server.worker_pids
            async with await connect(server) as stream:
                await stream.send_all(b"start\n")
                await read_line(stream)
                with trio.fail_after(PATIENCE):
                    await trio.to_thread.run_sync(server.shutdown, 0.1)
                assert await read_line(stream) == b""  # cancelled, and closed
        assert_reaped(pids)


@pytest.mark.parametrize(
    ("on_sigterm", "killed"),
    [(signal.SIG_DFL, False), (signal.SIG_IGN, True)],
    ids=["dies-of-sigterm", "ignores-sigterm"],
)
async def test_a_worker_whose_loop_is_blocked_past_the_grace_is_terminated_or_killed(
    on_sigterm: signal.Handlers,
    killed: bool,
    mock_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="trioserve")
    with ForkingTCPServer(("127.0.0.1", 0), StuckHandler, max_children=1) as server:
        server.on_sigterm = on_sigterm  # type: ignore[attr-defined]
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            (pid,) = server.worker_pids
            async with await connect(server) as stream:
                assert int(await read_line(stream)) == pid
                await stream.send_all(b"block\n")  # its loop is blocked from now
                # The worker is up and stuck: from here on the parent only waits, on its
                # own deadlines, so the clock may jump whenever it has been idle a while.
                mock_clock.autojump_threshold = 0.2
                server.shutdown(grace=0)
                assert await receive_until_eof(stream) == b""  # ended at last
        assert_reaped([pid])
    messages = [r.getMessage() for r in trioserve_records(caplog, logging.WARNING)]
    assert f"worker pid {pid} did not stop in time; terminating it" in messages
    assert (f"worker pid {pid} did not terminate; killing it" in messages) is killed


PARENT_SCRIPT = """
import json, os, signal, sys
import trio, trioserve

class Handler(trioserve.StreamRequestHandler):  # in __main__: workers import this script
    async def handle(self):
        await self.wfile.write(b"%d\\n" % os.getpid())

async def main():
    with trioserve.ForkingTCPServer(("127.0.0.1", 0), Handler, max_children=2) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            print(json.dumps([server.server_address, server.worker_pids]), flush=True)

if __name__ == "__main__":
    # Python keeps SIGINT ignored when it starts so (a background job of a shell): undo that.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    trio.run(main)
"""


@pytest.mark.parametrize(
    "signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name
)
async def test_no_worker_outlives_its_parent(signum: int, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT_SCRIPT))
    with (tmp_path / "stderr.txt").open("wb") as stderr:
        parent = await trio.lowlevel.open_process(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT
        )
    try:
        assert parent.stdout is not None
        with trio.fail_after(PATIENCE):
            (host, port), pids = json.loads(await read_line(parent.stdout))
        async with await trio.open_tcp_stream(host, port) as stream:
            assert int(await read_line(stream)) in pids  # a handler defined in __main__
        parent.send_signal(signum)
        with trio.fail_after(PATIENCE):
            status = await parent.wait()
        if signum == signal.SIGKILL:
            for pid in pids:
                await wait_exited(pid)  # they notice their parent is gone, and exit
        else:
            # SIGTERM is a shutdown(); SIGINT a KeyboardInterrupt that ends the parent.
            assert status == 0 if signum == signal.SIGTERM else status in (1, -signal.SIGINT)
            assert_reaped(pids)  # the parent stopped and reaped them before it exited
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if parent.stdout is not None:
            await parent.stdout.aclose()


async def test_a_graceful_stop_refuses_new_connections_and_the_next_serve_listens_again() -> None:
    with ForkingTCPServer(("127.0.0.1", 0), PidHandler, max_children=2) as server:
        address = server.server_address
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            pids = server.worker_pids
            assert await ask_pid(server) in pids
            server.shutdown()
        assert_reaped(pids)
        # The parent and every worker let go of the socket: refused, not queued.
        with pytest.raises(OSError, match="failed"):
            await connect(server)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            assert server.server_address == address
            assert await ask_pid(server) in server.worker_pids
            server.shutdown()
