"""``memguard report EVENTS.jsonl [--plot FILE.png|FILE.html]``: what an event log says happened —
retirements by reason per hour, worker lifetimes, memory per worker, reclaims, breaker trips,
unexplained deaths and OOM kills — and, with ``--plot``, memory per worker over time."""

from __future__ import annotations

import argparse
import os
import sys

from ..report.plot import PlotError, render
from ..report.summary import summary
from ..report.trace import TraceError, read_trace


def report(path: str, plot: str | None) -> int:
    try:
        trace = read_trace(path)
        print(summary(trace, os.path.basename(path)), end="")
        if plot is not None:
            render(trace, plot, f"memguard: {os.path.basename(path)}")
            print(f"\nplot: {plot}")
    except (TraceError, PlotError) as exc:
        print(f"memguard: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("report", help="summarize a JSON event log (MEMGUARD_EVENT_LOG); --plot draws it")
    parser.add_argument("events", metavar="EVENTS.jsonl", help="the file MEMGUARD_EVENT_LOG wrote")
    parser.add_argument(
        "--plot", metavar="FILE", help="also draw memory per worker over time to FILE.png or FILE.html (plot extra)"
    )
    parser.set_defaults(run=lambda args: report(args.events, args.plot))
