"""Every program in ``examples/``, run as its docstring says and talked to as a user would."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from .helpers import LineReader, read_line, receive_until_eof
from .test_cli import START_TIMEOUT, echo_tcp, run_command

pytestmark = pytest.mark.usefixtures("fd_leak_check")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOGGER = shutil.which("logger")
needs_logger = pytest.mark.skipif(LOGGER is None, reason="logger (util-linux) is not installed")


def example(name: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / name), *args]


def test_every_example_is_tested() -> None:
    tested = {"echo.py", "chat.py", "syslog_collector.py", "stdlib_port.py"}
    tested |= {"http_files.py", "cpu_pool.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_every_example_says_how_to_run_and_talk_to_it() -> None:
    for path in EXAMPLES.glob("*.py"):
        source = path.read_text()
        assert source.startswith('"""'), path
        docstring = source.split('"""')[1]
        assert f"python examples/{path.name}" in docstring, path
        assert any(client in docstring for client in ("nc ", "logger ", "curl ")), path


# -- echo ----------------------------------------------------------------------------------


async def test_echo_tcp() -> None:
    async with run_command(example("echo.py", "0")) as cmd:
        assert cmd.first_line.startswith("echo: listening on tcp 127.0.0.1:")
        assert await echo_tcp(cmd.address, b"one\ntwo\n") == b"one\ntwo\n"
        cmd.signal(signal.SIGINT)
        assert await cmd.wait() == 0


async def test_echo_unix(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    async with run_command(example("echo.py", "--unix", str(path))) as cmd:
        assert cmd.address == str(path)
        async with await trio.open_unix_socket(str(path)) as stream:
            await stream.send_all(b"over a unix socket\n")
            assert await read_line(stream) == b"over a unix socket\n"
            cmd.signal(signal.SIGTERM)
            # Shutting down gracefully: the open connection is still served.
            await stream.send_all(b"still here\n")
            assert await read_line(stream) == b"still here\n"
        assert await cmd.wait() == 0
    assert not path.exists()


# -- chat ----------------------------------------------------------------------------------


class ChatClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.lines = LineReader(stream, patience=START_TIMEOUT)

    @classmethod
    async def join(
        cls,
        stack: AsyncExitStack,
        address: tuple[str, int],
        name: str,
        *,
        receive_buffer: int | None = None,
    ) -> tuple[ChatClient, str]:
        """Connect (closed when *stack* exits), give *name*; return the client and welcome."""
        sock = trio.socket.socket()
        stream = await stack.enter_async_context(trio.SocketStream(sock))
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(address)
        client = cls(stream)
        assert await client.line() == "What is your name?"
        await client.say(name)
        welcome = await client.line()
        assert welcome.startswith("Welcome, ")
        return client, welcome

    async def say(self, text: str) -> None:
        await self.stream.send_all(text.encode() + b"\n")

    async def line(self) -> str:
        line = await self.lines.readline()
        assert line.endswith(b"\n"), f"the server closed the connection after {line!r}"
        return line.decode().removesuffix("\n")


async def test_chat_relays_each_line_to_every_other_client() -> None:
    async with run_command(example("chat.py", "0")) as cmd, AsyncExitStack() as clients:
        alice, welcome = await ChatClient.join(clients, cmd.address, "alice")
        assert welcome == "Welcome, alice! 0 others here."
        bob, welcome = await ChatClient.join(clients, cmd.address, "bob")
        assert welcome == "Welcome, bob! 1 others here."
        assert await alice.line() == "* bob joined"
        carol, _ = await ChatClient.join(clients, cmd.address, "alice")  # a taken name
        assert await alice.line() == "* alice#2 joined"
        assert await bob.line() == "* alice#2 joined"

        await alice.say("hello, all")
        assert await bob.line() == "alice: hello, all"
        assert await carol.line() == "alice: hello, all"
        await carol.say("hi alice")
        # Alice reads carol's line next: her own never came back to her.
        assert await alice.line() == "alice#2: hi alice"
        assert await bob.line() == "alice#2: hi alice"

        await bob.stream.aclose()
        assert await alice.line() == "* bob left"
        assert await carol.line() == "* bob left"
        cmd.signal(signal.SIGINT)
        # Shutting down: chat connections never end by themselves, so the grace ends them.
        assert await receive_until_eof(alice.stream) == b""
        assert await cmd.wait() == 0


async def test_chat_disconnects_a_client_too_slow_to_read() -> None:
    async with run_command(example("chat.py", "0")) as cmd, AsyncExitStack() as clients:
        await ChatClient.join(clients, cmd.address, "slow", receive_buffer=4096)
        talker, _ = await ChatClient.join(clients, cmd.address, "talker")
        listener, _ = await ChatClient.join(clients, cmd.address, "listener")
        assert await talker.line() == "* listener joined"
        message = "x" * 4000
        with trio.fail_after(60):
            for _ in range(20_000):  # far more than the socket buffers and the outbox hold
                await talker.say(message)
                # The listener keeps up; the slow client never reads.
                line = await listener.line()
                if line == "* slow left":
                    break
                assert line == f"talker: {message}"
            else:
                pytest.fail("the slow client was never disconnected")
        assert await talker.line() == "* slow left"
        await listener.say("still here")
        assert await talker.line() == "listener: still here"
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0


# -- syslog (UDP and Unix datagram) ----------------------------------------------------------


@needs_logger
async def test_syslog_collector_with_the_real_logger() -> None:
    assert LOGGER is not None
    async with run_command(example("syslog_collector.py", "0")) as cmd:
        host, port = cmd.address
        argv = [LOGGER, "--udp", "--server", host, "--port", str(port)]
        await trio.run_process([*argv, "--tag", "myapp", "-p", "daemon.err", "disk full"])
        line = await cmd.stdout.readline()
        assert line.startswith("daemon.err ")
        assert line.endswith(" myapp: disk full")
        cmd.signal(signal.SIGINT)
        assert await cmd.wait() == 0


@needs_logger
async def test_syslog_collector_on_a_unix_socket_with_logger(tmp_path: Path) -> None:
    assert LOGGER is not None
    path = tmp_path / "log.sock"
    async with run_command(example("syslog_collector.py", "--unix", str(path))) as cmd:
        assert cmd.address == str(path)
        await trio.run_process([LOGGER, "--socket", str(path), "--tag", "local", "hi there"])
        assert await cmd.stdout.readline() == "user.notice local local: hi there"
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0
    assert not path.exists()


async def test_syslog_collector_parses_both_formats_and_survives_garbage() -> None:
    async with run_command(example("syslog_collector.py", "0")) as cmd:
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for packet in (
                b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed on /dev/pts/8",
                b"\xff\xfe not syslog",
                b'<165>1 2003-10-11T22:14:15.003Z host.example evntslog - ID47 [a b="\\]"][c] ok',
            ):
                await client.sendto(packet, cmd.address)
        lines = [await cmd.stdout.readline() for _ in range(3)]
        assert lines == [
            "auth.crit mymachine su: 'su root' failed on /dev/pts/8",
            "?.? 127.0.0.1 -: \ufffd\ufffd not syslog",
            "local4.notice host.example evntslog: ok",
        ]
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0


# -- the socketserver docs example, ported ---------------------------------------------------


async def test_stdlib_port_answers_like_the_original() -> None:
    async with run_command(example("stdlib_port.py", "0")) as cmd:
        host, port = cmd.address
        assert host == "127.0.0.1"
        async with await trio.open_tcp_stream(host, port) as stream:
            await stream.send_all(b"hello world\n")
            assert await receive_until_eof(stream) == b"HELLO WORLD\n"
        assert await cmd.stdout.readline() == "Received from 127.0.0.1:"
        assert await cmd.stdout.readline() == "hello world"
        cmd.signal(signal.SIGINT)
        assert await cmd.wait() != 0  # Ctrl-C ends it as it ends the original
        assert "KeyboardInterrupt" in await cmd.stderr.rest()


async def test_stdlib_port_answers_a_client_that_closes_without_a_newline() -> None:
    async with run_command(example("stdlib_port.py", "0")) as cmd:
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            await stream.send_all(b"no newline")
            await stream.send_eof()
            assert await receive_until_eof(stream) == b"NO NEWLINE"
        cmd.signal(signal.SIGINT)
        await cmd.wait()


def test_stdlib_port_is_the_stdlib_program_with_only_the_import_changed() -> None:
    source = (EXAMPLES / "stdlib_port.py").read_text()
    assert "import trioserve as socketserver" in source
    assert "trio.run" not in source
    assert "import trio\n" not in source
    help_text = subprocess.run(
        [sys.executable, str(EXAMPLES / "stdlib_port.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "usage:" in help_text


# -- http.server -----------------------------------------------------------------------------


async def http_get(address: tuple[str, int], path: str) -> tuple[str, bytes]:
    """One HTTP/1.0 GET: the status line and the body."""
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        response = await receive_until_eof(stream)
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


async def test_http_files_serves_a_directory(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello from trioserve\n")
    async with run_command(example("http_files.py", "0", "--directory", str(tmp_path))) as cmd:
        assert f"serving {tmp_path} on tcp 127.0.0.1:" in cmd.first_line
        status, body = await http_get(cmd.address, "/hello.txt")
        assert status == "HTTP/1.0 200 OK"
        assert body == b"hello from trioserve\n"
        status, body = await http_get(cmd.address, "/")
        assert status == "HTTP/1.0 200 OK"
        assert b'href="hello.txt"' in body
        status, _ = await http_get(cmd.address, "/missing")
        assert status == "HTTP/1.0 404 File not found"
        assert '"GET /hello.txt HTTP/1.0" 200' in await cmd.stderr.readline()
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0


# -- the process pool ------------------------------------------------------------------------


async def test_cpu_pool_counts_primes_in_worker_processes() -> None:
    async with run_command(example("cpu_pool.py", "0", "--workers", "2")) as cmd:
        listed = re.search(r"with workers ([\d, ]+) \(", cmd.first_line)
        assert listed, cmd.first_line
        workers = {int(pid) for pid in listed[1].split(", ")}
        assert len(workers) == 2
        assert cmd.process.pid not in workers
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            await stream.send_all(b"100\n1000000\nmany\n")
            replies = (await LineReader(stream).readuntil(b"line\n")).decode().splitlines()
        assert replies[0].startswith("25 primes below 100 (worker ")
        assert replies[1].startswith("78498 primes below 1000000 (worker ")
        assert replies[2] == "send a whole number, one per line"
        assert int(replies[0].split("worker ")[1].rstrip(")")) in workers
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0
    for pid in workers:
        assert not await trio.Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the example"
