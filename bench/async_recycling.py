"""Recycling leaking gevent and uvicorn workers under concurrent load: memguard against
``--max-requests``. Prints a table: failed requests, recycles, peak worker USS from outside.

    python -m bench.async_recycling [--requests 1200] [--concurrency 20] [--leak-kib 128]

Every row serves the same load of leaking requests with 2 workers; memguard's rows use a soft
limit of 40 MiB over an idle worker's USS.
"""

from __future__ import annotations

import argparse

import psutil

from bench.harness import Gunicorn, MemoryWatch, load

MiB = 2**20
HOOKS = ["-c", "python:gunicorn_memguard.conf"]
ROWS = [
    # (label, gunicorn args, app, guarded)
    ("gevent --max-requests 200", ["-k", "gevent", "--max-requests", "200"], "apps.streams:app", False),
    ("gevent + hook module", [*HOOKS, "-k", "gevent"], "apps.streams:app", True),
    ("memguard GeventWorker", ["-k", "gunicorn_memguard.workers.GeventWorker"], "apps.streams:app", True),
    (
        "uvicorn_worker --max-requests 200",
        ["-k", "uvicorn_worker.UvicornWorker", "--max-requests", "200"],
        "apps.asgi:app",
        False,
    ),
    ("memguard UvicornWorker", ["-k", "gunicorn_memguard.workers.UvicornWorker"], "apps.asgi:app", True),
]


def idle_uss(args: list[str], app: str) -> int:
    with Gunicorn([*args, app], workers=1) as server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        return psutil.Process(pid).memory_full_info().uss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--leak-kib", type=int, default=128)
    opts = parser.parse_args()

    print(f"{opts.requests} requests leaking {opts.leak_kib} KiB each, {opts.concurrency} concurrent, 2 workers")
    print(f"{'setup':36} {'failed':>6} {'recycles':>8} {'limit MiB':>9} {'peak USS MiB':>12}")
    for label, args, app, guarded in ROWS:
        limit = idle_uss(args, app) + 40 * MiB if guarded else None
        env = {"MEMGUARD_MAX_MEMORY": f"{limit}B", "MEMGUARD_MIN_LIFETIME": "0s"} if guarded else {}
        with Gunicorn([*args, app], env) as server:
            server.wait_ready()
            watch = MemoryWatch(server, metric="uss")
            result = load(server, f"/leak?kib={opts.leak_kib}", requests=opts.requests, concurrency=opts.concurrency)
            watch.stop()
            recycles = len(server.log_lines("Booting worker")) - 2
        peak = max(watch.peak.values()) / MiB
        shown = f"{limit / MiB:.1f}" if limit else "-"
        print(f"{label:36} {len(result.failed):>6} {recycles:>8} {shown:>9} {peak:>12.1f}")


if __name__ == "__main__":
    main()
