"""The growth-rate monitor on synthetic traces over simulated days (``bench/traces.py``): what is
not a leak (flat, warm-up, one-off steps, fragmentation) is left alone, steady and lumpy leaks are
caught.

Samples every 30 s with the default window (90 min), grace (10 min) and interval (30 s).
"""

from __future__ import annotations

import random

import pytest

from bench.traces import (
    DAYS,
    HOUR,
    LIMIT,
    MiB,
    first_alarm,
    flat,
    fragmentation,
    linear_leak,
    lumpy_leak,
    monitor,
    slow_warm_up,
    steps,
    warm_up,
)
from gunicorn_memguard.policy import Growth, Sample, build_policy


@pytest.mark.parametrize("trace", [flat, warm_up, slow_warm_up, steps, fragmentation], ids=lambda f: f.__name__)
def test_no_growth_retirement_on_what_is_not_a_leak(trace):
    alarms = [first_alarm(trace, seed) for seed in range(10)]
    assert alarms == [None] * 10


@pytest.mark.parametrize(
    ("trace", "max_rate", "caught_within"),
    [
        (linear_leak(50 * MiB / HOUR), LIMIT, 1.75 * HOUR),  # twice the limit
        (linear_leak(50 * MiB / HOUR), 40 * MiB / HOUR, 1.75 * HOUR),  # 1.25 x the limit
        (lumpy_leak, LIMIT, 8 * HOUR),
    ],
    ids=["linear-2x", "linear-1.25x", "lumpy-2x"],
)
def test_leaks_are_caught(trace, max_rate, caught_within):
    alarms = [first_alarm(trace, seed, max_rate) for seed in range(20)]
    assert all(a is not None and a <= caught_within for a in alarms), [a and a / 60 for a in alarms]
    # grace (10 min) + one full window (90 min) + confirmations: 101 min; README states these
    assert sorted(alarms)[len(alarms) // 2] <= 2.5 * HOUR


def test_a_leak_just_below_the_limit_is_left_alone():
    assert [first_alarm(linear_leak(20 * MiB / HOUR), seed) for seed in range(5)] == [None] * 5


def test_rss_bounds_never_feed_the_trend():
    mon = monitor()
    for t, v in linear_leak(500 * MiB / HOUR)(random.Random(0)):
        assert mon.observe(Sample(t, v, exact=False)) is None
        if t > DAYS * 86400 / 6:
            break


def test_the_reason_names_the_rate_and_the_window():
    mon = monitor()
    for t, v in linear_leak(100 * MiB / HOUR)(random.Random(1)):
        verdict = mon.observe(Sample(t, v))
        if verdict is not None:
            break
    assert verdict is not None
    assert "over the last 90m" in verdict.detail and "> max 25.0 MiB/h" in verdict.detail
    rate = float(verdict.detail.split("grew ")[1].split(" MiB/h")[0])
    assert 90 <= rate <= 110


def test_the_guard_is_asked_for_one_exact_sample_per_interval_after_grace():
    mon = monitor()
    assert not mon.wants_sample(599.0)
    assert mon.wants_sample(600.0)
    mon.observe(Sample(600.0, 100 * MiB))
    assert not mon.wants_sample(629.0) and mon.wants_sample(630.0)


def test_policy_with_growth_retires_and_a_paused_policy_does_not():
    growth = Growth(max_rate=LIMIT, window=90 * 60, grace=600, interval=30)
    for paused in (False, True):
        policy, _ = build_policy(
            metric="uss", soft=None, hard=None, jitter=0.0, min_lifetime=0, born=0, rng=random.Random(0), growth=growth
        )
        policy.paused = paused
        verdicts = [policy.judge(Sample(t, v)) for t, v in linear_leak(100 * MiB / HOUR)(random.Random(2))]
        assert any(v.retires for v in verdicts) is not paused
