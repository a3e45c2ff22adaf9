"""One worker's policy: ask each monitor in order, the first verdict wins."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .growth import GrowthMonitor
from .limits import HardLimit, SoftLimit, draw_limit
from .verdict import KEEP, Action, Monitor, Sample, Verdict


class WorkerPolicy:
    """Ask each monitor in order; the first verdict wins.

    While ``paused`` (the crash-loop breaker is tripped), graceful retirements are not acted on;
    the hard limit's retire-now still is.
    """

    def __init__(self, monitors: Sequence[Monitor], floor: int | None) -> None:
        self.monitors = tuple(monitors)
        self.floor = floor
        self.paused = False

    def judge(self, sample: Sample) -> Verdict:
        for monitor in self.monitors:
            verdict = monitor.observe(sample)
            if verdict is not None and not (self.paused and verdict.action is Action.RETIRE):
                return verdict
        return KEEP

    def clears(self, upper_bound: int) -> bool:
        """True if a reading this high cannot breach any absolute limit (the cheap path)."""
        return self.floor is None or upper_bound <= self.floor

    def wants_exact(self, now: float) -> bool:
        """True when a trend monitor needs an exact sample now, even far below the limits."""
        for monitor in self.monitors:
            wants = getattr(monitor, "wants_sample", None)  # only trend monitors have it
            if wants is not None and wants(now):
                return True
        return False

    def growth_rate(self) -> float | None:
        """The growth monitor's last measured floor rate (bytes/s), if it has one."""
        rates = [rate for m in self.monitors if (rate := getattr(m, "rate", None)) is not None]
        return rates[0] if rates else None

    def retarget(self, soft: int | None, hard: int | None) -> None:
        """Apply re-evaluated limits (e.g. a percentage limit after the worker count changed)."""

        for monitor in self.monitors:
            if isinstance(monitor, SoftLimit) and soft is not None:
                monitor.limit = soft
            elif isinstance(monitor, HardLimit) and hard is not None:
                monitor.limit = hard
            elif isinstance(monitor, GrowthMonitor):
                monitor.limit = soft or 0
        limits = [m.limit for m in self.monitors if isinstance(m, (SoftLimit, HardLimit))]
        self.floor = min(limits) if limits else None


@dataclass(frozen=True)
class Growth:
    """The growth-rate limit's settings, as the policy needs them."""

    max_rate: float  # bytes per second
    window: float
    grace: float
    interval: float


def build_policy(
    *,
    metric: str,
    soft: int | None,
    hard: int | None,
    jitter: float,
    min_lifetime: float,
    born: float,
    rng: random.Random,
    growth: Growth | None = None,
) -> tuple[WorkerPolicy, int | None]:
    """Build one worker's policy; returns it and the worker's effective soft limit."""

    monitors: list[Monitor] = []
    effective = draw_limit(soft, jitter, rng) if soft is not None else None
    if hard is not None:
        monitors.append(HardLimit(hard, metric))
    if effective is not None:
        monitors.append(SoftLimit(effective, metric, born, min_lifetime))
    if growth is not None:
        trend = GrowthMonitor(growth.max_rate, growth.window, growth.grace, growth.interval, born, metric)
        trend.limit = effective or 0
        monitors.append(trend)
    limits = [x for x in (effective, hard) if x is not None]
    return WorkerPolicy(monitors, min(limits) if limits else None), effective
