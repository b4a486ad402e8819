"""Run CPython's own socketserver, http.server and xmlrpc.server tests against trioserve.

``make compat`` (or ``.venv/bin/python -m compat``, or ``python compat/run.py``) runs,
from the interpreter's own ``test`` package, never from a copy:

- ``test.test_socketserver``, all of it;
- ``test.test_httpservers``, all of it;
- the server tests of ``test.test_xmlrpc``: every test that builds a server
  (`XMLRPC_SERVER_TESTS`).

The adapter
-----------
`install` is the whole adapter: it imports trioserve, puts it in
``sys.modules["socketserver"]``, then imports ``http.server`` and ``xmlrpc.server`` afresh,
so that ``http.server.HTTPServer``, ``xmlrpc.server.SimpleXMLRPCServer`` and the handler
classes of both derive from trioserve's classes, as they would if trioserve *were*
socketserver. It checks that they do, and fails loudly if they do not. Nothing in the
tests is patched, and no assertion is touched. Two things besides are done the way
CPython's own test runner (``regrtest``) does them:

- The per-test timeout (``--timeout``, 5 s) caps ``test.support``'s timeouts, as
  ``python -m test --timeout`` does, so that a client waiting for a server that never
  answers fails in seconds, not in ``SHORT_TIMEOUT``'s 30.
- A test still running well past that timeout (a hang) is ended: ``faulthandler`` dumps
  every thread's stack and exits the process, the test is reported as an error with that
  dump, and a new process carries on with the tests after it.

Tests that cannot apply to any socketserver other than CPython's own are skipped by name,
each with its reason (`NOT_APPLICABLE`); they are counted as skipped, apart from the
tests' own skips, and listed in ``docs/porting.md``. Everything else must pass.

Processes
---------
Each suite runs in a child process of its own (this file with ``--child``), the three at
once, so that one suite's hang, leaked threads or changed working directory cannot touch
another. A child writes one JSON line per event to a results file (the plan, each test's
start, each test's outcome), flushed as it goes, so the parent knows what ran even when
the child had to be ended. Each suite has a deadline (``--suite-timeout``); tests not run
by then are reported as errors.

When the interpreter has no ``test`` package (some Linux distributions ship it apart), there
is nothing to run: the runner says so and exits 0; under ``CI=true`` it says so loudly, on
stderr and as a GitHub Actions warning, as a CI image ought to have the package.

Output: each suite's failures with their tracebacks (``-q``: one line each), a count line
per suite, and a closing line ``N passed, N failed, N skipped``. The exit status is 1 when
anything failed or erred, 0 otherwise.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

#: The suites, in the order they are reported. Each is a module of the ``test`` package.
SUITES = ("test_socketserver", "test_httpservers", "test_xmlrpc")

#: The server tests of test_xmlrpc, the tests that build a server: every subclass of its
#: ``BaseServerTestCase`` (found at run time, so a later CPython's new ones are included),
#: and these. Its other tests (marshalling, the client, the dispatcher on its own, CGI)
#: never touch socketserver.
XMLRPC_SERVER_TESTS = (
    "XMLRPCTestCase.test_keepalive_disconnect",
    "FailingServerTestCase",
    "UseBuiltinTypesTestCase.test_xmlrpcserver_has_use_builtin_types_flag",
)

#: Tests that cannot apply to a socketserver that is not CPython's module itself, and why.
#: Keep this list short and honest: a test that fails because trioserve is wrong is a bug
#: to fix in trioserve, never an entry here. Ids without the leading ``test.``.
NOT_APPLICABLE: dict[str, str] = {
    "test_socketserver.MiscTestCase.test_all": (
        "checks the identity of the module, not its behaviour: every public name whose "
        "__module__ is the string 'socketserver' must be in __all__; trioserve's classes "
        "are defined in trioserve's own modules, so the test expects an empty __all__"
    ),
    "test_socketserver.MiscTestCase.test_threads_reaped": (
        "reads socketserver.ThreadingMixIn's private list of threads, server._threads; "
        "trioserve runs each request in a task of a nursery and keeps no such list"
    ),
    "test_socketserver.SocketServerTest.test_ForkingTCPServer": (
        "forks with classes defined inside the test (make_server's MyServer and "
        "MyHandler); trioserve's Forking servers serve from a pool of spawned worker "
        "processes, which must import the server and handler classes by name"
    ),
    "test_socketserver.SocketServerTest.test_ForkingUnixStreamServer": (
        "forks with classes defined inside the test (make_server's MyServer and "
        "MyHandler), which worker processes cannot import"
    ),
    "test_socketserver.SocketServerTest.test_ForkingUDPServer": (
        "forks with classes defined inside the test (make_server's MyServer and "
        "MyHandler), which worker processes cannot import"
    ),
    "test_socketserver.SocketServerTest.test_ForkingUnixDatagramServer": (
        "forks with classes defined inside the test (make_server's MyServer and "
        "MyHandler), which worker processes cannot import"
    ),
}

#: The per-test timeout, in seconds, as ``python -m test --timeout``. A test that passes
#: takes a fraction of a second; one that waits for a server that never answers fails then.
DEFAULT_TIMEOUT = 5.0
#: How long a test may run before it is taken for a hang, as a multiple of the timeout:
#: long enough for a test to fail on a timeout, then wait for its threads as long again.
HANG_FACTOR = 3.0
#: Each suite's deadline, in seconds; the suites run at once.
DEFAULT_SUITE_TIMEOUT = 150.0

OUTCOMES = ("passed", "failed", "error", "skipped", "n/a")


# -- the adapter ---------------------------------------------------------------------------


def install() -> None:
    """Make trioserve the ``socketserver`` module, and build http.server/xmlrpc.server on it.

    Raises:
      RuntimeError: when ``http.server`` or ``xmlrpc.server`` did not end up on trioserve.
    """
    import trioserve

    sys.modules["socketserver"] = trioserve  # type: ignore[assignment]
    for name in ("xmlrpc.server", "http.server"):
        sys.modules.pop(name, None)
    http_server = importlib.import_module("http.server")
    xmlrpc_server = importlib.import_module("xmlrpc.server")
    checks = {
        "http.server.HTTPServer": (http_server.HTTPServer, trioserve.TCPServer),
        "http.server.BaseHTTPRequestHandler": (
            http_server.BaseHTTPRequestHandler,
            trioserve.StreamRequestHandler,
        ),
        "xmlrpc.server.SimpleXMLRPCServer": (
            xmlrpc_server.SimpleXMLRPCServer,
            trioserve.TCPServer,
        ),
    }
    for name, (cls, base) in checks.items():
        if not issubclass(cls, base):
            raise RuntimeError(f"{name} does not derive from trioserve's {base.__name__}")


def configure_support(timeout: float) -> None:
    """Set up ``test.support`` as ``python -m test --timeout`` (not ``-v``) would.

    Its timeouts are capped at *timeout*, and ``support.verbose`` is off, so the tests do
    not print their progress. Before the suites are imported: they read both then.
    """
    from test import support

    support.verbose = 0
    for name in ("LOOPBACK_TIMEOUT", "INTERNET_TIMEOUT", "SHORT_TIMEOUT", "LONG_TIMEOUT"):
        setattr(support, name, min(getattr(support, name), timeout))


def has_test_package() -> str | None:
    """None when the interpreter's ``test`` package and its suites are there; else why not.

    Some distributions ship ``test.support`` and leave the suites out, so both are looked
    for (without importing the suites: that needs the adapter).
    """
    try:
        importlib.import_module("test.support")
    except ImportError as exc:
        return f"this Python ({sys.executable}) has no test package ({exc})"
    missing = [suite for suite in SUITES if importlib.util.find_spec(f"test.{suite}") is None]
    if missing:
        return f"the test package of this Python ({sys.executable}) lacks {', '.join(missing)}"
    return None


# -- the child: run one suite's tests ------------------------------------------------------


def load(suite: str) -> list[unittest.TestCase]:
    """The tests of *suite*, in unittest's order, flattened."""
    module = importlib.import_module(f"test.{suite}")
    loader = unittest.TestLoader()
    if suite == "test_xmlrpc":
        base = module.BaseServerTestCase
        names = [
            name
            for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, base) and obj is not base
        ]
        names += XMLRPC_SERVER_TESTS
        loaded = loader.loadTestsFromNames(sorted(names), module)
    else:
        loaded = loader.loadTestsFromModule(module)
    return list(_flatten(loaded))


def _flatten(suite: unittest.TestSuite | unittest.TestCase) -> Iterator[unittest.TestCase]:
    if isinstance(suite, unittest.TestSuite):
        for test in suite:
            yield from _flatten(test)
    else:
        yield suite


def short_id(test_id: str) -> str:
    return test_id.removeprefix("test.")


def matches(test_id: str, patterns: Iterable[str]) -> bool:
    """Whether *test_id* is one of *patterns* or in one (a module or a class)."""
    return any(test_id == p or test_id.startswith(p + ".") for p in patterns)


def mark_not_applicable(test: unittest.TestCase, reason: str) -> None:
    """Skip *test* with *reason*, without touching its class (the instance only)."""
    method = getattr(test, test._testMethodName)
    setattr(test, test._testMethodName, unittest.skip(f"N/A: {reason}")(method))


class JsonResult(unittest.TestResult):
    """A result that writes each test's outcome as a JSON line, as soon as it is known."""

    def __init__(self, out: TextIO, rearm: Any) -> None:
        super().__init__()
        self.buffer = True  # a failure's report carries what the test printed
        self.out = out
        self.rearm = rearm
        self.record: dict[str, Any] | None = None

    def emit(self, **event: Any) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    def thread_died(self, args: Any) -> None:
        """`threading.excepthook`: note a thread's uncaught exception at once.

        A test's server thread that dies of an exception is often why the test then fails,
        or hangs (and a hung test's own record is never written). The outcome is left
        alone: the test says whether it passed.
        """
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        name = args.thread.name if args.thread is not None else "?"
        record = self.record
        self.emit(
            thread_exception=record["id"] if record is not None else None,
            detail=f"Exception in thread {name}:\n{text}",
        )

    def startTest(self, test: unittest.TestCase) -> None:
        self.rearm()
        self.record = {"id": short_id(test.id()), "outcome": "passed", "details": []}
        self.emit(start=short_id(test.id()))
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        if self.record is not None:
            self.emit(**self.record)
        self.record = None
        self.rearm()

    def _note(self, test: Any, outcome: str, detail: str) -> None:
        record = self.record
        if (
            record is None
            or not isinstance(test, unittest.TestCase)
            or (record["id"] != short_id(test.id()))
        ):
            # A module or class fixture's error: unittest reports it outside any test.
            self.emit(id=short_id(str(test)), outcome=outcome, details=[detail])
            return
        rank = OUTCOMES.index
        if record["outcome"] == "passed" or rank(outcome) < rank(record["outcome"]):
            # error outranks failed; skipped only replaces passed
            record["outcome"] = outcome
        if detail:
            record["details"].append(detail)

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._note(test, "error", self.errors[-1][1])

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._note(test, "failed", self.failures[-1][1])

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            listed = self.failures if failed else self.errors
            self._note(test, "failed" if failed else "error", f"{subtest}\n{listed[-1][1]}")

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        outcome = "n/a" if reason.startswith("N/A: ") else "skipped"
        self._note(test, outcome, reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._note(test, "failed", "unexpected success")


def child(suite: str, results: str, only: list[str], timeout: float) -> None:
    """Run *suite*'s tests (those in *only*, if given) and write their results to *results*.

    Never returns: leaves with ``os._exit``, so a thread a failing test left blocked
    cannot hold the process open.
    """
    out = open(results, "a", encoding="utf-8")  # noqa: SIM115 - open until os._exit
    dump = open(results + ".hang", "w", encoding="utf-8")  # noqa: SIM115

    def rearm() -> None:
        faulthandler.dump_traceback_later(timeout * HANG_FACTOR, exit=True, file=dump)

    rearm()
    try:
        install()
        configure_support(timeout)
        tests = load(suite)
    except Exception:
        out.write(json.dumps({"fatal": traceback.format_exc()}) + "\n")
        out.flush()
        os._exit(2)
    out.write(json.dumps({"plan": [short_id(test.id()) for test in tests]}) + "\n")
    out.flush()
    if only:
        tests = [test for test in tests if matches(short_id(test.id()), only)]
    for test in tests:
        reason = NOT_APPLICABLE.get(short_id(test.id()))
        if reason is not None:
            mark_not_applicable(test, reason)
    result = JsonResult(out, rearm)
    threading.excepthook = result.thread_died
    unittest.TestSuite(tests).run(result)
    faulthandler.cancel_dump_traceback_later()
    out.write(json.dumps({"done": True}) + "\n")
    out.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- the parent: run the suites and report -------------------------------------------------


class SuiteRun:
    """One suite's run, in as many child processes as its hangs take."""

    def __init__(self, suite: str, select: list[str], timeout: float, deadline: float) -> None:
        self.suite = suite
        self.select = select
        self.timeout = timeout
        self.deadline = deadline
        self.results: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.fatal: str | None = None
        #: Uncaught exceptions of threads, by the test that was running (or None).
        self.thread_exceptions: dict[str | None, list[str]] = {}

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            self.fatal = traceback.format_exc()

    def _run(self) -> None:
        with tempfile.TemporaryDirectory(prefix=f"compat-{self.suite}-") as tmp:
            plan: list[str] | None = None
            remaining: list[str] = []
            for attempt in range(1000):  # each attempt finishes at least one test, or stops
                path = os.path.join(tmp, f"results-{attempt}.jsonl")
                only = remaining if plan is not None else self.select
                status = self._spawn(path, only, cwd=tmp)
                events = _read_events(path)
                started: str | None = None
                done = False
                for event in events:
                    if "fatal" in event:
                        self.fatal = event["fatal"]
                        return
                    if "plan" in event and plan is None:
                        plan = [t for t in event["plan"] if self._selected(t)]
                        self.order = list(plan)
                        unmatched = [
                            s for s in self.select if not any(matches(t, [s]) for t in plan)
                        ]
                        if unmatched:
                            self.fatal = f"no test matches {' '.join(unmatched)}"
                            return
                    elif "start" in event:
                        started = event["start"]
                    elif "thread_exception" in event:
                        self.thread_exceptions.setdefault(event["thread_exception"], []).append(
                            event["detail"]
                        )
                    elif "id" in event:
                        self._add(event)
                        if event["id"] == started:
                            started = None
                    elif event.get("done"):
                        done = True
                if plan is None:
                    self.fatal = f"the child process ended ({status}) before it listed its tests"
                    return
                if started is not None:
                    self._add(
                        {
                            "id": started,
                            "outcome": "error",
                            "details": [self._hang_detail(path, status)],
                        }
                    )
                remaining = [t for t in plan if t not in self.results]
                if done or not remaining:
                    break
                if started is None:
                    # Ended between tests (a fixture hung), or by the suite's deadline.
                    why = (
                        "the suite's deadline passed before it ran"
                        if time.monotonic() >= self.deadline
                        else f"not run: the process ended between tests ({status})\n"
                        + self._dump(path)
                    )
                    for test_id in remaining:
                        self._add({"id": test_id, "outcome": "error", "details": [why]})
                    break
            for test_id in self.order:
                if test_id not in self.results:
                    self._add({"id": test_id, "outcome": "error", "details": ["not run"]})

    def _selected(self, test_id: str) -> bool:
        return not self.select or matches(test_id, self.select)

    def _spawn(self, path: str, only: list[str], cwd: str) -> str:
        only_file = path + ".only"
        with open(only_file, "w", encoding="utf-8") as f:
            json.dump(only, f)
        argv = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            self.suite,
            "--results",
            path,
            "--only-file",
            only_file,
            "--timeout",
            str(self.timeout),
        ]
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return "not started: the suite's deadline had passed"
        with open(path + ".stderr", "w", encoding="utf-8") as err:
            try:
                proc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    cwd=cwd,
                    timeout=remaining,
                    env=_child_environment(),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return "killed at the suite's deadline"
        return f"exit status {proc.returncode}"

    def _hang_detail(self, path: str, status: str) -> str:
        if status.startswith("killed"):
            return f"HangError: still running when the suite's deadline passed ({status})"
        dump = self._dump(path)
        return (
            f"the stacks when it was ended ({status}):\n{dump}\n"
            f"HangError: no result after {self.timeout * HANG_FACTOR:g} s; "
            f"the test waits in {_waiting_in(dump)}"
        )

    @staticmethod
    def _dump(path: str) -> str:
        """What faulthandler dumped, or else the end of what the child wrote to stderr."""
        for suffix, size in ((".hang", 8000), (".stderr", 3000)):
            try:
                with open(path + suffix, encoding="utf-8", errors="replace") as f:
                    text = f.read().strip()
            except OSError:
                continue
            if text:
                return text[-size:]
        return "(no stacks were dumped)"

    def _add(self, event: dict[str, Any]) -> None:
        test_id = event["id"]
        died = self.thread_exceptions.pop(test_id, [])
        if died:
            event = {**event, "details": [*event["details"], *died]}
        if test_id not in self.order:
            self.order.append(test_id)
        self.results[test_id] = event

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for event in self.results.values():
            counts[event["outcome"]] += 1
        if self.fatal is not None:
            counts["error"] += 1
        return counts


def _waiting_in(dump: str) -> str:
    """Where a hung test's own code waits, from faulthandler's dump of the main thread."""
    blocks = dump.split("\n\n")
    main = next((b for b in blocks if "in child" in b), dump)
    frames = [_frame(line) for line in main.splitlines() if line.strip().startswith("File ")]
    tests = [f for f in frames if f.startswith("test_")]
    where = tests[0] if tests else (frames[0] if frames else "?")
    if frames and frames[0] != where:
        where += f" (innermost: {frames[0]})"
    return where


def _frame(line: str) -> str:
    """``File "/a/b/test_x.py", line 12 in f`` as ``test_x.py:12 in f``."""
    match = re.match(r'\s*File "(?:.*/)?([^/"]+)", line (\d+) in (.*)', line)
    return f"{match[1]}:{match[2]} in {match[3]}" if match else line.strip()


def _read_events(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            break  # a line cut short as the process was ended
    return events


def _child_environment() -> dict[str, str]:
    """The environment of a child: this one, with the checkout first on ``PYTHONPATH``.

    So that a child started in its own directory imports the trioserve of this checkout,
    installed or not.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def report(runs: Iterable[SuiteRun], quiet: bool, out: TextIO) -> int:
    """Print every run's failures and counts, and the closing line; the exit status."""
    total = dict.fromkeys(OUTCOMES, 0)
    for run in runs:
        out.write(f"\n=== {run.suite} ===\n")
        if run.fatal is not None:
            out.write(f"ERROR: the suite could not run:\n{run.fatal}\n")
        for test_id in run.order:
            event = run.results.get(test_id)
            if event is None or event["outcome"] not in ("failed", "error"):
                continue
            label = "FAIL" if event["outcome"] == "failed" else "ERROR"
            if quiet:
                last = _last_line(event["details"][0] if event["details"] else "")
                out.write(f"{label}: {test_id}: {last}\n")
            else:
                out.write(f"--- {label}: {test_id}\n")
                for detail in event["details"]:
                    out.write(detail.rstrip() + "\n")
        counts = run.counts()
        ran = sum(counts.values())
        out.write(
            f"{run.suite}: ran {ran}, passed {counts['passed']}, failed {counts['failed']}, "
            f"errors {counts['error']}, skipped {counts['skipped']} "
            f"(+ {counts['n/a']} not applicable)\n"
        )
        for outcome, n in counts.items():
            total[outcome] += n
    failed = total["failed"] + total["error"]
    skipped = total["skipped"] + total["n/a"]
    out.write("\n")
    out.write(f"{total['passed']} passed, {failed} failed, {skipped} skipped\n")
    return 1 if failed else 0


def _last_line(text: str) -> str:
    """The exception line of a report: its last line, before what the test printed."""
    for marker in ("\nStdout:\n", "\nStderr:\n", "\nException in thread "):
        text = text.split(marker, 1)[0]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:240] if lines else ""


def skip_without_test_package(reason: str, out: TextIO) -> int:
    """Report that there is nothing to run; loudly under CI. Exit status 0."""
    out.write(f"compat: skipped: {reason}\n")
    if os.environ.get("CI", "").lower() == "true":
        # GitHub Actions reads workflow commands such as ::warning from stdout.
        out.write(f"::warning title=make compat skipped::{reason}\n")
        out.flush()
        banner = "!" * 79
        sys.stderr.write(
            f"{banner}\nmake compat: SKIPPED, NOTHING RAN: {reason}.\n"
            "Install the interpreter's test package (Debian: libpython3.X-testsuite) "
            f"for CI to run CPython's suites against trioserve.\n{banner}\n"
        )
        sys.stderr.flush()
    out.write("0 passed, 0 failed, 0 skipped\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m compat",
        description="Run CPython's socketserver, http.server and xmlrpc.server tests "
        "against trioserve.",
    )
    parser.add_argument(
        "select",
        nargs="*",
        help="suites or test ids to run (e.g. test_socketserver, "
        "test_socketserver.SocketServerTest.test_TCPServer); all by default",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="one line per failure")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"per-test timeout, as python -m test --timeout (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--suite-timeout",
        type=float,
        default=DEFAULT_SUITE_TIMEOUT,
        help=f"each suite's deadline in seconds (default {DEFAULT_SUITE_TIMEOUT:g})",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every result to FILE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--only-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        with open(args.only_file, encoding="utf-8") as f:
            only = json.load(f)
        child(args.child, args.results, only, args.timeout)

    reason = has_test_package()
    if reason is not None:
        return skip_without_test_package(reason, sys.stdout)

    select = [s.removeprefix("test.") for s in args.select]
    unknown = [s for s in select if s.split(".")[0] not in SUITES]
    if unknown:
        parser.error(f"not one of {', '.join(SUITES)}: {', '.join(unknown)}")
    deadline = time.monotonic() + args.suite_timeout
    runs = [
        SuiteRun(
            suite,
            [s for s in select if s.split(".")[0] == suite and s != suite],
            args.timeout,
            deadline,
        )
        for suite in SUITES
        if not select or any(s.split(".")[0] == suite for s in select)
    ]
    print(
        f"compat: running {', '.join(run.suite for run in runs)} against trioserve "
        f"(per-test timeout {args.timeout:g} s, suite deadline {args.suite_timeout:g} s)",
        flush=True,
    )
    threads = [threading.Thread(target=run.run, name=run.suite) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {run.suite: [run.results[t] for t in run.order] for run in runs}, f, indent=1
            )
    return report(runs, args.quiet, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
