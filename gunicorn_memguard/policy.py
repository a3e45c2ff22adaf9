"""The pure decision core: memory samples and time in, a verdict out.

No I/O, no clock, no gunicorn: the guard feeds samples, the policy judges. Monitors each judge
one concern (absolute limits here; growth rate elsewhere) and the policy asks them in order, the
most urgent first, like GitLab's memory watchdog: monitors judge, handlers act.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence

from .units import format_size


class Action(enum.Enum):
    KEEP = "keep"
    RETIRE = "retire"  # graceful; may wait its turn
    RETIRE_NOW = "retire_now"  # past the hard limit: graceful stop at once, no waiting


class Sample(NamedTuple):
    """One reading of the enforced metric (a NamedTuple: one is made per request).

    ``exact`` is False when ``value`` is only an upper bound (RSS standing in for USS/PSS):
    a bound below a limit proves the metric is below it, but trend monitors must not use it.
    """

    time: float  # seconds on a monotonic clock
    value: int  # bytes
    exact: bool = True


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""  # short machine key, e.g. "soft_limit"
    detail: str = ""  # the figures behind it, for the log line
    value: int = 0
    limit: int = 0

    @property
    def retires(self) -> bool:
        return self.action is not Action.KEEP


KEEP = Verdict(Action.KEEP)

# Every Verdict.reason, in a fixed order: the scoreboard keeps a worker's dry-run reasons as bits.
REASONS = ("hard_limit", "soft_limit", "growth_rate")


class Monitor(Protocol):
    def observe(self, sample: Sample) -> Verdict | None:
        """Return a verdict to act on, or None to defer to the other monitors."""


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
        from .growth import GrowthMonitor  # growth builds on this module's types

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
    from .growth import GrowthMonitor

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
