"""What a request's task costs: a new Trio task each time, or a task kept for the next.

``python -m bench.tasks`` runs, in one process pinned to one CPU, N requests whose
``dispatch`` does what a UDP echo's handler does to the scheduler (one
``checkpoint_if_cancelled`` and one ``cancel_shielded_checkpoint``, Trio's ``sendto``),
with no socket, handed out as `trioserve._policy` hands them out, with one yield of the
handing loop every 8 requests (as `trioserve._direct.PacedListener` yields under a flood):

* ``start_soon``: a new task per request, as before `trioserve._policy.RequestTasks`;
* ``RequestTasks``: the task whose request is done waits for the next one.

The two alternate, ``--repeat`` times each; it prints the best of each in microseconds
per request, and the difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import trio

from trioserve._policy import RequestTasks

__all__ = ["main"]

YIELD_EVERY = 8


class _Path:
    """A request path whose requests cost the scheduler what a UDP echo costs it."""

    async def dispatch(self, *args: object) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        await trio.lowlevel.cancel_shielded_checkpoint()


async def _new_tasks(rounds: int) -> float:
    path = _Path()
    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        for number in range(rounds):
            nursery.start_soon(path.dispatch, number, None, None, True, True)
            if number % YIELD_EVERY == 0:
                await trio.lowlevel.cancel_shielded_checkpoint()
        elapsed = time.perf_counter() - started
    return elapsed


async def _kept_tasks(rounds: int) -> float:
    path: Any = _Path()
    async with trio.open_nursery() as nursery:
        tasks = RequestTasks(nursery)
        started = time.perf_counter()
        try:
            for number in range(rounds):
                tasks.run(path, number, None, None)
                if number % YIELD_EVERY == 0:
                    await trio.lowlevel.cancel_shielded_checkpoint()
            elapsed = time.perf_counter() - started
        finally:
            tasks.close()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Time both ways; print microseconds per request."""
    parser = argparse.ArgumentParser(prog="python -m bench.tasks")
    parser.add_argument("--rounds", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=1)
    args = parser.parse_args(argv)
    if args.cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {args.cpu})
    best = {"start_soon": float("inf"), "RequestTasks": float("inf")}
    for _ in range(args.repeat):
        best["start_soon"] = min(best["start_soon"], trio.run(_new_tasks, args.rounds))
        best["RequestTasks"] = min(best["RequestTasks"], trio.run(_kept_tasks, args.rounds))
    per = {name: seconds / args.rounds * 1e6 for name, seconds in best.items()}
    for name, micros in per.items():
        print(f"{name}: {micros:.2f} us per request")
    print(f"a new task costs {per['start_soon'] - per['RequestTasks']:.2f} us more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
