"""The growth-rate monitor on synthetic traces over simulated days (RESEARCH §3–§4 shapes).

Samples every 30 s with the default window (90 min), grace (10 min) and interval (30 s).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from gunicorn_memguard.policy import Action, Growth, Sample, build_policy
from gunicorn_memguard.policy.growth import GrowthMonitor

MiB = 2**20
HOUR = 3600.0
STEP = 30.0
DAYS = 3
LIMIT = 25 * MiB / HOUR  # MEMGUARD_MAX_GROWTH=25MiB/h

Trace = Callable[[random.Random], Iterator[tuple[float, int]]]


def monitor(max_rate: float = LIMIT) -> GrowthMonitor:
    return GrowthMonitor(max_rate, window=90 * 60, grace=10 * 60, interval=30, born=0.0, metric="uss")


def noise(rng: random.Random, t: float) -> float:
    """GC sawtooth (+20 MiB over 5 min, then back) plus up to 3 MiB of per-request noise."""
    return 20 * MiB * ((t % 300) / 300) + rng.uniform(0, 3 * MiB)


def flat(rng: random.Random, days: float = DAYS) -> Iterator[tuple[float, int]]:
    t = 0.0
    while t < days * 86400:
        yield t, int(100 * MiB + noise(rng, t))
        t += STEP


def warm_up(rng: random.Random) -> Iterator[tuple[float, int]]:
    """Caches fill: +300 MiB in the first 5 minutes, then flat."""
    for t, v in flat(rng):
        yield t, v + int(300 * MiB * min(t / 300, 1.0))


def slow_warm_up(rng: random.Random) -> Iterator[tuple[float, int]]:
    """A cache that fills over an hour at 60 MiB/h after the grace period, then stays flat."""
    for t, v in flat(rng):
        yield t, v + int(60 * MiB * min(max(t - 600, 0) / HOUR, 1.0))


def steps(rng: random.Random) -> Iterator[tuple[float, int]]:
    """A big request every 3 h leaves a permanent 50 MiB step (16.7 MiB/h on average, but
    50 MiB in one 90-minute window reads as 33 MiB/h to a plain slope estimator)."""
    for t, v in flat(rng):
        yield t, v + int(50 * MiB * (t // (3 * HOUR)))


def fragmentation(rng: random.Random) -> Iterator[tuple[float, int]]:
    """Big requests (50–500 MiB) about every 30 min; each leaves behind 40 % of the largest one so
    far, as fragmented heap does: the floor ratchets up in a few one-off steps, then stays."""
    level = 0
    for t, v in flat(rng):
        if rng.random() < STEP / 1800:
            level = max(level, int(rng.randint(50, 500) * MiB * 0.4))
        yield t, v + level


def linear_leak(rate: float) -> Trace:
    def trace(rng: random.Random) -> Iterator[tuple[float, int]]:
        for t, v in flat(rng):
            yield t, v + int(rate * t)

    return trace


def lumpy_leak(rng: random.Random) -> Iterator[tuple[float, int]]:
    """50 MiB/h on average, in lumps: every 5 minutes, a 30 % chance of a 13.9 MiB lump."""
    level = 0.0
    for t, v in flat(rng):
        if t % 300 == 0 and rng.random() < 0.3:
            level += 50 * MiB / 12 / 0.3
        yield t, v + int(level)


def first_alarm(trace: Trace, seed: int, max_rate: float = LIMIT) -> float | None:
    mon = monitor(max_rate)
    for t, v in trace(random.Random(seed)):
        verdict = mon.observe(Sample(t, v))
        if verdict is not None:
            assert verdict.action is Action.RETIRE and verdict.reason == "growth_rate"
            return t
    return None


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
