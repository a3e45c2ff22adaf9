"""``memguard replay EVENTS.jsonl [--set NAME=VALUE ...] [--candidate "NAME=VALUE ..."] [--max-requests N]``:
the recorded samples through the same policy with other settings, side by side with the recorded
run's own, to pick limits on production traces (a dry run's, say) before enforcing them."""

from __future__ import annotations

import argparse
import sys

from ..report.replay import ReplayError, parse_assignments, run, split_candidate, table
from ..report.trace import TraceError, read_trace


def replay(path: str, sets: list[str], candidates: list[str], max_requests: list[int], seed: int) -> int:
    try:
        groups = ([parse_assignments(sets, "--set")] if sets else []) + [split_candidate(c) for c in candidates]
        print(table(run(read_trace(path), groups, max_requests, seed)), end="")
    except TraceError as exc:
        print(f"memguard: {exc}", file=sys.stderr)
        return 2
    except ReplayError as exc:
        for problem in exc.problems:
            print(f"memguard: bad setting: {problem}", file=sys.stderr)
        return 1
    return 0


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of requests from 1 (e.g. 1000)")
    return int(text)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("replay", help="replay an event log's samples with other settings, side by side")
    parser.add_argument("events", metavar="EVENTS.jsonl", help="the file MEMGUARD_EVENT_LOG wrote")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a setting for one candidate, on top of the recorded ones (repeat for more settings)",
    )  # fmt: skip
    parser.add_argument(
        "--candidate", action="append", default=[], metavar='"NAME=VALUE ..."',
        help="one more candidate: its settings in one argument (repeat for more candidates)",
    )  # fmt: skip
    parser.add_argument(
        "--max-requests", action="append", default=[], type=_positive, metavar="N",
        help="gunicorn's --max-requests N as a contender, no memory limit (repeatable)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="the jitter draws of replacements (default 0)")
    parser.set_defaults(run=lambda args: replay(args.events, args.set, args.candidate, args.max_requests, args.seed))
