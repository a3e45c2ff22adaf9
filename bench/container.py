"""A real 400 MiB memory cgroup, 3 sync workers leaking 256 KiB a request at full rate: what the
kernel's OOM killer does under memguard's container settings and under plain ``--max-requests``.

Prints one row per setup: requests sent and failed, the kernel's OOM kills (the cgroup's own
``oom_kill`` count), retirements and the cgroup's peak charge. Needs root and a writable cgroup v1
memory controller (``bench.harness.Container``)::

    python -m bench.container [--requests 6000] [--concurrency 6]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .harness import Container, Gunicorn, load

MiB = 2**20
LIMIT = 400 * MiB
WORKERS = 3
LEAK_KIB = 256
HOOKS = ["-c", "python:gunicorn_memguard.conf"]

SETUPS: dict[str, tuple[list[str], dict[str, str]]] = {
    "memguard MAX_MEMORY=80%": (HOOKS, {"MEMGUARD_MAX_MEMORY": "80%"}),
    "memguard MAX_TOTAL_MEMORY=90%, MAX_MEMORY=300MiB": (
        HOOKS,
        {"MEMGUARD_MAX_TOTAL_MEMORY": "90%", "MEMGUARD_MAX_MEMORY": "300MiB"},
    ),
    "gunicorn --max-requests 500": (["--max-requests", "500"], {"MEMGUARD_ENABLED": "no"}),
}


@dataclass
class Outcome:
    setup: str
    sent: int
    failed: int
    oom_kills: int
    retirements: int
    peak: int
    reasons: str


def run(setup: str, requests: int, concurrency: int, logs: Path) -> Outcome:
    args, env = SETUPS[setup]
    log = logs / f"{len(list(logs.iterdir()))}.log"
    with Container(LIMIT) as container:
        server = Gunicorn([*args, "apps.leaky:app"], env, log, workers=WORKERS, container=container)
        with server:
            server.wait_ready()
            result = load(server, f"/leak?kib={LEAK_KIB}", requests=requests, concurrency=concurrency)
            lines = server.log_lines("retiring worker")
            reasons = collections.Counter(m[1] for line in lines if (m := re.search(r"reason=(\w+)", line)))
            why = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
            outcome = Outcome(
                setup, requests, len(result.failed), container.oom_kills(), len(lines), container.peak(), why or "-"
            )
    return outcome


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| setup | requests | failed | OOM kills | retirements | why | cgroup peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        rows.append(
            f"| {o.setup} | {o.sent:,} | {o.failed} | {o.oom_kills} | {o.retirements} | {o.reasons} | "
            f"{o.peak / MiB:.0f} of {LIMIT / MiB:.0f} MiB |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--setup", action="append", choices=list(SETUPS), help="default: all")
    a = parser.parse_args(argv)
    why = Container.unavailable()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as logs:
        outcomes = [run(s, a.requests, a.concurrency, Path(logs)) for s in a.setup or SETUPS]
    print(table(outcomes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
