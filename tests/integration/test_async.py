"""Issue: gevent and uvicorn (ASGI) workers, guarded, with a true graceful drain of in-flight
requests and streams.

Real gunicorn on 127.0.0.1, real HTTP, observed from outside (PIDs, psutil memory, logs).
"""

from __future__ import annotations

import functools
import http.client
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from bench.harness import Gunicorn, MemoryWatch, load, poll

from .conftest import INTERNALS, Idle, KiB, MiB, marking, measure_exit_unshare, measure_idle

pytest.importorskip("gevent")
pytest.importorskip("uvicorn")

HOOKS = ["-c", "python:gunicorn_memguard.conf"]
GEVENT_CLASS = ["-k", "gunicorn_memguard.workers.GeventWorker"]
UVICORN_CLASS = ["-k", "gunicorn_memguard.workers.UvicornWorker"]
# label -> (gunicorn args, app)
MODES = {
    "class-gevent": (GEVENT_CLASS, "apps.streams:app"),
    "hooks-gevent": ([*HOOKS, "-k", "gevent"], "apps.streams:app"),
    "class-uvicorn": (UVICORN_CLASS, "apps.asgi:app"),
    "class-uvicorn-only": (UVICORN_CLASS, "apps.asgi:app"),  # with uvicorn-worker made unimportable
}
ALL_MODES = {**MODES, "class-uvicorn-h11": (["-k", "gunicorn_memguard.workers.UvicornH11Worker"], "apps.asgi:app")}
LEAK_KIB = 128
CLIENTS = 20  # concurrent clients of the load, each with one request at a time


def guard_env(limit: int, **extra: str) -> dict[str, str]:
    # Each worker's own bound, retiring at once (as in test_core.py); spawn-first and the retirement
    # budget, which serve on over the soft limit meanwhile, are tested in test_coordination.py.
    return {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
        "MEMGUARD_SPAWN_FIRST": "no",
        "MEMGUARD_MAX_CONCURRENT_RETIREMENTS": "8",
        **extra,
    }


def ceiling_env(limit: int) -> dict[str, str]:
    """The limit is also the hard limit: past it a worker retires at once, whether or not its
    graceful turn has come; soft limits jittered up to 10 % below it go first. No reclaim: while
    the sampler thread reclaims, the guard answers every other check "keep", the hard limit's
    included (see test_core.CEILING_ONLY)."""
    return guard_env(limit, MEMGUARD_HARD_MAX_MEMORY=f"{limit}B", MEMGUARD_JITTER="10%", MEMGUARD_RECLAIM="no")


def overshoot_bound(clients: int, per_request: int) -> int:
    """The most an event-loop worker (gevent, uvicorn) can allocate past a passing check of its
    guard, which checks after every request: a request that allocated after the worker's last check
    below the limit is either unchecked when the retirement is decided, or accepted before the
    worker stops accepting (a loop pass later). Each client has one request at a time and gets its
    answer before the check of that request, so each of those two groups holds at most one request
    per client. Scheduling delays change when this happens, not how much."""
    return 2 * clients * per_request


def assert_bounded(watch: MemoryWatch, mode: str, limit: int, per_request: int) -> tuple[int, int]:
    """The peak USS seen, within the limit + ``overshoot_bound`` + the pages a worker turns private
    without allocating, which the guard's estimate between exact reads does not see: at its first
    full collection (conftest.Idle) and as it retires (conftest.measure_exit_unshare), each measured
    on this machine. Returns (peak, bound)."""
    args, app = ALL_MODES[mode]
    requests = overshoot_bound(CLIENTS, per_request)
    unshared = idle(tuple(args), app).gc_unshare + exit_unshare(tuple(args), app)
    peak, bound = max(watch.peak.values()), limit + requests + unshared
    assert peak <= bound, (
        f"peak {peak / MiB:.1f} MiB > limit {limit / MiB:.1f} + {requests / MiB:.1f} MiB of requests "
        f"+ {unshared / MiB:.2f} MiB unshared"
    )
    return peak, bound


def hide_uvicorn_worker(tmp_path: Path) -> dict[str, str]:
    """Env in which ``import uvicorn_worker`` fails, as where only uvicorn is installed."""
    shadow = tmp_path / "no-uvicorn-worker" / "uvicorn_worker"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('uvicorn-worker is hidden for this test')\n")
    return {"PYTHONPATH": str(shadow.parent)}


def mode_env(mode: str, tmp_path: Path) -> dict[str, str]:
    return hide_uvicorn_worker(tmp_path) if mode == "class-uvicorn-only" else {}


@functools.cache
def idle(args: tuple[str, ...], app: str) -> Idle:
    """An idle worker of this class and app, measured once on this machine, this gunicorn."""
    return measure_idle(list(args), app)


@functools.cache
def exit_unshare(args: tuple[str, ...], app: str) -> int:
    """What a retiring worker of this class and app turns private as it drains and exits, measured
    once on this machine, this gunicorn (``conftest.measure_exit_unshare``)."""
    return measure_exit_unshare(list(args), app, idle(args, app).uss + 8 * MiB)


def start(
    mode: str,
    limit_over_idle: int,
    tmp_path: Path,
    workers: int = 2,
    extra: tuple[str, ...] = (),
    env: Callable[[int], dict[str, str]] = guard_env,
) -> tuple[Gunicorn, int]:
    """A serving gunicorn in ``mode`` whose soft limit is ``limit_over_idle`` over an idle worker."""
    args, app = ALL_MODES[mode]
    limit = idle(tuple(args), app).uss + limit_over_idle
    server = Gunicorn(
        [*args, *extra, app], {**env(limit), **mode_env(mode, tmp_path)}, tmp_path / "g.log", workers=workers
    )
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server, limit


def retired_pids(server: Gunicorn) -> list[int]:
    return [int(re.search(r"retiring worker pid=(\d+)", line)[1]) for line in server.log_lines("retiring worker")]


def wait_gone(server: Gunicorn, pids: set[int], timeout: float = 20) -> None:
    """Wait until ``pids`` have exited and their replacements serve (a worker still booting when
    the test stops gunicorn may miss the SIGTERM and hold the shutdown up for graceful_timeout)."""
    poll(lambda: not pids & server.worker_pids(), timeout, what=f"workers {pids} to exit")
    server.wait_ready()


@pytest.mark.parametrize("mode", marking(MODES, {"class-gevent", "class-uvicorn"}))
def test_leaking_workers_are_retired_gracefully_under_concurrent_load(mode, tmp_path):
    server, limit = start(mode, 30 * MiB, tmp_path, env=ceiling_env)
    with server:
        first = server.worker_pids()
        watch = MemoryWatch(server, metric="uss")
        result = load(server, f"/leak?kib={LEAK_KIB}", requests=1200, concurrency=CLIENTS)
        watch.stop()

        assert result.failed == [], f"failed requests: {result.failed[:10]}"
        assert set(watch.peak) - first, "no worker was replaced"
        peak, bound = assert_bounded(watch, mode, limit, LEAK_KIB * KiB)
        retired = retired_pids(server)
        # 1200 x 128 KiB = 150 MiB leaked over 2 workers with under 30 MiB headroom each
        assert len(retired) >= 3
        assert len(set(retired)) == len(retired), "one log line per retirement"
        wait_gone(server, set(retired))
        for pid in retired:
            poll(
                lambda: server.log_lines(f"worker pid={pid} exited gracefully after retirement"),
                timeout=5,
                what=f"graceful exit of {pid}",
            )
        print(
            f"{mode}: {len(retired)} retirements, peak uss {peak / MiB:.1f} MiB, limit {limit / MiB:.1f} MiB "
            f"(+{(peak - limit) / MiB:.1f}, bound +{(bound - limit) / MiB:.1f}), {watch.samples} samples"
        )


@pytest.mark.parametrize("mode", marking(["class-uvicorn", "class-gevent"], {"class-gevent"}))
def test_a_worker_far_from_its_limit_checks_on_its_event_loops_clock_and_keeps_the_bound(mode, tmp_path):
    """Starting 120 MiB below its limit, a uvicorn or gevent worker lets requests end with no
    memguard code and checks on a timer of its event loop (``worker/clock.RequestClock``) until its
    limit is within 41 MiB (10 ms of growth at 4 GiB/s); from there each request goes through the
    gate again. So the peak keeps the bound of a check after every request: had the clock stopped
    checking, only the sampler would, every 200 ms."""
    kib = 256
    server, limit = start(mode, 120 * MiB, tmp_path, env=ceiling_env)
    with server:
        first = server.worker_pids()
        watch = MemoryWatch(server, metric="uss")
        # 2 workers x 120 MiB of headroom / 256 KiB = 960 requests per round of retirements
        result = load(server, f"/leak?kib={kib}", requests=2400, concurrency=CLIENTS)
        watch.stop()
        assert result.failed == [], f"failed requests: {result.failed[:10]}"
        assert set(watch.peak) - first, "no worker was replaced"
        peak, _ = assert_bounded(watch, mode, limit, kib * KiB)
        assert len(retired_pids(server)) >= 2
        wait_gone(server, set(retired_pids(server)))
        print(f"{len(retired_pids(server))} retirements, peak uss +{(peak - limit) / MiB:.1f} MiB over the limit")


def stream_then_check_closed(server: Gunicorn, path: str, out: list[object]) -> None:
    """Read a streamed response on a keep-alive connection; record its events, how it ended and
    whether the server closed the connection right after it (rather than keeping it alive)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        out.append(resp.status)
        body = b""
        while chunk := resp.read1(65536):
            body += chunk
            out.append(("chunk", len(body)))
        out.append(("body", body))
        if resp.will_close:
            out.append(("closed", "Connection: close"))
        else:
            conn.sock.settimeout(1.5)  # keepalive is 5 s in these tests
            out.append(("closed", "EOF" if conn.sock.recv(1) == b"" else "data"))
    except (OSError, http.client.HTTPException) as exc:
        out.append(("error", repr(exc)))
    finally:
        conn.close()


STREAM_MODES = ["class-gevent", "hooks-gevent", "class-uvicorn"]


@pytest.mark.parametrize("mode", marking(STREAM_MODES, {"class-gevent"}))
def test_a_stream_in_flight_when_its_worker_crosses_the_limit_completes_intact(mode, tmp_path):
    # --timeout 3: the drain (3.5 s) outlasts the master's heartbeat timeout, which a draining
    # worker must therefore keep feeding
    server, limit = start(mode, 40 * MiB, tmp_path, workers=1, extra=("--keep-alive", "5", "--timeout", "3"))
    with server:
        (pid,) = server.worker_pids()
        out: list[object] = []
        reader = threading.Thread(target=stream_then_check_closed, args=(server, "/stream?n=8&gap=0.5", out))
        reader.start()
        poll(lambda: len(out) >= 2, timeout=5, what="first event")
        assert server.get("/leak?kib=81920")[0] == 200  # another request pushes the worker over
        poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=5, what="retirement")
        assert reader.is_alive(), "the stream should still be running when the retirement starts"
        # a new request meanwhile is not taken by the retiring worker: it waits for the replacement
        status, body = server.get("/pid")
        assert status == 200 and int(body) != pid
        reader.join(30)
        # the stream was served whole by the retiring worker, the only one when it began
        body = dict(o for o in out if isinstance(o, tuple) and o[0] in ("body", "closed", "error"))
        assert "error" not in body, body["error"]
        events = [line for line in body["body"].decode().split("\n\n") if line]
        assert events == [f"data: {i}" for i in range(8)] + ["data: end"]
        assert body["closed"] in ("Connection: close", "EOF"), "keep-alive should end with the response"
        wait_gone(server, {pid})
        exited = poll(lambda: server.log_lines(f"worker pid={pid} exited gracefully after retirement"), timeout=5)
        assert len(server.log_lines("retiring worker")) == 1
        print(f"{mode}: stream of 9 events intact; {exited[0]}")


@pytest.mark.parametrize("mode", ["class-gevent", "hooks-gevent"])
def test_a_cpu_bound_gevent_request_that_leaks_is_seen_during_the_request(mode, tmp_path):
    server, limit = start(mode, 40 * MiB, tmp_path, workers=1)
    with server:
        (pid,) = server.worker_pids()
        answer: list[int] = []
        # leaks 80 MiB, then computes for 4 s without yielding: no greenlet runs meanwhile
        thread = threading.Thread(target=lambda: answer.append(server.get("/cpu?kib=81920&s=4")[0]))
        started = time.monotonic()
        thread.start()
        poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=3.5, what="retirement mid-request")
        decided = time.monotonic() - started
        assert thread.is_alive(), "the retirement should be decided while the request is still running"
        thread.join(30)
        assert answer == [200]
        wait_gone(server, {pid})
        assert server.log_lines(f"worker pid={pid} exited gracefully after retirement")
        print(f"{mode}: retirement decided {decided:.2f}s into a 4 s CPU-bound request")


def kept_per_request(args: tuple[str, ...], app: str, path: str, requests: int = 10) -> int:
    """What one request to ``path`` keeps, measured on one worker: USS over ``requests`` requests
    in a row, after a full collection so that its unsharing is not counted."""
    with Gunicorn([*args, app], workers=1) as server:
        server.wait_ready()
        assert server.get("/gc")[0] == 200
        (pid,) = server.worker_pids()
        proc = psutil.Process(pid)
        before = proc.memory_full_info().uss
        for _ in range(requests):
            assert server.get(path)[0] == 200
        return (proc.memory_full_info().uss - before) // requests


def test_fastapi_sync_endpoint_leaking_in_the_thread_pool_stays_bounded(tmp_path):
    """The seed report: a FastAPI ``def`` endpoint building large lists in uvicorn's thread pool."""
    pytest.importorskip("fastapi")
    args, app, path, clients = tuple(UVICORN_CLASS), "apps.fastapi_app:app", "/report?rows=2000", 8
    base, per_request = idle(args, app), kept_per_request(args, app, path)
    limit = base.uss + 60 * MiB
    with Gunicorn([*args, app], ceiling_env(limit), tmp_path / "g.log") as server:
        server.wait_ready()
        first = server.worker_pids()
        watch = MemoryWatch(server, metric="uss")
        # ~1.7 MiB kept per request: 300 requests = ~500 MiB over 2 workers
        result = load(server, path, requests=300, concurrency=clients)
        watch.stop()
        assert result.failed == [], f"failed requests: {result.failed[:10]}"
        assert set(watch.peak) - first, "no worker was replaced"
        peak = max(watch.peak.values())
        # the check runs in the event loop after each request, the requests in the thread pool
        requests = overshoot_bound(clients, per_request)
        bound = limit + requests + base.gc_unshare
        assert peak <= bound, (
            f"peak {peak / MiB:.1f} MiB > limit {limit / MiB:.1f} + {requests / MiB:.1f} MiB of requests "
            f"({per_request / MiB:.2f} MiB each) + {base.gc_unshare / MiB:.1f} MiB unshared"
        )
        retired = retired_pids(server)
        assert len(retired) >= 3 and len(set(retired)) == len(retired)
        wait_gone(server, set(retired))
        for pid in retired:
            poll(
                lambda: server.log_lines(f"worker pid={pid} exited gracefully after retirement"),
                timeout=5,
                what=f"graceful exit of {pid}",
            )
        print(
            f"fastapi: {len(retired)} retirements, peak uss {peak / MiB:.1f} MiB, limit {limit / MiB:.1f} MiB "
            f"(+{(peak - limit) / MiB:.1f}, bound +{(bound - limit) / MiB:.1f}, {per_request / MiB:.2f} MiB a request)"
        )


@pytest.mark.parametrize("mode", marking(["class-gevent", "class-uvicorn-h11"], {"class-gevent"}))
def test_a_drain_that_outlives_graceful_timeout_is_bounded_and_logged(mode, tmp_path):
    server, limit = start(mode, 40 * MiB, tmp_path, workers=1, extra=("--graceful-timeout", "2"))
    with server:
        (pid,) = server.worker_pids()
        out: list[object] = []
        reader = threading.Thread(target=stream_then_check_closed, args=(server, "/stream?n=60&gap=0.5", out))
        reader.start()
        poll(lambda: len(out) >= 2, timeout=5, what="first event")
        assert server.get("/leak?kib=81920")[0] == 200
        started = time.monotonic()
        poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=5, what="retirement")
        poll(lambda: server.log_lines(f"worker pid={pid} did not finish draining"), timeout=10, what="drain bound")
        wait_gone(server, {pid}, timeout=5)  # bounded: 2 s graceful_timeout + 1 s margin + a check
        took = time.monotonic() - started
        poll(lambda: server.log_lines(f"worker pid={pid} was made to exit"), timeout=5, what="master's exit report")
        reader.join(30)
        body = dict(o for o in out if isinstance(o, tuple) and o[0] in ("body", "error"))
        assert "error" in body or not body["body"].endswith(b"data: end\n\n"), "the 30 s stream was cut off"
        print(f"{mode}: drain cut off {took:.1f}s after the retirement (graceful_timeout 2 s)")


@INTERNALS
def test_stock_uvicorn_worker_under_the_hook_module_is_retired_by_the_timer(tmp_path):
    """Stock ``-k uvicorn_worker.UvicornWorker``: no per-request check, retirement by SIGTERM."""
    pytest.importorskip("uvicorn_worker")
    args = [*HOOKS, "-k", "uvicorn_worker.UvicornWorker"]
    limit = idle(tuple(args), "apps.asgi:app").uss + 40 * MiB
    with Gunicorn([*args, "apps.asgi:app"], guard_env(limit), tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        assert server.get("/leak?kib=81920")[0] == 200
        poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=5, what="retirement by the timer")
        wait_gone(server, {pid})
        # uvicorn re-raises the SIGTERM after its graceful shutdown: the worker dies by the signal,
        # so worker_exit does not run; the master reads the signal from the exit status (as README says)
        assert server.log_lines(f"Worker (pid:{pid}) was sent SIGTERM")
        poll(
            lambda: server.log_lines(f"worker pid={pid} ended by SIGTERM after its own shutdown"),
            timeout=5,
            what="master's exit report",
        )


def test_uvicorn_worker_falls_back_to_uvicorn_workers_without_uvicorn_worker(tmp_path):
    env = hide_uvicorn_worker(tmp_path)
    code = (
        "import warnings; warnings.simplefilter('error'); "
        "from gunicorn_memguard.workers import UvicornWorker; "
        "print([c.__module__ for c in UvicornWorker.__mro__])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, "PATH": ""}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "uvicorn.workers" in out.stdout and "uvicorn_worker._workers" not in out.stdout
