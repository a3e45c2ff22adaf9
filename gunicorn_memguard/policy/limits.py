"""Absolute limits: the ceiling (at once) and the jittered soft limit (after strikes)."""

from __future__ import annotations

import random

from ..units import format_size
from .verdict import Action, Reason, Sample, Verdict


def draw_limit(limit: int, jitter: float, rng: random.Random) -> int:
    """Spread a worker's effective limit uniformly in ``[limit*(1-jitter), limit]``.

    Drawn once per worker so identically leaking workers reach their limits at different
    times instead of all retiring together.
    """
    return int(limit * (1.0 - rng.uniform(0.0, jitter)))


class _Absolute:
    """What the absolute limits share: no trend, no exact samples of their own."""

    limit: int

    def wants_sample(self, now: float) -> bool:
        return False

    @property
    def rate(self) -> float | None:
        return None


class Ceiling(_Absolute):
    """The limit the user set, which no worker serves past: one sample over it is enough, and
    neither age, nor a turn, nor a replacement booting makes it wait.

    It is ``MEMGUARD_HARD_MAX_MEMORY`` when set (reason ``hard_limit``), else ``MEMGUARD_MAX_MEMORY``
    before jitter (reason ``ceiling``); the jittered soft limit lies at or below it."""

    def __init__(self, limit: int, metric: str, reason: Reason) -> None:
        self.limit = limit
        self.metric = metric
        self.reason = reason

    def observe(self, sample: Sample) -> Verdict | None:
        if sample.value <= self.limit:
            return None
        name = "hard limit" if self.reason is Reason.HARD_LIMIT else "ceiling"
        return Verdict(
            Action.RETIRE_NOW,
            self.reason,
            f"{self.metric} {format_size(sample.value)} > {name} {format_size(self.limit)}",
            sample.value,
            self.limit,
        )

    def retarget(self, soft: int | None, ceiling: int | None) -> None:
        if ceiling is not None:
            self.limit = ceiling


class Allowance(_Absolute):
    """This worker's share of the server-wide budget (``MEMGUARD_MAX_TOTAL_MEMORY``): what it held
    when the master last measured the total, plus an equal share of the room left. The master sets
    it each time it measures; past it the worker stops accepting at once, so the workers together
    cannot pass the budget between two of the master's measurements, however fast they grow. 0
    until the master has set one."""

    def __init__(self, metric: str) -> None:
        self.limit = 0
        self.metric = metric

    def observe(self, sample: Sample) -> Verdict | None:
        if not self.limit or sample.value <= self.limit:
            return None
        return Verdict(
            Action.RETIRE_NOW,
            Reason.TOTAL_MEMORY,
            f"{self.metric} {format_size(sample.value)} > its share of max_total_memory {format_size(self.limit)}",
            sample.value,
            self.limit,
        )

    def retarget(self, soft: int | None, ceiling: int | None) -> None:
        pass  # set by the master, not derived from the worker's own limits


class SoftLimit(_Absolute):
    """Over the soft limit on ``strikes`` consecutive samples, and old enough, a worker retires.

    Consecutive strikes ignore a lone spike caught mid-request that is gone by the next sample.
    A minimum lifetime (off by default) only ever delays this graceful retirement: the ceiling
    above it still holds.
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
            Reason.SOFT_LIMIT,
            f"{self.metric} {format_size(sample.value)} > limit {format_size(self.limit)}",
            sample.value,
            self.limit,
        )

    def retarget(self, soft: int | None, ceiling: int | None) -> None:
        if soft is not None:
            self.limit = soft
