"""The crash-loop breaker's tests (``policy/breaker.py``) and the pause it shares with every
worker (``shared/limits.py``), across a real fork."""

from __future__ import annotations

import os

from gunicorn_memguard.policy.breaker import RetirementRate, starts_near_limit, starts_well_below
from gunicorn_memguard.shared.limits import PAUSE_BASELINE, PAUSE_RATE, SharedLimits


def test_shared_budget_crosses_fork():
    budget = SharedLimits()
    pid = os.fork()
    if pid == 0:
        budget.set_limits(100, 200)
        budget.pause_if_running(float("inf"), PAUSE_BASELINE, 1.0)
        os._exit(0)
    os.waitpid(pid, 0)
    assert budget.limits() == (100, 200)
    assert budget.paused() == (float("inf"), PAUSE_BASELINE)
    assert not budget.pause_if_running(50.0, PAUSE_RATE, 1.0), "already paused: the second trip stays quiet"


def test_starts_near_limit_and_resets_only_well_below():
    assert starts_near_limit(90, 100) and starts_near_limit(150, 100)
    assert not starts_near_limit(89, 100) and not starts_near_limit(10**9, None)
    assert starts_well_below(74, 100) and not starts_well_below(80, 100), "hysteresis wider than the jitter"


def test_retirement_rate_trips_above_its_count_per_worker_and_recovers():
    rate = RetirementRate(count=2, per=600)
    assert [rate.record(t, workers=2) for t in (0, 10, 20, 30)] == [None] * 4
    assert rate.record(40, workers=2) == 600  # the 5th in 10 min: paused until the 1st leaves the window
    assert rate.record(700, workers=2) is None  # only 20..700 minus expired: back under
