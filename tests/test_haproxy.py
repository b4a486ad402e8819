"""trioserve behind a real HAProxy (Debian's ``haproxy``, 2.6), with the PROXY protocol v2.

Two or three ``trioserve examples/haproxy/app.py`` command-line instances, each on its own
loopback port with ``--proxy-protocol``, behind HAProxy with ``send-proxy-v2`` and health
checks (`haproxy_support`). The tests check what a deployment relies on:

- the handler sees the client's own address and port, not HAProxy's;
- HAProxy's health checks, which open with a PROXY v2 ``LOCAL`` header, are served, so the
  backends stay up;
- a rolling restart (SIGTERM each backend in turn, start it again) under a steady load
  loses no request;
- a SIGHUP reload of a ``--workers`` pool under a steady load loses none, and the new
  workers run the code as it is on disk now.

For comparison, nginx's stream module (``proxy_protocol on``, which sends version 1 of
the protocol, and no active health checks) gets the client-address and rolling-restart
tests too.

Without ``haproxy`` (or ``nginx`` with its stream module) these tests skip, saying so;
under CI (``CI=true``) they fail instead.
Each prints its figures (requests sent and lost, HAProxy's retries): ``pytest -rP
tests/test_haproxy.py`` shows them.
"""

from __future__ import annotations

import http.client
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from .conftest import needs_ipv6
from .haproxy_support import (
    EXAMPLE_CONFIG,
    EXAMPLE_NGINX_CONFIG,
    GRACE,
    REQUEST_TIMEOUT,
    START_TIMEOUT,
    Cluster,
    Load,
    NginxBinary,
    check_config,
    check_nginx_config,
    cluster,
    example_config,
    example_nginx_config,
    find_haproxy,
    find_nginx,
    haproxy_config,
    haproxy_version,
    parse_answer,
    whoami,
)

pytestmark = pytest.mark.usefixtures("fd_leak_check")

#: A draining backend must be gone well before its grace runs out: its slowest request
#: takes 0.2 s and its idle keep-alive connections are closed at once.
DRAIN_BOUND = GRACE - 1.0


@pytest.fixture
def haproxy() -> str:
    """The ``haproxy`` binary: skips the test when there is none (fails it under CI)."""
    return find_haproxy()


@pytest.fixture
def nginx() -> NginxBinary:
    """``nginx`` with its stream module: skips the test without them (fails it under CI)."""
    return find_nginx()


@asynccontextmanager
async def running(load: Load) -> AsyncIterator[Load]:
    """Run *load* for the duration of the block; stop it (and wait for it) at the end.

    A failure in the block is raised after the load has stopped, as it is: not wrapped in
    the ExceptionGroup of the nursery that runs the load.
    """
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run)
        try:
            yield load
        except (Exception, pytest.fail.Exception) as exc:
            failure = exc
        finally:
            load.stop()
    if failure is not None:
        raise failure


def answered_by(load: Load, pid: int, port: int, since: int) -> Callable[[], bool]:
    """Whether process *pid* on backend *port* has answered, from answer *since* on."""
    return lambda: pid in load.pids(port, since=since)


def answered(load: Load, count: int) -> Callable[[], bool]:
    """Whether *count* requests have been answered."""
    return lambda: load.ok >= count


async def figures(lb: Cluster) -> str:
    """HAProxy's counts of retried and redispatched connections, over every server."""
    rows = (await lb.haproxy.servers()).values()
    retries = sum(int(row["wretr"] or 0) for row in rows)
    redispatches = sum(int(row["wredis"] or 0) for row in rows)
    return f"HAProxy retried {retries} times, redispatched {redispatches} times"


def assert_no_failures(load: Load, lb: Cluster) -> None:
    assert load.sent == load.ok + len(load.failures), load.summary()
    assert not load.failures, f"{load.summary()}\n{lb.logs()}"


# -- the configuration -------------------------------------------------------------------------


def test_the_example_config_is_the_tested_one() -> None:
    assert EXAMPLE_CONFIG.read_text() == example_config(), (
        "examples/haproxy/haproxy.cfg differs from what tests/haproxy_support.py's "
        "haproxy_config() renders for it: change both (the tests run the rendered one)"
    )


def test_the_example_config_parses(haproxy: str) -> None:
    result = check_config(haproxy, EXAMPLE_CONFIG)
    assert result.returncode == 0, f"{haproxy_version(haproxy)}:\n{result.stderr}"


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_both_modes_parse_without_warnings(haproxy: str, tmp_path: Path, mode: str) -> None:
    path = tmp_path / "haproxy.cfg"
    servers = [("s1", "127.0.0.1:9001"), ("s2", "127.0.0.1:9002")]
    path.write_text(
        haproxy_config(
            binds=["127.0.0.1:8080", "[::1]:8080"],
            servers=servers,
            mode=mode,
            stats_socket=str(tmp_path / "haproxy.sock"),
        )
    )
    result = check_config(haproxy, path)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_mode_is_http_or_tcp() -> None:
    with pytest.raises(ValueError, match="mode must be 'http' or 'tcp'"):
        haproxy_config(binds=[], servers=[], mode="udp")


# -- the client's address ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tcp", "http"])
async def test_the_handler_sees_the_clients_own_address(
    haproxy: str, tmp_path: Path, mode: str
) -> None:
    async with cluster(haproxy, tmp_path, backends=1, mode=mode) as lb:
        for _ in range(3):
            answer, own = await whoami(lb.address, bind=("127.0.0.1", 0))
            assert answer.client == own, (
                f"the handler saw {answer.client}, but the client's socket is {own} "
                "(HAProxy's side of the connection, if the PROXY header was not used)"
            )
            assert answer.server == ("127.0.0.1", lb.backends[0].port)


@needs_ipv6
async def test_the_handler_sees_an_ipv6_clients_address(haproxy: str, tmp_path: Path) -> None:
    # HAProxy listens on ::1 too, and still connects to the backend over IPv4: the PROXY
    # v2 header carries the client's IPv6 address (AF_INET6) all the same.
    async with cluster(haproxy, tmp_path, backends=1, mode="tcp", ipv6=True) as lb:
        answer, own = await whoami(lb.haproxy.binds[1], bind=("::1", 0))
        assert own[0] == "::1"
        assert answer.client == own


async def _curl_whoami(curl: str, url: str) -> tuple[bytes, tuple[str, int]]:
    # curl binds to 127.0.0.1 itself and reports the address it used.
    result = await trio.run_process(
        [
            *(curl, "--silent", "--show-error", "--fail", "--max-time", f"{REQUEST_TIMEOUT:g}"),
            *("--interface", "127.0.0.1", "--write-out", r"\n%{local_ip} %{local_port}", url),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, f"curl failed: {result.stderr.decode(errors='replace')}"
    body, _, own = result.stdout.rpartition(b"\n")
    host, port = own.decode().split()
    return body, (host, int(port))


def _http_client_whoami(address: tuple[str, int]) -> tuple[bytes, tuple[str, int]]:
    connection = http.client.HTTPConnection(
        *address, timeout=REQUEST_TIMEOUT, source_address=("127.0.0.1", 0)
    )
    try:
        connection.request("GET", "/whoami")
        assert connection.sock is not None
        host, port = connection.sock.getsockname()[:2]
        response = connection.getresponse()
        assert response.status == 200, response.status
        return response.read(), (host, port)
    finally:
        connection.close()


async def test_a_real_client_s_address_reaches_the_handler(haproxy: str, tmp_path: Path) -> None:
    """curl (or, without curl, http.client) through HAProxy in HTTP mode."""
    curl = shutil.which("curl")
    async with cluster(haproxy, tmp_path, backends=1, mode="http") as lb:
        host, port = lb.address
        if curl is not None:
            body, own = await _curl_whoami(curl, f"http://{host}:{port}/whoami")
        else:
            with trio.fail_after(REQUEST_TIMEOUT):
                body, own = await trio.to_thread.run_sync(_http_client_whoami, lb.address)
    answer = parse_answer(200, body)
    client = "curl" if curl else "http.client"
    assert answer.client == own, f"{client} used {own}; the handler saw {answer.client}"


# -- health checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["http", "tcp"])
async def test_health_checks_over_proxy_v2_local_keep_the_backends_up(
    haproxy: str, tmp_path: Path, mode: str
) -> None:
    # Each check's connection opens with a PROXY v2 header whose command is LOCAL: the
    # server must serve it as a connection from HAProxy itself. In HTTP mode the check is
    # `GET /health`; in TCP mode HAProxy connects, sends the header and resets.
    async with cluster(haproxy, tmp_path, backends=2, mode=mode) as lb:
        await trio.sleep(1.0)  # five checks of each server, 200 ms apart
        states = await lb.haproxy.servers()
        ports = set()
        for _ in range(10):
            answer, _own = await whoami(lb.address)
            ports.add(answer.server[1])
    expected = "L7OK" if mode == "http" else "L4OK"
    for name, row in states.items():
        seen = {key: row[key] for key in ("status", "check_status", "chkfail", "chkdown")}
        assert row["status"] == "UP", f"{name}: {seen}\n{lb.logs()}"
        assert row["check_status"] == expected, f"{name}: {seen}"
        assert (row["chkfail"], row["chkdown"]) == ("0", "0"), f"{name}: {seen}"
        if mode == "http":
            assert row["check_code"] == "200", f"{name}: {seen}"
    assert ports == {backend.port for backend in lb.backends}
    for backend in lb.backends:
        log = backend.stderr.read_text()
        assert "Traceback" not in log, f"a health check made {backend.name} log an error:\n{log}"


# -- rolling restart ---------------------------------------------------------------------------


#: (HAProxy's mode, keep-alive clients?). In HTTP mode HAProxy resends a request that a
#: server closed on without answering (`retry-on empty-response`), so these runs show what
#: users of the documented configuration see. In TCP mode it cannot (the bytes are already
#: passed on), so these runs show that the server itself loses nothing it accepted.
LOADS = [
    pytest.param("http", False, id="http-new-connections"),
    pytest.param("http", True, id="http-keep-alive"),
    pytest.param("tcp", False, id="tcp-new-connections"),
]

#: Answers to wait for before, between and after the restarts: a steady load, not a burst.
STEADY = 150


@pytest.mark.parametrize(("mode", "keep_alive"), LOADS)
async def test_a_rolling_restart_under_load_loses_no_request(
    haproxy: str, tmp_path: Path, mode: str, keep_alive: bool
) -> None:
    """SIGTERM each of three backends in turn and start it again, under a steady load.

    A backend that gets SIGTERM closes its listening socket at once: HAProxy's connects to
    it are refused and retried on another backend. Requests in flight (some take 0.2 s)
    finish, and idle keep-alive connections are closed, so it exits well within its grace.
    """
    async with cluster(haproxy, tmp_path, backends=3, mode=mode) as lb:
        load = Load(lb.address, keep_alive=keep_alive)
        ports = [backend.port for backend in lb.backends]
        restarted: dict[str, tuple[int, int]] = {}
        async with running(load):
            await load.wait_for(
                f"answers from every backend, and {STEADY} in all",
                lambda: all(load.pids(p) for p in ports) and load.ok >= STEADY,
                30,
            )
            for backend in lb.backends:
                assert backend.process is not None
                old_pid = backend.process.pid
                mark = load.ok
                new_pid = await backend.restart()
                await load.wait_for(
                    f"an answer from {backend.name}'s new process {new_pid} after its restart",
                    answered_by(load, new_pid, backend.port, since=mark),
                    START_TIMEOUT,
                )
                restarted[backend.name] = (old_pid, new_pid)
                mark = load.ok
                await load.wait_for(
                    f"{STEADY} more answers after restarting {backend.name}",
                    answered(load, mark + STEADY),
                    30,
                )
        retries = await figures(lb)
    kind = "keep-alive" if keep_alive else "a new connection per request"
    print(
        f"rolling restart, HAProxy mode {mode}, {kind}: {load.summary()}; {retries}; "
        f"pids (old, new): {restarted}; seconds from SIGTERM to exit: "
        f"{[backend.stop_times for backend in lb.backends]}"
    )
    assert_no_failures(load, lb)
    for name, (old_pid, new_pid) in restarted.items():
        assert old_pid != new_pid, name
    # The slowest request takes 0.2 s: a drain that takes most of the grace waited for an
    # idle keep-alive connection (HAProxy's, to a server it no longer uses) to time out.
    for backend in lb.backends:
        assert max(backend.stop_times) < DRAIN_BOUND, (
            f"{backend.name} took {backend.stop_times} s from SIGTERM to exit, with --grace "
            f"{GRACE:g} and requests of at most 0.2 s: were idle connections kept open?"
        )


# -- SIGHUP reload -----------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "keep_alive"), LOADS)
async def test_a_sighup_reload_under_load_loses_no_request(
    haproxy: str, tmp_path: Path, mode: str, keep_alive: bool
) -> None:
    """SIGHUP a ``--workers 2`` backend under load: new workers, new code, nothing lost.

    The listening socket stays open in the parent, so nothing is refused: new workers start
    with the module imported afresh (its VERSION changed on disk before the signal), then
    the old ones drain and exit.
    """
    async with cluster(haproxy, tmp_path, backends=1, mode=mode, workers=2) as lb:
        backend = lb.backends[0]
        assert backend.process is not None
        parent = backend.process.pid
        load = Load(lb.address, keep_alive=keep_alive)
        async with running(load):
            await load.wait_for(
                f"{STEADY} answers before the reload", lambda: load.ok >= STEADY, 30
            )
            lb.set_version("2-reloaded")
            mark = load.ok
            backend.send_signal(signal.SIGHUP)

            def reloaded() -> bool:
                last = load.answers[mark:][-50:]
                new = len(last) == 50 and all(a.version == "2-reloaded" for a in last)
                return new and load.ok >= mark + STEADY

            await load.wait_for(
                f"{STEADY} answers after SIGHUP, the last 50 from the new code",
                reloaded,
                GRACE + START_TIMEOUT,
            )
        retries = await figures(lb)
        assert backend.process.returncode is None, (
            f"the command exited on SIGHUP (status {backend.process.returncode}):\n{lb.logs()}"
        )
        old = {a.pid for a in load.answers if a.version == "1"}
        new = {a.pid for a in load.answers if a.version != "1"}
        kind = "keep-alive" if keep_alive else "a new connection per request"
        print(
            f"SIGHUP reload, --workers 2, HAProxy mode {mode}, {kind}: {load.summary()}; "
            f"{retries}; old worker pids {sorted(old)}, new {sorted(new)}"
        )
        assert_no_failures(load, lb)
        assert parent not in old | new, "the command's own process answered: no workers?"
        assert new, "no answer from a new worker"
        assert old.isdisjoint(new), f"a worker answered with both versions: {old & new}"
        # The old workers drain and exit (well within the grace: requests take at most
        # 0.2 s, and idle connections are closed at once), while the new ones serve on.
        await _assert_exited(old, DRAIN_BOUND)


async def _assert_exited(pids: set[int], seconds: float) -> None:
    """Wait (bounded) for the processes *pids* to be gone; fail naming those that remain."""
    remaining = set(pids)
    with trio.move_on_after(seconds):
        while remaining:
            remaining = {pid for pid in remaining if await trio.Path(f"/proc/{pid}").exists()}
            await trio.sleep(0.05)
    assert not remaining, (
        f"old workers {sorted(remaining)} still run {seconds:g} s after the reload, with "
        f"--grace {GRACE:g} and requests of at most 0.2 s: were idle connections kept open?"
    )


# -- nginx's stream module, for comparison: PROXY protocol version 1, no health checks ---------


def test_the_example_nginx_config_is_the_tested_one() -> None:
    assert EXAMPLE_NGINX_CONFIG.read_text() == example_nginx_config(), (
        "examples/haproxy/nginx.conf differs from what tests/haproxy_support.py's "
        "nginx_config() renders for it: change both (the tests run the rendered one)"
    )


def test_the_example_nginx_config_parses(nginx: NginxBinary, tmp_path: Path) -> None:
    result = check_nginx_config(nginx, EXAMPLE_NGINX_CONFIG, tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "client",
    [pytest.param("127.0.0.1", id="tcp4"), pytest.param("::1", id="tcp6", marks=needs_ipv6)],
)
async def test_behind_nginx_the_handler_sees_the_clients_own_address(
    nginx: NginxBinary, tmp_path: Path, client: str
) -> None:
    # nginx sends `PROXY TCP4 ...` or `PROXY TCP6 ...`: the text version of the protocol.
    async with cluster(nginx, tmp_path, backends=1, ipv6=client == "::1") as lb:
        frontend = lb.balancer.binds[-1]
        for _ in range(3):
            answer, own = await whoami(frontend, bind=(client, 0))
            assert answer.client == own, f"the handler saw {answer.client}; the client is {own}"


async def test_a_rolling_restart_behind_nginx_loses_no_request(
    nginx: NginxBinary, tmp_path: Path
) -> None:
    """As with HAProxy in TCP mode: nginx cannot resend what it has passed on."""
    async with cluster(nginx, tmp_path, backends=3) as lb:
        load = Load(lb.address)
        ports = [backend.port for backend in lb.backends]
        async with running(load):
            await load.wait_for(
                f"answers from every backend, and {STEADY} in all",
                lambda: all(load.pids(p) for p in ports) and load.ok >= STEADY,
                30,
            )
            for backend in lb.backends:
                mark = load.ok
                new_pid = await backend.restart()
                await load.wait_for(
                    f"an answer from {backend.name}'s new process {new_pid} after its restart",
                    answered_by(load, new_pid, backend.port, since=mark),
                    START_TIMEOUT,
                )
                await load.wait_for(
                    f"{STEADY} more answers after restarting {backend.name}",
                    answered(load, load.ok + STEADY),
                    30,
                )
    print(
        f"rolling restart behind nginx, a new connection per request: {load.summary()}; "
        f"seconds from SIGTERM to exit: {[backend.stop_times for backend in lb.backends]}"
    )
    assert_no_failures(load, lb)
