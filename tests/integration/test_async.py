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
from pathlib import Path

import psutil
import pytest

from .conftest import MiB
from bench.harness import Gunicorn, MemoryWatch, load, poll

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
LEAK_KIB = 128
CONCURRENCY = 20
# Largest overshoot we accept, from outside: the requests in flight when the limit is crossed
# (20 x 128 KiB), two over-limit samples, and what a stock gevent worker accepts in the up to one
# second its loop takes to notice a SIGTERM.
SLACK = {"hooks-gevent": 24 * MiB}
DEFAULT_SLACK = 8 * MiB


def guard_env(limit: int, **extra: str) -> dict[str, str]:
    return {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
        **extra,
    }


def hide_uvicorn_worker(tmp_path: Path) -> dict[str, str]:
    """Env in which ``import uvicorn_worker`` fails, as where only uvicorn is installed."""
    shadow = tmp_path / "no-uvicorn-worker" / "uvicorn_worker"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('uvicorn-worker is hidden for this test')\n")
    return {"PYTHONPATH": str(shadow.parent)}


def mode_env(mode: str, tmp_path: Path) -> dict[str, str]:
    return hide_uvicorn_worker(tmp_path) if mode == "class-uvicorn-only" else {}


@functools.lru_cache(maxsize=None)
def idle_uss(args: tuple[str, ...], app: str) -> int:
    """USS of an idle worker of this class and app, measured once on this machine, this gunicorn."""
    with Gunicorn([*args, app], workers=1) as server:
        server.wait_ready()
        for _ in range(20):
            server.get("/")
        (pid,) = server.worker_pids()
        return psutil.Process(pid).memory_full_info().uss


def start(mode: str, limit_over_idle: int, tmp_path: Path, workers: int = 2, extra: list[str] = (),
          **env: str) -> tuple[Gunicorn, int]:
    args, app = MODES[mode]
    limit = idle_uss(tuple(args), app) + limit_over_idle
    server = Gunicorn([*args, *extra, app], {**guard_env(limit, **env), **mode_env(mode, tmp_path)},
                      tmp_path / "g.log", workers=workers)
    server.wait_ready()
    return server, limit


def read_stream(server: Gunicorn, path: str, out: list[bytes], timeout: float = 60) -> None:
    """Read a whole streamed response into ``out`` (chunk by chunk), then note how it ended."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        out.append(str(resp.status).encode())
        while chunk := resp.read1(65536):
            out.append(chunk)
        out.append(b"<clean end>")
    except (OSError, http.client.HTTPException) as exc:
        out.append(f"<{type(exc).__name__}>".encode())
    finally:
        conn.close()


def retired_pids(server: Gunicorn) -> list[int]:
    return [int(re.search(r"retiring worker pid=(\d+)", line)[1]) for line in server.log_lines("retiring worker")]


def wait_gone(server: Gunicorn, pids: set[int], timeout: float = 20) -> None:
    poll(lambda: not pids & server.worker_pids(), timeout, what=f"workers {pids} to exit")


@pytest.mark.parametrize("mode", MODES)
def test_leaking_workers_are_retired_gracefully_under_concurrent_load(mode, tmp_path):
    server, limit = start(mode, 30 * MiB, tmp_path)
    with server:
        first = server.worker_pids()
        watch = MemoryWatch(server, metric="uss")
        result = load(server, f"/leak?kib={LEAK_KIB}", requests=1200, concurrency=CONCURRENCY)
        watch.stop()

        assert result.failed == [], f"failed requests: {result.failed[:10]}"
        assert set(watch.peak) - first, "no worker was replaced"
        peak = max(watch.peak.values())
        slack = SLACK.get(mode, DEFAULT_SLACK)
        assert peak <= limit + slack, f"peak {peak / MiB:.1f} MiB > limit {limit / MiB:.1f} + {slack / MiB:.0f} MiB"
        retired = retired_pids(server)
        # 1200 x 128 KiB = 150 MiB leaked over 2 workers with under 30 MiB headroom each
        assert len(retired) >= 3
        assert len(set(retired)) == len(retired), "one log line per retirement"
        wait_gone(server, set(retired))
        for pid in retired:
            poll(lambda: server.log_lines(f"worker pid={pid} exited gracefully after retirement"), timeout=5,
                 what=f"graceful exit of {pid}")
        print(f"{mode}: {len(retired)} retirements, peak uss {peak / MiB:.1f} MiB, limit {limit / MiB:.1f} MiB "
              f"(+{(peak - limit) / MiB:.1f}), {watch.samples} samples")
