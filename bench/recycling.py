"""Recycling under load, seen from outside: how many workers are ready to serve (sampled every
20 ms), failed requests, and p99 latency — in steady state, with memguard's spawn-first
recycling, and with gunicorn's own ``--max-requests`` on the same app and load.

    python -m bench.recycling [--boot 2] [--workers 4] [--seconds 60] [--rate 40]

The app (tests/apps/slowboot.py) takes ``--boot`` seconds to import, like a large project, so a
recycle that does not wait for its replacement leaves a hole in capacity. Each request leaks
``--kib`` KiB and works 10 ms. memguard's limit and ``--max-requests`` are set so both recycle
about the same number of times.
"""

from __future__ import annotations

import argparse
import http.client
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import psutil

from bench.harness import Gunicorn, poll

READY = re.compile(rb"app ready pid=(\d+)")
# A worker that stopped accepting: memguard's retirement line, or gunicorn's max-requests line.
STOPPED = re.compile(rb"\[(\d+)\] \[\w+\] (?:memguard: retiring worker|Autorestarting worker)")
EXITING = re.compile(rb"Worker exiting \(pid: (\d+)\)")
MiB = 2**20


@dataclass
class FleetWatch:
    """Every ``interval`` s: which workers are ready (app loaded, still accepting) and which drain.

    A worker counts as serving from its ``app ready`` line until it logs that it stops accepting
    (memguard's retirement, gunicorn's max-requests) or exits. Worker PIDs are read before the
    log, so a line written meanwhile can only make a sample err towards fewer serving workers.
    """

    server: Gunicorn
    interval: float = 0.02
    min_serving: int = 10**9  # from the first moment all configured workers served
    max_draining: int = 0
    samples: int = 0
    ready: set[int] = field(default_factory=set)
    stopped: set[int] = field(default_factory=set)
    exiting: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._offset = 0
        self._armed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read_log(self) -> None:
        with open(self.server.log_path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        chunk = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(chunk)
        for pattern, bucket in ((READY, self.ready), (STOPPED, self.stopped), (EXITING, self.exiting)):
            bucket.update(int(pid) for pid in pattern.findall(chunk))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            pids = self.server.worker_pids()
            self._read_log()
            serving = len((pids & self.ready) - self.stopped - self.exiting)
            draining = len((pids & self.stopped) - self.exiting)
            self._armed = self._armed or serving >= self.server.nworkers
            if self._armed:
                self.min_serving = min(self.min_serving, serving)
            self.max_draining = max(self.max_draining, draining)
            self.samples += 1

    def stop(self) -> FleetWatch:
        self._stop.set()
        self._thread.join(5)
        return self


@dataclass
class Timed:
    latencies: list[float]  # seconds, of successful requests
    failed: list[int | str]

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def timed_load(server: Gunicorn, path: str, seconds: float, rate: float, concurrency: int = 8) -> Timed:
    """About ``rate`` requests per second for ``seconds``, from ``concurrency`` paced clients."""
    latencies: list[float] = []
    failed: list[int | str] = []
    lock = threading.Lock()
    start = time.monotonic()
    gap = concurrency / rate

    def client(offset: int) -> None:
        i = 0
        while True:
            due = start + (i + offset / concurrency) * gap
            if due > start + seconds:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            began = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                conn.close()
                result: int | str = resp.status
            except OSError as exc:
                result = type(exc).__name__
            with lock:
                (latencies.append(time.monotonic() - began) if result == 200 else failed.append(result))
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Timed(latencies, failed)


def idle_uss() -> int:
    with (
        TemporaryDirectory() as tmp,
        Gunicorn(["apps.slowboot:app"], {"SLOWBOOT_SECONDS": "0"}, Path(tmp) / "g.log", workers=1) as server,
    ):
        server.wait_ready()
        (pid,) = server.worker_pids()
        return psutil.Process(pid).memory_full_info().uss


def run(label: str, args: list[str], env: dict[str, str], opts: argparse.Namespace, path: str) -> dict[str, object]:
    with TemporaryDirectory() as tmp:
        env = {"SLOWBOOT_SECONDS": str(opts.boot), **env}
        with Gunicorn([*args, "apps.slowboot:app"], env, Path(tmp) / "g.log", workers=opts.workers) as server:
            server.wait_ready(timeout=60)
            watch = FleetWatch(server)
            poll(lambda: watch.min_serving < 10**9, 30, what="all workers serving")
            result = timed_load(server, path, opts.seconds, opts.rate)
            watch.stop()
            recycles = len(watch.stopped | watch.exiting)
        return {
            "run": label,
            "requests": len(result.latencies) + len(result.failed),
            "failed": len(result.failed),
            "recycles": recycles,
            "min ready": watch.min_serving,
            "max draining": watch.max_draining,
            "p50 ms": result.p(0.50) * 1000,
            "p99 ms": result.p(0.99) * 1000,
            "max ms": result.p(1.0) * 1000,
            "samples": watch.samples,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boot", type=float, default=2.0, help="seconds the app takes to import")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--kib", type=int, default=320, help="KiB leaked per request")
    parser.add_argument("--headroom", type=int, default=40, help="MiB a worker may grow above idle")
    opts = parser.parse_args()

    leak = f"/leak?kib={opts.kib}&s=0.01"
    per_life = opts.headroom * 1024 // opts.kib  # requests a worker serves before it reaches its limit
    limit = idle_uss() + opts.headroom * MiB
    memguard = {"MEMGUARD_MAX_MEMORY": f"{limit}B", "MEMGUARD_MIN_LIFETIME": "0s", "MEMGUARD_CHECK_INTERVAL": "200ms"}
    rows = [
        run("steady (no recycling)", [], {}, opts, "/slow?s=0.01"),
        run("memguard spawn-first", ["-c", "python:gunicorn_memguard.conf"], memguard, opts, leak),
        run(
            f"--max-requests {per_life}",
            ["--max-requests", str(per_life), "--max-requests-jitter", str(per_life // 10)],
            {},
            opts,
            leak,
        ),
    ]
    keys = list(rows[0])
    print(
        f"{opts.workers} sync workers, app import {opts.boot:g}s, {opts.rate:g} req/s for {opts.seconds:g}s, "
        f"{opts.kib} KiB leaked per request (except steady), ready workers sampled every 20 ms"
    )
    print(" | ".join(f"{k:>12}" if k != "run" else f"{k:<24}" for k in keys))
    for row in rows:
        print(
            " | ".join(
                f"{row[k]:<24}"
                if k == "run"
                else (f"{row[k]:>12.1f}" if isinstance(row[k], float) else f"{row[k]:>12}")
                for k in keys
            )
        )


if __name__ == "__main__":
    main()
