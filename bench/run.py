"""The benchmark: memguard against no recycling, --max-requests, uWSGI and Granian, on leaking apps.

    python -m bench.run            # everything
    python -m bench.run --quick    # runs a third as long
    python -m bench.run --workloads leak-low,leak-high --classes sync --contenders max-requests,memguard

Each run starts one server on 127.0.0.1 with 2 workers, drives paced load at it (``hey`` from
Debian without keep-alive, so every lost connection counts; or this module's Python client for
streams, which checks every body arrived whole), samples every worker's RSS from outside every
20 ms, and reads what the app leaked from a ledger the workers keep. It prints one markdown table
per part and writes it, with one PNG timeline per workload, under ``bench/results/``. Workloads,
worker classes and contenders are tables below: adding one is adding a line.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.apps import STREAM_LENGTH
from bench.harness import ROOT, Gunicorn, free_port, poll

MiB = 2**20
RESULTS = ROOT / "bench" / "results"
SAMPLE_EVERY = 0.02  # seconds between outside memory samples
OWN_LIMIT = re.compile(r"retiring worker pid=(\d+) .*? limit=(\d+) ")
WORKERS = 2


# -- what runs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    path: str
    rate: int  # requests per second, all clients together
    seconds: float
    concurrency: int = 8
    streams: bool = False  # verify each body arrived whole (Python client)
    transient: bool = False  # peaks come from requests in flight: no soft limit can prevent them


# Pareto sizes (shape 1.5) average 3 × xm: leak-low keeps ~12 KiB a request, so 1000 requests fill
# ~1/9 of a 128 MiB worker's headroom (max-requests recycles ~9× too often); leak-high keeps
# ~180 KiB, so 1000 requests fill ~1.7 headrooms (max-requests recycles too late).
WORKLOADS = {
    "leak-low": Workload("/leak?xm=4&cap=2048", rate=800, seconds=45),
    "leak-high": Workload("/leak?xm=64&cap=8192", rate=200, seconds=30),
    # ~190 KiB a request as fast as the machine serves (closed loop, the Python client, which counts
    # every failed connection): a worker fills its headroom in well under a second
    "leak-fast": Workload("/leak?xm=64&cap=8192", rate=0, seconds=15),
    # the same requests at 56/s: each of the 2 workers fills ~100 MiB of headroom in ~20 s
    "leak-moderate": Workload("/leak?xm=64&cap=8192", rate=56, seconds=60),
    "cache": Workload("/cache", rate=400, seconds=20),
    "spike": Workload("/spike", rate=400, seconds=20, transient=True),
    # 0.1 s per stream at 8/s keeps two sync workers busy 40% of the time, so one can retire
    "stream": Workload("/stream?xm=1024&cap=16384", rate=8, seconds=30, concurrency=4, streams=True),
}


@dataclass(frozen=True)
class WorkerClass:
    stock: tuple[str, ...]  # gunicorn arguments for the stock class
    memguard: tuple[str, ...]  # memguard's worker class of the same kind
    app: str = "bench.apps:wsgi"


CLASSES = {
    "sync": WorkerClass(("-k", "sync"), ("-k", "gunicorn_memguard.workers.SyncWorker")),
    "gthread": WorkerClass(
        ("-k", "gthread", "--threads", "4"), ("-k", "gunicorn_memguard.workers.ThreadWorker", "--threads", "4")
    ),
    "gevent": WorkerClass(("-k", "gevent"), ("-k", "gunicorn_memguard.workers.GeventWorker")),
    "uvicorn": WorkerClass(
        ("-k", "uvicorn_worker.UvicornWorker"), ("-k", "gunicorn_memguard.workers.UvicornWorker"), app="bench.apps:asgi"
    ),
}


@dataclass(frozen=True)
class Contender:
    """How to start a server with the ceiling (MiB of RSS per worker) for one worker class."""

    start: Callable[[WorkerClass, int, dict[str, str], Path], Server]
    classes: tuple[str, ...] = tuple(CLASSES)  # which worker classes it can serve


def _gunicorn(
    extra: tuple[str, ...], env: dict[str, str] | None = None, memguard: bool = False
) -> Callable[..., Server]:
    def start(cls: WorkerClass, ceiling: int, run_env: dict[str, str], log: Path) -> Server:
        full_env = {**run_env, **{k: v.format(ceiling=ceiling) for k, v in (env or {}).items()}}
        worker = cls.memguard if memguard else cls.stock
        return GunicornServer(Gunicorn([*extra, *worker, cls.app], full_env, log, workers=WORKERS, cwd=ROOT))

    return start


def _uwsgi(cls: WorkerClass, ceiling: int, env: dict[str, str], log: Path) -> Server:
    port = free_port()
    return Server(
        [
            _tool("uwsgi"),
            "--http-socket",
            f"127.0.0.1:{port}",
            "--master",
            "--processes",
            str(WORKERS),
            "--module",
            cls.app,
            "--need-app",
            "--disable-logging",
            "--reload-on-rss",
            str(ceiling),
            "--min-worker-lifetime",
            "2",
        ],
        port,
        env,
        log,
        leaving=(re.compile(r"The work of process (\d+) is done"),),
    )


def _granian(cls: WorkerClass, ceiling: int, env: dict[str, str], log: Path) -> Server:
    port = free_port()
    return Server(
        [
            _tool("granian"),
            "--interface",
            "wsgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(WORKERS),
            "--workers-max-rss",
            str(ceiling),
            "--rss-sample-interval",
            "1",
            cls.app,
        ],
        port,
        env,
        log,
    )


# memguard retires on RSS here because uWSGI and Granian can only do that; otherwise it runs at its
# defaults (MEMGUARD_MAX_MEMORY alone). uWSGI's short minimum lifetime (2 s; its default of 60 s
# would never retire a worker here) and Granian's sample interval (its minimum, 1 s; its default is
# 30 s) are the benchmark's time compression: headroom fills in seconds here, not hours.
MEMGUARD_ENV = {"MEMGUARD_MAX_MEMORY": "{ceiling}MiB", "MEMGUARD_METRIC": "rss"}
CONTENDERS = {
    "none": Contender(_gunicorn(())),
    "max-requests": Contender(_gunicorn(("--max-requests", "1000", "--max-requests-jitter", "100"))),
    "uwsgi": Contender(_uwsgi, classes=("sync",)),
    "granian": Contender(_granian, classes=("sync",)),
    "memguard": Contender(_gunicorn((), MEMGUARD_ENV, memguard=True)),  # spawn-first, one retirement at a time
    "memguard-drain-first": Contender(_gunicorn((), {**MEMGUARD_ENV, "MEMGUARD_SPAWN_FIRST": "no"}, memguard=True)),
}


def _tool(name: str) -> str:
    """A console script of this venv (pyuwsgi, granian), else one on PATH."""
    here = Path(sys.executable).with_name(name)
    return str(here) if here.exists() else name


# -- servers ------------------------------------------------------------------------------------
class Server:
    """Any server whose workers are the direct children of the process it starts."""

    def __init__(
        self, args: list[str], port: int, env: dict[str, str], log: Path, leaving: tuple[re.Pattern[str], ...] = ()
    ) -> None:
        self.port = port
        self.leaving_lines = leaving  # log lines that say a worker stopped taking new requests
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def worker_pids(self) -> set[int]:
        try:
            return {c.pid for c in psutil.Process(self.proc.pid).children() if c.status() != psutil.STATUS_ZOMBIE}
        except psutil.NoSuchProcess:
            return set()

    def leaving(self) -> set[int]:
        text = self.log_path.read_text(errors="replace")
        return {int(pid) for pattern in self.leaving_lines for pid in pattern.findall(text)}

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            return len(self.worker_pids()) >= WORKERS and _get(self.port, "/") == 200

        poll(ready, timeout, what="the server to serve")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uWSGI and Granian stop on INT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    child.kill()
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class GunicornServer(Server):
    LEAVING = (
        re.compile(r"\[(\d+)\] \[INFO\] Autorestarting worker"),
        re.compile(r"\[(\d+)\] \[INFO\] Maximum request limit"),  # uvicorn's max-requests
        re.compile(r"retiring worker pid=(\d+)"),
        re.compile(r"Worker exiting \(pid: (\d+)\)"),
    )

    def __init__(self, gunicorn: Gunicorn) -> None:
        self.gunicorn = gunicorn
        self.port, self.log_path, self.proc = gunicorn.port, gunicorn.log_path, gunicorn.proc
        self.leaving_lines = self.LEAVING

    def stop(self) -> None:
        self.gunicorn.stop()


def _get(port: int, path: str, timeout: float = 2.0) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


# -- observing ----------------------------------------------------------------------------------
@dataclass
class Timeline:
    """Every worker's RSS over time, sampled from outside, and how many were serving."""

    series: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    serving: list[tuple[float, int]] = field(default_factory=list)
    left: dict[int, float] = field(default_factory=dict)  # pid -> first time seen leaving or gone
    gaps: list[float] = field(default_factory=list)  # seconds between consecutive samples


def _raise_priority() -> None:
    """Let this thread sample on time while the load keeps both CPUs busy (allowed to root only)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
    except OSError:
        pass


class Sampler:
    """Samples every worker's RSS each SAMPLE_EVERY seconds from a thread of this process.

    Listing a process's children means reading every ``/proc/<pid>/stat`` on the machine (6 ms
    with 120 processes, measured; far more on a loaded machine), too slow for a 20 ms period; so a
    second thread looks workers up every SCAN_EVERY seconds, and the sampling thread reads each
    one's RSS with one ``pread`` of its ``statm``. A new worker is missed for at most SCAN_EVERY,
    at its smallest.
    """

    SCAN_EVERY = 0.1

    def __init__(self, server: Server, t0: float) -> None:
        self.server, self.t0 = server, t0
        self.timeline = Timeline()
        self._found: set[int] = set()  # written by the scanning thread
        self._leaving: set[int] = set()
        self._statm: dict[int, int] = {}  # pid -> open fd on /proc/<pid>/statm
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._scan()
        self._threads = [
            threading.Thread(target=self._scan_loop, daemon=True),
            threading.Thread(target=self._sample_loop, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _scan(self) -> None:
        self._found = self.server.worker_pids()
        self._leaving = self.server.leaving()

    def _scan_loop(self) -> None:
        _raise_priority()  # it holds the GIL the sampling thread needs: same priority
        while not self._stop.wait(self.SCAN_EVERY):
            self._scan()

    def _rss(self, fd: int) -> int:
        """0 once the process is gone or a zombie."""
        try:
            return int(os.pread(fd, 64, 0).split()[1]) * self._page
        except (OSError, IndexError, ValueError):
            return 0

    def _sample_loop(self) -> None:
        _raise_priority()
        left = self.timeline.left
        while not self._stop.wait(SAMPLE_EVERY):
            now = time.monotonic() - self.t0
            for pid in self._found - set(self._statm) - set(left):
                try:
                    self._statm[pid] = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
                except OSError:
                    continue
            for pid in self._leaving & set(self._statm):
                left.setdefault(pid, now)
            for pid, fd in list(self._statm.items()):
                rss = self._rss(fd)
                if not rss:
                    os.close(fd)
                    del self._statm[pid]
                    left.setdefault(pid, now)
                    continue
                self.timeline.series.setdefault(pid, []).append((now, rss))
            if self.timeline.serving:
                self.timeline.gaps.append(now - self.timeline.serving[-1][0])
            self.timeline.serving.append((now, len(set(self._statm) - set(left))))

    def stop(self) -> Timeline:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for fd in self._statm.values():
            os.close(fd)
        self._statm.clear()
        return self.timeline


@dataclass
class Requests:
    """One row per request: when it started (s, load clock), how long it took, whether it succeeded."""

    start: list[float] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    wall: float = 0.0

    @property
    def failed(self) -> int:
        return self.ok.count(False)


def load_hey(port: int, work: Workload, seconds: float) -> Requests:
    per_client = max(1, round(work.rate * seconds / work.concurrency))
    args = [
        "hey",
        "-n",
        str(per_client * work.concurrency),
        "-c",
        str(work.concurrency),
        "-disable-keepalive",
        "-q",
        f"{work.rate / work.concurrency:g}",
        "-t",
        "30",
        "-o",
        "csv",
        f"http://127.0.0.1:{port}{work.path}",
    ]
    began = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds * 4 + 60, check=True).stdout
    result = Requests(wall=time.monotonic() - began)
    for row in csv.DictReader(io.StringIO(out)):  # hey writes rows for answered requests only
        result.start.append(float(row["offset"]))
        result.duration.append(float(row["response-time"]))
        result.ok.append(row["status-code"] == "200")
    result.ok.extend([False] * (per_client * work.concurrency - len(result.ok)))
    return result


def load_python(port: int, work: Workload, seconds: float, expect: int | None = None) -> Requests:
    """Paced (or, with rate 0, closed-loop) clients without keep-alive, bounded by ``seconds``;
    a request counts as served only if its whole body arrived (``expect`` bytes when given)."""

    result = Requests()
    lock = threading.Lock()
    began = time.monotonic()
    gap = work.concurrency / work.rate if work.rate else 0.0

    def client(index: int) -> None:
        i = 0
        while True:
            due = began + index * gap / work.concurrency + i * gap
            if max(due, time.monotonic()) - began >= seconds:  # closed loop (gap 0): ends on the clock
                return
            time.sleep(max(0.0, due - time.monotonic()))
            start = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", work.path)
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and (expect is None or len(body) == expect)
            except (OSError, http.client.HTTPException):
                ok = False
            finally:
                conn.close()
            with lock:
                result.start.append(start - began)
                result.duration.append(time.monotonic() - start)
                result.ok.append(ok)
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(work.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall = time.monotonic() - began
    return result


# -- one run ------------------------------------------------------------------------------------
@dataclass
class Run:
    workload: str
    cls: str
    contender: str
    ceiling: int
    baseline: int  # mean RSS of the fresh workers, bytes
    leaked: int
    timeline: Timeline
    requests: Requests
    limits: dict[int, int] = field(default_factory=dict)  # pid -> its own soft limit, from memguard's log

    @property
    def peak_over_own_limit(self) -> float | None:
        """The highest peak of a worker retired by memguard ÷ that worker's own (jittered) limit."""
        ratios = [max(v for _, v in self.timeline.series[pid]) / limit for pid, limit in self.limits.items()
                  if pid in self.timeline.series and limit]  # fmt: skip
        return max(ratios, default=None)

    @property
    def recycles(self) -> int:
        return len(self.timeline.left)

    @property
    def headroom(self) -> int:
        return max(1, self.ceiling * MiB - self.baseline)

    @property
    def needed(self) -> float:
        """The fewest recycles that keep every worker under the ceiling: the bytes leaked, less
        what the workers still serving at the end hold (up to one headroom each), ÷ headroom."""
        held = sum(
            min(self.headroom, max(0, s[-1][1] - self.baseline))
            for pid, s in self.timeline.series.items()
            if pid not in self.timeline.left
        )
        return max(0, self.leaked - held) / self.headroom

    @property
    def peak(self) -> int:
        return max((rss for s in self.timeline.series.values() for _, rss in s), default=0)

    @property
    def min_serving(self) -> int:
        return min((n for _, n in self.timeline.serving), default=0)

    def recycle_windows(self) -> list[tuple[float, float]]:
        """From a worker leaving (or vanishing) to 1 s after it is gone."""
        windows = []
        for pid, left in self.timeline.left.items():
            gone = self.timeline.series[pid][-1][0] if pid in self.timeline.series else left
            windows.append((left - 0.2, max(left, gone) + 1.0))
        return windows

    def latencies(self, during_recycles: bool) -> list[float]:
        windows = self.recycle_windows()
        r = self.requests
        out = []
        for start, duration, ok in zip(r.start, r.duration, r.ok, strict=False):
            busy = any(a <= start + duration and start <= b for a, b in windows)
            if ok and busy == during_recycles:
                out.append(duration)
        return out


def run_one(
    workload: str, cls_name: str, contender: str, ceiling: int, client: str, seconds_scale: float, logs: Path
) -> Run:
    work, cls = WORKLOADS[workload], CLASSES[cls_name]
    seconds = work.seconds * seconds_scale
    with tempfile.TemporaryDirectory(prefix="bench-leak-") as ledger:
        log = logs / f"{workload}-{cls_name}-{contender}.log"
        server = CONTENDERS[contender].start(cls, ceiling, {"BENCH_LEAK_DIR": ledger}, log)
        try:
            server.wait_ready()
            for _ in range(20):
                _get(server.port, "/")
            baseline = int(statistics.mean(psutil.Process(p).memory_info().rss for p in server.worker_pids()))
            t0 = time.monotonic()
            sampler = Sampler(server, t0)
            if work.streams or client == "python" or not work.rate:
                requests = load_python(server.port, work, seconds, STREAM_LENGTH if work.streams else None)
            else:
                requests = load_hey(server.port, work, seconds)
            time.sleep(0.3)
            timeline = sampler.stop()
        finally:
            server.stop()
        leaked = sum(int(Path(ledger, f).read_text() or 0) for f in os.listdir(ledger))
    own = {int(pid): int(limit) for pid, limit in OWN_LIMIT.findall(log.read_text(errors="replace"))}
    return Run(workload, cls_name, contender, ceiling, baseline, leaked, timeline, requests, own)


# -- reporting ----------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(value: float) -> str:
    return "—" if value != value else f"{value * 1000:.1f}"


def run_table(runs: list[Run]) -> str:
    lines = [
        "| workload | class | contender | leaked MiB | recycles | ÷ needed | peak ÷ ceiling | peak ÷ own limit "
        "| failed | min serving | p50 ms | p99 ms | p99 steady ms | p99 in recycles ms | req/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        steady, busy = r.latencies(False), r.latencies(True)
        everything = steady + busy
        lines.append(
            f"| {r.workload} | {r.cls} | {r.contender} | {r.leaked / MiB:.0f} | {r.recycles} "
            f"| {_ratio(r.recycles, r.needed)} "
            f"| {r.peak / (r.ceiling * MiB):.2f} | {_own(r)} | {r.requests.failed} | {r.min_serving} "
            f"| {_ms(_pct(everything, 0.5))} | {_ms(_pct(everything, 0.99))} | {_ms(_pct(steady, 0.99))} "
            f"| {_ms(_pct(busy, 0.99))} | {len(everything) / max(r.requests.wall, 1e-9):.0f} |"
        )
    return "\n".join(lines)


def _own(run: Run) -> str:
    ratio = run.peak_over_own_limit
    return "—" if ratio is None else f"{ratio:.2f}"


def _ratio(recycles: int, needed: float) -> str:
    """Recycles ÷ the fewest needed; below half a recycle needed, a ratio would only be noise."""
    return f"{recycles / needed:.2f} (of {needed:.1f})" if needed >= 0.5 else f"— (of {needed:.1f})"


def misses(runs: list[Run]) -> list[str]:
    """memguard's targets, checked on its own rows: one line per miss, saying by how much."""
    out = []
    for r in runs:
        if r.contender != "memguard":
            continue
        name = f"{r.workload}/{r.cls}"
        peak = r.peak / (r.ceiling * MiB)
        if peak > 1.05 and not WORKLOADS[r.workload].transient:
            out.append(f"{name}: peak {peak:.2f} × ceiling > 1.05")
        if r.needed >= 0.5 and r.recycles / r.needed > 1.3:
            out.append(f"{name}: {r.recycles / r.needed:.2f} × the recycles needed > 1.3")
        if r.requests.failed:
            out.append(f"{name}: {r.requests.failed} failed requests")
        if r.min_serving < WORKERS:
            out.append(f"{name}: only {r.min_serving} of {WORKERS} workers serving at times")
        steady, busy = _pct(r.latencies(False), 0.99), _pct(r.latencies(True), 0.99)
        if busy > 1.5 * steady:
            out.append(f"{name}: p99 in recycles {busy / steady:.2f} × steady > 1.5")
    return out


def plot(runs: list[Run], folder: Path) -> list[Path]:
    """One PNG per workload: a panel per (contender, class), RSS per worker, ✕ where one ended."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for workload in dict.fromkeys(r.workload for r in runs):
        mine = [r for r in runs if r.workload == workload]
        contenders = list(dict.fromkeys(r.contender for r in mine))
        classes = list(dict.fromkeys(r.cls for r in mine))
        fig, axes = plt.subplots(
            len(contenders),
            len(classes),
            figsize=(4.5 * len(classes), 2.6 * len(contenders)),
            squeeze=False,
            sharex=True,
        )
        for ax in axes.flat:
            ax.set_visible(False)
        for r in mine:
            ax = axes[contenders.index(r.contender)][classes.index(r.cls)]
            ax.set_visible(True)
            for pid, series in r.timeline.series.items():
                ts, rss = zip(*series, strict=False)
                (line,) = ax.plot(ts, [v / MiB for v in rss], linewidth=0.8)
                if pid in r.timeline.left:
                    left = r.timeline.left[pid]
                    at = max((v for t, v in series if t <= left), default=rss[-1])
                    ax.plot(left, at / MiB, "v", color=line.get_color())
                    ax.plot(ts[-1], rss[-1] / MiB, "x", color=line.get_color())
            ax.axhline(r.ceiling, color="red", linestyle="--", linewidth=0.8)
            ax.set_title(f"{r.contender} / {r.cls}: {r.recycles} recycles", fontsize=9)
            ax.set_ylabel("RSS MiB", fontsize=8)
            ax.set_xlabel("seconds", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.suptitle(f"{workload}: RSS per worker (▼ retirement began, ✕ worker gone, dashed: ceiling)")
        fig.tight_layout()
        path = folder / f"{workload}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# -- command line -------------------------------------------------------------------------------
def _names(value: str, known: Mapping[str, object], what: str) -> list[str]:
    names = [n for n in value.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--{what}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="runs a third as long")
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from {', '.join(WORKLOADS)}",
    )
    p.add_argument("--classes", default=",".join(CLASSES), help=f"comma-separated, from {', '.join(CLASSES)}")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, from {', '.join(CONTENDERS)}")
    p.add_argument("--ceiling", type=int, default=128, help="MiB of RSS per worker (default 128)")
    p.add_argument("--scale", type=float, help="multiply every run's duration (overrides --quick's)")
    p.add_argument(
        "--client",
        choices=("hey", "python"),
        default="hey",
        help="load generator for non-streaming runs; python needs no Debian package",
    )
    p.add_argument("--no-plot", action="store_true", help="no PNG timelines (no matplotlib needed)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for results.md, the PNGs and the server logs")
    a = p.parse_args(argv)
    workloads = _names(a.workloads, WORKLOADS, "workloads")
    classes = _names(a.classes, CLASSES, "classes")
    contenders = _names(a.contenders, CONTENDERS, "contenders")
    scale = a.scale if a.scale is not None else (0.35 if a.quick else 1.0)
    if a.client == "hey" and not shutil.which("hey"):
        raise SystemExit("hey is not installed: apt-get install hey wrk, or pass --client python")
    a.out.mkdir(parents=True, exist_ok=True)
    logs = a.out / "logs"
    logs.mkdir(exist_ok=True)

    began = time.monotonic()
    runs = []
    for workload in workloads:
        for cls in classes:
            for contender in contenders:
                if cls not in CONTENDERS[contender].classes:
                    continue
                print(f"... {workload} / {cls} / {contender}", file=sys.stderr, flush=True)
                runs.append(run_one(workload, cls, contender, a.ceiling, a.client, scale, logs))
    report = []
    if runs:
        report += [f"## Recycling (ceiling {a.ceiling} MiB RSS per worker, {WORKERS} workers)\n", run_table(runs)]
        missed = misses(runs)
        gaps = [g for r in runs for g in r.timeline.gaps]
        report += [
            f"\nOutside memory samples every {SAMPLE_EVERY * 1000:.0f} ms: gap between two p99 "
            f"{_pct(gaps, 0.99) * 1000:.0f} ms, longest {max(gaps, default=0) * 1000:.0f} ms.",
            "memguard's targets: " + ("all met." if not missed else "missed — " + "; ".join(missed) + "."),
        ]
    report.append(
        f"\n{len(runs)} runs in {time.monotonic() - began:.0f} s, {os.cpu_count()} CPUs, "
        f"load by {a.client}{' (streams: python)' if 'stream' in workloads else ''}."
    )
    text = "\n".join(report)
    print(text)
    (a.out / "results.md").write_text(text + "\n")
    if not a.no_plot and runs:
        for path in plot(runs, a.out):
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
