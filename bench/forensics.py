"""What leak forensics costs, printed as tables:

1. a traced worker against an untraced one: throughput (``wrk``, one sync worker, closed loop) and
   the USS it grows per request, on three requests of the test app ``apps.culprit``;
2. the report at retirement (snapshot, grouping) by the number of live traced blocks: its time,
   the memory it takes while it runs, and tracemalloc's own memory per block.

    .venv/bin/python -m bench.forensics [--seconds 5] [--reps 3] [--frames 1,5,10] [--paths /,/json?n=100]

Both servers run memguard with the same settings (metric rss, a limit no request reaches); the
traced one passes its 1 % threshold at its first check, so it traces for the whole run.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import psutil

from bench.harness import TESTS, Gunicorn, poll
from gunicorn_memguard.worker.forensics import Places, top_sites

MiB = 2**20
REQUESTS = {
    "GET / (tiny: a 64 KiB scratch buffer, one short string kept)": "/",
    "GET /json?n=100 (100 dicts built and serialized)": "/json?n=100",
    "GET /leak?kib=4 (4 KiB kept)": "/leak?kib=4",
}
CONNECTIONS = 4  # wrk's connections; one sync worker serves one at a time


def uss(pid: int) -> int:
    return int(psutil.Process(pid).memory_full_info().uss)


def serve(frames: int | None, log: Path) -> Gunicorn:
    env = {"MEMGUARD_METRIC": "rss", "MEMGUARD_MAX_MEMORY": "1GiB", "MEMGUARD_CHECK_INTERVAL": "100ms"}
    if frames is not None:
        env |= {"MEMGUARD_TRACE_ALLOCATIONS": "1%", "MEMGUARD_TRACE_FRAMES": str(frames)}
    server = Gunicorn(["-k", "gunicorn_memguard.workers.SyncWorker", "apps.culprit:app"], env, log, workers=1)
    server.wait_ready()
    if frames is not None:  # an idle worker's RSS is above 1 % of 1 GiB: traced from its first check
        poll(lambda: server.log_lines("tracing allocations"), 10, what="the worker to start tracing")
    return server


def wrk(port: int, path: str, seconds: float) -> tuple[float, int]:
    """Requests per second and requests answered."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    count = int(re.search(r"(\d+) requests in", out)[1])
    return rate, count


def throughput(seconds: float, frames_list: list[int], reps: int, paths: list[str]) -> None:
    print(f"## A traced sync worker against an untraced one (wrk, {CONNECTIONS} connections, {seconds:g}s runs,")
    print(f"## median of {reps}; USS growth per request, beyond what the request itself keeps)")
    print("| request | tracing | req/s | vs untraced | USS growth per request |\n|---|---|---:|---:|---:|")
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-forensics-{os.getpid()}.log"
    for label, path in ((label, path) for label, path in REQUESTS.items() if path in paths):
        kept = int(re.search(r"kib=(\d+)", path)[1]) * 1024 if "kib=" in path else 0
        base = None
        for frames in [None, *frames_list]:
            rates, growth = [], []
            for _ in range(reps):
                with serve(frames, log) as server:
                    (pid,) = server.worker_pids()
                    wrk(server.port, path, 1)  # warm up
                    before = uss(pid)
                    rate, count = wrk(server.port, path, seconds)
                    rates.append(rate)
                    growth.append((uss(pid) - before) / count - kept)
            rate = statistics.median(rates)
            base = base or rate
            name = "off" if frames is None else f"{frames} frame{'s' if frames > 1 else ''}"
            print(f"| {label} | {name} | {rate:,.0f} | {rate / base:.2f}× | {statistics.median(growth):,.0f} B |")
    log.unlink(missing_ok=True)


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def leak_blocks(n: int, keep: list[object]) -> None:
    for i in range(n):
        keep.append(f"block {i}")


def report_cost(blocks: list[int], frames: int) -> None:
    print(f"\n## The report at retirement, by live traced blocks ({frames} frames; in-process)")
    print(
        "| live blocks | tracemalloc's memory | per block | snapshot | grouping | snapshot memory |\n"
        "|---:|---:|---:|---:|---:|---:|"
    )
    places = Places.here()
    for n in blocks:
        keep: list[object] = []
        gc.collect()
        tracemalloc.start(frames)
        leak_blocks(n, keep)
        own = tracemalloc.get_tracemalloc_memory()
        before = rss()
        began = time.perf_counter()
        snapshot = tracemalloc.take_snapshot()
        took_snapshot = time.perf_counter() - began
        used = rss() - before  # the snapshot's copy of the traces, while tracemalloc still holds them
        tracemalloc.stop()
        stats = snapshot.statistics("traceback")
        top_sites(stats, places)
        took = time.perf_counter() - began
        del snapshot, stats, keep
        gc.collect()
        print(
            f"| {n:,} | {own / MiB:.1f} MiB | {own / n:.0f} B | {took_snapshot * 1000:.0f} ms | "
            f"{(took - took_snapshot) * 1000:.0f} ms | {used / MiB:.1f} MiB |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forensics", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each wrk run (default 5)")
    parser.add_argument("--reps", type=int, default=3, help="runs per row; the median is shown (default 3)")
    parser.add_argument("--frames", default="1,5,10", help="traceback depths to compare (default 1,5,10)")
    parser.add_argument("--paths", default=",".join(REQUESTS.values()), help="requests to measure (default all)")
    parser.add_argument("--blocks", default="10000,100000,1000000", help="live blocks for the report's cost")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    sys.path.insert(0, str(TESTS))
    throughput(args.seconds, [int(f) for f in args.frames.split(",")], args.reps, args.paths.split(","))
    report_cost([int(b) for b in args.blocks.split(",")], 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
