"""Paired alternation: a few servers, driven in turn by short wrk runs, ratios per pair.

``python -m bench.paired LABEL=NAME[@DIR] ... [--mode keep-alive] [--concurrency 10]``
starts each contender NAME of `bench.servers` (from the source tree DIR if given: a
``git archive`` of another commit, with this ``bench/`` copied into it, so only the
library differs), all at once, then drives them in turn with ``wrk -t1`` for
``--seconds`` each, ``--runs`` times, reversing the order every other time. Every ratio
is taken between runs seconds apart, so the load of a shared machine moves both sides
alike. It prints, for each contender, the median requests/s and server CPU per request,
and the median (with quartiles) of its ratio to the first contender in each run.

``--mode udp`` drives UDP echo contenders (``udp-*``) with `bench.udp_client` instead
(``--concurrency`` does not apply), and counts requests as echoed datagrams.

Example: the code at commit C against the working tree, with raw Trio::

    git archive C --prefix=before/ | tar -x -C /tmp && cp -r bench /tmp/before/
    .venv/bin/python -m bench.paired ours=trioserve-async before=trioserve-async@/tmp/before \\
        trio=trio --concurrency 10 --runs 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench.run import (
    ROOT,
    WRK_MODES,
    Measurement,
    Server,
    ensure_wrk,
    log,
    pin_cpus,
    run_udp,
    run_wrk,
    start_server,
    stop_server,
)

__all__ = ["main"]


def _quartiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}x" if values else "-"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.2f}x ({q1:.2f}-{q3:.2f})"


def main(argv: list[str] | None = None) -> int:
    """Run the alternation; print one line per contender."""
    parser = argparse.ArgumentParser(prog="python -m bench.paired")
    parser.add_argument("contenders", nargs="+", metavar="LABEL=NAME[@DIR]")
    parser.add_argument("--mode", choices=[*WRK_MODES, "udp"], default="keep-alive")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    specs: list[tuple[str, str, Path]] = []
    for text in args.contenders:
        label, _, rest = text.partition("=")
        name, _, directory = rest.partition("@")
        specs.append((label, name or label, Path(directory) if directory else ROOT))
    wrk = "" if args.mode == "udp" else ensure_wrk()
    if not args.no_pin:
        pin_cpus()
    servers: dict[str, Server] = {}
    runs: dict[str, list[Measurement]] = {label: [] for label, _, _ in specs}
    try:
        for label, name, directory in specs:
            servers[label] = start_server(name, cwd=directory)
        labels = [label for label, _, _ in specs]
        for number in range(args.runs):
            order = labels if number % 2 == 0 else labels[::-1]
            log(f"run {number + 1}/{args.runs}")
            for label in order:
                server = servers[label]
                runs[label].append(
                    run_udp(server, args.seconds)
                    if args.mode == "udp"
                    else run_wrk(wrk, server, args.concurrency, args.seconds, args.mode)
                )
    finally:
        for server in servers.values():
            stop_server(server)
    first = specs[0][0]
    load = "a window of 32 datagrams" if args.mode == "udp" else f"c{args.concurrency}"
    print(f"{args.mode}, {load}, {args.runs} runs of {args.seconds} s:")
    for label, name, directory in specs:
        mine = runs[label]
        ratios = [a.rps / b.rps for a, b in zip(mine, runs[first], strict=True) if b.rps]
        where = "" if directory == ROOT else f" ({directory})"
        print(
            f"  {label:<12} {name}{where}: {statistics.median(m.rps for m in mine):,.0f} req/s, "
            f"CPU {statistics.median(m.cpu_us for m in mine):.1f} us/req, "
            f"x {first} {_quartiles(ratios)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
