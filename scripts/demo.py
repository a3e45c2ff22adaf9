"""The demo: gunicorn under memguard serving a leaking app, under load, on 127.0.0.1.

Starts gunicorn with conf_examples/memguard.conf.py (limits lowered through MEMGUARD_* env vars
so the demo takes seconds, not hours) and prints the exact command it runs, drives ~20 s of paced
load, samples every worker's memory from outside, and prints what happened: which workers were
retired, why, and their peak memory against the limit.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import Gunicorn, MemoryWatch, load  # noqa: E402

MiB = 2**20
LIMIT = "96MiB"
SECONDS = 20
RATE = 250  # requests per second: about 18 MiB/s of leak across the two workers


def main() -> int:
    env = {"MEMGUARD_MAX_MEMORY": LIMIT, "MEMGUARD_MIN_LIFETIME": "2s", "MEMGUARD_HARD_MAX_MEMORY": "160MiB"}
    args = ["-c", "conf_examples/memguard.conf.py", "conf_examples.leaky_app:app"]
    log_path = ROOT / "demo-gunicorn.log"
    with Gunicorn(args, env, log_path, workers=2, cwd=ROOT) as server:
        # what runs, every setting included (the harness adds the bind, workers, log level, graceful
        # timeout), to paste from the project's folder
        print(f"$ cd {shlex.quote(str(ROOT))}\n$ {server.command()}")
        server.wait_ready()
        start_pids = server.worker_pids()
        print(
            f"serving on 127.0.0.1:{server.port} with workers {sorted(start_pids)}; "
            f"{SECONDS}s of load at ~{RATE} req/s ..."
        )
        watch = MemoryWatch(server, metric="uss", interval=0.05)
        started = time.monotonic()
        result = load(server, "/", requests=RATE * SECONDS, concurrency=4, timeout=SECONDS * 3, pace=RATE)
        elapsed = time.monotonic() - started
        watch.stop()
        time.sleep(1.0)
        log = server.log()

    retired = {
        int(m.group(1)): m
        for m in re.finditer(
            r"retiring worker pid=(\d+) age=([\d.]+)s requests=(\d+) uss=\d+ \(([^)]+)\) limit=\d+ \(([^)]+)\) "
            r"reason=(\w+)",
            log,
        )
    }
    print(
        f"\n{len(result.statuses)} requests in {elapsed:.1f}s, failed: {len(result.failed)}, "
        f"workers retired and replaced: {len(retired)}\n"
    )
    print(f"{'worker':>8}  {'peak USS (outside)':>18}  {'its limit':>10}  {'age':>6}  {'requests':>8}  outcome")
    for pid in sorted(watch.peak):
        peak = f"{watch.peak[pid] / MiB:.1f} MiB"
        if pid in retired:
            m = retired[pid]
            print(
                f"{pid:>8}  {peak:>18}  {m.group(5):>10}  {m.group(2):>5}s  {m.group(3):>8}  "
                f"retired: {m.group(6)} at {m.group(4)}"
            )
        else:
            print(f"{pid:>8}  {peak:>18}  {'':>10}  {'':>6}  {'':>8}  still serving at the end")
    print(
        f"\nlimit {LIMIT} per worker (jitter draws each worker's own limit up to 10% below it); "
        f"full gunicorn log: {log_path.name}"
    )
    return 0 if not result.failed and retired else 1


if __name__ == "__main__":
    sys.exit(main())
