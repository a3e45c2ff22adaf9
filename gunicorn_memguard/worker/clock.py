"""The request gate's clock on a worker's event loop, so that requests far from the limits end
with no memguard code at all.

The gate lets requests end unchecked until its deadline (``until``) and its count (``left``)
run out (``gate.py``), but each request still runs the gate's comparison, and in a serving worker
that costs its cache misses: 1.2 % of a hello-world uvicorn worker's CPU (``python -m
bench.overhead``). On an event loop (uvicorn's asyncio loop, gevent's hub) a timer is cheap, so
the clock checks at the deadline instead, when a request ended since the last check or one is
still running (an idle worker is the sampler's), and meanwhile requests end through the worker's
own no-op (``each(False)``). It only does so while the count cannot run out first even at twice
the fastest request rate seen lately, and the deadline is at least ``MIN_GAP`` away; otherwise
(near a limit, waiting for a turn) every request goes through the gate, as before. So the bound
is that of the gate: until the deadline a worker cannot reach its nearest limit growing at
``MAX_RATE``.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Any

from .gate import MAX_GAP, NEVER, RequestGate

Later = Callable[[float, Callable[[], None]], object]  # run a callback on the loop after a delay


def _idle() -> bool:
    return False


class RequestClock:
    MIN_GAP = 0.01  # seconds: a timer for a shorter gap costs more than the requests it spares
    EARLY = 0.001  # seconds: a check this early is as good (a loop may run a timer a little early)
    RATE_MARGIN = 2  # assume requests may come twice as fast as the fastest lately
    RATE_DECAY = 0.8  # per tick: "lately" is about the last second

    def __init__(
        self,
        gate: RequestGate,
        later: Later,
        each: Callable[[bool], None],
        log: Any,
        busy: Callable[[], object] = _idle,
    ) -> None:
        self.gate, self.later, self.each, self.log, self.busy = gate, later, each, log, busy
        self.rate = 0.0  # requests per second, the fastest lately
        self._time = monotonic()
        self._requests = 0

    def start(self) -> None:
        self.later(MAX_GAP, self.tick)

    def tick(self) -> None:
        try:
            delay = self._tick()
            if delay is not None:
                self.later(delay, self.tick)
        except Exception as exc:  # noqa: BLE001 - a memguard bug must not reach the worker's loop
            self._each_checked()
            self.log.error("memguard: the request clock failed (%r); each request goes through the gate", exc)

    def _each_checked(self) -> None:
        try:
            self.each(True)
        except Exception:  # noqa: BLE001 - nothing more to fall back to: requests end as they do now
            pass

    def _tick(self) -> float | None:
        gate, now, requests = self.gate, monotonic(), self.gate.worker.nr
        if gate.until == NEVER:  # retiring, or the guard is off: nothing more to check
            self.each(True)
            return None
        if now >= gate.until - self.EARLY and (requests != gate.checked or self.busy()):
            gate.check()  # the guard's check; it regates
        elapsed = now - self._time
        if elapsed >= self.MIN_GAP:  # a shorter interval says little about the rate
            self.rate = max((requests - self._requests) / elapsed, self.rate * self.RATE_DECAY)
            self._time, self._requests = now, requests
        gap = gate.until - monotonic()
        timed = gap >= self.MIN_GAP and gate.left >= self.RATE_MARGIN * self.rate * gap
        self.each(not timed)
        return min(gap, MAX_GAP) if timed else MAX_GAP
