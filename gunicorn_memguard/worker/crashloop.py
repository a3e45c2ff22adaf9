"""The worker's side of the crash-loop breaker (the rules are in ``policy/breaker.py``).

A fresh worker's first exact reading says whether workers start at or near their limit; every
retirement then asks whether it is worth making now, or must wait for the server-wide backoff.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ..policy import Verdict, breaker
from ..shared.limits import SharedLimits
from ..units import format_size


class CrashLoop:
    def __init__(self, shared: SharedLimits | None, metric: str, log: Any, on_trip: Callable[[str], None]) -> None:
        self.shared = shared
        self.metric = metric
        self.log = log
        self.on_trip = on_trip  # reports the trip to the event log and statsd
        self.baseline: int | None = None
        self._deferred_said = False
        self._wait_until = 0.0  # monotonic: no need to ask the shared backoff before then

    def first_reading(self, baseline: int, limit: int | None) -> None:
        """Trip the breaker if this worker starts at or near its limit; reset it if well below."""
        self.baseline = baseline
        if self.shared is None or limit is None:
            return
        near, below = breaker.starts_near_limit(baseline, limit), breaker.starts_well_below(baseline, limit)
        changed = self.shared.fresh_worker(baseline, near, below)
        pid, size = os.getpid(), format_size(baseline)
        if changed is True:
            self.log.error(
                "memguard: CRASH-LOOP BREAKER: worker pid=%s starts at %s=%s, already %.0f%% of its limit %s: "
                "retiring it would only fork another worker as big. Until a worker starts below %.0f%% of its "
                "limit, a worker is retired at once only when it grows past %s (%g x a fresh one), any other "
                "retirement waits for a backoff of %gs doubling up to %gs. Raise MEMGUARD_MAX_MEMORY well above "
                "%s, or make the app load less at start-up.",
                pid, self.metric, size, 100 * baseline / limit, format_size(limit), 100 * breaker.RESET_RATIO,
                format_size(breaker.bound(0, baseline)), breaker.WORTH, breaker.FIRST_DELAY, breaker.MAX_DELAY,
                size,
            )  # fmt: skip
            self.on_trip(f"starts at {self.metric}={baseline}, limit {limit}")
        elif changed is False:
            self.log.warning(
                "memguard: crash-loop breaker reset: worker pid=%s starts at %s=%s, below %.0f%% of its limit %s",
                pid, self.metric, size, 100 * breaker.RESET_RATIO, format_size(limit),
            )  # fmt: skip

    def admit(self, verdict: Verdict) -> bool:
        """True if this retirement may go now; False if the backoff defers it (the worker serves on
        and asks again at its next sample)."""
        shared = self.shared
        if shared is None or not shared.crash_loop():
            return True
        fresh = shared.fresh_baseline()
        if breaker.worth_replacing(verdict.value, fresh):
            return True
        if time.monotonic() < self._wait_until:
            return False  # the request path does not take the shared lock while it surely waits
        wait = shared.admit(time.time())
        self._wait_until = time.monotonic() + min(wait, 1.0)
        if wait <= 0:
            self._deferred_said = False
            return True
        if not self._deferred_said:
            self._deferred_said = True
            self.log.warning(
                "memguard: crash loop: worker pid=%s is over its limit (%s) but a fresh worker starts at %s; "
                "its retirement waits %.0fs (backoff). It is retired at once past %s.",
                os.getpid(), verdict.detail, format_size(fresh), wait,
                format_size(breaker.bound(verdict.limit, fresh)),
            )  # fmt: skip
        return False
