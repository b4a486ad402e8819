"""A real HAProxy in front of real ``trioserve`` command-line instances, for the tests.

What is here
------------
- `haproxy_config` writes the HAProxy configuration: the one the tests run, and, rendered
  with the example's addresses, ``examples/haproxy/haproxy.cfg`` (a test keeps the two
  equal, so the documented configuration is the tested one).
- `Backend` is one ``trioserve examples/haproxy/app.py`` process on its own loopback port,
  with the PROXY protocol on: started, stopped with a signal, restarted on the same port.
- `HAProxy` is the ``haproxy -f CFG -db`` process, with its stats socket.
- `nginx_config` and `Nginx` do the same for nginx's stream module (PROXY protocol v1,
  no active health checks), for comparison; ``examples/haproxy/nginx.conf`` is tested too.
- `cluster` starts the balancer and its backends, waits until every backend is up in
  HAProxy's eyes, and stops everything at the end.
- `Load` is a steady, bounded HTTP load: a few clients making requests one after another,
  over a new connection each time or over one keep-alive connection, each answer checked.

Processes
---------
Every process is started here and stopped by its own handle (its pid), never by name.
Their stdout and stderr go to files in the test's ``tmp_path``: nothing has to drain a pipe,
a backend restarted five times keeps the logs of all five, and a failing test prints them
all (`Cluster.logs`). Waiting for an external process to be ready is the one place that
polls: a file for the line a backend prints once it serves, the balancer's ports, HAProxy's
stats socket for its view of the backends. Each of those loops is bounded in time and
says what it waited for.

Every wait is bounded
---------------------
A missing server feature must fail a test with a message, never hang it: every request has
`REQUEST_TIMEOUT`, every start `START_TIMEOUT`, every stop `STOP_TIMEOUT`, and the load
stops after `Load.max_requests` requests per client whatever happens.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "haproxy"
APP = EXAMPLE / "app.py"
EXAMPLE_CONFIG = EXAMPLE / "haproxy.cfg"

#: Generous bounds: the machine may be busy (two shared cores), and nothing should come near.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0
#: How often the bounded waits on external processes look again.
POLL_INTERVAL = 0.02

#: The backends' grace, passed as ``--grace``: in-flight requests finish within it.
GRACE = 5.0
#: Who may send a PROXY header: HAProxy, which connects from the loopback address.
PROXY_TRUSTED = "127.0.0.1/32"

#: The command that starts trioserve (a list, so that a test run can point it elsewhere).
TRIOSERVE = [sys.executable, "-m", "trioserve"]

MISSING = "haproxy is not installed (apt-get install haproxy)"


# -- finding haproxy -------------------------------------------------------------------------


def find_haproxy() -> str:
    """The path of ``haproxy``; skip the test if there is none, or fail it under CI.

    Debian installs it in ``/usr/sbin``, which is not on every user's ``PATH``. Under CI
    (``CI=true``) a missing haproxy fails the test: CI installs it, and a test that skips
    there has silently stopped testing anything.
    """
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{MISSING}; CI=true, so this fails instead of skipping")
        pytest.skip(MISSING)
    return path


def haproxy_version(haproxy: str) -> str:
    """``haproxy -v``'s first line, such as ``HAProxy version 2.6.12-1+deb12u4 ...``."""
    result = subprocess.run(
        [haproxy, "-v"], capture_output=True, text=True, timeout=START_TIMEOUT, check=True
    )
    return result.stdout.splitlines()[0]


def check_config(haproxy: str, path: Path) -> subprocess.CompletedProcess[str]:
    """``haproxy -c -f PATH``: parse the configuration without starting anything."""
    return subprocess.run(
        [haproxy, "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now: bind port 0, read the port, close.

    The port could in principle be taken again before it is used; on a loopback address
    in a test run, that is a chance worth taking for a port that stays the same across a
    restart.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# -- the configuration -----------------------------------------------------------------------


def haproxy_config(
    *,
    binds: Sequence[str],
    servers: Sequence[tuple[str, str]],
    mode: str = "http",
    stats_socket: str = "/run/haproxy/trioserve.sock",
) -> str:
    """The HAProxy configuration for trioserve instances behind one frontend.

    Args:
      binds: the frontend's addresses, as HAProxy writes them (``127.0.0.1:8080``,
        ``[::1]:8080``).
      servers: ``(name, "HOST:PORT")`` for each trioserve instance.
      mode: ``"http"`` (HTTP load balancing, with HTTP health checks and retries of a
        request the server closed on) or ``"tcp"`` (each client connection passed through
        to one backend, with connect-only health checks).
      stats_socket: where the stats and admin socket listens.

    Returns:
      The configuration's text, comments included: `EXAMPLE_CONFIG` is this, rendered with
      the addresses of the example's docstring.
    """
    if mode not in ("http", "tcp"):
        raise ValueError(f"mode must be 'http' or 'tcp', not {mode!r}")
    http = mode == "http"
    lines = [
        "# HAProxy in front of trioserve instances that speak the PROXY protocol.",
        "# Tested with Debian's HAProxy 2.6 by tests/test_haproxy.py, which renders this file",
        "# with tests/haproxy_support.py:haproxy_config() and checks that the two are equal.",
        "global",
        "    maxconn 1000",
        "    log stdout format raw local0",
        "    # `show stat` on this socket says what HAProxy thinks of each server.",
        f"    stats socket {stats_socket} mode 600 level admin",
        "",
        "defaults",
        f"    mode {mode}",
        "    log global",
        f"    option {'httplog' if http else 'tcplog'}",
        "    # A connect on loopback or a LAN takes far less; a refused one is instant.",
        "    timeout connect 1s",
        "    # Above the slowest response, so that a request finishing within trioserve's",
        "    # --grace after SIGTERM is not cut by HAProxy first.",
        "    timeout client 30s",
        "    timeout server 30s",
    ]
    if http:
        lines += [
            "    timeout http-request 10s",
            "    timeout http-keep-alive 10s",
        ]
    lines += [
        "    timeout check 1s",
        "    # A trioserve that got SIGTERM closes its listening socket at once: connecting to",
        "    # it is refused, and the connection is retried on another server (redispatch on",
        "    # every retry, not only the last).",
        "    retries 3",
        "    option redispatch 1",
    ]
    if http:
        lines += [
            "    # And a request sent on a connection the server closed before answering it (an",
            "    # idle keep-alive connection closed by a draining server, or one still in the",
            "    # listening backlog when it closed) is sent again. Safe for idempotent requests.",
            "    retry-on conn-failure empty-response",
        ]
    lines += [
        "",
        "frontend www",
        *(f"    bind {bind}" for bind in binds),
        "    default_backend trioserve",
        "",
        "backend trioserve",
        "    balance roundrobin",
    ]
    if http:
        lines += [
            "    # Health checks are HTTP requests to /health, over a connection that starts with",
            "    # a PROXY v2 header whose command is LOCAL (HAProxy's own, not a client's).",
            "    option httpchk",
            "    http-check send meth GET uri /health ver HTTP/1.1 hdr Host haproxy",
            "    http-check expect status 200",
        ]
    else:
        lines += [
            "    # Health checks connect, send a PROXY v2 header (command LOCAL), and reset.",
        ]
    lines += [
        "    # send-proxy-v2: each connection to a server starts with a PROXY v2 header that",
        "    # names the client (trioserve --proxy-protocol). check-send-proxy: so do the",
        "    # health checks' (the default already, said here so that an added `port` keeps it).",
        "    # A server is down after one failed check and up after one good one, 200 ms apart.",
        "    default-server check inter 200ms fall 1 rise 1 send-proxy-v2 check-send-proxy",
        *(f"    server {name} {address}" for name, address in servers),
        "",
    ]
    return "\n".join(lines)


#: The example's addresses: HAProxy on 8080, two trioserve instances on 9001 and 9002.
EXAMPLE_BINDS = ("127.0.0.1:8080",)
EXAMPLE_SERVERS = (("s1", "127.0.0.1:9001"), ("s2", "127.0.0.1:9002"))


def example_config() -> str:
    """What `EXAMPLE_CONFIG` must hold."""
    return haproxy_config(binds=EXAMPLE_BINDS, servers=EXAMPLE_SERVERS)


@dataclass(frozen=True)
class NginxBinary:
    """``nginx``, and its stream module's file when it is a dynamic module (Debian's is)."""

    path: str
    module: str | None


#: Where Debian's libnginx-mod-stream puts the module.
DEBIAN_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
NGINX_MISSING = "nginx is not installed (apt-get install nginx libnginx-mod-stream)"


def find_nginx() -> NginxBinary:
    """``nginx`` with its stream module; skip the test without them, or fail it under CI."""
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    reason = NGINX_MISSING
    if path is not None:
        result = subprocess.run(
            [path, "-V"], capture_output=True, text=True, timeout=START_TIMEOUT, check=False
        )
        if os.path.exists(DEBIAN_STREAM_MODULE):
            return NginxBinary(path, DEBIAN_STREAM_MODULE)
        if "--with-stream " in result.stderr + " ":
            return NginxBinary(path, None)
        reason = "nginx has no stream module (apt-get install libnginx-mod-stream)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true, so this fails instead of skipping")
    pytest.skip(reason)


def nginx_config(
    *,
    listens: Sequence[str],
    servers: Sequence[str],
    module: str | None = DEBIAN_STREAM_MODULE,
    pid: str = "/run/nginx-trioserve.pid",
) -> str:
    """nginx's configuration: its stream module passing connections to trioserve instances.

    Args:
      listens: the addresses nginx listens on (``127.0.0.1:8080``, ``[::1]:8080``).
      servers: ``HOST:PORT`` of each trioserve instance.
      module: the stream module to load, when it is a dynamic module (None: built in).
      pid: where nginx writes its pid.
    """
    lines = [
        "# nginx in front of trioserve instances that speak the PROXY protocol: the stream",
        "# module passes each connection on, opening it with a PROXY protocol version 1 line.",
        "# Tested with Debian's nginx 1.22 by tests/test_haproxy.py, which renders this file",
        "# with tests/haproxy_support.py:nginx_config() and checks that the two are equal.",
        "# Run it in the foreground with: nginx -c $PWD/nginx.conf -g 'daemon off;'",
    ]
    if module is not None:
        lines.append(f"load_module {module};")
    lines += [
        "worker_processes auto;",
        f"pid {pid};",
        "error_log stderr notice;",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "stream {",
        "    upstream trioserve {",
        "        # Open-source nginx has no active health checks: a refused connect (a trioserve",
        "        # draining after SIGTERM) takes the server out of the rotation for a second.",
        *(f"        server {server} max_fails=1 fail_timeout=1s;" for server in servers),
        "    }",
        "",
        "    server {",
        *(f"        listen {listen};" for listen in listens),
        "        proxy_pass trioserve;",
        "        # Each connection to a server starts with `PROXY TCP4 <client> ...`",
        "        # (trioserve --proxy-protocol).",
        "        proxy_protocol on;",
        "        proxy_connect_timeout 1s;",
        "        # A refused connect is tried on the next server (proxy_next_upstream is on by",
        "        # default), up to three servers in all.",
        "        proxy_next_upstream_tries 3;",
        "        # Above the slowest response, and above trioserve's --grace.",
        "        proxy_timeout 30s;",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


EXAMPLE_NGINX_CONFIG = EXAMPLE / "nginx.conf"


def example_nginx_config() -> str:
    """What `EXAMPLE_NGINX_CONFIG` must hold."""
    return nginx_config(listens=EXAMPLE_BINDS, servers=[address for _, address in EXAMPLE_SERVERS])


def check_nginx_config(
    nginx: NginxBinary, path: Path, prefix: Path
) -> subprocess.CompletedProcess[str]:
    """``nginx -t``: parse the configuration without starting anything."""
    return subprocess.run(
        [nginx.path, "-t", "-p", str(prefix), "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )


# -- processes ---------------------------------------------------------------------------------


def tail(path: Path, lines: int = 40) -> str:
    """The last *lines* lines of a log file ("" if there is none)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


async def _wait_exit(process: trio.Process, seconds: float) -> int | None:
    """Wait up to *seconds* for *process* to exit; its status, or None if it still runs."""
    with trio.move_on_after(seconds):
        return await process.wait()
    return None


async def _kill(process: trio.Process | None) -> None:
    """Kill *process* (by its pid, through its handle) if it still runs, and reap it."""
    if process is None:
        return
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()


async def _open_process(
    argv: Sequence[str], cwd: Path, stdout: Path, stderr: Path
) -> trio.Process:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return await trio.lowlevel.open_process(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env
        )


@dataclass
class Backend:
    """One ``trioserve app:Handler --tcp 127.0.0.1:PORT --proxy-protocol`` process.

    It runs in *directory*, which holds a copy of ``examples/haproxy/app.py`` (so that a
    test can change the code and reload). Each start has its own log files.
    """

    name: str
    port: int
    directory: Path
    workers: int | None = None
    process: trio.Process | None = None
    starts: int = 0
    #: How long each `stop` took, from the signal to the exit, in seconds.
    stop_times: list[float] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def argv(self) -> list[str]:
        argv = [*TRIOSERVE, "app:Handler", "--tcp", self.address]
        argv += ["--proxy-protocol", "--proxy-trusted", PROXY_TRUSTED, "--grace", f"{GRACE:g}"]
        if self.workers is not None:
            argv += ["--workers", str(self.workers)]
        return argv

    def log(self, start: int, stream: str) -> Path:
        return self.directory / f"{self.name}.{start}.{stream}"

    @property
    def stderr(self) -> Path:
        """The current (or last) start's stderr."""
        return self.log(self.starts, "stderr")

    async def start(self) -> None:
        """Start the command and wait until it says it serves (bounded); fail if it exits."""
        assert self.process is None or self.process.returncode is not None, "already running"
        self.starts += 1
        stdout = self.log(self.starts, "stdout")
        self.process = await _open_process(self.argv, self.directory, stdout, self.stderr)
        with trio.move_on_after(START_TIMEOUT):
            while "trioserve: serving" not in await trio.Path(stdout).read_text(errors="replace"):
                if self.process.poll() is not None:
                    pytest.fail(
                        f"backend {self.name} ({' '.join(self.argv)}) exited with status "
                        f"{self.process.returncode} before serving:\n{tail(self.stderr)}",
                        pytrace=False,
                    )
                await trio.sleep(POLL_INTERVAL)
            return
        pytest.fail(
            f"backend {self.name} did not say it serves within {START_TIMEOUT:g} s:\n"
            f"{tail(self.stderr)}",
            pytrace=False,
        )

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send *signum*; wait (bounded) for the command to exit; return its status.

        It must exit within its grace and a margin; if not, it is killed and the test fails.
        """
        assert self.process is not None
        start = trio.current_time()
        self.process.send_signal(signum)
        status = await _wait_exit(self.process, GRACE + STOP_TIMEOUT)
        self.stop_times.append(round(trio.current_time() - start, 2))
        if status is None:
            await _kill(self.process)
            pytest.fail(
                f"backend {self.name} did not exit within {GRACE + STOP_TIMEOUT:g} s of "
                f"{signal.Signals(signum).name} (killed):\n{tail(self.stderr)}",
                pytrace=False,
            )
        return status

    async def restart(self) -> int:
        """SIGTERM, wait for the exit (which must be status 0), start again on the same port.

        Returns:
          The new process's pid.
        """
        status = await self.stop(signal.SIGTERM)
        assert status == 0, (
            f"backend {self.name} exited with status {status} after SIGTERM:\n{tail(self.stderr)}"
        )
        await self.start()
        assert self.process is not None
        return self.process.pid

    async def close(self) -> None:
        """Stop the command if it still runs: SIGTERM (so that it stops its workers), then
        a kill by pid if it has not exited within its grace and a margin."""
        if self.process is None or self.process.returncode is not None:
            return
        with trio.CancelScope(shield=True):
            self.process.send_signal(signal.SIGTERM)
            if await _wait_exit(self.process, GRACE + STOP_TIMEOUT) is None:
                await _kill(self.process)

    def logs(self) -> str:
        parts = []
        for start in range(1, self.starts + 1):
            text = tail(self.log(start, "stderr"))
            parts.append(f"---- backend {self.name}, start {start}, stderr ----\n{text}")
        return "\n".join(parts)


async def _start_balancer(
    name: str,
    argv: list[str],
    directory: Path,
    stdout: Path,
    stderr: Path,
    ready: Callable[[], Awaitable[bool]],
) -> trio.Process:
    """Start a balancer by PID and wait (bounded) until *ready* says it accepts."""
    process = await _open_process(argv, directory, stdout, stderr)
    with trio.move_on_after(START_TIMEOUT):
        while not await ready():
            if process.poll() is not None:
                pytest.fail(
                    f"{name} exited with status {process.returncode}:\n{tail(stderr)}",
                    pytrace=False,
                )
            await trio.sleep(POLL_INTERVAL)
        return process
    pytest.fail(f"{name} did not start within {START_TIMEOUT:g} s:\n{tail(stderr)}", pytrace=False)


async def _stop_balancer(process: trio.Process | None) -> None:
    """SIGTERM (both balancers' immediate stop); kill if it has not exited in time."""
    if process is None or process.returncode is not None:
        return
    with trio.CancelScope(shield=True):
        process.send_signal(signal.SIGTERM)
        if await _wait_exit(process, STOP_TIMEOUT) is None:
            await _kill(process)


@dataclass
class HAProxy:
    """The ``haproxy -f CFG -db`` process (in the foreground) and its stats socket."""

    path: str
    directory: Path
    binds: list[tuple[str, int]]
    process: trio.Process | None = None

    @property
    def config(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def stats_socket(self) -> Path:
        return self.directory / "haproxy.sock"

    @property
    def stdout(self) -> Path:
        return self.directory / "haproxy.stdout"

    @property
    def stderr(self) -> Path:
        return self.directory / "haproxy.stderr"

    @property
    def address(self) -> tuple[str, int]:
        """The frontend's (first) address."""
        return self.binds[0]

    def write_config(self, servers: Sequence[Backend], mode: str) -> None:
        binds = [_format_bind(host, port) for host, port in self.binds]
        text = haproxy_config(
            binds=binds,
            servers=[(backend.name, backend.address) for backend in servers],
            mode=mode,
            stats_socket=str(self.stats_socket),
        )
        self.config.write_text(text)

    async def start(self) -> None:
        argv = [self.path, "-f", str(self.config), "-db"]
        self.process = await _start_balancer(
            "haproxy", argv, self.directory, self.stdout, self.stderr, self._accepts
        )

    async def _accepts(self) -> bool:
        """Whether the stats socket and every frontend address accept connections."""
        try:
            stream = await trio.open_unix_socket(str(self.stats_socket))
            await stream.aclose()
        except OSError:
            return False
        return await _accepting(self.binds)

    async def command(self, line: str) -> str:
        """Send one command to the stats socket; return the answer (bounded)."""
        with trio.fail_after(REQUEST_TIMEOUT):
            async with await trio.open_unix_socket(str(self.stats_socket)) as stream:
                await stream.send_all(line.encode() + b"\n")
                data = b""
                while chunk := await stream.receive_some():
                    data += chunk
        return data.decode()

    async def servers(self, backend: str = "trioserve") -> dict[str, dict[str, str]]:
        """``show stat`` for the servers of *backend*: name -> the CSV row.

        The row's ``status`` is ``UP``, ``DOWN``, ``MAINT``..., ``check_status`` the last
        check's result (``L7OK``, ``L4OK``, ``L4CON`` for a refused connect...),
        ``chkfail`` and ``chkdown`` count failed checks and UP-to-DOWN transitions,
        ``wretr`` and ``wredis`` the retries and redispatches. HAProxy marks a check still
        in progress with a ``"* "`` before the last result, and shows no ``check_code``
        for it meanwhile: the table is read again (a few ms, bounded) until no check is in
        progress, so every field of a row is of one finished check; the mark is taken off.
        """
        servers: dict[str, dict[str, str]] = {}
        with trio.move_on_after(START_TIMEOUT):
            while True:
                servers = self._parse_stat(await self.command("show stat"), backend)
                if not any(_checking(row) for row in servers.values()):
                    break
                await trio.sleep(POLL_INTERVAL)
        for row in servers.values():
            row["check_status"] = (row.get("check_status") or "").removeprefix("* ")
        return servers

    @staticmethod
    def _parse_stat(text: str, backend: str) -> dict[str, dict[str, str]]:
        rows = csv.DictReader(text.removeprefix("# ").splitlines())
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    async def wait_until_up(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Wait (bounded) until HAProxy's checks say every server in *names* is UP."""
        states: dict[str, dict[str, str]] = {}
        with trio.move_on_after(START_TIMEOUT):
            while True:
                states = await self.servers()
                if all(states.get(name, {}).get("status") == "UP" for name in names):
                    return states
                await trio.sleep(POLL_INTERVAL)
        summary = {
            name: (row.get("status"), row.get("check_status"), row.get("last_chk"))
            for name, row in states.items()
        }
        pytest.fail(
            f"HAProxy did not see every server UP within {START_TIMEOUT:g} s: "
            f"(status, last check, its detail) = {summary}",
            pytrace=False,
        )

    async def stop(self) -> None:
        """SIGTERM (HAProxy's immediate stop); kill if it has not exited in time."""
        await _stop_balancer(self.process)

    def logs(self) -> str:
        return (
            f"---- haproxy stderr ----\n{tail(self.stderr)}\n"
            f"---- haproxy log (last lines) ----\n{tail(self.stdout)}"
        )


def _format_bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Nginx:
    """``nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'`` (in the foreground)."""

    binary: NginxBinary
    directory: Path
    binds: list[tuple[str, int]]
    process: trio.Process | None = None

    @property
    def config(self) -> Path:
        return self.directory / "nginx.conf"

    @property
    def stdout(self) -> Path:
        return self.directory / "nginx.stdout"

    @property
    def stderr(self) -> Path:
        return self.directory / "nginx.stderr"

    @property
    def address(self) -> tuple[str, int]:
        return self.binds[0]

    def write_config(self, servers: Sequence[Backend], mode: str) -> None:
        """The configuration (*mode* is HAProxy's: nginx's stream module is always TCP)."""
        text = nginx_config(
            listens=[_format_bind(host, port) for host, port in self.binds],
            servers=[backend.address for backend in servers],
            module=self.binary.module,
            pid=str(self.directory / "nginx.pid"),
        )
        self.config.write_text(text)

    async def start(self) -> None:
        argv = [self.binary.path, "-p", str(self.directory), "-c", str(self.config)]
        argv += ["-g", "daemon off;"]
        self.process = await _start_balancer(
            "nginx",
            argv,
            self.directory,
            self.stdout,
            self.stderr,
            lambda: _accepting(self.binds),
        )

    async def wait_until_up(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Nothing to wait for: open-source nginx has no active health checks."""
        return {}

    async def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown, which stops its workers); kill if need be."""
        await _stop_balancer(self.process)

    def logs(self) -> str:
        return f"---- nginx stderr ----\n{tail(self.stderr)}"


async def _accepting(binds: Sequence[tuple[str, int]]) -> bool:
    """Whether every address in *binds* accepts a connection now."""
    try:
        for host, port in binds:
            stream = await trio.open_tcp_stream(host, port)
            await stream.aclose()
    except OSError:
        return False
    return True


@dataclass
class Cluster:
    """A balancer (HAProxy or nginx) and its backends, as `cluster` started them."""

    balancer: HAProxy | Nginx
    backends: list[Backend]
    directory: Path

    @property
    def haproxy(self) -> HAProxy:
        assert isinstance(self.balancer, HAProxy), "this cluster's balancer is nginx"
        return self.balancer

    @property
    def address(self) -> tuple[str, int]:
        return self.balancer.address

    def set_version(self, version: str) -> None:
        """Change `VERSION` in the backends' copy of ``app.py`` (a reload then serves it)."""
        app = self.directory / "app.py"
        text = app.read_text()
        assert 'VERSION = "1"' in text, "examples/haproxy/app.py no longer sets VERSION = '1'"
        app.write_text(text.replace('VERSION = "1"', f"VERSION = {version!r}"))

    def logs(self) -> str:
        """Everything the processes said: for the message of a failing test."""
        return "\n".join([*(backend.logs() for backend in self.backends), self.balancer.logs()])


def _copy_app(directory: Path) -> None:
    """Put a copy of ``examples/haproxy/app.py`` in *directory*, where the backends run."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(APP, directory / "app.py")


@asynccontextmanager
async def cluster(
    balancer: str | NginxBinary,
    directory: Path,
    *,
    backends: int = 2,
    mode: str = "http",
    workers: int | None = None,
    ipv6: bool = False,
) -> AsyncIterator[Cluster]:
    """HAProxy (or nginx) on a loopback port in front of *backends* trioserve instances.

    Yields once every backend serves and HAProxy's health checks say it is UP. At the end
    (or on failure) the balancer and every backend are stopped: SIGTERM, then a kill by pid if
    they have not exited in time (a backend's SIGTERM stops its workers too). If the body
    fails, the processes' logs are printed, so that pytest shows them with the failure.

    Args:
      balancer: the ``haproxy`` binary (`find_haproxy`), or nginx (`find_nginx`).
      directory: where the configuration, the app's copy and the logs go (``tmp_path``).
      backends: how many trioserve instances.
      mode: HAProxy's mode, ``"http"`` or ``"tcp"`` (see `haproxy_config`); nginx's
        stream module is TCP.
      workers: ``--workers`` for each instance (None: none, one process).
      ipv6: also bind the frontend on ``[::1]`` (its address is ``binds[1]``).
    """
    _copy_app(directory)
    binds = [("127.0.0.1", free_port())]
    if ipv6:
        binds.append(("::1", free_port("::1")))
    proxy: HAProxy | Nginx
    if isinstance(balancer, NginxBinary):
        proxy = Nginx(balancer, directory, binds)
    else:
        proxy = HAProxy(balancer, directory, binds)
    servers = [
        Backend(f"s{i}", free_port(), directory, workers=workers) for i in range(1, backends + 1)
    ]
    running = Cluster(proxy, servers, directory)
    try:
        for backend in servers:
            await backend.start()
        proxy.write_config(servers, mode)
        await proxy.start()
        await proxy.wait_until_up([backend.name for backend in servers])
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        with trio.CancelScope(shield=True):
            await proxy.stop()
            for backend in servers:
                await backend.close()


# -- HTTP, client side -----------------------------------------------------------------------


class HTTPError(Exception):
    """A response that was not a complete ``200`` with the JSON ``/whoami`` sends."""


@dataclass
class Answer:
    """What ``/whoami`` said."""

    client: tuple[str, int]
    server: tuple[str, int]
    pid: int
    version: str


async def read_response(stream: trio.abc.ReceiveStream, buffer: bytearray) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response with a Content-Length; return (status, body).

    *buffer* holds bytes read past the previous response (none, from HAProxy, but a reader
    must not lose them). End of file before the response is complete raises `HTTPError`.
    """
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some()
        if not chunk:
            got = f"after {bytes(buffer)!r}" if buffer else "before any byte of the response"
            raise HTTPError(f"connection closed {got}")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HTTPError(f"not an HTTP response: {status_line!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise HTTPError(f"no Content-Length in {head!r}")
    length = int(headers["content-length"])
    body = bytearray(rest)
    while len(body) < length:
        chunk = await stream.receive_some()
        if not chunk:
            raise HTTPError(f"connection closed after {len(body)} of {length} body bytes")
        body += chunk
    buffer[:] = body[length:]
    return int(parts[1]), bytes(body[:length])


def request(path: str, *, keep_alive: bool) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return f"GET {path} HTTP/1.1\r\nHost: trioserve\r\nConnection: {connection}\r\n\r\n".encode()


def parse_answer(status: int, body: bytes) -> Answer:
    if status != 200:
        raise HTTPError(f"status {status}: {body[:200]!r}")
    try:
        data: dict[str, Any] = json.loads(body)
        client_host, client_port = data["client"]
        server_host, server_port = data["server"]
        return Answer(
            (client_host, client_port), (server_host, server_port), data["pid"], data["version"]
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise HTTPError(f"not the JSON /whoami sends: {body[:200]!r}") from exc


async def whoami(
    address: tuple[str, int], *, bind: tuple[str, int] | None = None, path: str = "/whoami"
) -> tuple[Answer, tuple[str, int]]:
    """One ``GET /whoami`` over a new connection from a socket bound to *bind*.

    Returns:
      The answer, and the client socket's own address (``getsockname()``).
    """
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with trio.fail_after(REQUEST_TIMEOUT):
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        try:
            if bind is not None:
                await sock.bind(bind)
            await sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        own = sock.getsockname()
        async with trio.SocketStream(sock) as stream:
            await stream.send_all(request(path, keep_alive=False))
            status, body = await read_response(stream, bytearray())
    return parse_answer(status, body), (own[0], own[1])


# -- the load ------------------------------------------------------------------------------------


@dataclass
class Load:
    """Clients making requests one after another through HAProxy; every answer is checked.

    Each client makes at most *max_requests* requests, pausing *pause* seconds between
    them, and stops when `stop` is called: the load is steady and bounded in count. A
    request that does not come back as a complete ``200`` with the app's JSON within
    `REQUEST_TIMEOUT` is a failure; a keep-alive client that sees one opens a new
    connection, so that one failure does not stop it.

    Args:
      address: HAProxy's frontend.
      clients: how many clients run at once.
      keep_alive: each client keeps one connection open (else a new one per request).
      slow_every: every *slow_every*-th request of a client asks for ``delay`` seconds
        (0: none), so that some requests are in flight when a backend stops.
    """

    address: tuple[str, int]
    clients: int = 6
    keep_alive: bool = False
    pause: float = 0.005
    max_requests: int = 20_000
    slow_every: int = 5
    delay: float = 0.2
    sent: int = 0
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stopping: trio.Event = field(default_factory=trio.Event)
    _progress: trio.Event = field(default_factory=trio.Event)

    @property
    def ok(self) -> int:
        return len(self.answers)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Run the clients until `stop` (or their request budget runs out)."""
        async with trio.open_nursery() as nursery:
            for number in range(self.clients):
                nursery.start_soon(self._client, number)

    async def _client(self, number: int) -> None:
        stream: trio.SocketStream | None = None
        buffer = bytearray()
        try:
            for count in range(self.max_requests):
                if self._stopping.is_set():
                    return
                slow = self.slow_every and (count + number) % self.slow_every == 0
                path = f"/whoami?delay={self.delay:g}" if slow else "/whoami"
                self.sent += 1
                try:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        if stream is None:
                            stream = await trio.open_tcp_stream(*self.address)
                            buffer.clear()
                        await stream.send_all(request(path, keep_alive=self.keep_alive))
                        status, body = await read_response(stream, buffer)
                    self._record(parse_answer(status, body))
                except (OSError, trio.BrokenResourceError, trio.TooSlowError, HTTPError) as exc:
                    kind = "keep-alive" if self.keep_alive else "new connection"
                    self.failures.append(f"client {number}, request {count} ({kind}): {exc!r}")
                    self._wake()
                    if stream is not None:
                        await stream.aclose()
                    stream = None
                if not self.keep_alive and stream is not None:
                    await stream.aclose()
                    stream = None
                await trio.sleep(self.pause)
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    def _record(self, answer: Answer) -> None:
        self.answers.append(answer)
        self._wake()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def wait_for(self, what: str, condition: Callable[[], bool], seconds: float) -> None:
        """Wait until *condition* holds, checked at each answer or failure; fail after *seconds*.

        No polling: the clients wake this on every answer. The test fails (with *what*) if
        the condition does not hold in time, or if the load ran out of requests first.
        """
        with trio.move_on_after(seconds):
            while not condition():
                if self._stopping.is_set():
                    break
                with trio.move_on_after(REQUEST_TIMEOUT):
                    await self._progress.wait()
            else:
                return
        pytest.fail(
            f"gave up waiting, after {seconds:g} s, for {what}; {self.summary()}",
            pytrace=False,
        )

    def pids(self, port: int | None = None, since: int = 0) -> set[int]:
        """The pids that answered (from backend *port*, from answer number *since* on)."""
        return {a.pid for a in self.answers[since:] if port is None or a.server[1] == port}

    def summary(self) -> str:
        by_port = Counter(answer.server[1] for answer in self.answers)
        failed = len(self.failures)
        first = "; first failures: " + " | ".join(self.failures[:5]) if failed else ""
        return (
            f"{self.sent} requests sent, {self.ok} answered 200, {failed} failed "
            f"(answers by backend port: {dict(sorted(by_port.items()))}){first}"
        )


def _checking(row: dict[str, str]) -> bool:
    """Whether HAProxy's check of the server in *row* is in progress."""
    return (row.get("check_status") or "").startswith("* ")
