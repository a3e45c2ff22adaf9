"""Which requests end without a memory check.

A check after every request costs ~3 µs (a statm read and the Python around it): 2 % of a
hello-world request on a keep-alive connection. The bound does not need it while the limits are
far. After each check the gate lets the next requests end unchecked while both hold:

- less than ``GAP`` has passed since that check, and
- they cannot reach the nearest limit even if each grew by twice the largest growth per request
  this worker has shown (measured between checks, never less than ``MIN_STEP``).

Near a limit that second condition lets no request through: each one is checked, as before. So
the only overshoot the gate adds is that of a growth per request more than twice anything the
worker showed before, and only within one ``GAP`` of the last check: at most the worker's growth
rate × 5 ms (1.3 MiB at 256 KiB per request and 1,000 requests a second).

Cost of an unchecked request: one decrement and one clock read (~0.1 µs); a gated check every
5 ms is ~0.2 % of one CPU's time at most.
"""

from __future__ import annotations

GAP = 0.005  # seconds: the longest a request-boundary check is put off
MARGIN = 2  # assume requests may grow twice as fast as the fastest this worker has shown
MIN_STEP = 64 * 1024  # bytes per request assumed even in a worker that has not grown yet
UNLIMITED = 1 << 62  # no absolute limit to reach: only the clock gates
NEVER = float("inf")


class RequestGate:
    """Read by the request path (``left``, ``until``); set after each check by ``reopen``.

    Several threads (gthread) may decrement ``left`` at once and lose a decrement: a few more
    requests pass, still within ``GAP``."""

    __slots__ = ("left", "until", "step", "_rss", "_requests")

    def __init__(self) -> None:
        self.left = 0  # requests that may still end unchecked
        self.until = 0.0  # ... before this time (time.monotonic())
        self.step = 0.0  # the largest RSS growth per request seen between two checks (bytes)
        self._rss = 0
        self._requests = -1

    def reopen(self, now: float, rss: int, estimate: int, requests: int, floor: int | None) -> None:
        """After a check that keeps the worker serving: its RSS, its metric's estimate, its request
        count and the nearest absolute limit (None: none)."""
        if 0 <= self._requests < requests:
            self.step = max(self.step, (rss - self._rss) / (requests - self._requests))
        self._rss, self._requests = rss, requests
        if floor is None:
            left = UNLIMITED
        else:
            left = max(0, int((floor - estimate) // (MARGIN * max(self.step, MIN_STEP))))
        self.left, self.until = left, now + GAP

    def close(self) -> None:
        """Check after every request (waiting for the master's turn)."""
        self.left, self.until = 0, 0.0

    def never(self) -> None:
        """No more request-boundary checks (retiring, or the guard is off)."""
        self.left, self.until = UNLIMITED, NEVER
