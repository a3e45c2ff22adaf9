"""The crash-loop breaker's two tests, pure: a fresh worker already at its limit, and soft
retirements coming faster than a rate. Recycling then only forks another worker just as big
(celery/celery#4125, pm2#839), so soft-limit recycling pauses; the hard limit still applies.
"""

from __future__ import annotations

from collections import deque

# A fresh worker whose first exact reading is at or above this share of its soft limit would be
# retired as soon as it may be, and its replacement too.
BASELINE_RATIO = 0.9
# It resets only for a worker starting below this share: the gap is wider than the default 10 %
# jitter, so identical workers with different draws do not trip and reset it in turn.
RESET_RATIO = 0.75


def starts_near_limit(baseline: int, limit: int | None) -> bool:
    return limit is not None and baseline >= BASELINE_RATIO * limit


def starts_well_below(baseline: int, limit: int | None) -> bool:
    return limit is not None and baseline < RESET_RATIO * limit


class RetirementRate:
    """Counts graceful (soft-limit and growth) retirements in a sliding window.

    Trips when more than ``count`` per worker happen within ``per`` seconds; the pause lasts
    until the oldest of them leaves the window, so at worst ``count`` per worker per ``per``
    happen while the cause persists.
    """

    def __init__(self, count: int, per: float) -> None:
        self.count = count
        self.per = per
        self._times: deque[float] = deque()

    def record(self, now: float, workers: int) -> float | None:
        """Record one retirement; return until when recycling must pause, or None."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.per:
            self._times.popleft()
        allowed = self.count * max(workers, 1)
        if len(self._times) <= allowed:
            return None
        return self._times[len(self._times) - allowed - 1] + self.per
