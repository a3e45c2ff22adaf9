"""What memguard costs a request, printed as tables:

1. in-process: the nanoseconds memguard adds to each request, per worker class, far from the limits
   (with the CPU's caches warm, and cold as after a real request) and near them, where every
   request is checked — the path a real worker runs (gunicorn's ``post_request`` hook, which is
   the guard's gate, or gunicorn's own no-op while a gevent worker's request clock checks;
   uvicorn's request-task set; the ASGI dispatch of gunicorn's asgi worker), on a
   real guard of this process; and the sampler thread beside a busy worker;
2. served, on hello world with one worker per server and ``wrk`` (1 thread, 16 keep-alive
   connections): memguard's worker class ÷ the stock one in throughput, p99 and the worker's CPU
   time per request. Both workers share CPU 0 and both wrk CPU 1, loaded at once: on a shared or
   virtual machine one CPU's speed drifts by ±10 % from second to second, more than what is
   measured; loaded together, both servers see the same drift and their ratio keeps only what
   differs between them. And each server runs 1–2 % faster or slower than another of the same code
   for its whole life, so each ratio is taken on ``--boots`` fresh pairs of servers (the median of
   ``--pairs`` runs each), and the table gives the median over the pairs of servers and its
   spread. ``--null`` measures stock ÷ stock the same way: the method's resolution. ``--apart``
   adds each worker alone on CPU 0, one after the other (which cannot resolve a few %).

    .venv/bin/python -m bench.overhead                 # 6 pairs of servers × 3 runs of 3 s per class
    .venv/bin/python -m bench.overhead --null --classes sync,uvicorn

Needs ``wrk`` and ``taskset`` (Debian: wrk, util-linux) and two CPUs for the served tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
from gunicorn.config import PostRequest

from bench import run
from bench.harness import ROOT, Gunicorn
from gunicorn_memguard.master import runtime
from gunicorn_memguard.probes.memory import MemoryProbe
from gunicorn_memguard.settings import Settings
from gunicorn_memguard.worker.guard import Guard

# the recycling benchmark's worker classes (bench/apps.py: "/" answers "ok"), and gunicorn's asgi worker
CLASSES = {
    **run.CLASSES,
    "asgi": run.WorkerClass(("-k", "asgi"), ("-k", "gunicorn_memguard.workers.AsgiWorker"), app="bench.apps:asgi"),
}
COLD_BYTES = 32 * 2**20  # written through between two calls of a cold measurement
LIMIT = "1GiB"  # memguard's soft limit in the served runs: measured every request, never reached


# -- 1. in-process ------------------------------------------------------------------------------
@contextlib.contextmanager
def _guard(near: bool) -> Iterator[tuple[Guard, SimpleNamespace]]:
    """A guard on this process's real memory, installed as a worker's is (post_worker_init), with
    the soft limit far away or within reach of one request (so every request is checked)."""
    worker = SimpleNamespace(nr=0, cfg=SimpleNamespace(graceful_timeout=30), log=None)
    log = SimpleNamespace(info=print, warning=print, error=print)
    uss = MemoryProbe().read("uss")
    limit = uss + 32 * 2**20 if near else 64 * 2**30
    settings = Settings(max_memory=limit, jitter=0.0, hard_max_memory=2**40)
    guard = Guard(worker, settings, lambda: None, log, None, None, start_thread=lambda target: None)
    guard.after_request()
    if near:  # the gate's step as if a request could take the whole headroom: each one is checked
        guard.gate.step = float(limit - uss)
        guard.gate.close()
        guard.after_request()  # checked again, with that step
        assert guard.gate.left == 0, "the near guard lets requests pass"
    installed = runtime._runtime
    runtime._runtime = SimpleNamespace(guard=guard)  # type: ignore[assignment]
    try:
        yield guard, worker
    finally:
        runtime._runtime = installed


def _per_call(run: Callable[[int], None], n: int) -> float:
    """Nanoseconds per call, the best of 5 runs of n (the least disturbed)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        run(n)
        best = min(best, (time.perf_counter_ns() - started) / n)
    return best


_stock_hook: Callable[..., None] = PostRequest.default  # what gunicorn calls without memguard: its no-op


def _cold_extra(ours: Callable[[], None], stock: Callable[[], None], n: int = 2_000) -> float:
    """Nanoseconds ``ours`` takes more than ``stock`` with the CPU's caches cold, as after a
    request: each call after writing a byte in every cache line of 32 MiB (more than any L3 here),
    the two alternating so that the machine's drift reaches both alike (measured one after the
    other, two medians of the same call differed by up to 3 µs); the median of each, subtracted."""
    lines = bytearray(COLD_BYTES)
    ones = b"\x01" * (COLD_BYTES // 64)
    clock = time.perf_counter_ns
    took: dict[bool, list[int]] = {True: [], False: []}
    for i in range(2 * n):
        mine = i % 2 == 0
        call = ours if mine else stock
        lines[::64] = ones
        started = clock()
        call()
        took[mine].append(clock() - started)
    return statistics.median(took[True]) - statistics.median(took[False])


def wsgi_cost(near: bool, n: int = 200_000) -> float:
    """The post_request hook a worker runs (the guard's gated check, ``hooks._bind_post_request``),
    minus the stock no-op hook gunicorn calls without memguard."""
    with _guard(near) as (guard, worker):

        def calls(hook: Callable[..., None]) -> Callable[[int], None]:
            def run(count: int) -> None:
                for _ in range(count):
                    worker.nr += 1  # gunicorn counts the request before its hook (the gate reads it)
                    hook(worker, None, None, None)

            return run

        cost = _per_call(calls(guard.after_request), n) - _per_call(calls(_stock_hook), n)
        assert guard.retiring is None, "the guard retired during the measurement"
    return cost


def wsgi_cold_cost() -> float:
    """As ``wsgi_cost`` far from the limits, with the caches cold. gunicorn counts the request in
    the worker's ``nr`` before the hook, which the gate reads: so does each call here."""
    with _guard(False) as (guard, worker):

        def request(hook: Callable[..., None]) -> Callable[[], None]:
            def run() -> None:
                worker.nr += 1
                hook(worker, None, None, None)

            return run

        return _cold_extra(request(guard.after_request), request(_stock_hook))


def _clocked_hook(guard: Guard, near: bool) -> Callable[..., None]:
    """The post_request hook of memguard's gevent worker as its request clock leaves it, on a real
    gunicorn config: far from the limits gunicorn's own no-op (the hub timer checks); near them the
    guard's gated check."""
    from gunicorn.config import Config

    from gunicorn_memguard import hooks

    cfg = Config()
    cfg.set("post_request", hooks.post_request)  # as compose_into does in the master
    hooks._bind_post_request(cfg, guard.after_request)
    switch = hooks.request_switch(cfg, guard.after_request)
    assert switch is not None, "the guard's hook is not the worker's"
    switch(near)
    return cfg.settings["post_request"].get()  # type: ignore[no-any-return]


def _hook_calls(worker: SimpleNamespace, hook: Callable[..., None]) -> Callable[[int], None]:
    def run(count: int) -> None:
        for _ in range(count):
            worker.nr += 1  # gunicorn counts the request before its hook (the gate reads it)
            hook(worker, None, None, None)

    return run


def gevent_costs() -> tuple[float, float, float]:
    """gevent: far (warm, cold) and near, the clocked hook minus gunicorn's no-op."""
    with _guard(False) as (guard, worker):
        ours, stock = _hook_calls(worker, _clocked_hook(guard, False)), _hook_calls(worker, _stock_hook)
        far = _per_call(ours, 200_000) - _per_call(stock, 200_000)
        cold = _cold_extra(lambda: ours(1), lambda: stock(1))
    with _guard(True) as (guard, worker):
        ours, stock = _hook_calls(worker, _clocked_hook(guard, True)), _hook_calls(worker, _stock_hook)
        near = _per_call(ours, 200_000) - _per_call(stock, 200_000)
        assert guard.retiring is None, "the guard retired during the measurement"
    return far, cold, near


def _tasks_run(tasks: set[Any]) -> Callable[[int], None]:
    task = object()

    def run(count: int) -> None:
        for _ in range(count):
            tasks.add(task)
            tasks.discard(task)

    return run


def _request_tasks(guard: Guard, near: bool) -> set[Any]:
    """memguard's set of request tasks as the request clock leaves it: far from the limits, letting
    tasks go with the set's own discard (the clock checks on a timer); near them, through the gate."""
    from gunicorn_memguard.workers.uvicorn import RequestTasks

    tasks = RequestTasks(guard.after_request)
    tasks.each(near)
    return tasks


def uvicorn_cost(near: bool, n: int = 200_000) -> float:
    """uvicorn: memguard's set of request tasks letting a task go (the check included), minus
    uvicorn's own set's."""
    with _guard(near) as (guard, worker):
        cost = _per_call(_tasks_run(_request_tasks(guard, near)), n) - _per_call(_tasks_run(set()), n)
        assert guard.retiring is None, "the guard retired during the measurement"
    return cost


def uvicorn_cold_cost() -> float:
    with _guard(False) as (guard, worker):
        ours, stock = _tasks_run(_request_tasks(guard, False)), _tasks_run(set())
        return _cold_extra(lambda: ours(1), lambda: stock(1))


def asgi_dispatch_cost(n: int = 100_000) -> float:
    """gunicorn's asgi worker: memguard's dispatch in front of the app (it passes HTTP requests
    straight to it), minus the bare app."""
    from gunicorn_memguard.workers.asgi import checked_after_each_websocket_session

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    def calls(asgi: Callable[..., Any]) -> Callable[[int], None]:
        async def loop(count: int) -> None:
            for _ in range(count):
                await asgi(scope, None, None)

        return lambda count: asyncio.run(loop(count))

    scope = {"type": "http"}
    return _per_call(calls(checked_after_each_websocket_session(app, None)), n) - _per_call(calls(app), n)


def in_process_table() -> str:
    rows = [
        "| class | path measured | far from the limits (ns) | far, caches cold (ns) "
        "| near them, every request checked (ns) |",
        "|---|---|---:|---:|---:|",
    ]
    hook = (wsgi_cost(False), wsgi_cold_cost(), wsgi_cost(True))
    dispatch = asgi_dispatch_cost()
    paths = {
        "gevent": ("gunicorn's post_request hook (far: gunicorn's own no-op, a hub timer checks)", gevent_costs()),
        "uvicorn": (
            "uvicorn's request-task set letting a task go (far: the set's own discard, a loop timer checks)",
            (uvicorn_cost(False), uvicorn_cold_cost(), uvicorn_cost(True)),
        ),
        "asgi": ("memguard's ASGI dispatch + post_request hook", tuple(cost + dispatch for cost in hook)),
    }
    for name in CLASSES:
        path, (far, cold, near) = paths.get(name, ("gunicorn's post_request hook", hook))
        rows.append(f"| {name} | {path} | {far:.0f} | {cold:.0f} | {near:.0f} |")
    return "\n".join(rows)


def _busy(seconds: float) -> float:
    """Iterations per second of a CPU-bound pure-Python loop (it holds the GIL, like a busy worker)."""
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            count += 1
    return count / seconds


def _sampler(interval: float) -> tuple[Guard, list[Any]]:
    """A guard with its real sampler thread waking every ``interval``, and that thread (psutil)."""
    before = {t.id for t in psutil.Process().threads()}
    worker = SimpleNamespace(nr=0, cfg=SimpleNamespace(graceful_timeout=30), log=None)
    log = SimpleNamespace(info=print, warning=print, error=print)
    guard = Guard(worker, Settings(max_memory=64 * 2**30, check_interval=interval), lambda: None, log, None, None)
    time.sleep(0.2)  # its first, exact reading
    return guard, [t for t in psutil.Process().threads() if t.id not in before]


def sampler_cpu_per_wake(interval: float = 0.01, seconds: float = 3.0) -> float:
    """The sampler thread's own CPU per wake-up (µs), beside the busy loop; a short interval so the
    kernel's 10 ms accounting ticks add up to a figure."""
    guard, threads = _sampler(interval)
    cpu = sum(t.user_time + t.system_time for t in threads)
    _busy(seconds)
    now = {t.id: t for t in psutil.Process().threads()}
    used = sum(now[t.id].user_time + now[t.id].system_time for t in threads if t.id in now) - cpu
    guard.worker_exited()
    return used / (seconds / interval) * 1e6


def sampler_table() -> str:
    cpu = sampler_cpu_per_wake()
    return (
        f"The sampler thread's CPU per wake-up: {cpu:.0f} µs (measured waking every 10 ms): at the default "
        f"MEMGUARD_CHECK_INTERVAL of 1 s, {cpu / 1e4:.3f} % of a CPU; every 50 ms while a turn is near, "
        f"{cpu / 500:.2f} %."
    )


# -- 2. served, pinned ----------------------------------------------------------------------------
@dataclass
class Pairs:
    cls: str
    ratio: list[float] = field(default_factory=list)  # memguard req/s ÷ stock req/s, per pair
    p99: list[float] = field(default_factory=list)  # memguard p99 ÷ stock p99, per pair
    cpu: list[float] = field(default_factory=list)  # memguard ÷ stock worker CPU time per request, per pair
    stock_rps: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Served:
    rps: float
    p99: float  # seconds
    cpu_per_request: float  # the worker's CPU seconds (user + system) per request served


def _parse_wrk(out: str) -> tuple[float, float, int]:
    """(requests per second, p99 seconds, requests) from wrk's report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", out, re.M).groups()  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit], requests


def _wrk(port: int, seconds: float) -> tuple[float, float, int]:
    """One wrk run pinned to CPU 1."""
    return _parse_wrk(_wrk_started(port, seconds).communicate(timeout=seconds + 60)[0])


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


class Server:
    """One gunicorn with one worker pinned to CPU 0, kept up for all of a class's pairs (a boot per
    run would measure boots; the idle one of the two costs the other nothing)."""

    def __init__(self, cls: str, memguard: bool, logs: Path) -> None:
        worker_class = CLASSES[cls]
        env = {"MEMGUARD_MAX_MEMORY": LIMIT} if memguard else {}
        args = [*(worker_class.memguard if memguard else worker_class.stock), worker_class.app]
        log = Path(tempfile.mkstemp(prefix=f"{cls}-{'memguard' if memguard else 'stock'}-", suffix=".log", dir=logs)[1])
        self.gunicorn = Gunicorn(args, env, log, workers=1, cwd=ROOT, cpus="0")
        self.gunicorn.wait_ready()
        (self.worker,) = self.gunicorn.worker_pids()
        _wrk(self.gunicorn.port, 1.0)  # warm up: connections, caches, the first checks

    def measure(self, seconds: float) -> Served:
        cpu = _cpu_seconds(self.worker)
        rps, p99, requests = _wrk(self.gunicorn.port, seconds)
        return Served(rps, p99, (_cpu_seconds(self.worker) - cpu) / max(requests, 1))

    def close(self) -> None:
        self.gunicorn.stop()


def _wrk_started(port: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["taskset", "-c", "1", "wrk", "-t", "1", "-c", "16", "-d", f"{seconds:g}s", "--latency", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _together(servers: dict[bool, Server], seconds: float) -> dict[bool, Served]:
    """Both servers loaded at once, both workers sharing CPU 0 and both wrk CPU 1: whatever slows
    the machine down slows both alike, so their ratio keeps only what differs between them."""
    cpu = {memguard: _cpu_seconds(server.worker) for memguard, server in servers.items()}
    loads = {memguard: _wrk_started(server.gunicorn.port, seconds) for memguard, server in servers.items()}
    got = {}
    for memguard, load in loads.items():
        out = load.communicate(timeout=seconds + 60)[0]
        rps, p99, requests = _parse_wrk(out)
        got[memguard] = Served(rps, p99, (_cpu_seconds(servers[memguard].worker) - cpu[memguard]) / max(requests, 1))
    return got


def pinned(
    classes: list[str], boots: int, pairs: int, seconds: float, logs: Path, together: bool = True, null: bool = False
) -> list[Pairs]:
    """Per class, ``boots`` times: a fresh stock server and a fresh memguard one (with ``null``, a
    second stock one instead), measured ``pairs`` times — together, or one after the other in
    alternating order, each worker with CPU 0 to itself. Fresh servers each time: one server runs
    1–2 % faster or slower than another of the same code for its whole life (where its memory
    landed), which pairs of the same two servers cannot average out. The boots alternate which
    server starts first."""
    results = []
    for cls in classes:
        got = Pairs(cls)
        for boot in range(boots):
            order = (False, True) if boot % 2 == 0 else (True, False)
            servers = {memguard: Server(cls, memguard and not null, logs) for memguard in order}
            try:
                ratio, p99, cpu, stock = [], [], [], []
                for pair in range(pairs):
                    if together:
                        runs = _together(servers, seconds)
                    else:
                        turn = order if pair % 2 == 0 else order[::-1]
                        runs = {memguard: servers[memguard].measure(seconds) for memguard in turn}
                    ratio.append(runs[True].rps / runs[False].rps)
                    p99.append(runs[True].p99 / runs[False].p99)
                    cpu.append(runs[True].cpu_per_request / runs[False].cpu_per_request)
                    stock.append(runs[False].rps)
            finally:
                for server in servers.values():
                    server.close()
            got.ratio.append(statistics.median(ratio))
            got.p99.append(statistics.median(p99))
            got.cpu.append(statistics.median(cpu))
            got.stock_rps.append(statistics.median(stock))
        results.append(got)
    return results


def _spread(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"{statistics.median(values):.3f} (IQR {q[0]:.3f}–{q[2]:.3f}; {min(values):.3f}–{max(values):.3f})"


def pinned_table(results: list[Pairs], pairs: int, seconds: float, what: str = "memguard ÷ stock") -> str:
    rows = [
        f"| class | throughput {what} | p99 {what} | worker CPU per request {what} "
        f"| stock req/s | server pairs × runs of {seconds:g} s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        stock = statistics.median(r.stock_rps)
        rows.append(
            f"| {r.cls} | {_spread(r.ratio)} | {_spread(r.p99)} | {_spread(r.cpu)} | {stock:.0f} "
            f"| {len(r.ratio)} × {pairs} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", default=",".join(CLASSES), help=f"comma-separated, from {', '.join(CLASSES)}")
    p.add_argument("--boots", type=int, default=6, help="fresh pairs of servers per class (default 6)")
    p.add_argument("--pairs", type=int, default=3, help="runs of each pair of servers (default 3)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of one measured run (default 3)")
    p.add_argument("--apart", action="store_true", help="also each worker alone on CPU 0, one after the other")
    p.add_argument("--null", action="store_true", help="also stock ÷ stock: what the method cannot resolve")
    p.add_argument("--no-served", action="store_true", help="only the in-process table")
    a = p.parse_args(argv)
    classes = [c for c in a.classes.split(",") if c]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise SystemExit(f"--classes: unknown {', '.join(unknown)}; choose from {', '.join(CLASSES)}")
    print("## memguard's cost per request, in-process (ns; hot: best of 5 runs; cold: median)\n")
    print(in_process_table())
    print("\n## The sampler thread beside a busy worker\n")
    print(sampler_table())
    if a.no_served:
        return 0
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing or (os.cpu_count() or 1) < 2:
        raise SystemExit(
            f"the served table needs wrk and taskset and 2 CPUs (missing: {', '.join(missing) or 'a CPU'})"
        )
    runs = (a.boots, a.pairs, a.seconds)
    with tempfile.TemporaryDirectory(prefix="memguard-overhead-") as logs:
        print("\n## Served together: both workers on CPU 0, both wrk -t1 -c16 on CPU 1, at once\n")
        print(pinned_table(pinned(classes, *runs, Path(logs)), a.pairs, a.seconds))
        if a.null:
            print("\n## The same, stock ÷ stock (the method's resolution)\n")
            print(pinned_table(pinned(classes, *runs, Path(logs), null=True), a.pairs, a.seconds, "stock ÷ stock"))
        if a.apart:
            print("\n## Served apart: each worker alone on CPU 0, wrk -t1 -c16 on CPU 1, in alternating order\n")
            print(pinned_table(pinned(classes, *runs, Path(logs), together=False), a.pairs, a.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
