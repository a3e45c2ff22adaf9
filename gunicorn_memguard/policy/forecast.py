"""Short-term growth: how soon a worker reaches its soft limit at the rate it grows now.

The coordinator starts a replacement that long before it is needed (predictive spawn-first), so
that a worker leaking fast stops accepting at its soft limit with the new worker already serving.
This looks seconds ahead, not hours: the growth-rate limit (``growth.py``) judges slow leaks.
"""

from __future__ import annotations

import math
from collections import deque

SPAN = 2.0  # seconds of history the rate is taken over
MIN_SPAN = 0.25  # less history than this says nothing
GAP = 0.05  # keep at most one point per 50 ms: a request-path sample costs one comparison


class Forecast:
    def __init__(self) -> None:
        self._points: deque[tuple[float, int]] = deque()

    def add(self, now: float, value: int) -> None:
        points = self._points
        if points and now - points[-1][0] < GAP:
            return
        points.append((now, value))
        while now - points[0][0] > SPAN:
            points.popleft()

    def reset(self, now: float, value: int) -> None:
        """Start again from here (memory dropped: a reclaim gave some back)."""
        self._points.clear()
        self._points.append((now, value))

    def rate(self) -> float | None:
        """Bytes per second over the last ``SPAN``, or None with too little history."""
        if len(self._points) < 2:
            return None
        (t0, v0), (t1, v1) = self._points[0], self._points[-1]
        return (v1 - v0) / (t1 - t0) if t1 - t0 >= MIN_SPAN else None

    def eta(self, value: int, target: int) -> float:
        """Seconds until ``value`` reaches ``target`` at the current rate; inf if it does not grow."""
        rate = self.rate()
        if value >= target:
            return 0.0
        if rate is None or rate <= 0:
            return math.inf
        return (target - value) / rate
