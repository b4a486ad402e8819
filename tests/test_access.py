"""The access log: one line per connection and per datagram, in the documented format."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import pytest
import trio

from trioserve import (
    DatagramRequestHandler,
    StreamRequestHandler,
    ThreadingTCPServer,
    ThreadingUDPServer,
    ThreadingUnixStreamServer,
)
from trioserve._access import format_peer
from trioserve.testing import connect, exchange_datagram, serving

from .helpers import receive_until_eof

LINE = re.compile(
    r"^(?P<peer>\S+) (?P<transport>tcp|unix|udp|unix-dgram) (?P<duration>\d+\.\d{3})s "
    r"in=(?P<received>\d+|-) out=(?P<sent>\d+|-) (?P<ending>\S+)$"
)


class SizedHandler(StreamRequestHandler):
    async def handle(self) -> None:
        await self.rfile.read(120)
        await self.wfile.write(b"a" * 3400)


class FailingHandler(StreamRequestHandler):
    async def handle(self) -> None:
        raise RuntimeError("boom")


class SlowPeerHandler(StreamRequestHandler):
    timeout = 0.05

    async def handle(self) -> None:
        await self.rfile.readline()


class HoldingHandler(StreamRequestHandler):
    started = trio.Event()

    async def handle(self) -> None:
        type(self).started.set()
        await trio.sleep_forever()


class ReplyHandler(DatagramRequestHandler):
    async def handle(self) -> None:
        await self.wfile.write(b"pong")


def access_lines(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    lines = []
    for record in caplog.records:
        if record.name == "trioserve.access":
            match = LINE.match(record.getMessage())
            assert match is not None, record.getMessage()
            assert record.levelno == logging.INFO
            lines.append(match)
    return lines


async def test_a_connection_is_one_line_with_its_peer_and_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "trioserve.access")
    with ThreadingTCPServer(("127.0.0.1", 0), SizedHandler, access_log=True) as server:
        async with serving(server), await connect(server) as client:
            await client.send_all(b"q" * 120)
            assert len(await receive_until_eof(client)) == 3400
            port = client.socket.getsockname()[1]
    [line] = access_lines(caplog)
    assert line["peer"] == f"127.0.0.1:{port}"
    assert line["transport"] == "tcp"
    assert (line["received"], line["sent"], line["ending"]) == ("120", "3400", "closed")
    record = next(r for r in caplog.records if r.name == "trioserve.access")
    assert record.bytes_received == 120  # type: ignore[attr-defined]
    assert record.ending == "closed"  # type: ignore[attr-defined]


async def test_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trioserve.access")
    with ThreadingTCPServer(("127.0.0.1", 0), SizedHandler) as server:
        async with serving(server), await connect(server) as client:
            await client.send_all(b"q" * 120)
            await receive_until_eof(client)
    assert access_lines(caplog) == []


async def test_endings_error_timeout_and_cut(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trioserve.access")
    with ThreadingTCPServer(("127.0.0.1", 0), FailingHandler, access_log=True) as server:
        async with serving(server), await connect(server) as client:
            await receive_until_eof(client)
    with ThreadingTCPServer(("127.0.0.1", 0), SlowPeerHandler, access_log=True) as server:
        async with serving(server), await connect(server) as client:
            await receive_until_eof(client)
    with ThreadingTCPServer(("127.0.0.1", 0), HoldingHandler, access_log=True) as server:
        async with serving(server), await connect(server):
            await HoldingHandler.started.wait()
    assert [line["ending"] for line in access_lines(caplog)] == ["error", "timeout", "cut"]


async def test_a_datagram_is_one_line_with_its_size(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trioserve.access")
    with ThreadingUDPServer(("127.0.0.1", 0), ReplyHandler, access_log=True) as server:
        async with serving(server):
            assert await exchange_datagram(server, b"ping!") == b"pong"
    [line] = access_lines(caplog)
    assert (line["transport"], line["received"], line["sent"]) == ("udp", "5", "-")


async def test_unix_connections_say_dash_for_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trioserve.access")
    path = str(tmp_path / "s.sock")
    with ThreadingUnixStreamServer(path, SizedHandler, access_log=True) as server:
        async with serving(server), await connect(server) as client:
            await client.send_all(b"q" * 120)
            await receive_until_eof(client)
    [line] = access_lines(caplog)
    assert (line["peer"], line["transport"], line["received"], line["sent"]) == (
        "-",
        "unix",
        "-",
        "-",
    )


def test_peers_are_one_field() -> None:
    assert format_peer(("::1", 80, 0, 0)) == "[::1]:80"
    assert format_peer("/run/a b.sock") == "/run/a\\x20b.sock"
    assert format_peer(b"") == "-"


async def test_the_peer_is_the_client_behind_a_proxy_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "trioserve.access")
    with ThreadingTCPServer(
        ("127.0.0.1", 0), SizedHandler, access_log=True, proxy_protocol=True
    ) as server:
        async with serving(server), await connect(server) as client:
            header = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n"
            await client.send_all(header + b"q" * 120)
            await receive_until_eof(client)
    [line] = access_lines(caplog)
    assert line["peer"] == "203.0.113.7:5555"
    assert line["received"] == str(len(header) + 120)


async def test_the_command_logs_access_lines(tmp_path: Path) -> None:
    from .test_cli import echo_tcp, run_command, trioserve

    argv = trioserve("--tcp", "127.0.0.1:0", "--access-log")
    async with run_command(argv, cwd=tmp_path) as command:
        assert await echo_tcp(command.address, b"hello") == b"hello"
        line = await command.stderr.wait_for("trioserve.access")
        command.signal(signal.SIGTERM)
        assert await command.wait() == 0
    message = line.split("trioserve.access: ", 1)[1]
    match = LINE.match(message)
    assert match is not None, message
    assert (match["transport"], match["received"], match["sent"]) == ("tcp", "5", "5")


def test_help_shows_the_operations_options() -> None:
    from trioserve._cli import build_parser

    text = build_parser().format_help()
    for flag in ("--access-log", "--metrics HOST:PORT", "--reload"):
        assert flag in text
