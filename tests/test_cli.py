"""The ``trioserve`` command, run for real in a subprocess and talked to over sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from trioserve import __version__
from trioserve._cli import Transport, build_parser, build_server, describe
from trioserve._proxy import encode_v2

from .helpers import LineReader, read_line, receive_until_eof

pytestmark = pytest.mark.usefixtures("fd_leak_check")

#: Generous bounds: the machine may be busy, and nothing here should take near this long.
START_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0

ADDRESS = re.compile(r" on (?P<transport>tcp|udp|unix|unix-dgram) (?P<where>\S+)")


class Lines:
    """A subprocess's output as text lines (the shared `LineReader`, decoded)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.reader = LineReader(stream, patience=START_TIMEOUT)

    async def readline(self) -> str:
        """The next line, without its newline; "" at end of file."""
        return (await self.reader.readline()).decode().removesuffix("\n")

    async def wait_for(self, text: str) -> str:
        """Read lines until one contains *text*; return it (fail at end of file)."""
        return (await self.reader.wait_for(text.encode())).decode().removesuffix("\n")

    async def rest(self) -> str:
        """Everything up to end of file."""
        return (await self.reader.rest()).decode()


class Running:
    """A running command: its process, its stdout and stderr, and the address it serves."""

    def __init__(self, process: trio.Process, stdout: Lines, stderr: Lines) -> None:
        self.process = process
        self.stdout = stdout
        self.stderr = stderr
        self.first_line = ""
        self.address: Any = None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self) -> int:
        """Wait for the command to exit; return its status."""
        with trio.fail_after(EXIT_TIMEOUT):
            return await self.process.wait()


def parse_address(line: str) -> Any:
    """The address in the line a server prints: ``(host, port)``, or a path.

    The line says ``... on TRANSPORT WHERE ...``, as the command and the examples print it.
    """
    match = ADDRESS.search(line)
    assert match, f"no address in {line!r}"
    where = match["where"]
    if match["transport"] in ("tcp", "udp"):
        host, _, port = where.rpartition(":")
        return host.strip("[]"), int(port)
    return where


@asynccontextmanager
async def run_command(
    argv: Sequence[str], *, cwd: Path | None = None, ready: bool = True
) -> AsyncIterator[Running]:
    """Start *argv*; with *ready*, wait for its first stdout line and parse the address.

    Whatever happens, the process is killed (by its pid) if still running at the end.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    running = Running(process, Lines(process.stdout), Lines(process.stderr))
    try:
        if ready:
            running.first_line = await running.stdout.readline()
            if not running.first_line:
                stderr = await running.stderr.rest()
                pytest.fail(f"{argv} exited before serving: {stderr}")
            running.address = parse_address(running.first_line)
        yield running
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()


def trioserve(*args: str) -> list[str]:
    return [sys.executable, "-m", "trioserve", *args]


async def echo_tcp(address: tuple[str, int], payload: bytes) -> bytes:
    """Send *payload*; return as many bytes as it had, or fewer if the server closed."""
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(payload)
        data = b""
        with trio.fail_after(START_TIMEOUT):
            while len(data) < len(payload) and (chunk := await stream.receive_some()):
                data += chunk
        return data


async def datagram_exchange(family: int, address: Any, payload: bytes, bind: Any = None) -> bytes:
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        if bind is not None:
            await sock.bind(bind)
        with trio.fail_after(START_TIMEOUT):
            await sock.sendto(payload, address)
            return await sock.recv(65536)


# -- handler modules the tests serve, written to a temporary directory --------------------

HANDLERS = '''
import os
import socketserver

import trio

import trioserve

active = 0


class Upper(trioserve.StreamRequestHandler):
    async def handle(self):
        async for line in self.rfile:
            await self.wfile.write(line.upper())


class Pid(trioserve.StreamRequestHandler):
    async def handle(self):
        async for line in self.rfile:
            await self.wfile.write(b"%d\\n" % os.getpid())


class Slow(trioserve.StreamRequestHandler):
    """Says "started", then answers one line: a request in flight during shutdown."""

    async def handle(self):
        await self.wfile.write(b"started\\n")
        line = await self.rfile.readline()
        await self.wfile.write(b"done: " + line)


class Forever(trioserve.StreamRequestHandler):
    async def handle(self):
        await self.wfile.write(b"started\\n")
        await trio.sleep_forever()


class Active(trioserve.StreamRequestHandler):
    """Says how many of these handlers run now, then waits for the client to close."""

    async def handle(self):
        global active
        active += 1
        try:
            await self.wfile.write(b"%d\\n" % active)
            await self.rfile.read()
        finally:
            active -= 1


class StdlibUpper(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line.upper())


class Plain(trioserve.BaseRequestHandler):
    async def handle(self):
        await self.request.send_all(b"plain\\n")


class TypedSync(trioserve.SyncStreamRequestHandler):
    def handle(self):
        self.wfile.write(b"sync\\n")


class Address(trioserve.StreamRequestHandler):
    """Says who the client is."""

    async def handle(self):
        await self.wfile.write(b"%r\\n" % (self.client_address,))


class Reverse(trioserve.DatagramRequestHandler):
    async def handle(self):
        await self.wfile.write(self.packet[::-1])


not_a_class = 42
'''


@pytest.fixture
def handlers_dir(tmp_path: Path) -> Path:
    """A directory holding ``handlers.py``, to run the command in."""
    (tmp_path / "handlers.py").write_text(textwrap.dedent(HANDLERS))
    return tmp_path


# -- serving ---------------------------------------------------------------------------------


async def test_default_serves_echo_and_sigint_exits_0() -> None:
    async with run_command(trioserve("--tcp", "127.0.0.1:0")) as cmd:
        host, port = cmd.address
        assert host == "127.0.0.1"
        assert port != 0
        assert cmd.first_line == (
            f"trioserve: serving EchoHandler on tcp 127.0.0.1:{port} (try: nc 127.0.0.1 {port})"
        )
        assert await echo_tcp(cmd.address, b"hello\n") == b"hello\n"
        cmd.signal(signal.SIGINT)
        assert await cmd.wait() == 0
        assert "SIGINT: shutting down" in await cmd.stderr.rest()


async def test_unix_stream_echo_and_socket_file_removed(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    async with run_command(trioserve("--unix", str(path))) as cmd:
        assert cmd.address == str(path)
        assert cmd.first_line.endswith(f"(try: nc -U {path})")
        async with await trio.open_unix_socket(str(path)) as stream:
            await stream.send_all(b"over unix\n")
            assert await read_line(stream) == b"over unix\n"
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0
    assert not path.exists()


async def test_udp_serves_the_datagram_echo_handler() -> None:
    async with run_command(trioserve("--udp", "127.0.0.1:0")) as cmd:
        assert cmd.first_line.startswith("trioserve: serving DatagramEchoHandler on udp ")
        reply = await datagram_exchange(socket.AF_INET, cmd.address, b"ping")
        assert reply == b"ping"
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0


async def test_unix_datagram_with_a_user_handler(handlers_dir: Path) -> None:
    path = handlers_dir / "dgram.sock"
    argv = trioserve("handlers:Reverse", "--unix-dgram", str(path))
    async with run_command(argv, cwd=handlers_dir) as cmd:
        assert cmd.first_line.startswith("trioserve: serving handlers:Reverse on unix-dgram ")
        client = str(handlers_dir / "client.sock")
        reply = await datagram_exchange(socket.AF_UNIX, str(path), b"abc", bind=client)
        assert reply == b"cba"
        cmd.signal(signal.SIGINT)
        assert await cmd.wait() == 0


@pytest.mark.parametrize("handler", ["handlers:Upper", "handlers:StdlibUpper"])
async def test_serves_a_handler_from_the_current_directory(
    handlers_dir: Path, handler: str
) -> None:
    async with run_command(trioserve(handler, "--tcp", ":0"), cwd=handlers_dir) as cmd:
        assert cmd.first_line.startswith(f"trioserve: serving {handler} on tcp 127.0.0.1:")
        assert await echo_tcp(cmd.address, b"shout\n") == b"SHOUT\n"
        cmd.signal(signal.SIGINT)
        assert await cmd.wait() == 0


async def test_max_connections_holds_back_the_next_client(handlers_dir: Path) -> None:
    argv = trioserve("handlers:Active", "--tcp", ":0", "--max-connections", "1")
    async with run_command(argv, cwd=handlers_dir) as cmd:
        first = await trio.open_tcp_stream(*cmd.address)
        async with first:
            assert await read_line(first) == b"1\n"
            second = await trio.open_tcp_stream(*cmd.address)
        # Had the second handler started while the first ran, it would have said 2.
        async with second:
            assert await read_line(second) == b"1\n"
        cmd.signal(signal.SIGINT)
        assert await cmd.wait() == 0


async def test_timeout_closes_an_idle_connection(handlers_dir: Path) -> None:
    argv = trioserve("handlers:Upper", "--tcp", ":0", "--timeout", "0.2")
    async with run_command(argv, cwd=handlers_dir) as cmd:
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            await stream.send_all(b"a\n")
            assert await read_line(stream) == b"A\n"
            # Then silence: the handler's read times out and the server closes.
            assert await receive_until_eof(stream) == b""
        assert await echo_tcp(cmd.address, b"still serving\n") == b"STILL SERVING\n"
        cmd.signal(signal.SIGINT)
        assert await cmd.wait() == 0


async def test_workers_serve_from_other_processes_and_stop_on_sigterm(
    handlers_dir: Path,
) -> None:
    argv = trioserve("handlers:Pid", "--tcp", ":0", "--workers", "2", "--timeout", "0.2")
    async with run_command(argv, cwd=handlers_dir) as cmd:
        assert " with 2 worker processes " in cmd.first_line
        pids = set()
        for _ in range(4):
            pids.add(int(await echo_tcp(cmd.address, b"pid?\n")))
        assert cmd.process.pid not in pids
        # --timeout reaches the workers too: an idle connection is closed.
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            assert await receive_until_eof(stream) == b""
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0
    for pid in pids:
        assert not await trio.Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the command"


async def test_workers_serve_datagrams() -> None:
    async with run_command(trioserve("--udp", "127.0.0.1:0", "--workers", "2")) as cmd:
        assert cmd.first_line.startswith("trioserve: serving DatagramEchoHandler on udp ")
        assert " with 2 worker processes " in cmd.first_line
        assert await datagram_exchange(socket.AF_INET, cmd.address, b"pooled") == b"pooled"
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0


async def test_proxy_protocol_serves_the_client_the_header_names(handlers_dir: Path) -> None:
    argv = trioserve("handlers:Address", "--tcp", ":0", "--proxy-protocol")
    async with run_command(argv, cwd=handlers_dir) as cmd:
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            await stream.send_all(encode_v2(("203.0.113.7", 4242), cmd.address))
            assert await read_line(stream) == b"('203.0.113.7', 4242)\n"
        # A client that speaks first, without a header, never reaches the handler.
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            await stream.send_all(b"hello\n")
            assert await receive_until_eof(stream) == b""
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0
        assert "bad PROXY header" in await cmd.stderr.rest()


@pytest.mark.parametrize(
    ("networks", "served"),
    [(["10.0.0.0/8", "192.0.2.0/24"], False), (["10.0.0.0/8", "127.0.0.1"], True)],
)
async def test_proxy_trusted_replaces_loopback_with_the_networks_given(
    handlers_dir: Path, networks: list[str], served: bool
) -> None:
    trusted = [arg for network in networks for arg in ("--proxy-trusted", network)]
    argv = trioserve("handlers:Address", "--tcp", ":0", "--proxy-protocol", *trusted)
    async with run_command(argv, cwd=handlers_dir) as cmd:
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            await stream.send_all(encode_v2(("198.51.100.1", 80), cmd.address))
            reply = await receive_until_eof(stream)
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0
        stderr = await cmd.stderr.rest()
    if served:
        assert reply == b"('198.51.100.1', 80)\n"
        assert "proxy_trusted" not in stderr
    else:
        assert reply == b""
        assert "it may not send a PROXY header (not in proxy_trusted)" in stderr


async def test_proxy_header_timeout_closes_a_silent_connection(handlers_dir: Path) -> None:
    argv = trioserve(
        "handlers:Address", "--tcp", ":0", "--proxy-protocol", "--proxy-header-timeout", "0.2"
    )
    async with run_command(argv, cwd=handlers_dir) as cmd:
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            assert await receive_until_eof(stream) == b""
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0
        assert "no PROXY header within 0.2 s" in await cmd.stderr.rest()


@pytest.mark.parametrize(("mode", "expected"), [("600", 0o600), ("0o666", 0o666)])
async def test_unix_socket_mode_sets_the_socket_files_mode(
    tmp_path: Path, mode: str, expected: int
) -> None:
    path = tmp_path / "mode.sock"
    async with run_command(trioserve("--unix", str(path), "--unix-socket-mode", mode)) as cmd:
        assert stat.S_IMODE(path.stat().st_mode) == expected
        async with await trio.open_unix_socket(str(path)) as stream:
            await stream.send_all(b"mode\n")
            assert await read_line(stream) == b"mode\n"
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0


# -- stopping --------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_request_in_flight_finishes_after_the_signal(
    handlers_dir: Path, signum: int
) -> None:
    argv = trioserve("handlers:Slow", "--tcp", ":0", "--grace", "30")
    async with run_command(argv, cwd=handlers_dir) as cmd:
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            assert await read_line(stream) == b"started\n"
            cmd.signal(signum)
            await cmd.stderr.wait_for("shutting down")
            await stream.send_all(b"last words\n")
            assert await receive_until_eof(stream) == b"done: last words\n"
        assert await cmd.wait() == 0


async def test_grace_bounds_a_handler_that_never_finishes(handlers_dir: Path) -> None:
    argv = trioserve("handlers:Forever", "--tcp", ":0", "--grace", "0.2")
    async with run_command(argv, cwd=handlers_dir) as cmd:
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            assert await read_line(stream) == b"started\n"
            cmd.signal(signal.SIGTERM)
            assert await receive_until_eof(stream) == b""
        assert await cmd.wait() == 0


async def test_second_sigint_stops_at_once(handlers_dir: Path) -> None:
    argv = trioserve("handlers:Forever", "--tcp", ":0", "--grace", "3600")
    async with run_command(argv, cwd=handlers_dir) as cmd:
        async with await trio.open_tcp_stream(*cmd.address) as stream:
            assert await read_line(stream) == b"started\n"
            cmd.signal(signal.SIGINT)
            await cmd.stderr.wait_for("shutting down")
            cmd.signal(signal.SIGINT)
            assert await receive_until_eof(stream) == b""
        assert await cmd.wait() == 130
        assert "again" in await cmd.stderr.rest()


async def test_log_level_error_keeps_stderr_quiet() -> None:
    async with run_command(trioserve("--tcp", ":0", "--log-level", "ERROR")) as cmd:
        cmd.signal(signal.SIGTERM)
        assert await cmd.wait() == 0
        assert await cmd.stderr.rest() == ""


# -- bad invocations: one line, status 2 ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchmodule:Handler"], "no module named 'nosuchmodule'"),
        (["handlers:Missing"], "module 'handlers' has no attribute 'Missing'"),
        (["handlers:not_a_class"], "handlers:not_a_class is not a handler class"),
        (["os:getcwd"], "os:getcwd is not a handler class"),
        (["handlers"], "expected MODULE:HANDLER"),
        (["handlers:Upper", "--udp", ":0"], "is a stream handler"),
        (["handlers:Reverse", "--tcp", ":0"], "is a datagram handler"),
        (["--tcp", "localhost"], "expected HOST:PORT"),
        (["--tcp", "127.0.0.1:99999"], "the port in ('127.0.0.1', 99999) is out of range"),
        (["--tcp", "\u00fc..x:80"], "'\u00fc..x' is not a valid host name"),
        (["--unix", ""], "a Unix socket path must not be empty"),
        ([f"--unix=/{'a' * 120}"], "AF_UNIX path too long"),
        (["--tcp", "::1:80"], "in brackets"),
        (["--tcp", "no.such.host.invalid:0"], "unknown host"),
        (["--tcp", ":0", "--udp", ":0"], "not allowed with argument"),
        (["--udp", ":0", "--timeout", "1"], "--timeout applies to stream transports only"),
        (["handlers:Plain", "--timeout", "1"], "handlers:Plain is not a stream handler"),
        (["handlers:TypedSync", "--udp", ":0"], "is a stream handler"),
        (["--workers", "0"], "trioserve: --workers must be at least 1, not 0 (see "),
        (["--workers", "two"], "--workers: expected a whole number, not 'two'"),
        (["--max-connections", "0"], "trioserve: --max-connections must be at least 1"),
        (["--timeout", "soon"], "expected a number of seconds or none, not 'soon'"),
        (["--timeout", "-1"], "trioserve: --timeout must be >= 0 seconds, not -1.0"),
        (["--grace", "inf"], "expected a number of seconds or none, not 'inf'"),
        (["--udp", ":0", "--proxy-protocol"], "--proxy-protocol applies to stream transports"),
        (["--proxy-trusted", "10.0.0.0/8"], "--proxy-trusted applies with --proxy-protocol"),
        (["--proxy-header-timeout", "1"], "--proxy-header-timeout applies with --proxy-protocol"),
        (["--proxy-protocol", "--proxy-trusted", "10.0.0.1/8"], "has host bits set"),
        (["--proxy-protocol", "--proxy-header-timeout", "-1"], "must be >= 0 seconds"),
        (["--unix-socket-mode", "660"], "--unix-socket-mode applies to Unix transports only"),
        (["--unix", "s.sock", "--unix-socket-mode", "u+rw"], "expected an octal file mode"),
        (["--unix", "s.sock", "--unix-socket-mode", "17777"], "must be a file mode such as"),
        (["--log-level", "loud"], "expected one of debug"),
        (["--unix", "/nonexistent-dir/s.sock"], "cannot serve on unix /nonexistent-dir"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
async def test_bad_invocation_prints_one_line_and_exits_2(
    handlers_dir: Path, args: list[str], message: str
) -> None:
    async with run_command(trioserve(*args), cwd=handlers_dir, ready=False) as cmd:
        assert await cmd.wait() == 2
        stderr = await cmd.stderr.rest()
        stdout = await cmd.stdout.rest()
    assert stdout == ""
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("trioserve: ")
    assert message in stderr
    assert "Traceback" not in stderr


async def test_port_in_use_exits_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = trioserve("--tcp", f"127.0.0.1:{port}")
        async with run_command(argv, ready=False) as cmd:
            assert await cmd.wait() == 2
            stderr = await cmd.stderr.rest()
    assert stderr.count("\n") == 1
    assert stderr.startswith(f"trioserve: cannot serve on tcp 127.0.0.1:{port}: ")
    assert "Address already in use" in stderr


async def test_module_that_fails_to_import_exits_2(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('no database\\nconfigured')\n")
    async with run_command(trioserve("broken:H"), cwd=tmp_path, ready=False) as cmd:
        assert await cmd.wait() == 2
        stderr = await cmd.stderr.rest()
    assert stderr == "trioserve: cannot import 'broken': RuntimeError: no database configured\n"


async def test_pool_whose_handler_workers_cannot_load_exits_2(tmp_path: Path) -> None:
    # Importable here, but the module refuses to load in a worker process.
    (tmp_path / "parentonly.py").write_text(
        textwrap.dedent(
            """
            import os, trioserve
            if os.environ.get("TRIOSERVE_TEST_PARENT") != str(os.getpid()):
                raise ImportError("only in the parent")
            class H(trioserve.StreamRequestHandler):
                async def handle(self): pass
            """
        )
    )
    script = (
        "import os, sys; os.environ['TRIOSERVE_TEST_PARENT'] = str(os.getpid()); "
        "from trioserve.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [sys.executable, "-c", script, "parentonly:H", "--tcp", ":0", "--workers", "1"]
    async with run_command(argv, cwd=tmp_path, ready=False) as cmd:
        assert await cmd.wait() == 2
        stdout = await cmd.stdout.rest()
        stderr = await cmd.stderr.rest()
    assert stdout == ""
    last = stderr.splitlines()[-1]
    assert last.startswith("trioserve: ")
    assert "only in the parent" in stderr
    assert "Traceback" not in last


async def test_handler_module_that_raises_typeerror_at_import_exits_2(tmp_path: Path) -> None:
    # A server ported from socketserver with its mix-in left in: trioserve refuses the class.
    (tmp_path / "ported.py").write_text(
        "import socketserver, trioserve\n"
        "class Server(socketserver.ThreadingMixIn, trioserve.TCPServer): pass\n"
    )
    async with run_command(trioserve("ported:Handler"), cwd=tmp_path, ready=False) as cmd:
        assert await cmd.wait() == 2
        stderr = await cmd.stderr.rest()
    assert stderr.startswith("trioserve: cannot import 'ported': TypeError: Server mixes ")
    assert stderr.count("\n") == 1


async def test_pool_whose_handler_cannot_be_sent_to_workers_exits_2(tmp_path: Path) -> None:
    (tmp_path / "made.py").write_text(
        textwrap.dedent(
            """
            import trioserve
            def make():
                class H(trioserve.StreamRequestHandler):
                    async def handle(self): pass
                return H
            H = make()
            """
        )
    )
    argv = trioserve("made:H", "--tcp", ":0", "--workers", "1")
    async with run_command(argv, cwd=tmp_path, ready=False) as cmd:
        assert await cmd.wait() == 2
        stdout = await cmd.stdout.rest()
        stderr = await cmd.stderr.rest()
    assert stdout == ""
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("trioserve: ForkingTCPServer cannot send the handler class ")


async def test_bug_in_the_handlers_module_exits_1_with_its_traceback(tmp_path: Path) -> None:
    # A lazy module whose __getattr__ raises KeyError instead of AttributeError.
    (tmp_path / "lazy.py").write_text(
        "HANDLERS = {}\ndef __getattr__(name):\n    return HANDLERS[name]\n"
    )
    async with run_command(trioserve("lazy:Handler"), cwd=tmp_path, ready=False) as cmd:
        assert await cmd.wait() == 1
        stdout = await cmd.stdout.rest()
        stderr = await cmd.stderr.rest()
    assert stdout == ""
    first, *rest = stderr.splitlines()
    assert first.endswith(
        " CRITICAL trioserve: cannot serve lazy:Handler: unexpected error at start-up"
    )
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "KeyError: 'Handler'"


async def test_typeerror_building_the_server_exits_1_not_2(tmp_path: Path) -> None:
    # A TypeError while the server is built that no option or address check raised is a
    # bug, not a bad invocation: here, a server class whose server_activate has one.
    script = textwrap.dedent(
        """
        import sys
        from trioserve import _cli

        class Buggy(_cli.ThreadingTCPServer):
            def server_activate(self):
                self.socket.listen("4096")

        _cli._SERVER_CLASSES[(_cli.Transport.TCP, False)] = Buggy
        sys.exit(_cli.main(sys.argv[1:]))
        """
    )
    argv = [sys.executable, "-c", script, "--tcp", "127.0.0.1:0"]
    async with run_command(argv, cwd=tmp_path, ready=False) as cmd:
        assert await cmd.wait() == 1
        stderr = await cmd.stderr.rest()
    assert "CRITICAL trioserve: cannot serve the echo handler: unexpected error" in stderr
    assert ", in server_activate\n" in stderr
    assert stderr.splitlines()[-1].startswith("TypeError: ")
    assert "trioserve: cannot serve on" not in stderr


# -- asking about the command ----------------------------------------------------------------


async def test_version_prints_the_package_version() -> None:
    async with run_command(trioserve("--version"), ready=False) as cmd:
        assert await cmd.wait() == 0
        assert await cmd.stdout.rest() == f"trioserve {__version__}\n"
        assert await cmd.stderr.rest() == ""


async def test_help_shows_the_defaults() -> None:
    async with run_command(trioserve("--help"), ready=False) as cmd:
        assert await cmd.wait() == 0
        text = " ".join((await cmd.stdout.rest()).split())
    for shown in [
        "--timeout SECONDS seconds any one read or write",
        "none for no limit (default: 60)",
        "--grace SECONDS seconds requests in flight",
        "however long they take (default: 5)",
        "--proxy-protocol expect a PROXY protocol header",
        "(stream transports; default: off)",
        "--proxy-trusted NETWORK a network allowed",
        "(repeat for more; default: 127.0.0.0/8 and ::1/128)",
        "--proxy-header-timeout SECONDS seconds a connection has to send its PROXY header; "
        "none for no limit (default: 5)",
        "--unix-socket-mode MODE the Unix socket file's mode, in octal such as 660",
        "default: as the umask leaves it",
        "--version show program's version number and exit",
    ]:
        assert shown in text


# -- in process: the parts with no socket --------------------------------------------------


def test_no_address_means_tcp_on_localhost_9000() -> None:
    from trioserve._cli import _transport_and_address

    args = build_parser().parse_args([])
    assert _transport_and_address(args) == (Transport.TCP, ("127.0.0.1", 9000))


def test_describe_brackets_ipv6_hosts() -> None:
    class Fake:
        socket_type = socket.SOCK_STREAM
        server_address = ("::1", 8080, 0, 0)

    line = describe(Fake(), "EchoHandler", None)  # type: ignore[arg-type]
    assert line == "trioserve: serving EchoHandler on tcp [::1]:8080 (try: nc ::1 8080)"


@pytest.mark.parametrize(
    ("argv", "handler_timeout"),
    [
        (["--tcp", "127.0.0.1:0"], 60.0),
        (["--tcp", "127.0.0.1:0", "--timeout", "2.5"], 2.5),
        (["--tcp", "127.0.0.1:0", "--timeout", "none"], None),
        (["--udp", "127.0.0.1:0"], None),
        (["--udp", "127.0.0.1:0", "--timeout", "none"], None),
    ],
)
def test_timeout_is_60_seconds_unless_given(
    argv: list[str], handler_timeout: float | None
) -> None:
    server, _ = build_server(build_parser().parse_args(argv))
    with server:
        assert server.handler_timeout == handler_timeout


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("9000", ("127.0.0.1", 9000)),
        (":0", ("127.0.0.1", 0)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("example.org:443", ("example.org", 443)),
    ],
)
def test_host_port_forms(text: str, address: tuple[str, int]) -> None:
    assert build_parser().parse_args(["--tcp", text]).tcp == address
