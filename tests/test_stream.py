"""Stream servers on loopback and Unix sockets: the accept loop, its errors, hostile clients."""

from __future__ import annotations

import errno
import logging
import os
import random
import resource
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioserve
from trioserve import (
    EchoHandler,
    StreamRequestHandler,
    TCPServer,
    ThreadingTCPServer,
)
from trioserve._stream import ACCEPT_CAPACITY_PAUSE
from trioserve.testing import connect, serving

from .conftest import needs_ipv6
from .helpers import (
    PATIENCE,
    LineReader,
    UpperHandler,
    read_line,
    receive_exactly,
    receive_until_eof,
    reset,
    roundtrip,
    script_socket_errors,
    trioserve_records,
)

LOCALHOST = ("127.0.0.1", 0)

pytestmark = pytest.mark.usefixtures("fd_leak_check")


@pytest.mark.parametrize(
    ("server_class", "address"),
    [
        pytest.param(ThreadingTCPServer, ("127.0.0.1", 0), id="tcp4"),
        pytest.param(ThreadingTCPServer, ("::1", 0), id="tcp6", marks=needs_ipv6),
        pytest.param(trioserve.ThreadingUnixStreamServer, None, id="unix"),
        pytest.param(TCPServer, ("127.0.0.1", 0), id="tcp4-plain"),
    ],
)
async def test_echo_round_trip(
    server_class: type[TCPServer], address: Any, tmp_path: Path
) -> None:
    with server_class(address or str(tmp_path / "s.sock"), UpperHandler) as server:
        async with serving(server):
            assert await roundtrip(server, b"hello\nworld\n") == b"HELLO\nWORLD\n"


@needs_ipv6
async def test_ipv6_host_selects_af_inet6() -> None:
    with TCPServer(("::1", 0), UpperHandler) as server:
        assert server.address_family == socket.AF_INET6
        assert server.server_address[0] == "::1"
        assert len(server.server_address) == 4


async def test_port_zero_is_resolved_in_the_constructor_outside_trio() -> None:
    def build() -> tuple[Any, int]:
        with TCPServer(("127.0.0.1", 0), UpperHandler) as server:
            return server.server_address, server.fileno()

    address, fileno = await trio.to_thread.run_sync(build)
    assert address[0] == "127.0.0.1"
    assert address[1] > 0
    assert fileno >= 0


# -- accept errors ---------------------------------------------------------------------------


async def knock(server: trioserve.SocketServer) -> None:
    """Connect, and wait for the server to close."""
    async with await connect(server) as stream:
        await receive_until_eof(stream)


@pytest.fixture
def scripted_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TCPServer, list[int]]]:
    """A server whose own socket's ``accept()`` raises the errnos put in the list first."""
    with TCPServer(LOCALHOST, EchoHandler) as server:
        errors: list[int] = []
        script_socket_errors(monkeypatch, server, "accept", errors)
        yield server, errors


async def test_transient_accept_errors_are_ignored(
    scripted_server: tuple[TCPServer, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    server, errors = scripted_server
    errors += [errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETUNREACH]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(knock, server)
        stream, _ = await server.get_request()
        await stream.aclose()
    assert errors == []
    assert trioserve_records(caplog, logging.ERROR, exactly=True) == []


async def test_running_out_of_descriptors_pauses_and_logs_once(
    scripted_server: tuple[TCPServer, list[int]],
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    server, errors = scripted_server
    errors += [errno.EMFILE] * 5 + [errno.ENFILE, errno.ENOBUFS, errno.ENOMEM]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(knock, server)
        start = trio.current_time()
        stream, _ = await server.get_request()
        await stream.aclose()
    assert trio.current_time() - start == pytest.approx(8 * ACCEPT_CAPACITY_PAUSE)
    [error] = trioserve_records(caplog, logging.ERROR, exactly=True)
    assert "Too many open files" in error.getMessage()
    assert len(trioserve_records(caplog, logging.DEBUG, exactly=True)) == 7


async def test_running_out_of_descriptors_for_real_pauses_until_one_is_free(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    with TCPServer(LOCALHOST, EchoHandler) as server:
        client = await connect(server)  # waits in the backlog: accepting it takes an fd
        # A soft limit at the lowest free descriptor: the next one the process opens, the
        # kernel refuses with EMFILE. Restored before anything else needs one.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.open(os.devnull, os.O_RDONLY)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            with trio.move_on_after(10 * ACCEPT_CAPACITY_PAUSE) as exhausted:
                await server.get_request()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert exhausted.cancelled_caught  # it waited, and did not raise
        async with client:
            stream, _ = await server.get_request()  # a descriptor is free again
            async with stream:
                await client.send_all(b"back\n")
                assert await receive_exactly(stream, 5) == b"back\n"
    [error] = trioserve_records(caplog, logging.ERROR, exactly=True)
    assert "Too many open files" in error.getMessage()
    assert len(trioserve_records(caplog, logging.DEBUG, exactly=True)) >= 5


async def test_a_socket_a_subclass_puts_in_place_is_accepted_from() -> None:
    # socketserver code may replace self.socket; the server accepts from whatever it is.
    with (
        socket.create_server(("127.0.0.1", 0)) as replacement,
        TCPServer(LOCALHOST, UpperHandler) as server,
    ):
        own = server.socket
        server.socket = trio.socket.from_stdlib_socket(replacement)
        try:
            address = replacement.getsockname()
            async with serving(server), await trio.open_tcp_stream(*address) as client:
                await client.send_all(b"swapped\n")
                assert await receive_exactly(client, 8) == b"SWAPPED\n"
        finally:
            own.close()


async def test_other_accept_errors_propagate() -> None:
    # Bound, not listening: the kernel refuses accept() with EINVAL.
    with TCPServer(LOCALHOST, EchoHandler, bind_and_activate=False) as server:
        server.server_bind()
        with pytest.raises(OSError, match="Invalid argument"):
            await server.get_request()


EMFILE_SERVER = """
import logging, os, resource, sys
import trio
import trioserve

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")


class Echo(trioserve.StreamRequestHandler):
    async def handle(self):
        async for line in self.rfile:
            if line == b"quit\\n":
                self.server.shutdown(grace=0)
                return
            await self.wfile.write(line)


async def main():
    with trioserve.ThreadingTCPServer(("127.0.0.1", 0), Echo) as server:
        # Room for about ten connections more than what is open now.
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 11, hard))
        print(server.server_address[1], flush=True)
        await server.serve_forever()


trio.run(main)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def test_descriptor_exhaustion_in_a_real_process_backs_off_and_recovers(
    tmp_path: Path,
) -> None:
    script = tmp_path / "emfile_server.py"
    script.write_text(textwrap.dedent(EMFILE_SERVER))
    process = await trio.lowlevel.open_process(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stderr is not None
    stderr = LineReader(process.stderr)
    clients: list[trio.SocketStream] = []
    try:
        port = int(await read_line(process.stdout))
        # Thirty clients, three times what the server has descriptors for.
        for _ in range(30):
            clients.append(await trio.open_tcp_stream("127.0.0.1", port))
        first_log = (await stderr.readline()).decode()
        assert first_log.startswith("ERROR accept() on ('127.0.0.1', ")
        assert "Too many open files" in first_log
        # It waits instead of spinning: over a second of exhaustion, little CPU time.
        before = cpu_seconds(process.pid)
        await trio.sleep(1.0)  # a measurement window, not a synchronisation
        assert cpu_seconds(process.pid) - before < 0.5
        # The first clients are served all along; then everyone leaves.
        await clients[0].send_all(b"still served\n")
        with trio.fail_after(PATIENCE):
            assert await receive_exactly(clients[0], 13) == b"still served\n"
        for client in clients:
            await client.aclose()
        clients.clear()
        # Descriptors are back: a new client is served (it may wait in the backlog while
        # the server works through the closed connections queued before it).
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(b"served again\n")
            with trio.fail_after(PATIENCE):
                assert await receive_exactly(client, 13) == b"served again\n"
            await client.send_all(b"quit\n")
        err = (await stderr.rest()).decode()
        with trio.fail_after(PATIENCE):
            await process.wait()
    finally:
        for client in clients:
            await client.aclose()
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()  # by PID: the process this test started
                await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()
    assert process.returncode == 0, err
    # Logged once as an error; every retry after it at debug level (not shown here).
    assert [line for line in (first_log + err).splitlines() if line.startswith("ERROR")] == [
        first_log.strip()
    ]


# -- robustness: hostile and broken clients --------------------------------------------------


class Service(StreamRequestHandler):
    """A line protocol: ``big`` gets 8 MiB back, ``fail`` raises, anything else echoes."""

    timeout = 5
    max_line_length = 1024

    async def handle(self) -> None:
        async for line in self.rfile:
            if line == b"big\n":
                await self.wfile.write(b"y" * (8 << 20))
            elif line == b"fail\n":
                raise RuntimeError("the handler failed on purpose")
            else:
                await self.wfile.write(line.upper())


async def test_broken_clients_never_disturb_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done = trio.Semaphore(0)

    class Counted(Service):
        async def handle(self) -> None:
            try:
                await super().handle()
            finally:
                done.release()

    async with ThreadingTCPServer(LOCALHOST, Counted) as server, serving(server):
        address = server.server_address

        def attack() -> None:
            # Nothing at all.
            socket.create_connection(address).close()
            # Half a line, then a reset.
            sock = socket.create_connection(address)
            sock.sendall(b"half a li")
            reset(sock)
            # A reset while the server writes 8 MiB the client never reads.
            sock = socket.create_connection(address)
            sock.sendall(b"big\n")
            reset(sock)
            # Garbage: no line end, NUL bytes, invalid UTF-8, more than max_line_length.
            sock = socket.create_connection(address)
            sock.sendall(bytes(range(256)).replace(b"\n", b"") * 8)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            while sock.recv(65536):
                pass
            sock.close()

        await trio.to_thread.run_sync(attack)
        with trio.fail_after(30):  # sanity bound
            for _ in range(4):
                await done.acquire()
        # A client that half-closes still gets its whole answer.
        async with await connect(server) as polite:
            await polite.send_all(b"one\ntwo\n")
            await polite.send_eof()
            assert await receive_until_eof(polite) == b"ONE\nTWO\n"
    errors = trioserve_records(caplog, logging.ERROR, exactly=True)
    assert errors == [], [r.getMessage() for r in errors]
    [warning] = trioserve_records(caplog, logging.WARNING, exactly=True)
    assert "max_line_length" in warning.getMessage()


async def test_one_failing_handler_among_a_hundred_clients(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers: dict[int, bytes] = {}
    async with ThreadingTCPServer(LOCALHOST, Service) as server, serving(server):
        ready = trio.Event()
        connected = 0

        async def client(number: int) -> None:
            nonlocal connected
            async with await connect(server) as stream:
                connected += 1
                if connected == 101:
                    ready.set()
                await ready.wait()  # all 101 connections are open at once
                if number == 0:
                    await stream.send_all(b"fail\n")
                    answers[number] = await receive_until_eof(stream)
                    return
                line = b"client %d\n" % number
                await stream.send_all(line)
                answers[number] = await receive_exactly(stream, len(line))

        with trio.fail_after(30):  # sanity bound
            async with trio.open_nursery() as nursery:
                for number in range(101):
                    nursery.start_soon(client, number)
    assert answers.pop(0) == b""  # the failing one is closed, not left hanging
    assert answers == {n: b"CLIENT %d\n" % n for n in range(1, 101)}
    [error] = trioserve_records(caplog, logging.ERROR, exactly=True)
    assert error.exc_info is not None
    assert str(error.exc_info[1]) == "the handler failed on purpose"


async def test_random_garbage_never_crashes_the_server() -> None:
    rng = random.Random(20240607)
    async with ThreadingTCPServer(LOCALHOST, Service) as server, serving(server):
        for _ in range(40):
            payload = rng.randbytes(rng.choice([0, 1, 17, 1023, 1024, 1025, 5000]))
            ending = rng.choice(["close", "reset", "half-close"])
            sock = trio.socket.socket()
            await sock.connect(server.server_address)
            try:
                if payload:
                    await sock.send(payload)
            except OSError:
                pass  # the server may have closed first: that is its right
            if ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            elif ending == "half-close":
                sock.shutdown(socket.SHUT_WR)
                with trio.fail_after(10):
                    await receive_until_eof(trio.SocketStream(sock))
            sock.close()
        # Still serving, and serving well.
        assert await roundtrip(server, b"alive\n") == b"ALIVE\n"


@pytest.fixture
def descriptors_for(request: pytest.FixtureRequest) -> Iterator[None]:
    """Raise the soft descriptor limit (within the hard one) for the test, then restore it."""
    needed: int = request.param
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard descriptor limit {hard} is under the {needed} needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("descriptors_for", [4096 + 2 * 2000], indirect=True)
@pytest.mark.usefixtures("descriptors_for")
async def test_two_thousand_connections_in_rounds_leave_no_descriptor_behind() -> None:
    clients = 2000
    counts: list[int] = []
    async with ThreadingTCPServer(LOCALHOST, EchoHandler) as server, serving(server):
        baseline = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            echoed = 0
            all_open = trio.Event()

            async def client(all_open: trio.Event) -> None:
                nonlocal echoed
                sock = trio.socket.socket()
                try:
                    await sock.connect(server.server_address)
                    stream = trio.SocketStream(sock)
                except BaseException:
                    sock.close()
                    raise
                async with stream:
                    await stream.send_all(b"!")
                    assert await receive_exactly(stream, 1) == b"!"
                    echoed += 1
                    if echoed == clients:
                        all_open.set()
                    await all_open.wait()  # all 2,000 are open at once
                    await stream.send_eof()
                    assert await receive_until_eof(stream) == b""

            with trio.fail_after(60):  # sanity bound
                async with trio.open_nursery() as nursery:
                    for _ in range(clients):
                        nursery.start_soon(client, all_open)
            await trio.testing.wait_all_tasks_blocked()  # the server's closes are done
            counts.append(len(os.listdir("/proc/self/fd")))
    assert counts == [baseline] * 3


class KeepsOpen(ThreadingTCPServer):
    """A server whose hooks leave every connection open: only the last close remains."""

    async def shutdown_request(self, request: Any) -> None:
        pass

    async def close_request(self, request: Any) -> None:
        pass


@pytest.mark.parametrize("ending", ["returns", "raises", "cancelled"])
async def test_every_connection_is_closed_at_its_end_whatever_the_hooks_did(ending: str) -> None:
    class Handler(StreamRequestHandler):
        async def handle(self) -> None:
            await self.wfile.write(await self.rfile.readline())
            if ending == "raises":
                raise RuntimeError("handler broke")
            if ending == "cancelled":
                self.server.shutdown(grace=0)
                await trio.sleep_forever()

    class Quiet(KeepsOpen):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass

    with Quiet(LOCALHOST, Handler) as server:
        baseline = len(os.listdir("/proc/self/fd"))
        async with serving(server):
            for _ in range(1 if ending == "cancelled" else 20):
                async with await connect(server) as client:
                    await client.send_all(b"line\n")
                    with trio.fail_after(PATIENCE):
                        assert await receive_until_eof(client) == b"line\n"
            await trio.testing.wait_all_tasks_blocked()
            assert len(os.listdir("/proc/self/fd")) <= baseline
