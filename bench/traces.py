"""Synthetic memory traces over simulated days, and when the growth monitor first fires on one.

Shared by the unit tests (tests/unit/test_growth.py) and the benchmark (``python -m bench.policy``);
needs neither pytest nor a server. Samples every 30 s; the monitor uses the default window
(90 min), grace (10 min) and interval (30 s).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from gunicorn_memguard.policy import Action, Sample
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
