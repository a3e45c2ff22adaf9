"""The crash-loop breaker, pure: when is a retirement worth making?

A high retirement rate where each fresh worker starts far below its limit is a fast leak that
recycling is handling: it never stops recycling (a rate above ``MEMGUARD_MAX_RETIREMENTS`` only
warns). A crash loop is a fresh worker that *starts* at or near its limit: retiring it forks
another just as big (celery/celery#4125, pm2#839). Then a retirement is made at once only if the
worker has grown well past what a fresh one starts at (its replacement will be smaller); any other
retirement — soft, hard, ceiling or the server-wide budget's — waits for a backoff that doubles
from 10 s to 5 minutes, like Kubernetes' CrashLoopBackOff. So no setting makes a fork storm, and a
worker in a crash loop still never serves past ``max(ceiling, WORTH × a fresh worker's size)``.
"""

from __future__ import annotations

from collections import deque

# A fresh worker whose first exact reading is at or above this share of its soft limit would be
# retired as soon as it may be, and its replacement too.
BASELINE_RATIO = 0.9
# It resets only for a worker starting below this share: the gap is wider than the default 10 %
# jitter, so identical workers with different draws do not trip and reset it in turn.
RESET_RATIO = 0.75
# In a crash loop, a worker this much bigger than a fresh one is worth replacing at once.
WORTH = 1.1
FIRST_DELAY = 10.0  # seconds between useless retirements, doubling ...
MAX_DELAY = 300.0  # ... up to this


def starts_near_limit(baseline: int, limit: int | None) -> bool:
    return limit is not None and baseline >= BASELINE_RATIO * limit


def starts_well_below(baseline: int, limit: int | None) -> bool:
    return limit is not None and baseline < RESET_RATIO * limit


def worth_replacing(value: int, fresh: int) -> bool:
    """True if a replacement, starting at ``fresh`` bytes, would be clearly smaller."""
    return value > WORTH * fresh


def next_delay(delay: float) -> float:
    return FIRST_DELAY if delay <= 0 else min(MAX_DELAY, 2 * delay)


def bound(ceiling: int, fresh: int) -> int:
    """What a worker may reach in a crash loop before it retires regardless of the backoff."""
    return max(ceiling, int(WORTH * fresh))


class RetirementRate:
    """Counts graceful (soft-limit and growth) retirements in a sliding window, to warn when they
    come faster than ``count`` per worker per ``per`` seconds."""

    def __init__(self, count: int, per: float) -> None:
        self.count = count
        self.per = per
        self._times: deque[float] = deque()

    def record(self, now: float, workers: int) -> int | None:
        """Record one retirement; return how many happened within the window if that is over the
        rate, else None."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.per:
            self._times.popleft()
        return len(self._times) if len(self._times) > self.count * max(workers, 1) else None
