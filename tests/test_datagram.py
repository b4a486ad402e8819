"""Datagram servers end to end, on real loopback UDP and Unix datagram sockets."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import socketserver
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioserve
from trioserve import (
    BaseRequestHandler,
    DatagramRequestHandler,
    StreamRequestHandler,
    ThreadingUDPServer,
    ThreadingUnixDatagramServer,
    UDPServer,
    UnixDatagramServer,
)
from trioserve.testing import connect, exchange_datagram, run_datagram_handler, serving

from .conftest import needs_ipv6
from .helpers import script_socket_errors

pytestmark = pytest.mark.usefixtures("fd_leak_check")

#: Every exchange in these tests is bounded by this (loopback answers in microseconds).
PATIENCE = 5.0


class RawUpper(BaseRequestHandler):
    """Answers with ``sendto`` on the request's socket, as the issue describes."""

    async def handle(self) -> None:
        data, sock = self.request
        await sock.sendto(data.upper(), self.client_address)


class FileUpper(DatagramRequestHandler):
    async def handle(self) -> None:
        async for line in self.rfile:
            await self.wfile.write(line.upper())


class SyncFileUpper(DatagramRequestHandler):
    """A ported handler: plain ``def``, blocking files, run in a worker thread."""

    def handle(self) -> None:
        for line in self.rfile:  # type: ignore[attr-defined]  # io.BytesIO in sync mode
            self.wfile.write(line.upper())  # type: ignore[unused-coroutine]


class SyncRawUpper(BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data.upper(), self.client_address)


class StdlibUpper(socketserver.DatagramRequestHandler):
    """socketserver's own handler class, unchanged."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


HANDLERS = [
    pytest.param(RawUpper, id="raw-async"),
    pytest.param(FileUpper, id="files-async"),
    pytest.param(SyncRawUpper, id="raw-sync"),
    pytest.param(SyncFileUpper, id="files-sync"),
    pytest.param(StdlibUpper, id="socketserver"),
]

SERVERS = [
    pytest.param(ThreadingUDPServer, ("127.0.0.1", 0), id="udp4"),
    pytest.param(ThreadingUDPServer, ("::1", 0), id="udp6", marks=needs_ipv6),
    pytest.param(ThreadingUnixDatagramServer, None, id="unix"),
    pytest.param(UDPServer, ("127.0.0.1", 0), id="udp4-plain"),
    pytest.param(UnixDatagramServer, None, id="unix-plain"),
]


@contextlib.asynccontextmanager
async def udp_client(server: trioserve.SocketServer) -> AsyncIterator[trio.socket.SocketType]:
    """A UDP socket connected to *server*, closed on exit."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        await client.connect(server.server_address)
        yield client


async def exchange(server: trioserve.SocketServer, data: bytes) -> bytes:
    with trio.fail_after(PATIENCE):
        return await exchange_datagram(server, data)


def bound_unix_client(path: Path) -> socket.socket:
    """A Unix datagram client bound to *path*, so that replies can reach it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    return caplog


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(("server_class", "address"), SERVERS)
@pytest.mark.parametrize("handler_class", HANDLERS)
async def test_round_trip(
    server_class: type[UDPServer], address: Any, handler_class: Any, tmp_path: Path
) -> None:
    with server_class(address or str(tmp_path / "d.sock"), handler_class) as server:
        assert server.socket_type == socket.SOCK_DGRAM
        async with serving(server):
            assert await exchange(server, b"hello\nworld\n") == b"HELLO\nWORLD\n"
            assert await exchange(server, b"again") == b"AGAIN"


async def test_the_request_is_the_data_and_the_servers_trio_socket() -> None:
    seen: list[Any] = []

    class Record(BaseRequestHandler):
        async def handle(self) -> None:
            seen.append(self.request)
            await self.request[1].sendto(b"ok", self.client_address)

    with UDPServer(("127.0.0.1", 0), Record) as server:
        async with serving(server):
            assert await exchange(server, b"ping") == b"ok"
    ((data, sock),) = seen
    assert data == b"ping"
    assert sock is server.socket
    assert isinstance(sock, trio.socket.SocketType)


async def test_datagram_handler_sets_packet_and_socket() -> None:
    seen: list[Any] = []

    class Record(DatagramRequestHandler):
        async def handle(self) -> None:
            seen.append((self.packet, self.socket, await self.rfile.read()))
            await self.wfile.write(b"ok")

    with UDPServer(("127.0.0.1", 0), Record) as server:
        async with serving(server):
            assert await exchange(server, b"one\ntwo") == b"ok"
    assert seen == [(b"one\ntwo", server.socket, b"one\ntwo")]


async def test_one_handler_body_serves_a_stream_and_a_datagram_server(tmp_path: Path) -> None:
    class LineCounter:
        """The body: numbers each line it reads. Written once, used twice."""

        rfile: Any  # an AsyncReader under both servers
        wfile: Any  # an AsyncWriter under both servers

        async def handle(self) -> None:
            number = 0
            async for line in self.rfile:
                number += 1
                await self.wfile.write(b"%d %s" % (number, line))
            await self.wfile.write(b"%d lines\n" % number)

    class StreamCounter(LineCounter, StreamRequestHandler):
        pass

    class DatagramCounter(LineCounter, DatagramRequestHandler):
        pass

    request = b"alpha\nbeta\n"
    expected = b"1 alpha\n2 beta\n2 lines\n"
    with (
        trioserve.ThreadingTCPServer(("127.0.0.1", 0), StreamCounter) as tcp,
        ThreadingUDPServer(("127.0.0.1", 0), DatagramCounter) as udp,
        ThreadingUnixDatagramServer(str(tmp_path / "d.sock"), DatagramCounter) as unix,
    ):
        async with serving(tcp), serving(udp), serving(unix):
            async with await connect(tcp) as stream:
                await stream.send_all(request)
                await stream.send_eof()
                received = b""
                with trio.fail_after(PATIENCE):
                    while chunk := await stream.receive_some():
                        received += chunk
            assert received == expected
            assert await exchange(udp, request) == expected
            assert await exchange(unix, request) == expected


# -- the reply: once, after finish, only if written -----------------------------------------


async def test_the_reply_is_sent_once_after_finish_with_what_finish_wrote() -> None:
    class Framed(DatagramRequestHandler):
        async def handle(self) -> None:
            await self.wfile.write(b"body;")
            await self.wfile.flush()  # one request, one reply: this sends nothing yet
            await self.wfile.writelines([b"more", b";"])

        async def finish(self) -> None:
            await self.wfile.write(b"trailer")
            await super().finish()

    with UDPServer(("127.0.0.1", 0), Framed) as server:
        async with serving(server), udp_client(server) as client:
            await client.send(b"x")
            with trio.fail_after(PATIENCE):
                assert await client.recv(100) == b"body;more;trailer"
            # And nothing else: the next datagram is the next request's reply.
            await client.send(b"y")
            with trio.fail_after(PATIENCE):
                assert await client.recv(100) == b"body;more;trailer"


async def test_a_handler_that_writes_nothing_sends_nothing() -> None:
    class Quiet(DatagramRequestHandler):
        async def handle(self) -> None:
            if self.packet == b"speak":
                await self.wfile.write(b"")  # an explicit empty reply is still a reply

    with UDPServer(("127.0.0.1", 0), Quiet) as server:
        async with serving(server), udp_client(server) as client:
            await client.send(b"quiet")
            await client.send(b"speak")
            with trio.fail_after(PATIENCE):
                # The first datagram back is the empty reply to "speak".
                assert await client.recv(100) == b""


async def test_a_finish_override_without_super_still_sends_the_reply() -> None:
    class Forgetful(DatagramRequestHandler):
        async def handle(self) -> None:
            await self.wfile.write(b"sent anyway")

        async def finish(self) -> None:
            pass

    with UDPServer(("127.0.0.1", 0), Forgetful) as server:
        async with serving(server):
            assert await exchange(server, b"x") == b"sent anyway"


async def test_a_failing_handler_goes_to_handle_error_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fragile(DatagramRequestHandler):
        async def handle(self) -> None:
            await self.wfile.write(b"partial ")
            if self.packet == b"boom":
                raise LookupError("handler failed on purpose")
            await self.wfile.write(b"fine")

    # One at a time, so "boom" is reported before "ok" is answered.
    with UDPServer(("127.0.0.1", 0), Fragile) as server:
        async with serving(server):
            # As a stream handler's wfile is flushed, what was written still goes out.
            assert await exchange(server, b"boom") == b"partial "
            assert await exchange(server, b"ok") == b"partial fine"
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "exception while handling a request" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], LookupError)


async def test_a_reply_too_long_for_a_datagram_goes_to_handle_error() -> None:
    errors: list[BaseException | None] = []

    class Huge(DatagramRequestHandler):
        async def handle(self) -> None:
            size = 70_000 if self.packet == b"huge" else 3
            await self.wfile.write(b"x" * size)

    class Server(UDPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(sys.exc_info()[1])

    with Server(("127.0.0.1", 0), Huge) as server:
        async with serving(server), udp_client(server) as client:
            await client.send(b"huge")
            await client.send(b"small")
            with trio.fail_after(PATIENCE):
                assert await client.recv(100) == b"xxx"
    (error,) = errors
    assert isinstance(error, OSError)
    assert error.errno == errno.EMSGSIZE


async def test_readline_in_a_datagram_honours_max_line_length() -> None:
    class Lines(DatagramRequestHandler):
        max_line_length = 8

        async def handle(self) -> None:
            try:
                line = await self.rfile.readline()
            except trioserve.LineTooLongError:
                await self.wfile.write(b"too long")
                return
            await self.wfile.write(line + await self.rfile.read())

    with UDPServer(("127.0.0.1", 0), Lines) as server:
        async with serving(server):
            assert await exchange(server, b"short\nrest") == b"short\nrest"
            assert await exchange(server, b"a line that is too long\n") == b"too long"


# -- oversized datagrams -------------------------------------------------------------------


@pytest.mark.parametrize("server_class", [UDPServer, UnixDatagramServer], ids=["udp", "unix"])
async def test_an_oversized_datagram_is_truncated_and_the_server_keeps_serving(
    server_class: type[UDPServer], tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    class Length(BaseRequestHandler):
        async def handle(self) -> None:
            data, sock = self.request
            await sock.sendto(b"%d %s" % (len(data), data[-1:]), self.client_address)

    address = str(tmp_path / "d.sock") if server_class is UnixDatagramServer else ("127.0.0.1", 0)
    assert server_class.max_packet_size == 8192  # socketserver's default
    with server_class(address, Length) as server:
        async with serving(server):
            assert await exchange(server, b"a" * 8191 + b"b") == b"8192 b"
            assert await exchange(server, b"a" * 8192 + b"b" * 100) == b"8192 a"
            assert await exchange(server, b"small") == b"5 l"
    truncated = [r for r in debug_log.records if "truncated to 8192 bytes" in r.getMessage()]
    assert len(truncated) == 1
    assert truncated[0].levelno == logging.DEBUG


async def test_max_packet_size_is_an_option() -> None:
    with UDPServer(("127.0.0.1", 0), FileUpper, max_packet_size=4) as server:
        assert server.max_packet_size == 4
        async with serving(server):
            assert await exchange(server, b"abcdefgh") == b"ABCD"
    with pytest.raises(ValueError, match="max_packet_size must be at least 1"):
        UDPServer(("127.0.0.1", 0), FileUpper, max_packet_size=0)


# -- many datagrams, several clients ----------------------------------------------------------


async def test_a_thousand_datagrams_from_several_clients_are_all_answered_correctly() -> None:
    clients, per_client, window = 5, 200, 16
    wrong: list[tuple[bytes, bytes]] = []
    answered: set[bytes] = set()

    class Numbered(DatagramRequestHandler):
        async def handle(self) -> None:
            await self.wfile.write(b"re:" + await self.rfile.read())

    async def client(number: int, server: UDPServer) -> None:
        pending = {b"%d:%d" % (number, index) for index in range(per_client)}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            sock = trio.socket.from_stdlib_socket(raw)
            await sock.connect(server.server_address)
            # Loopback UDP may drop under load: resend what is unanswered, a window at a
            # time, in a bounded number of rounds.
            for _ in range(50):
                if not pending:
                    return
                batch = sorted(pending)[:window]
                for message in batch:
                    await sock.send(message)
                with trio.move_on_after(0.5):
                    for _ in batch:
                        reply = await sock.recv(100)
                        request = reply.removeprefix(b"re:")
                        if not reply.startswith(b"re:") or not request.startswith(b"%d:" % number):
                            wrong.append((request, reply))
                        pending.discard(request)
                        answered.add(request)

    with ThreadingUDPServer(("127.0.0.1", 0), Numbered) as server:
        with trio.fail_after(20):
            async with serving(server), trio.open_nursery() as nursery:
                for number in range(clients):
                    nursery.start_soon(client, number, server)
    assert wrong == []
    assert len(answered) == clients * per_client


# -- concurrency and backpressure ------------------------------------------------------------


async def test_the_nursery_variants_default_to_1024_datagrams_at_once() -> None:
    assert ThreadingUDPServer.max_concurrent_datagrams == 1024
    assert ThreadingUnixDatagramServer.max_concurrent_datagrams == 1024
    with pytest.raises(ValueError, match="max_concurrent_datagrams must be at least 1"):
        ThreadingUDPServer(("127.0.0.1", 0), FileUpper, max_concurrent_datagrams=0)
    with pytest.raises(TypeError, match="max_concurrent_datagrams must be an int"):
        ThreadingUDPServer(("127.0.0.1", 0), FileUpper, max_concurrent_datagrams="many")


async def test_at_the_limit_the_server_stops_receiving_until_a_slot_frees() -> None:
    running: list[bytes] = []
    release: dict[bytes, trio.Event] = {}

    class Held(DatagramRequestHandler):
        async def handle(self) -> None:
            running.append(self.packet)
            await release.setdefault(self.packet, trio.Event()).wait()
            await self.wfile.write(b"done " + self.packet)

    with ThreadingUDPServer(("127.0.0.1", 0), Held, max_concurrent_datagrams=2) as server:
        async with serving(server), udp_client(server) as client:
            for index in range(5):
                await client.send(b"%d" % index)
            await trio.testing.wait_all_tasks_blocked()
            # Two handlers run; the loop waits for a slot, and the other three
            # datagrams wait in the kernel.
            assert sorted(running) == [b"0", b"1"]
            release.setdefault(b"0", trio.Event()).set()
            with trio.fail_after(PATIENCE):
                assert await client.recv(100) == b"done 0"
            await trio.testing.wait_all_tasks_blocked()
            # One slot freed, one more datagram received.
            assert sorted(running) == [b"0", b"1", b"2"]
            for index in range(1, 5):
                release.setdefault(b"%d" % index, trio.Event()).set()
            replies = set()
            with trio.fail_after(PATIENCE):
                for _ in range(4):
                    replies.add(await client.recv(100))
            # Nothing was lost while the server was not receiving.
            assert replies == {b"done 1", b"done 2", b"done 3", b"done 4"}


async def test_the_plain_server_handles_one_datagram_at_a_time() -> None:
    active: list[int] = []
    most: list[int] = [0]

    class Slow(DatagramRequestHandler):
        async def handle(self) -> None:
            active.append(1)
            most[0] = max(most[0], len(active))
            await trio.testing.wait_all_tasks_blocked()
            active.pop()
            await self.wfile.write(self.packet)

    with UDPServer(("127.0.0.1", 0), Slow) as server:
        async with serving(server), udp_client(server) as client:
            for index in range(3):
                await client.send(b"%d" % index)
            with trio.fail_after(PATIENCE):
                assert [await client.recv(10) for _ in range(3)] == [b"0", b"1", b"2"]
    assert most == [1]


# -- Unix datagram clients that cannot be answered ----------------------------------------------


async def test_an_unbound_unix_client_is_not_answered_and_is_logged_once(
    tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    handled: list[bytes] = []
    errors: list[Any] = []

    class Counting(FileUpper):
        async def handle(self) -> None:
            handled.append(self.packet)
            await super().handle()

    # One at a time, so every datagram is handled before the bound client's reply comes.
    class Server(UnixDatagramServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(client_address)

    path = str(tmp_path / "d.sock")
    with Server(path, Counting) as server:
        async with serving(server):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
                for index in range(5):
                    unbound.sendto(b"unbound %d" % index, path)
            # A bound client after them is answered: its reply comes after their five.
            assert await exchange(server, b"bound\n") == b"BOUND\n"
    assert len(handled) == 6
    assert errors == []
    told = [r for r in debug_log.records if "no address of its own" in r.getMessage()]
    assert len(told) == 1
    assert told[0].levelno == logging.DEBUG
    assert not [r for r in debug_log.records if r.levelno >= logging.WARNING]


async def test_a_sync_handler_with_an_unbound_unix_client_logs_once_too(
    tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "d.sock")
    with UnixDatagramServer(path, SyncFileUpper) as server:
        async with serving(server):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
                for index in range(3):
                    unbound.sendto(b"unbound %d" % index, path)
            assert await exchange(server, b"bound") == b"BOUND"
    told = [r for r in debug_log.records if "no address of its own" in r.getMessage()]
    assert len(told) == 1
    assert not [r for r in debug_log.records if r.levelno >= logging.WARNING]


async def test_a_unix_client_that_is_gone_loses_its_reply_quietly(
    tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    started = trio.Event()
    go_on = trio.Event()

    class Late(DatagramRequestHandler):
        async def handle(self) -> None:
            if self.packet == b"late":
                started.set()
                await go_on.wait()
            await self.wfile.write(b"reply to " + self.packet)

    path = str(tmp_path / "d.sock")
    with ThreadingUnixDatagramServer(path, Late) as server:
        async with serving(server):
            with bound_unix_client(tmp_path / "client.sock") as client:
                client.sendto(b"late", path)
                with trio.fail_after(PATIENCE):
                    await started.wait()
            os.unlink(tmp_path / "client.sock")  # the client is gone, file and all
            go_on.set()
            await trio.testing.wait_all_tasks_blocked()  # the late reply has been tried
            assert await exchange(server, b"next") == b"reply to next"
    dropped = [r for r in debug_log.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1
    assert dropped[0].levelno == logging.DEBUG
    assert not [r for r in debug_log.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("handler_class", [FileUpper, SyncFileUpper], ids=["async", "sync"])
async def test_a_unix_client_that_does_not_read_loses_replies_and_stalls_nothing(
    handler_class: type[DatagramRequestHandler], tmp_path: Path
) -> None:
    sent = 30  # three times the default length of a Unix datagram queue on Linux
    handled: list[Any] = []
    all_handled = trio.Event()

    class Server(ThreadingUnixDatagramServer):
        async def process_request(self, request: Any, client_address: Any) -> None:
            await super().process_request(request, client_address)
            handled.append(request[0])
            if len(handled) == sent:
                all_handled.set()

    path = str(tmp_path / "d.sock")
    with Server(path, handler_class) as server:
        async with serving(server):
            with bound_unix_client(tmp_path / "client.sock") as client:

                def send_all() -> None:
                    # Blocking sends wait while the server's own queue is full. (Not
                    # connected: a Unix datagram socket connected to the server would get
                    # the server's replies past the queue limit.)
                    for index in range(sent):
                        client.sendto(b"%d" % index, path)
                    client.setblocking(False)

                await trio.to_thread.run_sync(send_all)
                with trio.fail_after(PATIENCE):
                    await all_handled.wait()  # every handler finishes; none waits or spins
                # What did fit in the client's queue is there and correct.
                replies = []
                while True:
                    try:
                        replies.append(client.recv(10))
                    except BlockingIOError:
                        break
                assert 0 < len(replies) < sent
                assert all(int(reply) in range(sent) for reply in replies)
            assert await exchange(server, b"still serving") == b"STILL SERVING"


# -- sync handlers' socket ----------------------------------------------------------------------


async def test_a_sync_handler_cannot_make_the_servers_socket_blocking() -> None:
    seen: list[Any] = []

    class Meddling(BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.setblocking(True)
            sock.settimeout(None)
            seen.append((sock.gettimeout(), isinstance(sock, socket.socket)))
            sock.sendto(data, self.client_address)

    with ThreadingUDPServer(("127.0.0.1", 0), Meddling) as server:
        async with serving(server):
            assert await exchange(server, b"one") == b"one"
            assert not os.get_blocking(server.fileno())
            # The serve loop still receives without blocking the Trio run.
            assert await exchange(server, b"two") == b"two"
    assert seen == [(None, True), (None, True)]


# -- lifecycle ----------------------------------------------------------------------------------


@pytest.mark.parametrize("server_class", [UDPServer, ThreadingUnixDatagramServer])
async def test_shutdown_and_cancellation_stop_serving_and_leave_no_fds(
    server_class: type[UDPServer], tmp_path: Path
) -> None:
    unix = server_class is ThreadingUnixDatagramServer
    path = tmp_path / "d.sock"
    with server_class(str(path) if unix else ("127.0.0.1", 0), FileUpper) as server:
        assert server.fileno() == server.socket.fileno()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            assert await exchange(server, b"a") == b"A"
            server.shutdown()
        # Cancellation: serve again, then cancel the scope around it.
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_forever)
                assert await exchange(server, b"b") == b"B"
                scope.cancel()
        assert scope.cancelled_caught
        assert server.fileno() >= 0  # the socket stays open until server_close
    assert server.fileno() == -1
    assert not path.exists()


async def test_shutdown_cancels_a_held_handler_after_the_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = trio.Event()
    cancelled: list[bool] = []

    class Holding(DatagramRequestHandler):
        async def handle(self) -> None:
            started.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled.append(True)
                raise

    with ThreadingUDPServer(("127.0.0.1", 0), Holding, shutdown_grace=3) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"hold", server.server_address)
                await started.wait()
            before = trio.current_time()
            server.shutdown()
        assert trio.current_time() - before == pytest.approx(3)
    assert cancelled == [True]


async def test_handle_request_serves_one_datagram_or_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timeouts: list[bool] = []

    class Server(UDPServer):
        def handle_timeout(self) -> None:
            timeouts.append(True)

    with (
        Server(("127.0.0.1", 0), FileUpper, timeout=0.05) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw,
    ):
        client = trio.socket.from_stdlib_socket(raw)
        await client.connect(server.server_address)
        await client.send(b"once")
        await server.handle_request()
        with trio.fail_after(PATIENCE):
            assert await client.recv(10) == b"ONCE"
        await server.handle_request()  # nothing comes
    assert timeouts == [True]


async def test_hooks_run_for_datagrams() -> None:
    calls: list[str] = []

    class Hooked(UDPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            calls.append("verify")
            return bool(request[0] != b"refused")

        async def service_actions(self) -> None:
            calls.append("service")

    with Hooked(("127.0.0.1", 0), FileUpper) as server:
        async with serving(server), udp_client(server) as client:
            await client.send(b"refused")
            await client.send(b"accepted")
            with trio.fail_after(PATIENCE):
                assert await client.recv(100) == b"ACCEPTED"
    assert calls[:4] == ["verify", "service", "verify", "service"]


async def test_from_socket_serves_a_bound_udp_socket() -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    with UDPServer.from_socket(raw, FileUpper) as server:
        assert server.server_address == raw.getsockname()
        async with serving(server):
            assert await exchange(server, b"adopted") == b"ADOPTED"
    assert raw.fileno() == -1


# -- receive errors -------------------------------------------------------------------------------


async def test_a_socket_a_subclass_puts_in_place_is_received_from() -> None:
    # socketserver code may replace self.socket; the server receives on whatever it is.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as replacement,
        UDPServer(("127.0.0.1", 0), RawUpper) as server,
    ):
        replacement.bind(("127.0.0.1", 0))
        own = server.socket
        server.socket = trio.socket.from_stdlib_socket(replacement)
        try:
            async with serving(server):
                with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                    await client.connect(replacement.getsockname())
                    await client.send(b"swapped")
                    with trio.fail_after(PATIENCE):
                        assert await client.recv(100) == b"SWAPPED"
        finally:
            own.close()


#: Linux's IP_RECVERR (not in every version of the socket module): report ICMP errors to
#: an unconnected UDP socket, as the error of its next receive.
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)


@pytest.mark.skipif(sys.platform != "linux", reason="IP_RECVERR is Linux's")
async def test_an_error_about_an_earlier_send_does_not_stop_the_loop(
    debug_log: pytest.LogCaptureFixture,
) -> None:
    with UDPServer(("127.0.0.1", 0), RawUpper) as server:
        # A real one: the server's socket sends to a closed port, the kernel answers with
        # ICMP port unreachable, and the next receive on the socket fails ECONNREFUSED.
        server.socket.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            gone.bind(("127.0.0.1", 0))
            closed = gone.getsockname()
        await server.socket.sendto(b"to nobody", closed)
        with trio.fail_after(PATIENCE):
            await trio.lowlevel.wait_readable(server.socket)  # the error is pending
        async with serving(server):
            assert await exchange(server, b"after") == b"AFTER"
    assert any("ignored" in r.getMessage() for r in debug_log.records)


async def test_running_out_of_buffers_pauses_then_receives_again(
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with UDPServer(("127.0.0.1", 0), RawUpper) as server:
        script_socket_errors(monkeypatch, server, "recvfrom", [errno.ENOBUFS])
        async with serving(server):
            assert await exchange(server, b"after") == b"AFTER"
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "pausing" in record.getMessage()


async def test_any_other_receive_error_propagates_out_of_serve_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with UDPServer(("127.0.0.1", 0), RawUpper) as server:
        script_socket_errors(monkeypatch, server, "recvfrom", [errno.EINVAL])
        invalid = pytest.RaisesExc(OSError, check=lambda exc: exc.errno == errno.EINVAL)
        with pytest.RaisesGroup(invalid, flatten_subgroups=True):
            await server.serve_forever()


@pytest.mark.parametrize("handler_class", [FileUpper, SyncFileUpper], ids=["async", "sync"])
async def test_a_reply_timeout_still_answers(handler_class: type[DatagramRequestHandler]) -> None:
    class Patient(handler_class):  # type: ignore[valid-type,misc]
        timeout = 2.0

    with UDPServer(("127.0.0.1", 0), Patient) as server:
        async with serving(server):
            assert await exchange(server, b"in time") == b"IN TIME"


async def test_a_sync_reply_too_long_for_a_datagram_goes_to_handle_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Huge(DatagramRequestHandler):
        def handle(self) -> None:
            size = 70_000 if self.packet == b"huge" else 3
            self.wfile.write(b"x" * size)  # type: ignore[unused-coroutine]

    # One at a time: "huge" is handled (and its error reported) before "small" is answered.
    with UDPServer(("127.0.0.1", 0), Huge) as server:
        async with serving(server), udp_client(server) as client:
            await client.send(b"huge")
            await client.send(b"small")
            with trio.fail_after(PATIENCE):
                assert await client.recv(100) == b"xxx"
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], OSError)
    assert record.exc_info[1].errno == errno.EMSGSIZE


async def test_a_datagram_handler_runs_without_a_server() -> None:
    assert await run_datagram_handler(FileUpper, b"no server\n") == [b"NO SERVER\n"]
    assert await run_datagram_handler(SyncFileUpper, b"sync\n") == [b"SYNC\n"]
