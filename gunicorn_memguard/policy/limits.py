"""Absolute limits: the hard limit (at once) and the jittered soft limit (after strikes)."""

from __future__ import annotations

import random

from ..units import format_size
from .verdict import Action, Sample, Verdict


def draw_limit(limit: int, jitter: float, rng: random.Random) -> int:
    """Spread a worker's effective limit uniformly in ``[limit*(1-jitter), limit]``.

    Drawn once per worker so identically leaking workers reach their limits at different
    times instead of all retiring together.
    """
    return int(limit * (1.0 - rng.uniform(0.0, jitter)))


class HardLimit:
    """Past the hard limit a worker goes at once: one sample is enough, age does not matter."""

    def __init__(self, limit: int, metric: str) -> None:
        self.limit = limit
        self.metric = metric

    def observe(self, sample: Sample) -> Verdict | None:
        if sample.value <= self.limit:
            return None
        return Verdict(
            Action.RETIRE_NOW,
            "hard_limit",
            f"{self.metric} {format_size(sample.value)} > hard limit {format_size(self.limit)}",
            sample.value,
            self.limit,
        )


class SoftLimit:
    """Over the soft limit on ``strikes`` consecutive samples, and old enough, a worker retires.

    Consecutive strikes ignore a lone spike caught mid-request that is gone by the next sample;
    the minimum lifetime keeps a worker that boots big from being recycled in a tight loop.
    """

    def __init__(self, limit: int, metric: str, born: float, min_lifetime: float, strikes: int = 2) -> None:
        self.limit = limit
        self.metric = metric
        self.born = born
        self.min_lifetime = min_lifetime
        self.strikes = strikes
        self._over = 0

    def observe(self, sample: Sample) -> Verdict | None:
        if sample.value <= self.limit:
            self._over = 0
            return None
        self._over += 1
        if self._over < self.strikes or sample.time - self.born < self.min_lifetime:
            return None
        return Verdict(
            Action.RETIRE,
            "soft_limit",
            f"{self.metric} {format_size(sample.value)} > limit {format_size(self.limit)}",
            sample.value,
            self.limit,
        )
