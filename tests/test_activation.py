"""Socket activation: listen_fds() and servers started by systemd or a launcher like it."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trioserve import (
    listen_fds,
)

pytestmark = pytest.mark.usefixtures("fd_leak_check")

LOCALHOST = ("127.0.0.1", 0)


# -- listen_fds ------------------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_listen_fds_without_activation_is_empty(clean_environment: pytest.MonkeyPatch) -> None:
    assert listen_fds() == []


def test_listen_fds_meant_for_another_process_are_not_taken(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("LISTEN_PID", str(os.getppid()))
    clean_environment.setenv("LISTEN_FDS", "2")
    clean_environment.setenv("LISTEN_FDNAMES", "a:b")
    assert listen_fds() == []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        assert name not in os.environ  # unset, as sd_listen_fds(1) does


def test_listen_fds_can_leave_the_environment(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("LISTEN_PID", str(os.getpid()))
    clean_environment.setenv("LISTEN_FDS", "0")
    assert listen_fds(unset_environment=False) == []
    assert os.environ["LISTEN_FDS"] == "0"


@pytest.mark.parametrize(
    ("pid", "count", "message"),
    [("me", "1", "LISTEN_PID='me'"), ("self", "many", "LISTEN_FDS='many'"), ("self", "-1", "")],
)
def test_listen_fds_refuses_malformed_variables(
    clean_environment: pytest.MonkeyPatch, pid: str, count: str, message: str
) -> None:
    clean_environment.setenv("LISTEN_PID", str(os.getpid()) if pid == "self" else pid)
    clean_environment.setenv("LISTEN_FDS", count)
    with pytest.raises(ValueError, match=message or "LISTEN_FDS"):
        listen_fds()
    assert "LISTEN_FDS" not in os.environ


# -- activated by a supervisor, in a child process -------------------------------------------


CHILD = """
import os, sys
import trio
import trioserve

fds = trioserve.listen_fds()
left = sorted(name for name in os.environ if name.startswith("LISTEN_"))
print("fds", fds, "left", left, flush=True)
server_class = getattr(trioserve, sys.argv[1])
with server_class.from_fd(fds[0], trioserve.EchoHandler) as server:
    trio.run(server.handle_request)
"""


# What systemd does between fork and exec: the sockets go to descriptors 3, 4, ...,
# and LISTEN_PID is the pid of the process about to exec (exec keeps it).
LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def finish_child(process: subprocess.Popen[str]) -> str:
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()  # by PID: the process this test started
        process.communicate()
        raise
    assert process.returncode == 0, err
    return out


def test_systemd_style_activation_in_a_child_process(tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(CHILD))
    launcher = tmp_path / "launcher.py"
    launcher.write_text(textwrap.dedent(LAUNCHER))
    with socket.create_server(("127.0.0.1", 0)) as sock:
        process = subprocess.Popen(
            [sys.executable, str(launcher), str(sock.fileno()), str(child), "TCPServer"],
            pass_fds=[sock.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The socket listens already: this connection waits in the backlog until the
        # child is up, as with systemd. No retry loop is needed.
        with socket.create_connection(sock.getsockname(), timeout=30) as client:
            client.sendall(b"activated")
            assert client.recv(100) == b"activated"
        out = finish_child(process)
    assert out.splitlines()[0] == "fds [3] left []"


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is absent"
)
def test_activation_by_systemd_socket_activate_on_a_unix_socket(tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(CHILD))
    path = tmp_path / "activated.sock"
    process = subprocess.Popen(
        [
            "systemd-socket-activate",
            f"--listen={path}",
            sys.executable,
            str(child),
            "UnixStreamServer",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # It says when it listens (and exits, closing stderr, if it cannot).
    assert process.stderr is not None
    announced = process.stderr.readline()
    assert announced.startswith(f"Listening on {path}"), announced
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(30)
        client.connect(str(path))
        client.sendall(b"activated")
        assert client.recv(100) == b"activated"
    out = finish_child(process)
    assert out.splitlines()[0] == "fds [3] left []"
    # The file belongs to the supervisor: the server did not remove it on close.
    assert stat.S_ISSOCK(os.stat(path).st_mode)
