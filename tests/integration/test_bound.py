"""The limit a user sets is the limit they get: the ceiling, predictive spawn-first, turns that never
cost the bound, and a crash-loop breaker that spaces retirements out instead of stopping them.

Real gunicorn on 127.0.0.1, real HTTP, memory sampled from outside every 20 ms. These tests enforce
RSS (``MEMGUARD_METRIC=rss``) so that what the test samples is what memguard enforces: RSS is not
moved by copy-on-write unsharing, so every byte over the limit is one the app allocated. Each bound
is the ceiling plus what the requests in flight can allocate: a request here keeps ``LEAK`` bytes
and allocates well under ``SLACK`` besides (headers, buffers: ~0.1 MiB measured).
"""

from __future__ import annotations

import re

import pytest

from bench.harness import Gunicorn, MemoryWatch, load, poll
from bench.recycling import FleetWatch

from .conftest import INTERNALS, MiB

HOOKS = ["-c", "python:gunicorn_memguard.conf"]
SLACK = 1 * MiB
RETIRED = re.compile(r"retiring worker pid=(\d+) age=([\d.]+)s")


def retirements(server: Gunicorn) -> list[tuple[int, float]]:
    return [(int(pid), float(age)) for pid, age in RETIRED.findall(server.log())]


CLIENTS = 6


# Requests whose allocations can land past the ceiling: a sync worker's is the one request that
# crossed it (it checks after each). A gthread worker's 4 threads each check after their own
# request, so up to 4 allocations land between two checks; and once it stops accepting it still
# serves every connection it had accepted ahead of its threads: up to the other clients' (5).
@pytest.mark.parametrize(
    ("worker", "in_flight"),
    [
        (["-k", "sync"], 1),
        pytest.param(
            ["-k", "gunicorn_memguard.workers.ThreadWorker", "--threads", "4"], 4 + CLIENTS - 1, marks=INTERNALS
        ),
    ],
    ids=["sync", "gthread"],
)
def test_a_fast_leak_at_the_defaults_never_passes_the_ceiling(worker, in_flight, baseline_rss, tmp_path):
    """Only the limit set: workers leaking 2 MiB a request as fast as the load goes (a worker fills
    its headroom in a fraction of a second, before any replacement boots) are retired young — no
    minimum lifetime — and none is ever seen above the limit plus the requests in flight."""
    leak, limit = 2 * MiB, baseline_rss + 40 * MiB
    env = {"MEMGUARD_MAX_MEMORY": f"{limit}B", "MEMGUARD_METRIC": "rss"}
    with Gunicorn([*HOOKS, *worker, "apps.leaky:app"], env, tmp_path / "g.log", workers=2) as server:
        server.wait_ready()
        watch = MemoryWatch(server, metric="rss")
        result = load(server, "/leak?kib=2048", requests=400, concurrency=CLIENTS)
        watch.stop()
        retired = retirements(server)

    assert result.failed == [], f"failed requests: {result.failed[:10]}"
    needed = 400 * leak / (limit - baseline_rss)
    assert len(retired) >= needed / 2, f"{len(retired)} retirements for ~{needed:.0f} headrooms leaked"
    assert min(age for _, age in retired) < 5, "a young worker is retired too"
    bound = limit + in_flight * leak + SLACK
    peak = max(watch.peak.values())
    assert peak <= bound, f"peak {peak / MiB:.1f} MiB > ceiling {limit / MiB:.1f} + {in_flight} requests in flight"
    print(f"{len(retired)} retirements (~{needed:.0f} needed), peak {peak / MiB:.1f} MiB, bound {bound / MiB:.1f} MiB")


def test_a_worker_at_the_ceiling_does_not_wait_for_its_turn(baseline_rss, tmp_path):
    """One retirement at a time, spawn-first, replacements that take 1 s to boot: while one worker
    is being replaced the other reaches the ceiling too — it goes at once (drain-first), so the
    bound holds, and the log says so."""
    leak, limit = 1 * MiB, baseline_rss + 40 * MiB
    env = {"MEMGUARD_MAX_MEMORY": f"{limit}B", "MEMGUARD_METRIC": "rss", "SLOWBOOT_SECONDS": "1"}
    with Gunicorn([*HOOKS, "apps.slowboot:app"], env, tmp_path / "g.log", workers=2) as server:
        server.wait_ready(timeout=60)
        watch = MemoryWatch(server, metric="rss")
        result = load(server, "/leak?kib=1024", requests=600, concurrency=4, timeout=90)
        watch.stop()
        log = server.log()

    assert result.failed == [], f"failed requests: {result.failed[:10]}"
    assert "while waiting for its turn: drain-first" in log, "no worker reached the ceiling while waiting"
    assert "it drains first" in log, "the master did not count a drain-first"
    assert "left before its turn came" not in log, "a worker that retired itself is reported as died"
    peak = max(watch.peak.values())
    assert peak <= limit + leak + SLACK, f"peak {peak / MiB:.1f} MiB > ceiling {limit / MiB:.1f} + one request"


def test_recycling_goes_on_past_the_retirement_rate(baseline_rss, tmp_path):
    """A fast leak retiring workers far above MEMGUARD_MAX_RETIREMENTS: one warning with the rate,
    no breaker, and recycling keeps going after the warning."""
    limit = baseline_rss + 24 * MiB
    env = {"MEMGUARD_MAX_MEMORY": f"{limit}B", "MEMGUARD_METRIC": "rss", "MEMGUARD_MAX_RETIREMENTS": "1/1h"}
    with Gunicorn([*HOOKS, "apps.leaky:app"], env, tmp_path / "g.log", workers=2) as server:
        server.wait_ready()
        result = load(server, "/leak?kib=1024", requests=400, concurrency=4)
        log = server.log()

    assert result.failed == []
    warnings = [line for line in log.splitlines() if "more than MEMGUARD_MAX_RETIREMENTS" in line]
    assert len(warnings) == 1, warnings
    assert "CRASH-LOOP" not in log and "paused" not in log
    after = log[log.index(warnings[0]) :]
    assert after.count("retiring worker pid=") >= 2, "recycling stopped after the warning"


@pytest.mark.parametrize(
    "env",
    [{"MEMGUARD_MAX_MEMORY": "8MiB"}, {"MEMGUARD_HARD_MAX_MEMORY": "1MiB"}],
    ids=["limit-below-baseline", "hard-limit-1MiB"],
)
def test_an_app_that_starts_above_its_limit_gets_one_error_and_no_fork_storm(env, tmp_path):
    """Every fresh worker is already over its limit: one CRASH-LOOP error, then retirements spaced
    by the backoff (10 s, then 20 s: at most two within 25 s from the first), the server answering
    all along, and no worker growing past 1.1 x a fresh one's size (nothing here leaks)."""
    env = {**env, "MEMGUARD_METRIC": "rss", "MEMGUARD_CHECK_INTERVAL": "200ms"}
    with Gunicorn([*HOOKS, "apps.leaky:app"], env, tmp_path / "g.log", workers=2) as server:
        server.wait_ready()
        watch = MemoryWatch(server, metric="rss")
        poll(lambda: server.log_lines("CRASH-LOOP BREAKER"), 10, what="the crash-loop error")
        result = load(server, "/", requests=500, concurrency=2, pace=20, timeout=60)  # 25 s
        watch.stop()
        log = server.log()

    assert result.failed == [], f"failed requests: {result.failed[:10]}"
    assert log.count("CRASH-LOOP BREAKER") == 1
    retired = [m.start() for m in re.finditer("retiring worker pid=", log)]
    assert len(retired) <= 2, f"{len(retired)} retirements in ~25 s: the backoff allows 2 (at 0 s and 10 s)"
    fresh = min(watch.peak.values())
    assert max(watch.peak.values()) <= 1.1 * fresh + SLACK


@INTERNALS  # spawn-first raises gunicorn's worker count from its arbiter loop
def test_predictive_spawn_first_has_the_replacement_ready_in_time(baseline_rss, tmp_path):
    """No jitter (the soft limit is the ceiling: no band to wait in), a 0.3 s boot and a leak that
    fills a worker in ~4 s: the master starts each replacement before its worker gets there, so the
    worker stops accepting at its limit with the replacement already serving — two workers serve
    at every 20 ms sample, none drains first, and the bound is the limit plus one request. The two
    workers leak alike and, without jitter, reach their limit together: two turns let both have
    their replacement early."""
    leak, limit = 256 * 1024, baseline_rss + 40 * MiB
    env = {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_METRIC": "rss",
        "MEMGUARD_JITTER": "0%",
        "MEMGUARD_MAX_CONCURRENT_RETIREMENTS": "2",
        "SLOWBOOT_SECONDS": "0.3",
    }
    with Gunicorn([*HOOKS, "apps.slowboot:app"], env, tmp_path / "g.log", workers=2) as server:
        server.wait_ready(timeout=60)
        fleet, watch = FleetWatch(server), MemoryWatch(server, metric="rss")
        poll(lambda: fleet.min_serving <= 2, 10, what="both workers serving")
        result = load(server, "/leak?kib=256&s=0.01", requests=1600, concurrency=4, pace=80, timeout=60)
        fleet.stop(), watch.stop()
        log = server.log()

    assert result.failed == []
    early = log.count("starting its replacement now")
    assert early >= 4, f"only {early} replacements started ahead of their worker's limit"
    assert "drains first" not in log
    assert fleet.min_serving >= 2, f"only {fleet.min_serving} of 2 workers serving at times"
    peak = max(watch.peak.values())
    assert peak <= limit + leak + SLACK, f"peak {peak / MiB:.1f} MiB > limit {limit / MiB:.1f} + one request"
