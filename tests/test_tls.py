"""TLS on stream servers: ``ssl_context``, the handshake and its timeout, attacked on loopback."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

import trioserve
from trioserve import (
    StreamRequestHandler,
    SyncStreamRequestHandler,
    TCPServer,
    ThreadingTCPServer,
    ThreadingUnixStreamServer,
)
from trioserve._stream import CLOSE_TIMEOUT
from trioserve.testing import connect, serving

from .helpers import receive_exactly, receive_until_eof, trioserve_records

pytestmark = pytest.mark.usefixtures("fd_leak_check")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class UpperHandler(StreamRequestHandler):
    """Upper-cases lines; records the type of its request."""

    requests: list[type] = []  # noqa: RUF012

    async def handle(self) -> None:
        type(self).requests.append(type(self.request))
        async for line in self.rfile:
            await self.wfile.write(line.upper())


@pytest.fixture
def upper_handler() -> type[UpperHandler]:
    class Handler(UpperHandler):
        requests: list[type] = []  # noqa: RUF012

    return Handler


async def open_tls(
    server: trioserve.SocketServer, context: ssl.SSLContext
) -> trio.SSLStream[trio.SocketStream]:
    hostname = "localhost" if server.address_family == socket.AF_UNIX else "127.0.0.1"
    stream = trio.SSLStream(await connect(server), context, server_hostname=hostname)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_tls_round_trip_and_the_handler_gets_an_ssl_stream(
    transport: str,
    tmp_path: Path,
    upper_handler: type[UpperHandler],
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    server: TCPServer
    if transport == "tcp":
        server = ThreadingTCPServer(("127.0.0.1", 0), upper_handler, ssl_context=server_context)
    else:
        server = ThreadingUnixStreamServer(
            str(tmp_path / "tls.sock"), upper_handler, ssl_context=server_context
        )
    async with server, serving(server):
        client = await open_tls(server, client_context)
        async with client:
            await client.send_all(b"secret\nlines\n")
            assert await receive_exactly(client, 13) == b"SECRET\nLINES\n"
    assert upper_handler.requests == [trio.SSLStream]


async def test_plaintext_client_is_dropped_at_debug_level_and_serving_goes_on(
    caplog: pytest.LogCaptureFixture,
    upper_handler: type[UpperHandler],
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    async with (
        ThreadingTCPServer(("127.0.0.1", 0), upper_handler, ssl_context=server_context) as server,
        serving(server),
    ):
        async with await connect(server) as plain:
            await plain.send_all(b"GET / HTTP/1.0\r\n\r\n")
            with trio.fail_after(10):  # sanity bound: the server answers at once
                await receive_until_eof(plain)
        client = await open_tls(server, client_context)
        async with client:
            await client.send_all(b"after\n")
            assert await receive_exactly(client, 6) == b"AFTER\n"
    # The handler ran only for the TLS client, and the failed handshake is not an error.
    assert upper_handler.requests == [trio.SSLStream]
    assert not trioserve_records(caplog, logging.INFO)
    debug = [r.getMessage() for r in trioserve_records(caplog, logging.DEBUG)]
    assert len(debug) == 1
    assert debug[0].startswith("TLS handshake with ('127.0.0.1', ")


async def test_garbage_and_truncated_handshakes_never_reach_handle_error(
    caplog: pytest.LogCaptureFixture,
    upper_handler: type[UpperHandler],
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    handle_error_calls: list[Any] = []

    class Server(ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            handle_error_calls.append(client_address)

    # A real ClientHello, cut short; random bytes; a TLS record header claiming 16 KiB.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_object = client_context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        client_object.do_handshake()
    client_hello = outgoing.read()
    attacks = [
        client_hello[: len(client_hello) // 2],
        bytes(range(256)) * 4,
        b"\x16\x03\x01\x40\x00" + b"\0" * 100,
        b"",
    ]
    server = Server(("127.0.0.1", 0), upper_handler, ssl_context=server_context)
    async with server, serving(server):
        for attack in attacks:
            async with await connect(server) as raw:
                if attack:
                    await raw.send_all(attack)
                await raw.send_eof()
                with trio.fail_after(10):  # sanity bound
                    await receive_until_eof(raw)
        client = await open_tls(server, client_context)
        async with client:
            await client.send_all(b"still here\n")
            assert await receive_exactly(client, 11) == b"STILL HERE\n"
    assert handle_error_calls == []
    assert upper_handler.requests == [trio.SSLStream]
    assert not trioserve_records(caplog, logging.INFO)
    assert len(trioserve_records(caplog, logging.DEBUG)) == len(attacks)


async def test_handshake_timeout_disconnects_a_silent_client(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    upper_handler: type[UpperHandler],
    server_context: ssl.SSLContext,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    async with (
        ThreadingTCPServer(
            ("127.0.0.1", 0), upper_handler, ssl_context=server_context, ssl_handshake_timeout=30
        ) as server,
        serving(server),
        await connect(server) as silent,
    ):
        start = trio.current_time()
        assert await receive_until_eof(silent) == b""
        assert trio.current_time() - start == pytest.approx(30)
    assert upper_handler.requests == []
    [record] = trioserve_records(caplog, logging.DEBUG)
    assert "no handshake within 30.0 seconds" in record.getMessage()


async def test_default_handshake_timeout_is_ten_seconds(
    autojump_clock: trio.testing.MockClock,
    upper_handler: type[UpperHandler],
    server_context: ssl.SSLContext,
) -> None:
    server = ThreadingTCPServer(("127.0.0.1", 0), upper_handler, ssl_context=server_context)
    assert server.ssl_handshake_timeout == 10.0
    async with server, serving(server), await connect(server) as silent:
        start = trio.current_time()
        await receive_until_eof(silent)
        assert trio.current_time() - start == pytest.approx(10)


async def test_a_stalled_handshake_does_not_hold_up_the_accept_loop(
    upper_handler: type[UpperHandler],
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    async with (
        ThreadingTCPServer(("127.0.0.1", 0), upper_handler, ssl_context=server_context) as server,
        serving(server),
    ):
        # Ten clients connect and never say a word; the server waits up to 10 s on each.
        silent = [await connect(server) for _ in range(10)]
        try:
            with trio.fail_after(5):  # well under the handshake timeout
                client = await open_tls(server, client_context)
                async with client:
                    await client.send_all(b"served\n")
                    assert await receive_exactly(client, 7) == b"SERVED\n"
        finally:
            for stream in silent:
                await stream.aclose()


async def test_client_certificates_are_required_when_the_context_says_so(
    ca: trustme.CA,
    caplog: pytest.LogCaptureFixture,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    mutual = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(mutual)
    ca.configure_trust(mutual)
    mutual.verify_mode = ssl.CERT_REQUIRED
    with_cert = ssl.create_default_context()
    ca.configure_trust(with_cert)
    ca.issue_cert("client@example.org").configure_cert(with_cert)
    peers: list[Any] = []

    class WhoHandler(StreamRequestHandler):
        async def handle(self) -> None:
            assert isinstance(self.request, trio.SSLStream)
            peer = self.request.getpeercert()
            peers.append(peer)
            await self.wfile.write(b"hello\n")

    async with (
        ThreadingTCPServer(("127.0.0.1", 0), WhoHandler, ssl_context=mutual) as server,
        serving(server),
    ):
        # Without a certificate: TLS 1.3 lets the client finish first; the server refuses.
        anonymous = await open_tls(server, client_context)
        async with anonymous:
            with trio.fail_after(10):
                assert await receive_until_eof(anonymous) == b""
        client = await open_tls(server, with_cert)
        async with client:
            assert await receive_exactly(client, 6) == b"hello\n"
    assert len(peers) == 1
    assert ("email", "client@example.org") in peers[0]["subjectAltName"]
    failures = [r.getMessage() for r in trioserve_records(caplog, logging.DEBUG)]
    assert len(failures) == 1
    assert "certificate" in failures[0].lower()


async def test_sync_handler_over_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    kinds: list[type] = []

    class SyncUpper(SyncStreamRequestHandler):
        def handle(self) -> None:
            kinds.append(type(self.request))
            for line in self.rfile:
                self.wfile.write(line.upper())

    async with (
        ThreadingTCPServer(("127.0.0.1", 0), SyncUpper, ssl_context=server_context) as server,
        serving(server),
    ):
        client = await open_tls(server, client_context)
        async with client:
            await client.send_all(b"blocking\ncode\n")
            assert await receive_exactly(client, 14) == b"BLOCKING\nCODE\n"
    assert kinds == [trioserve.StreamSocket]


async def test_a_tls_peer_that_never_reads_is_dropped_and_frees_its_slot(
    autojump_clock: trio.testing.MockClock,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    # The handler floods a client that never reads, until its write timeout ends it;
    # the only slot (max_connections=1) is given back, and the next client is served.
    flooded = trio.Event()

    class Flood(StreamRequestHandler):
        timeout = 5

        async def handle(self) -> None:
            if await self.rfile.readline() != b"flood\n":
                await self.wfile.write(b"ok\n")
                return
            try:
                for _ in range(100_000):  # bounded: the send buffer fills long before
                    await self.wfile.write(b"x" * 65536)
            except TimeoutError:
                flooded.set()

    async with (
        ThreadingTCPServer(
            ("127.0.0.1", 0), Flood, ssl_context=server_context, max_connections=1
        ) as server,
        serving(server),
    ):
        greedy = await open_tls(server, client_context)
        async with greedy:
            await greedy.send_all(b"flood\n")
            start = trio.current_time()
            await flooded.wait()
            assert trio.current_time() - start == pytest.approx(5)
            with trio.fail_after(30):
                polite = await open_tls(server, client_context)
                async with polite:
                    await polite.send_all(b"hi\n")
                    assert await receive_exactly(polite, 3) == b"ok\n"


class StuckOnClose(trio.abc.Stream):
    """A stream whose clean close never completes (a TLS close_notify into a full buffer)."""

    def __init__(self) -> None:
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    async def wait_send_all_might_not_block(self) -> None:
        raise NotImplementedError

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.closed = True  # cancelled: closed abruptly, as Trio's streams do


async def test_closing_a_connection_is_bounded_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stuck = StuckOnClose()
    with TCPServer(("127.0.0.1", 0), StreamRequestHandler) as server:
        start = trio.current_time()
        await server.shutdown_request(stuck)
    assert trio.current_time() - start == pytest.approx(CLOSE_TIMEOUT)
    assert stuck.closed


async def test_handle_request_on_a_sequential_tls_server(
    upper_handler: type[UpperHandler],
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    with TCPServer(("127.0.0.1", 0), upper_handler, ssl_context=server_context) as server:
        async with trio.open_nursery() as nursery:

            async def client() -> None:
                stream = await open_tls(server, client_context)
                async with stream:
                    await stream.send_all(b"one\n")
                    assert await receive_exactly(stream, 4) == b"ONE\n"

            nursery.start_soon(client)
            await server.handle_request()
    assert upper_handler.requests == [trio.SSLStream]


def test_ssl_options_are_checked(client_context: ssl.SSLContext) -> None:
    with pytest.raises(ValueError, match=r"ssl_context is a client context.*CLIENT_AUTH"):
        TCPServer(("127.0.0.1", 0), StreamRequestHandler, ssl_context=client_context)
    with pytest.raises(TypeError, match=r"ssl_context must be an ssl\.SSLContext or None"):
        TCPServer(("127.0.0.1", 0), StreamRequestHandler, ssl_context="cert.pem")
    with pytest.raises(ValueError, match="ssl_handshake_timeout must be >= 0"):
        TCPServer(("127.0.0.1", 0), StreamRequestHandler, ssl_handshake_timeout=-1)
    with pytest.raises(TypeError, match="ssl_https_compatible must be a bool"):
        TCPServer(("127.0.0.1", 0), StreamRequestHandler, ssl_https_compatible="yes")
