"""``--reload``: the command restarts its server when the handler's code changes."""

from __future__ import annotations

import errno
import os
import signal
import socket
import textwrap
import urllib.request
from pathlib import Path

import pytest
import trio

from .test_cli import START_TIMEOUT, run_command, trioserve

pytestmark = pytest.mark.usefixtures("fd_leak_check")

if not os.environ.get("CI"):  # in CI the extra is installed (`make test`): never skip there
    pytest.importorskip("watchfiles", reason="the reload extra is not installed")

#: Bounds for the clients that hammer the server during a switch.
MAX_CLIENTS = 20_000


def write_handler(path: Path, reply: str) -> None:
    path.write_text(
        textwrap.dedent(
            f"""
            import trioserve


            class Handler(trioserve.StreamRequestHandler):
                async def handle(self) -> None:
                    await self.wfile.write({reply!r}.encode() + b"\\n")
            """
        )
    )


async def ask(address: tuple[str, int]) -> bytes:
    async with await trio.open_tcp_stream(*address) as stream:
        data = b""
        with trio.fail_after(START_TIMEOUT):
            while chunk := await stream.receive_some():
                data += chunk
        return data


async def test_a_change_is_served_with_no_refused_connection(tmp_path: Path) -> None:
    write_handler(tmp_path / "app.py", "first")
    argv = trioserve("app:Handler", "--tcp", "127.0.0.1:0", "--reload", "--grace", "1")
    async with run_command(argv, cwd=tmp_path) as command:
        address = command.address
        assert await ask(address) == b"first\n"
        replies: list[bytes] = []
        errors: list[OSError] = []
        switched = trio.Event()
        stop = trio.Event()

        async def hammer() -> None:
            for _ in range(MAX_CLIENTS):
                if stop.is_set():
                    return
                try:
                    reply = await ask(address)
                except OSError as exc:
                    errors.append(exc)
                    continue
                replies.append(reply)
                if reply == b"second, longer\n":
                    switched.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hammer)
            write_handler(tmp_path / "app.py", "second, longer")
            with trio.move_on_after(START_TIMEOUT):
                await switched.wait()
            stop.set()
        if not switched.is_set():
            command.signal(signal.SIGTERM)
            await command.wait()
            pytest.fail(f"no switch: {errors[:3]} {set(replies)} {await command.stderr.rest()}")
        assert errors == []
        assert set(replies) == {b"first\n", b"second, longer\n"}  # across the switch
        assert b"" not in replies
        command.signal(signal.SIGTERM)
        assert await command.wait() == 0
    # The supervisor and its server process are gone: nothing listens any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=START_TIMEOUT).close()


async def test_a_broken_change_keeps_the_old_server(tmp_path: Path) -> None:
    write_handler(tmp_path / "app.py", "first")
    argv = trioserve("app:Handler", "--tcp", "127.0.0.1:0", "--reload")
    async with run_command(argv, cwd=tmp_path) as command:
        (tmp_path / "app.py").write_text("this is not python\n")
        await command.stderr.wait_for("the old one keeps serving")
        assert await ask(command.address) == b"first\n"
        command.signal(signal.SIGINT)
        assert await command.wait() == 0


async def test_reload_is_refused_with_workers(tmp_path: Path) -> None:
    argv = trioserve("--tcp", "127.0.0.1:0", "--reload", "--workers", "2")
    async with run_command(argv, cwd=tmp_path, ready=False) as command:
        assert await command.wait() == 2
        line = await command.stderr.rest()
    assert line.startswith("trioserve: --reload cannot be used with --workers")
    assert line.count("\n") == 1


async def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        argv = trioserve("--tcp", f"127.0.0.1:{port}", "--reload")
        async with run_command(argv, cwd=tmp_path, ready=False) as command:
            assert await command.wait() == 2
            line = await command.stderr.rest()
    assert line.startswith("trioserve: cannot serve on tcp 127.0.0.1:")
    assert errno.errorcode[errno.EADDRINUSE] or line


async def test_metrics_survive_a_reload_on_the_same_port(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
    write_handler(tmp_path / "app.py", "first")
    argv = trioserve("app:Handler", "--tcp", "127.0.0.1:0", "--reload", "--metrics", "127.0.0.1:0")
    async with run_command(argv, cwd=tmp_path) as command:
        url = (await command.stdout.readline()).split(" on ", 1)[1]
        assert await ask(command.address) == b"first\n"
        write_handler(tmp_path / "app.py", "second, longer")
        await command.stdout.wait_for("trioserve: metrics on")  # the new server process
        with trio.fail_after(START_TIMEOUT):
            while (reply := await ask(command.address)) == b"first\n":
                pass
        assert reply == b"second, longer\n"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=START_TIMEOUT) as response:
                return str(response.read().decode())

        assert "trioserve_connections_total" in await trio.to_thread.run_sync(scrape)
        command.signal(signal.SIGTERM)
        assert await command.wait() == 0


async def test_an_unknown_module_is_one_line(tmp_path: Path) -> None:
    argv = trioserve("nosuchmodule:Handler", "--tcp", "127.0.0.1:0", "--reload")
    async with run_command(argv, cwd=tmp_path, ready=False) as command:
        assert await command.wait() == 2
        err = await command.stderr.rest()
    assert err == "trioserve: no module named 'nosuchmodule' (from 'nosuchmodule:Handler')\n"
