"""Profile one contender under load: ``python -m bench.profile NAME``.

Starts the contender (`bench.servers`), drives it with ``wrk -t1`` for ``--seconds``, and
prints where its time went, by function: the time spent in the function itself ("self")
and in it and what it called ("inclusive").

Two profilers:

* ``--py-spy PATH``: py-spy, a sampling profiler, attached to the server from outside
  (``record --format raw``); it does not slow the server down, and it sees time spent in
  system calls. Install it anywhere but the project's environment, e.g.
  ``python3 -m venv /tmp/prof && /tmp/prof/bin/pip install py-spy``.
* otherwise the standard library's `cProfile`, inside the server (it slows every Python
  call, so compare functions with each other, not its totals with wrk's).
"""

from __future__ import annotations

import argparse
import collections
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.run import WRK_MODES, ensure_wrk, run_wrk, start_server, stop_server
from bench.servers import CONTENDERS, FLOORS

__all__ = ["main", "summarize_collapsed"]


def summarize_collapsed(path: Path, top: int) -> str:
    """Self and inclusive shares per function, from py-spy's collapsed stacks at *path*."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "self:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Profile a contender; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("name", choices=[*CONTENDERS, *FLOORS])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--mode",
        choices=list(WRK_MODES),
        default="keep-alive",
        help="keep-alive connections, or a new connection per request (http10, close)",
    )
    parser.add_argument("--py-spy", metavar="PATH", help="the py-spy executable to sample with")
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile"
        extra = () if args.py_spy else ("--profile", str(out))
        server = start_server(args.name, *extra)
        sampler = None
        try:
            if args.py_spy:
                sampler = subprocess.Popen(
                    [
                        args.py_spy,
                        "record",
                        "--pid",
                        str(server.process.pid),
                        "--rate",
                        "500",
                        "--duration",
                        str(args.seconds + 1),
                        "--format",
                        "raw",
                        "--output",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            measured = run_wrk(wrk, server, args.concurrency, args.seconds, args.mode)
            print(
                f"{args.name}: {measured.rps:,.0f} req/s at c{args.concurrency} ({args.mode}) "
                f"while profiled, {measured.requests:,} requests"
            )
            if sampler is not None:
                sampler.wait(args.seconds + 30)
        finally:
            if sampler is not None and sampler.poll() is None:
                sampler.kill()
                sampler.wait()
            stop_server(server)  # the server writes its cProfile stats as it stops
        if args.py_spy:
            print(summarize_collapsed(out, args.top))
        else:
            stats = pstats.Stats(str(out))
            if measured.requests:
                per_request = stats.total_calls / measured.requests  # type: ignore[attr-defined]
                print(f"{per_request:.1f} Python calls per request (cProfile counts them all)")
            stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
