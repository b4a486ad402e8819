"""PROXY protocol on stream servers (`trioserve._proxied`), over real loopback sockets."""

from __future__ import annotations

import logging
import socket
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

from trioserve import (
    ForkingTCPServer,
    StreamRequestHandler,
    SyncStreamRequestHandler,
    ThreadingTCPServer,
)
from trioserve._proxy import encode_v1, encode_v2
from trioserve.testing import connect, serving

from .helpers import receive_until_eof


class WhoAmI(StreamRequestHandler):
    """Answers the client's address and the first line it sent."""

    seen: ClassVar[list[Any]] = []

    async def handle(self) -> None:
        type(self).seen.append(self.client_address)
        line = await self.rfile.readline()
        await self.wfile.write(f"{self.client_address!r} {line!r}\n".encode())


class SyncWhoAmI(SyncStreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(f"{self.client_address!r} {line!r}\n".encode())


class PidWhoAmI(StreamRequestHandler):
    async def handle(self) -> None:
        line = await self.rfile.readline()
        await self.wfile.write(f"{self.client_address!r} {line!r}\n".encode())


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "trioserve" and r.levelno >= logging.WARNING
    ]


async def ask(server: ThreadingTCPServer, data: bytes) -> bytes:
    async with await connect(server) as client:
        await client.send_all(data)
        return await receive_until_eof(client)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("handler", [WhoAmI, SyncWhoAmI])
async def test_the_handler_sees_the_client_behind_the_proxy_and_every_byte(
    version: int, handler: type[Any]
) -> None:
    header = (
        encode_v1(("203.0.113.7", 51234), ("192.0.2.1", 443))
        if version == 1
        else encode_v2(("203.0.113.7", 51234), ("192.0.2.1", 443))
    )
    with ThreadingTCPServer(("127.0.0.1", 0), handler, proxy_protocol=True) as server:
        async with serving(server):
            # The header and the first request in one packet: nothing after it is lost.
            reply = await ask(server, header + b"hello\n")
    assert reply == b"('203.0.113.7', 51234) b'hello\\n'\n"


async def test_an_ipv6_client_behind_the_proxy() -> None:
    header = encode_v2(("2001:db8::7", 40000, 0, 0), ("2001:db8::1", 80, 0, 0))
    with ThreadingTCPServer(("127.0.0.1", 0), WhoAmI, proxy_protocol=True) as server:
        async with serving(server):
            reply = await ask(server, header + b"x\n")
    assert reply.startswith(b"('2001:db8::7', 40000, 0, 0)")


async def test_a_local_header_health_check_keeps_the_proxys_address() -> None:
    with ThreadingTCPServer(("127.0.0.1", 0), WhoAmI, proxy_protocol=True) as server:
        async with serving(server), await connect(server) as client:
            await client.send_all(encode_v2() + b"ping\n")
            reply = await receive_until_eof(client)
            own = client.socket.getsockname()
    assert reply == f"{own!r} b'ping\\n'\n".encode()


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00", b"PROXY TCP9 x\r\n"]
)
async def test_no_valid_header_closes_without_the_handler_and_warns_once(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    WhoAmI.seen = []
    with ThreadingTCPServer(("127.0.0.1", 0), WhoAmI, proxy_protocol=True) as server:
        async with serving(server):
            assert await ask(server, data) == b""
            # Other clients are served meanwhile.
            assert await ask(server, encode_v1(("198.51.100.2", 1), ("192.0.2.1", 2)) + b"\n")
    assert WhoAmI.seen == [("198.51.100.2", 1)]
    [warning] = warnings(caplog)
    assert "PROXY header" in warning


async def test_an_untrusted_peer_is_closed_before_anything_is_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    WhoAmI.seen = []
    with ThreadingTCPServer(
        ("127.0.0.1", 0), WhoAmI, proxy_protocol=True, proxy_trusted=["10.0.0.0/8"]
    ) as server:
        async with serving(server):
            header = encode_v2(("203.0.113.7", 1), ("192.0.2.1", 2))
            assert await ask(server, header + b"hi\n") == b""
    assert WhoAmI.seen == []
    [warning] = warnings(caplog)
    assert "proxy_trusted" in warning


async def test_a_peer_that_never_sends_the_header_is_closed_at_the_deadline(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with ThreadingTCPServer(
        ("127.0.0.1", 0), WhoAmI, proxy_protocol=True, proxy_header_timeout=3
    ) as server:
        async with serving(server), await connect(server) as client:
            start = trio.current_time()
            assert await receive_until_eof(client) == b""
            assert trio.current_time() - start == pytest.approx(3, abs=0.1)
    [warning] = warnings(caplog)
    assert "no PROXY header within 3.0 s" in warning


@pytest.mark.parametrize(
    ("value", "error"), [(["not a network"], ValueError), ("127.0.0.1", TypeError)]
)
def test_bad_proxy_trusted_fails_at_construction(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="proxy_trusted"):
        ThreadingTCPServer(("127.0.0.1", 0), WhoAmI, proxy_trusted=value)


async def test_the_process_pool_workers_read_the_header_too() -> None:
    with ForkingTCPServer(
        ("127.0.0.1", 0), PidWhoAmI, proxy_protocol=True, max_children=1
    ) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_forever)
            header = encode_v2(("203.0.113.9", 4242), ("192.0.2.1", 2))
            with socket.create_connection(server.server_address[:2], timeout=30) as client:
                client.sendall(header + b"pool\n")
                reply = await trio.to_thread.run_sync(lambda: client.makefile("rb").read())
            server.shutdown()
    assert reply == b"('203.0.113.9', 4242) b'pool\\n'\n"
