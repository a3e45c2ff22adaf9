"""Issue: leak-aware policy — growth rate, container-relative limits, reclaim, crash-loop breaker.

Real gunicorn on 127.0.0.1 running tests/apps/shapes.py, observed from outside (PIDs, logs).
The growth monitor runs on a short window here (6 s) so a "slow" leak — 4 MiB/s, far below a
600 MiB limit — is caught within seconds.
"""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from bench.harness import Gunicorn, poll

from .conftest import MiB

HOOKS = ["-c", "python:gunicorn_memguard.conf"]
APP = "apps.shapes:app"
GROWTH = {
    "MEMGUARD_MAX_MEMORY": "600MiB",
    "MEMGUARD_MAX_GROWTH": "1MiB/s",
    "MEMGUARD_GROWTH_WINDOW": "6s",
    "MEMGUARD_GROWTH_GRACE": "500ms",
    "MEMGUARD_GROWTH_INTERVAL": "200ms",
    "MEMGUARD_CHECK_INTERVAL": "100ms",
}


@pytest.mark.parametrize("worker", [["-k", "sync"], ["-k", "gthread", "--threads", "4"]], ids=["sync", "gthread"])
def test_slow_leak_is_retired_for_growth_and_a_bounded_cache_never(worker, tmp_path):
    leaking = Gunicorn(
        [*HOOKS, *worker, APP], {**GROWTH, "SHAPE_LEAK_KIB_PER_S": "4096"}, tmp_path / "leak.log", workers=1
    )
    caching = Gunicorn([*HOOKS, *worker, APP], {**GROWTH, "SHAPE_CACHE_MIB": "40"}, tmp_path / "cache.log", workers=1)
    with leaking, caching:
        leaking.wait_ready()
        caching.wait_ready()
        cache_pids = caching.worker_pids()
        started = time.monotonic()
        (line,) = poll(
            lambda: [x for x in leaking.log_lines("retiring worker") if "reason=growth_rate" in x],
            40,
            what="a growth-rate retirement",
        )[:1]
        caught_after = time.monotonic() - started
        rate = float(re.search(r"floor grew ([0-9.]+) GiB/h over the last 6s, > max 3.5 GiB/h", line).group(1))
        assert 7 <= rate <= 28, line  # the app leaks 4 MiB/s = 14.1 GiB/h; the limit is 1 MiB/s
        uss = int(re.search(r"uss=(\d+)", line).group(1))
        assert uss < 300 * MiB, "retired for growth long before the absolute limit"
        poll(
            lambda: leaking.log_lines("exited gracefully after retirement reason=growth_rate"),
            20,
            what="the leaking worker to exit gracefully",
        )
        # The cache server has now run through its grace, a full window and more, at settings
        # that just caught a leak: its worker is still the first one.
        poll(lambda: time.monotonic() - started > max(caught_after, 8.0) + 2.0, 30, what="a window past the catch")
        assert caching.log_lines("retiring worker") == []
        assert caching.worker_pids() == cache_pids
        assert caching.get("/")[0] == 200


def test_reclaimable_memory_is_reclaimed_instead_of_retiring(baseline_uss, tmp_path):
    env = {
        "MEMGUARD_MAX_MEMORY": f"{baseline_uss + 40 * MiB}B",
        # Reclaim comes before a soft-limit retirement, in the band below the ceiling (past the
        # ceiling a worker stops accepting at once); the 80 MiB request needs a ceiling above it.
        "MEMGUARD_HARD_MAX_MEMORY": f"{baseline_uss + 200 * MiB}B",
        "MEMGUARD_JITTER": "0%",
        "MEMGUARD_MIN_LIFETIME": "0s",
        # The default interval: two samples must land after the request freed its memory. With a
        # much shorter one, both strikes can fall inside the request, while its 80 MiB is live.
        "MEMGUARD_CHECK_INTERVAL": "1s",
        "MEMGUARD_RECLAIM_INTERVAL": "1s",
    }
    events = tmp_path / "events.jsonl"
    with (
        Gunicorn(
            [*HOOKS, APP], {**env, "MEMGUARD_EVENT_LOG": str(events)}, tmp_path / "reclaim.log", workers=1
        ) as server,
        Gunicorn([*HOOKS, APP], {**env, "MEMGUARD_RECLAIM": "no"}, tmp_path / "control.log", workers=1) as control,
    ):
        server.wait_ready()
        control.wait_ready()
        pids = server.worker_pids()
        for round_ in range(1, 4):
            assert server.get("/churn?mib=80")[0] == 200  # leaves ~80 MiB freed but resident
            poll(lambda n=round_: len(server.log_lines("memguard: reclaimed")) >= n, 15, what=f"reclaim {round_}")
            time.sleep(1.1)  # pacing: the next big request comes after MEMGUARD_RECLAIM_INTERVAL
        lines = server.log_lines("memguard: reclaimed")
        assert all("keeps serving" in line for line in lines), lines
        freed = [float(re.search(r"reclaimed ([0-9.]+) MiB", line).group(1)) for line in lines]
        assert min(freed) >= 50, lines
        assert server.log_lines("retiring worker") == []
        assert server.worker_pids() == pids
        reclaims = [e for e in read_events(events) if e["event"] == "reclaim"]
        assert len(reclaims) == len(lines) and min(e["freed"] for e in reclaims) >= 50 * MiB, reclaims

        # The same request, with reclaim off, recycles the worker: the test above can fail.
        assert control.get("/churn?mib=80")[0] == 200
        poll(lambda: control.log_lines("reason=soft_limit"), 15, what="the control worker's retirement")


def read_events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_worker_too_big_at_start_trips_the_breaker_once_and_keeps_serving(baseline_uss, tmp_path):
    events = tmp_path / "events.jsonl"
    env = {
        "MEMGUARD_EVENT_LOG": str(events),
        "SHAPE_BALLAST_MIB": "200",
        "MEMGUARD_MAX_MEMORY": f"{baseline_uss + 50 * MiB}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "100ms",
    }
    with Gunicorn([*HOOKS, APP], env, tmp_path / "breaker.log", workers=2) as server:
        server.wait_ready()
        first = server.worker_pids()
        poll(lambda: server.log_lines("CRASH-LOOP BREAKER"), 15, what="the breaker")
        deadline = time.monotonic() + 4.0  # 40 check intervals, each of which could have retired a worker
        while time.monotonic() < deadline:
            assert server.get("/")[0] == 200
            time.sleep(0.1)
        (error,) = server.log_lines("CRASH-LOOP BREAKER")
        assert "[ERROR]" in error and "Raise MEMGUARD_MAX_MEMORY" in error
        assert len(server.log_lines("retiring worker")) <= 2
        assert len(server.worker_pids() | first) <= 4
        trips = [e for e in read_events(events) if e["event"] == "breaker_trip"]
        assert [e["why"] for e in trips] == ["baseline"], trips


def test_percent_limits_follow_the_worker_count(tmp_path):
    env = {"MEMGUARD_MAX_MEMORY": "50%", "MEMGUARD_CHECK_INTERVAL": "100ms"}
    with Gunicorn([*HOOKS, APP], env, tmp_path / "percent.log", workers=2) as server:
        server.wait_ready()
        served: set[bytes] = set()
        # both workers have served (so their guards run) before the worker count changes
        poll(lambda: served.add(server.get("/pid")[1]) or len(served) == 2, 10, what="both workers to serve")
        (line,) = server.log_lines("per-worker limits")
        assert "/ 2 workers" in line
        two = float(re.search(r"limit 50% = ([0-9.]+) (G|M)iB", line).group(1))
        if "no container limit" not in line:
            assert "cgroup" in line
        server.master.send_signal(signal.SIGTTIN)
        (line3,) = poll(
            lambda: [x for x in server.log_lines("per-worker limits") if "/ 3 workers" in x],
            15,
            what="the limits re-resolved for 3 workers",
        )
        three = float(re.search(r"limit 50% = ([0-9.]+) (G|M)iB", line3).group(1))
        assert three == pytest.approx(two * 2 / 3, rel=0.02)
        # both workers that were already running picked up the new limit
        poll(lambda: len(server.log_lines("now has limit")) >= 2, 10, what="live workers to pick up the limit")
        server.master.send_signal(signal.SIGTTOU)
        poll(
            lambda: [x for x in server.log_lines("per-worker limits") if "/ 2 workers" in x][1:],
            15,
            what="the limits re-resolved for 2 workers again after TTOU",
        )
        poll(lambda: len(server.log_lines("now has limit")) >= 4, 10, what="the 2 remaining workers to follow")
