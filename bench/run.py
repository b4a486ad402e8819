"""The benchmark runner: ``python -m bench`` (``--quick`` for a smoke run).

What it does, in order (``--parts`` picks among them):

``http``
  Starts every HTTP contender of `bench.servers` as its own process, checks each with one
  request, then drives each with ``wrk -t1`` at every ``--concurrency`` for ``--duration``
  seconds. The contenders are interleaved: a round measures every contender once at every
  concurrency, in an order rotated from round to round, and there are ``--rounds``
  rounds. It prints, per contender and concurrency, the median over the rounds of the
  requests/s, of wrk's p50 and p99 latency, of the server's CPU time per request, and of
  the ratios to raw Trio, asyncio and the standard library *measured in the same round*. On a
  shared, noisy machine the ratios are what count: both sides of a ratio saw the same
  weather.

``close``
  A new connection per request: the contenders that have a reference to compare with
  (`CLOSE_REFERENCE`: the async handler and raw Trio, asyncio, the ``http.server``
  handler on trioserve and on the standard library, the process pool against one
  process), interleaved the same way, with wrk's requests made HTTP/1.0
  (``bench/http10.lua``) and with ``Connection: close``. Each server answers and closes
  the connection, and wrk connects again.

``memory``
  For each contender, a fresh server and a separate client process
  (`bench.idle_client`) that holds ``--connections`` keep-alive connections idle. It
  prints the server's RSS growth per connection and its thread count, then has the
  client send one more request on every connection and checks all were answered.

``udp``
  A UDP echo: trioserve's ``ThreadingUDPServer``, raw Trio and the stdlib's
  ``ThreadingUDPServer``, each driven in turn by `bench.udp_client` for ``--duration``
  seconds, over the rounds; datagrams answered per second, and the same-round ratios.

``pool``
  Runs ``bench/pool_cpu.py`` (the process pool's CPU-heavy benchmark) if it exists.

A contender whose trioserve feature does not exist yet, or that fails its first request,
is skipped with a line saying why; the rest go on. Every server is started in a session
of its own and stopped by its process-group id (its own PID), so a server's worker
processes go with it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench._common import HOST, REQUEST, children_of, raise_open_file_limit, rss_kib
from bench._common import thread_count as threads_of
from bench.idle_client import read_response
from bench.servers import CONTENDERS, UDP_CONTENDERS

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("http", "close", "memory", "udp", "pool")

#: For each contender: the stdlib server its "x stdlib" column compares it with.
STDLIB_REFERENCE = dict.fromkeys(CONTENDERS, "stdlib")
STDLIB_REFERENCE.update(
    {
        "trioserve-http": "stdlib-http",
        "stdlib-http": "stdlib-http",
        "stdlib-http-stock": "stdlib-http",
    }
)
#: The keep-alive targets: contender -> [(reference, the least ratio to it)].
TARGETS = {
    "trioserve-async": [("trio", 1.0), ("asyncio", 0.85)],
    "trioserve-sync": [("stdlib", 0.8)],
    "trioserve-http": [("stdlib-http", 0.9)],
}
#: The contenders of the connection-per-request part, each with the server its
#: "x reference" column compares it with (the pool: with one process, trioserve-async).
CLOSE_REFERENCE = {
    "trioserve-async": "trio",
    "trio": "trio",
    "asyncio": "trio",
    "trioserve-http": "stdlib-http",
    "stdlib-http": "stdlib-http",
    "trioserve-pool": "trioserve-async",
}
#: How the connection-per-request part asks for a new connection per request: wrk's
#: requests made HTTP/1.0 (bench/http10.lua), or HTTP/1.1 with ``Connection: close``.
CLOSE_MODES = ("http10", "close")
#: The connection-per-request targets: contender -> the least ratio to its reference.
CLOSE_TARGETS = {"trioserve-async": 1.0, "trioserve-http": 1.0}
UDP_TARGETS = {"udp-trioserve": [("udp-trio", 0.9), ("udp-stdlib", 1.0)]}
#: The most an idle async connection may cost the trioserve-async server, in KiB.
MEMORY_TARGET_KIB = 10.0


def log(message: str) -> None:
    """Progress, on stderr, so that stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


# -- servers -----------------------------------------------------------------------------


@dataclass
class Server:
    """A contender's process, listening on `port`."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    stderr: IO[bytes]

    def pids(self) -> list[int]:
        """The server's process and its children (a pool's workers)."""
        try:
            return [self.process.pid, *children_of(self.process.pid)]
        except FileNotFoundError:
            return [self.process.pid]

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far by the server and its children."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                    fields = stat.read().rpartition(")")[2].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        """The resident memory of the server and its children."""
        return sum(rss_kib(pid) for pid in self.pids())

    def threads(self) -> int:
        """The threads of the server and its children."""
        return sum(threads_of(pid) for pid in self.pids())


class Skipped(Exception):
    """A contender that cannot run; the message says why."""


def _stderr_tail(stream: IO[bytes], lines: int = 3) -> str:
    stream.seek(0)
    text = stream.read().decode(errors="replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:])


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline().decode(errors="replace").strip()


def start_server(name: str, *extra: str, cwd: Path = ROOT) -> Server:
    """Start contender *name*, wait until it listens, and check it answers.

    *cwd* is where it runs, and where ``bench`` and ``trioserve`` are imported from
    first: another version of the code, for `bench.paired`.

    Raises:
      Skipped: the contender said SKIP, died, or failed its first request.
    """
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - stop_server closes it
    if SERVER_CPU and name != "trioserve-pool":  # a pool needs its cores
        extra = ("--cpu", str(SERVER_CPU[0]), *extra)
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.servers", name, "--port", "0", *extra],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        start_new_session=True,
    )
    line = _read_line(process, 30.0)
    if not line.startswith("READY "):
        if line.startswith("SKIP "):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5.0)  # it exits by itself
            reason = line[5:]
        else:
            reason = f"did not start ({line!r}): {_stderr_tail(stderr)}"
        _stop(process)
        stderr.close()
        raise Skipped(reason)
    server = Server(name, process, int(line.split()[1]), stderr)
    if name not in UDP_CONTENDERS:
        try:
            probe_http(server.port)
        except (OSError, ValueError) as exc:
            stop_server(server)
            raise Skipped(
                f"its first request failed ({exc!r}); server says: {_stderr_tail(stderr)}"
            ) from None
    return server


def probe_http(port: int, timeout: float = 15.0) -> None:
    """Send one request and read the answer, or raise."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(REQUEST)
        read_response(sock, bytearray())


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)  # the session the server leads: its own PID
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # a worker its parent left behind
    if process.stdout is not None:
        process.stdout.close()


def stop_server(server: Server) -> None:
    """Stop the server and its process group, by its PID."""
    _stop(server.process)
    server.stderr.close()


@contextlib.contextmanager
def running(names: Sequence[str]) -> Iterator[dict[str, Server]]:
    """Start the contenders *names* (skipping those that cannot run); stop them all after."""
    servers: dict[str, Server] = {}
    try:
        for name in names:
            try:
                servers[name] = start_server(name)
            except Skipped as exc:
                log(f"skipped {name}: {exc}")
                print(f"- skipped `{name}`: {exc}")
        yield servers
    finally:
        for server in servers.values():
            stop_server(server)


# -- wrk ---------------------------------------------------------------------------------


#: Pins wrk and the clients to CPU 0 when the servers run on CPU 1 (see `pin_cpus`).
WRK_PREFIX: list[str] = []
#: The CPU the servers are pinned to (None: not pinned).
SERVER_CPU: list[int] = []


def pin_cpus() -> bool:
    """Run servers on CPU 1 and wrk and the clients on CPU 0, if there are two and taskset.

    Where the kernel puts a server and wrk (the same core, or two) changes a result more
    than most of what is measured here; pinning takes that out of the comparison.
    """
    taskset = shutil.which("taskset")
    if taskset is None or len(os.sched_getaffinity(0)) < 2:
        return False
    cpus = sorted(os.sched_getaffinity(0))
    WRK_PREFIX[:] = [taskset, "-c", str(cpus[0])]
    SERVER_CPU[:] = [cpus[1]]
    return True


def ensure_wrk() -> str:
    """The path of wrk; offer to install Debian's package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    command = ["apt-get", "install", "-y", "wrk"]
    if os.geteuid() != 0:
        command.insert(0, "sudo")
    log("wrk is not installed: it is Debian's package 'wrk' (" + shlex.join(command) + ").")
    if sys.stdin.isatty() and input("Install it now? [y/N] ").strip().lower() == "y":
        subprocess.run(command, check=False)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("the HTTP and memory parts need wrk; install it and run again")


@dataclass
class Measurement:
    """One wrk run against one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    errors: int
    requests: int = 0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


#: wrk's extra arguments for each way of sending requests (see `CLOSE_MODES`).
WRK_MODES = {
    "keep-alive": [],
    "http10": ["-s", str(ROOT / "bench" / "http10.lua")],
    "close": ["-H", "Connection: close"],
}


def run_wrk(
    wrk: str, server: Server, connections: int, seconds: int, mode: str = "keep-alive"
) -> Measurement:
    """Drive *server* with wrk; return what wrk and the server's CPU clock saw.

    *mode* is a key of `WRK_MODES`: keep-alive connections, or a new connection per
    request (HTTP/1.0 requests, or ``Connection: close``).
    """
    command = [
        *WRK_PREFIX,
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
        *WRK_MODES[mode],
        f"http://{HOST}:{server.port}/",
    ]
    cpu_before = server.cpu_seconds()
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    cpu = server.cpu_seconds() - cpu_before
    output = result.stdout
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total_match = re.search(r"(\d+) requests in", output)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non2xx.group(1)) if non2xx else 0
    if rps_match is None or total_match is None:
        raise RuntimeError(f"wrk failed: {result.stderr.strip() or output.strip()}")
    total = int(total_match.group(1))
    return Measurement(
        rps=float(rps_match.group(1)),
        p50_ms=_latency_ms(output, "50"),
        p99_ms=_latency_ms(output, "99"),
        cpu_us=cpu / total * 1e6 if total else float("nan"),
        errors=errors,
        requests=total,
    )


# -- tables ------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown pipe table, aligned for the terminal too."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _median(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def _ratio_text(value: float) -> str:
    return "-" if value != value else f"{value:.2f}x"


def _verdict(ratio: float, least: float, strictly: bool = False) -> str:
    if ratio != ratio:
        return "n/a"
    met = ratio > least if strictly else ratio >= least
    return "met" if met else "MISSED"


# -- the parts ---------------------------------------------------------------------------


@dataclass
class Options:
    """What the command line asked for."""

    rounds: int
    duration: int
    concurrencies: list[int]
    connections: int
    contenders: list[str]
    udp_contenders: list[str]
    parts: list[str]
    warmup: int
    pin: bool
    results: dict[str, str] = field(default_factory=dict)


#: Every measurement of a part: (contender, mode, concurrency) -> one per round (None: failed).
_Runs = dict[tuple[str, str, int], list[Measurement | None]]


def _interleaved(options: Options, wrk: str, names: Sequence[str], modes: Sequence[str]) -> _Runs:
    """Run every contender of *names* in every mode at every concurrency, over the rounds.

    A round measures each once, in an order rotated from round to round, so that the
    measurements a ratio compares were taken seconds apart.
    """
    runs: _Runs = {}
    with running(names) as servers:
        started = [name for name in names if name in servers]
        if options.warmup:
            for name in started:
                run_wrk(wrk, servers[name], options.concurrencies[0], options.warmup, modes[0])
        for name in started:
            for mode in modes:
                for c in options.concurrencies:
                    runs[name, mode, c] = []
        for round_number in range(options.rounds):
            shift = round_number % len(started) if started else 0
            order = started[shift:] + started[:shift]
            log(f"round {round_number + 1}/{options.rounds}: {', '.join(order)}")
            for name in order:
                for mode in modes:
                    for c in options.concurrencies:
                        try:
                            measured: Measurement | None = run_wrk(
                                wrk, servers[name], c, options.duration, mode
                            )
                        except (RuntimeError, subprocess.TimeoutExpired) as exc:
                            log(f"{name} {mode} c{c}: {exc}")
                            measured = None
                        runs[name, mode, c].append(measured)
    return runs


def _ratios(runs: _Runs, name: str, reference: str, mode: str, c: int) -> list[float]:
    """The same-round ratios of *name*'s requests/s to *reference*'s."""
    mine = runs.get((name, mode, c), [])
    theirs = runs.get((reference, mode, c), [])
    return [
        a.rps / b.rps
        for a, b in zip(mine, theirs, strict=False)  # a skipped reference has none
        if a is not None and b is not None and b.rps
    ]


def _figures(runs: _Runs, name: str, mode: str, c: int) -> list[str]:
    """Medians of requests/s, p50, p99 and CPU per request, and the runs done."""
    mine = runs[name, mode, c]
    done = [m for m in mine if m is not None]
    errors = sum(m.errors for m in done)
    return [
        f"{_median([m.rps for m in done]):,.0f}",
        f"{_median([m.p50_ms for m in done]):.2f}",
        f"{_median([m.p99_ms for m in done]):.2f}",
        f"{_median([m.cpu_us for m in done]):.1f}",
        f"{len(done)}/{len(mine)}" + (f", {errors} errors" if errors else ""),
    ]


def http_part(options: Options, wrk: str) -> None:
    """Interleaved wrk rounds over every HTTP contender, keep-alive; print the table."""
    print("\n## HTTP keep-alive hello world (wrk -t1)\n")
    mode = "keep-alive"
    runs = _interleaved(options, wrk, options.contenders, [mode])
    names = [name for name in options.contenders if (name, mode, options.concurrencies[0]) in runs]
    rows: list[list[str]] = []
    verdicts: list[str] = []
    for name in names:
        for c in options.concurrencies:
            rps, p50, p99, cpu, done = _figures(runs, name, mode, c)
            ratio = {
                reference: _median(_ratios(runs, name, reference, mode, c))
                for reference in ("trio", "asyncio", STDLIB_REFERENCE[name])
            }
            rows.append(
                [
                    name,
                    str(c),
                    rps,
                    p50,
                    p99,
                    cpu,
                    _ratio_text(ratio["trio"]),
                    _ratio_text(ratio["asyncio"]),
                    _ratio_text(ratio[STDLIB_REFERENCE[name]]),
                    done,
                ]
            )
            for reference, least in TARGETS.get(name, []):
                verdicts.append(
                    f"- `{name}` at c{c}: {_ratio_text(ratio[reference])} `{reference}`"
                    f" (target >= {least:.2f}x): {_verdict(ratio[reference], least)}"
                )
    header = [
        "contender",
        "c",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "x trio",
        "x asyncio",
        "x stdlib",
        "runs",
    ]
    print(table(header, rows))
    print(
        "\nMedians over the rounds. `x trio`, `x asyncio` and `x stdlib` are medians of "
        "same-round ratios; `x stdlib` compares with `stdlib` "
        "(socketserver.ThreadingTCPServer), or with `stdlib-http` "
        "(http.server.ThreadingHTTPServer, TCP_NODELAY) for the http.server contenders. "
        "`CPU us/req`: the server's user+system CPU time per request.\n"
    )
    print("\n".join(verdicts))


def close_part(options: Options, wrk: str) -> None:
    """A new connection per request (HTTP/1.0, and ``Connection: close``); print the table."""
    print("\n## HTTP, a new connection per request (wrk -t1)\n")
    names = [name for name in options.contenders if name in CLOSE_REFERENCE]
    for name in list(names):
        reference = CLOSE_REFERENCE[name]
        if reference not in names:  # the ratios need it
            names.append(reference)
    runs = _interleaved(options, wrk, names, CLOSE_MODES)
    rows: list[list[str]] = []
    verdicts: list[str] = []
    for name in names:
        for mode in CLOSE_MODES:
            for c in options.concurrencies:
                if (name, mode, c) not in runs:
                    continue
                rps, p50, p99, cpu, done = _figures(runs, name, mode, c)
                reference = CLOSE_REFERENCE[name]
                ratio = _median(_ratios(runs, name, reference, mode, c))
                rows.append(
                    [name, mode, str(c), rps, p50, p99, cpu, reference, _ratio_text(ratio), done]
                )
                least = CLOSE_TARGETS.get(name)
                if least is not None:
                    verdicts.append(
                        f"- `{name}`, {mode}, c{c}: {_ratio_text(ratio)} `{reference}`"
                        f" (target >= {least:.1f}x): {_verdict(ratio, least)}"
                    )
    header = [
        "contender",
        "requests",
        "c",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "reference",
        "x reference",
        "runs",
    ]
    print(table(header, rows))
    print(
        "\nMedians over the rounds; `x reference` is the median of same-round ratios to the "
        "contender named in `reference` (for `trioserve-pool`, 2 worker processes not "
        "pinned to a CPU: against one process, `trioserve-async`). `http10`: wrk's requests "
        "are HTTP/1.0 (bench/http10.lua); `close`: HTTP/1.1 with `Connection: close`. "
        "Either way the server answers and closes, and wrk connects again.\n"
    )
    print("\n".join(verdicts))


def memory_part(options: Options) -> None:
    """Idle keep-alive connections: RSS growth per connection, threads, all answered."""
    count = options.connections
    print(f"\n## Memory: {count:,} idle keep-alive connections\n")
    raise_open_file_limit(count + 100)
    rows: list[list[str]] = []
    verdicts: list[str] = []
    for name in options.contenders:
        if name == "stdlib-http-stock":
            continue  # the same server as stdlib-http, memory-wise
        try:
            server = start_server(name)
        except Skipped as exc:
            print(f"- skipped `{name}`: {exc}")
            continue
        try:
            rows.append(_memory_one(server, count, verdicts))
        finally:
            stop_server(server)
    print(
        table(
            [
                "contender",
                "RSS before MiB",
                "RSS held MiB",
                "KiB/conn",
                "threads held",
                "answered",
            ],
            rows,
        )
    )
    print("\n" + "\n".join(verdicts) if verdicts else "")


def _memory_one(server: Server, count: int, verdicts: list[str]) -> list[str]:
    log(f"memory: {server.name}, {count} connections")
    time.sleep(0.3)
    before = server.rss_kib()
    client = subprocess.Popen(
        [
            *WRK_PREFIX,
            sys.executable,
            "-m",
            "bench.idle_client",
            "--port",
            str(server.port),
            "--connections",
            str(count),
            "--deadline",
            str(60 + count / 50),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert client.stdin is not None
    try:
        line = _read_line(client, 60 + count / 50)
        if not line.startswith("OPEN "):
            return [server.name, f"{before / 1024:.1f}", "-", "-", "-", line or "no answer"]
        time.sleep(0.5)  # let the last handlers reach their idle readline
        held = server.rss_kib()
        threads = server.threads()
        client.stdin.write(b"go\n")
        client.stdin.flush()
        answer = _read_line(client, 60 + count / 50)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            client.wait(10)
        if client.poll() is None:
            client.kill()
            client.wait()
        client.stdin.close()
        if client.stdout is not None:
            client.stdout.close()
    per_connection = (held - before) / count
    answered = answer.split()[1] if answer.startswith("ANSWERED ") else answer or "none"
    if server.name == "trioserve-async":
        verdicts.append(
            f"- `trioserve-async`: {per_connection:.1f} KiB per idle connection (target <= "
            f"{MEMORY_TARGET_KIB:.0f}): {_verdict(MEMORY_TARGET_KIB - per_connection, 0.0)}; "
            f"answered {answered}/{count}"
        )
    return [
        server.name,
        f"{before / 1024:.1f}",
        f"{held / 1024:.1f}",
        f"{per_connection:.1f}",
        str(threads),
        f"{answered}/{count}",
    ]


def udp_part(options: Options) -> None:
    """The UDP echo, interleaved over the rounds; print datagrams/s and ratios."""
    print("\n## UDP echo (a window of 32 datagrams in flight)\n")
    with running(options.udp_contenders) as servers:
        names = [name for name in options.udp_contenders if name in servers]
        rates: dict[str, list[float]] = {name: [] for name in names}
        for round_number in range(options.rounds):
            shift = round_number % len(names) if names else 0
            order = names[shift:] + names[:shift]
            log(f"udp round {round_number + 1}/{options.rounds}: {', '.join(order)}")
            for name in order:
                rates[name].append(run_udp(servers[name], options.duration).rps)
    rows = []
    verdicts = []
    for name in names:
        ratios = {
            reference: _median(
                [a / b for a, b in zip(rates[name], rates.get(reference, []), strict=False) if b]
            )
            for reference in ("udp-trio", "udp-stdlib")
        }
        rows.append(
            [
                name,
                f"{_median(rates[name]):,.0f}",
                _ratio_text(ratios["udp-trio"]),
                _ratio_text(ratios["udp-stdlib"]),
            ]
        )
        for reference, least in UDP_TARGETS.get(name, []):
            strictly = reference == "udp-stdlib"
            verdicts.append(
                f"- `{name}`: {_ratio_text(ratios[reference])} `{reference}` (target "
                f"{'>' if strictly else '>='} {least:.1f}x): "
                f"{_verdict(ratios[reference], least, strictly)}"
            )
    print(table(["contender", "datagrams/s", "x udp-trio", "x udp-stdlib"], rows))
    print("\n" + "\n".join(verdicts) if verdicts else "")


def run_udp(server: Server, seconds: int) -> Measurement:
    """Drive *server* with `bench.udp_client`; return datagrams/s and the server's CPU.

    ``rps`` is echoes answered per second (NaN when the client failed), ``cpu_us`` the
    server's CPU time per answered echo; latencies are not measured (NaN).
    """
    cpu_before = server.cpu_seconds()
    result = subprocess.run(
        [
            *WRK_PREFIX,
            sys.executable,
            "-m",
            "bench.udp_client",
            "--port",
            str(server.port),
            "--seconds",
            str(seconds),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    cpu = server.cpu_seconds() - cpu_before
    nan = float("nan")
    match = re.search(r"ANSWERED (\d+) SENT (\d+) SECONDS ([\d.]+)", result.stdout)
    if match is None:
        log(f"{server.name}: the UDP client failed: {result.stdout.strip()} {result.stderr}")
        return Measurement(rps=nan, p50_ms=nan, p99_ms=nan, cpu_us=nan, errors=1)
    answered = int(match.group(1))
    return Measurement(
        rps=answered / float(match.group(3)),
        p50_ms=nan,
        p99_ms=nan,
        cpu_us=cpu / answered * 1e6 if answered else nan,
        errors=int(match.group(2)) - answered,
        requests=answered,
    )


def pool_part() -> None:
    """Run the process pool's CPU-heavy benchmark, if it exists."""
    print("\n## Process pool: CPU-heavy handler\n")
    script = ROOT / "bench" / "pool_cpu.py"
    if not script.exists():
        print("- skipped: bench/pool_cpu.py does not exist yet")
        return
    log("pool: python bench/pool_cpu.py")
    try:
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        print("- bench/pool_cpu.py did not finish within 600 s")
        return
    print(result.stdout.rstrip())
    if result.returncode:
        print(
            f"- bench/pool_cpu.py exited with status {result.returncode}: "
            f"{result.stderr.strip()[-500:]}"
        )


# -- the command line ----------------------------------------------------------------------


def _names(text: str, known: Sequence[str]) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown: {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return names


def parse_options(argv: Sequence[str] | None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="trioserve's benchmarks: HTTP (wrk), idle-connection memory, UDP echo.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of under a minute: 1 round, short runs"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument(
        "--duration", type=int, help="whole seconds per measurement (default 4; quick 1)"
    )
    parser.add_argument(
        "--concurrency", default="10,200", help="wrk connections, comma-separated (default 10,200)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        help="idle connections in the memory part (default 2000; quick 300)",
    )
    parser.add_argument(
        "--only",
        help=f"HTTP contenders to run, comma-separated (default all: {','.join(CONTENDERS)})",
    )
    parser.add_argument(
        "--parts",
        help=f"what to run, comma-separated (default {','.join(PARTS)}; quick: all but pool)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the servers to CPU 1 and wrk and the clients to CPU 0",
    )
    args = parser.parse_args(argv)
    contenders = list(CONTENDERS)
    if args.only:
        contenders = _names(args.only, list(CONTENDERS))
        for reference in ("trio", "stdlib", "asyncio"):  # the ratios need them
            if reference not in contenders:
                contenders.append(reference)
    quick_parts = [part for part in PARTS if part != "pool"]
    parts = _names(args.parts, PARTS) if args.parts else list(quick_parts if args.quick else PARTS)
    return Options(
        rounds=args.rounds or (1 if args.quick else 3),
        duration=args.duration or (1 if args.quick else 4),
        concurrencies=[int(c) for c in args.concurrency.split(",")],
        connections=args.connections or (300 if args.quick else 2000),
        contenders=contenders,
        udp_contenders=list(UDP_CONTENDERS),
        parts=parts,
        warmup=0 if args.quick else 1,
        pin=not args.no_pin,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; print Markdown results on stdout, progress on stderr."""
    options = parse_options(argv)
    wrk = ensure_wrk() if {"http", "close"} & set(options.parts) else ""
    started = time.monotonic()
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    print(f"# trioserve benchmarks, {datetime.date.today().isoformat()}\n")
    print(f"- command: `{command.strip()}`")
    wrk_version = "no wrk"
    if wrk:
        version = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        wrk_version = version.stdout.split(" [")[0].strip()
    print(
        f"- machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {wrk_version}"
    )
    pinned = options.pin and pin_cpus()
    print(
        f"- servers on CPU {SERVER_CPU[0]}, wrk and clients on CPU {WRK_PREFIX[-1]}"
        if pinned
        else "- not pinned to CPUs"
    )
    print(f"- {options.rounds} round(s) of {options.duration:g} s per measurement")
    if "http" in options.parts:
        http_part(options, wrk)
    if "close" in options.parts:
        close_part(options, wrk)
    if "memory" in options.parts:
        memory_part(options)
    if "udp" in options.parts:
        udp_part(options)
    if "pool" in options.parts:
        pool_part()
    print(f"\n(took {time.monotonic() - started:.0f} s)")
    return 0
