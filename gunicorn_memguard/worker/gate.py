"""Which requests end without a memory check.

A check costs ~10 µs when its code is in the CPU's caches and 100–170 µs when the request before it
has evicted them, as it has in a serving worker (measured in a gevent worker under load: median
114 µs): on hello world that is about 50 % of a request. Checking after every request is far more
than the bound needs while the limits are far. After each check the gate lets the next requests
end unchecked while both hold:

- less time has passed than the worker would need to reach its nearest limit growing at
  ``MAX_RATE`` (4 GiB/s, four times what one Python thread can allocate and touch here: 1.0 GiB/s),
  and never more than ``MAX_GAP``;
- they cannot reach that limit even if each grew by twice the largest growth per request this
  worker has shown (measured between checks, never less than ``MIN_STEP``).

Near a limit both conditions let no request through: each one is checked, as before. So a worker
goes past its limit between two checks only if it grows faster than ``MAX_RATE`` *and* its growth
per request more than doubles at once; otherwise the bound is that of a check after every request.
Far from the limits (410 MiB or more below the nearest) a worker is checked every 100 ms: ten cold
checks a second, ~0.1 % of a CPU. An unchecked request costs a comparison of the worker's own
request count (gunicorn's ``nr``, which it keeps anyway) and a clock read: no store, no new object.
Cold, that is 1.5–2.1 µs more than gunicorn's no-op hook; a countdown of the gate's own, which
allocated an int per request, cost 3.1–4.7 µs (``python -m bench.overhead``).

What a request runs is ``RequestGate.request_ended``, called as gunicorn's ``post_request`` hook
itself: in a serving worker the cost of a check that lets a request pass is that of the memory it
touches, not of its instructions (cold, a lookup of the guard through memguard's hook and runtime
cost 3.6 µs more than a no-op hook; the gate's own method 1.0 µs), so it touches only the gate.
memguard's uvicorn and gevent workers go further: while the conditions above leave room for a timer, their event loop
checks at ``until`` and requests end with no memguard code at all (``clock.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Any

MAX_RATE = 4 * 2**30  # bytes per second no worker is assumed to grow faster than
MAX_GAP = 0.1  # seconds: the longest a request-boundary check is put off
MARGIN = 2  # assume requests may grow twice as fast as the fastest this worker has shown
MIN_STEP = 64 * 1024  # bytes per request assumed even in a worker that has not grown yet
UNLIMITED = 1 << 62  # no absolute limit to reach: only the clock gates
NEVER = float("inf")


class RequestGate:
    """Read by the request path (``stop_at``, ``until``); set after each check by ``reopen``."""

    __slots__ = ("left", "stop_at", "until", "step", "check", "worker", "_rss", "checked")

    def __init__(self, check: Callable[[], None], worker: Any) -> None:
        self.left = 0  # requests that may end unchecked after the last check
        self.stop_at = 0  # ... so the request that brings the worker's count here is checked
        self.until = 0.0  # ... and any that ends after this time (time.monotonic())
        self.step = 0.0  # the largest RSS growth per request seen between two checks (bytes)
        self.check = check  # the guard's check after a request; it catches its own faults
        self.worker = worker  # its ``nr``: the requests it has served, counted by gunicorn (or uvicorn)
        self._rss = 0
        self.checked = -1  # the worker's request count at the last check

    def request_ended(self, worker: Any = None, req: Any = None, environ: Any = None, resp: Any = None) -> None:
        """A request ended: check, unless the gate lets it pass. gunicorn's ``post_request``
        signature, so that the hook can be this method itself (``hooks._bind_post_request``)."""
        if self.worker.nr >= self.stop_at or monotonic() >= self.until:
            self.check()

    def reopen(self, now: float, rss: int, estimate: int, requests: int, floor: int | None) -> None:
        """After a check that keeps the worker serving: its RSS, its metric's estimate, its request
        count and the nearest absolute limit (None: none)."""
        if 0 <= self.checked < requests:
            self.step = max(self.step, (rss - self._rss) / (requests - self.checked))
        self._rss, self.checked = rss, requests
        if floor is None:
            self.left, self.stop_at, self.until = UNLIMITED, UNLIMITED, now + MAX_GAP
            return
        headroom = max(0, floor - estimate)
        self.left = int(headroom // (MARGIN * max(self.step, MIN_STEP)))
        self.stop_at = requests + self.left
        self.until = now + min(MAX_GAP, headroom / MAX_RATE)

    def close(self) -> None:
        """Check after every request (waiting for the master's turn)."""
        self.left, self.stop_at, self.until = 0, 0, 0.0

    def never(self) -> None:
        """No more request-boundary checks (retiring, or the guard is off)."""
        self.left, self.stop_at, self.until = UNLIMITED, UNLIMITED, NEVER
