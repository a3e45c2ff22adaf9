"""The crash-loop breaker and its backoff, pure and through the shared mapping across fork."""

import math
import os

from gunicorn_memguard.policy import breaker
from gunicorn_memguard.policy.breaker import RetirementRate, starts_near_limit, starts_well_below
from gunicorn_memguard.policy.forecast import Forecast
from gunicorn_memguard.shared.limits import PAUSE_BASELINE, SharedLimits


def test_the_breaker_state_crosses_fork_and_trips_once():
    shared = SharedLimits()
    pid = os.fork()
    if pid == 0:
        shared.set_limits(100, 200)
        shared.fresh_worker(95, near_limit=True, well_below=False)
        os._exit(0)
    os.waitpid(pid, 0)
    assert shared.limits() == (100, 200)
    assert shared.paused() == (float("inf"), PAUSE_BASELINE) and shared.fresh_baseline() == 95
    assert shared.fresh_worker(96, near_limit=True, well_below=False) is None, "already open: the second stays quiet"
    assert shared.trips() == 1
    assert shared.fresh_worker(50, near_limit=False, well_below=True) is False, "a small fresh worker closes it"
    assert not shared.crash_loop() and shared.fresh_baseline() == 50


def test_starts_near_limit_and_resets_only_well_below():
    assert starts_near_limit(90, 100) and starts_near_limit(150, 100)
    assert not starts_near_limit(89, 100) and not starts_near_limit(10**9, None)
    assert starts_well_below(74, 100) and not starts_well_below(80, 100), "hysteresis wider than the jitter"


def test_retirement_rate_is_over_above_its_count_per_worker_and_recovers():
    rate = RetirementRate(count=2, per=600)
    assert [rate.record(t, workers=2) for t in (0, 10, 20, 30)] == [None] * 4
    assert rate.record(40, workers=2) == 5  # the 5th in 10 min: over 2 per worker, said with the count
    assert rate.record(700, workers=2) is None  # only 20..700 minus expired: back under


def test_the_backoff_doubles_from_10s_to_5_minutes():
    delays, delay = [], 0.0
    for _ in range(8):
        delay = breaker.next_delay(delay)
        delays.append(delay)
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]


def test_admit_spaces_retirements_by_the_backoff():
    shared = SharedLimits()
    admitted = [t for t in range(0, 400) if shared.admit(float(t)) <= 0]
    assert admitted == [0, 10, 30, 70, 150, 310], "at most 2 in the first 25 s, 5 in the first 5 minutes"


def test_a_worker_grown_past_a_fresh_one_is_worth_replacing_at_once():
    assert breaker.worth_replacing(111, 100) and not breaker.worth_replacing(110, 100)
    assert breaker.bound(1 * 2**20, 30 * 2**20) == 33 * 2**20, "a 1 MiB ceiling under a 30 MiB app"
    assert breaker.bound(200, 100) == 200, "the ceiling when it is the larger"


def test_forecast_projects_a_steady_leak_and_ignores_flat_memory():
    leak = Forecast()
    for i in range(40):  # 10 MiB/s, a point every 50 ms
        leak.add(i * 0.05, 100 * 2**20 + i * 512 * 1024)
    assert math.isclose(leak.rate() or 0, 10 * 2**20, rel_tol=0.01)
    assert math.isclose(leak.eta(150 * 2**20, 160 * 2**20), 1.0, rel_tol=0.01)
    flat = Forecast()
    for i in range(40):
        flat.add(i * 0.05, 100 * 2**20 + (i % 2) * 2**20)  # sawtooth, no trend
    assert flat.eta(100 * 2**20, 200 * 2**20) > 10
    assert Forecast().eta(1, 2) == math.inf, "no history: no forecast"
