"""One worker's policy: ask each monitor in order, the first verdict wins."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .growth import GrowthMonitor
from .limits import Allowance, Ceiling, SoftLimit, draw_limit
from .verdict import KEEP, Action, Monitor, Reason, Sample, Verdict


class WorkerPolicy:
    """Ask each monitor in order; the first verdict wins.

    While ``paused`` (dry-run tools may set it), graceful retirements are not acted on; the
    ceiling's retire-now still is.
    """

    def __init__(self, monitors: Sequence[Monitor], soft: int | None, ceiling: int | None) -> None:
        self.monitors = tuple(monitors)
        self.soft = soft
        self.ceiling = ceiling
        self.allowance = next((m for m in self.monitors if isinstance(m, Allowance)), None)
        self.paused = False
        self._floor: int | None = None
        self._refloor()

    @property
    def floor(self) -> int | None:
        """The lowest absolute limit: a reading at or below it needs no closer look (kept up to
        date by ``allow`` and ``retarget``: it is read on every check)."""
        return self._floor

    def _refloor(self) -> None:
        share = self.allowance.limit if self.allowance is not None else 0
        limits = [x for x in (self.soft, self.ceiling, share or None) if x is not None]
        self._floor = min(limits) if limits else None

    def judge(self, sample: Sample) -> Verdict:
        for monitor in self.monitors:
            verdict = monitor.observe(sample)
            if verdict is not None and not (self.paused and verdict.action is Action.RETIRE):
                return verdict
        return KEEP

    def clears(self, upper_bound: int) -> bool:
        """True if a reading this high cannot breach any absolute limit (the cheap path)."""
        floor = self._floor
        return floor is None or upper_bound <= floor

    def wants_exact(self, now: float) -> bool:
        """True when a trend monitor needs an exact sample now, even far below the limits."""
        return any(monitor.wants_sample(now) for monitor in self.monitors)

    def growth_rate(self) -> float | None:
        """The growth monitor's last measured floor rate (bytes/s), if it has one."""
        return next((m.rate for m in self.monitors if m.rate is not None), None)

    def allow(self, share: int) -> None:
        """The master's latest share of the server-wide budget for this worker (0: none yet)."""
        if self.allowance is not None and self.allowance.limit != share:
            self.allowance.limit = share
            self._refloor()

    def retarget(self, soft: int | None, ceiling: int | None) -> None:
        """Apply re-evaluated limits (e.g. a percentage limit after the worker count changed)."""
        self.soft = soft if soft is not None else self.soft
        self.ceiling = ceiling if ceiling is not None else self.ceiling
        for monitor in self.monitors:
            monitor.retarget(soft, ceiling)
        self._refloor()


@dataclass(frozen=True)
class Growth:
    """The growth-rate limit's settings, as the policy needs them."""

    max_rate: float  # bytes per second
    window: float
    grace: float
    interval: float


def ceiling_of(soft: int | None, hard: int | None) -> tuple[int | None, Reason]:
    """The limit no worker serves past: the hard limit if set, else the soft limit before jitter."""
    if hard is not None:
        return hard, Reason.HARD_LIMIT
    return soft, Reason.CEILING


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
    budget: bool = False,
) -> tuple[WorkerPolicy, int | None]:
    """Build one worker's policy; returns it and the worker's effective (jittered) soft limit."""
    monitors: list[Monitor] = []
    effective = draw_limit(soft, jitter, rng) if soft is not None else None
    ceiling, reason = ceiling_of(soft, hard)
    if ceiling is not None:
        monitors.append(Ceiling(ceiling, metric, reason))
    if budget:
        monitors.append(Allowance(metric))
    if effective is not None:
        monitors.append(SoftLimit(effective, metric, born, min_lifetime))
    if growth is not None:
        trend = GrowthMonitor(growth.max_rate, growth.window, growth.grace, growth.interval, born, metric)
        trend.limit = effective or 0
        monitors.append(trend)
    return WorkerPolicy(monitors, effective, ceiling), effective
