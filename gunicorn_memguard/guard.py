"""The per-worker guard: measure, ask the policy, retire once, and bound the drain.

It is fed from two places: after every request (a ~2 µs RSS read), and from a real OS thread on
a timer, so a worker stuck in a long request or sitting idle is still seen. Whatever goes wrong
inside memguard is logged once and the worker keeps serving: the guard must never be the thing
that loses a request.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from typing import Any, Callable

from .events import retirement_line
from .policy import KEEP, Action, Sample, Verdict, build_policy
from .probes.memory import MemoryProbe, ProbeError
from .retire import Retire
from .scoreboard import Scoreboard, State
from .settings import Settings
from .units import format_size

# A USS/PSS read costs 0.4-17 ms; from the request path, do one at most this often unless an
# estimate says a limit may have been crossed.
EXACT_READ_MIN_GAP = 1.0
# How long past graceful_timeout the guard waits before it ends a drain that will not finish.
DRAIN_MARGIN = 1.0
# Exit code of a worker whose drain overran: not 3 or 4, which make gunicorn's master halt.
DRAIN_OVERRUN_EXIT = 1
# While waiting for the master's go-ahead, how often the sampler looks for it (an 8-byte read).
GRANT_POLL = 0.05

StartThread = Callable[[Callable[[], None]], None]


def start_os_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="memguard-sampler", daemon=True).start()


class Guard:
    def __init__(
        self,
        worker: Any,
        settings: Settings,
        retire: Retire,
        log: Any,
        scoreboard: Scoreboard | None,
        slot: int | None,
        start_thread: StartThread = start_os_thread,
        coordinated: bool = False,
    ) -> None:
        self.worker = worker
        self.settings = settings
        self.retire = retire
        self.log = log
        self.scoreboard = scoreboard
        self.slot = slot if scoreboard is not None else None
        self.pid = os.getpid()
        self.born = time.monotonic()
        self.born_wall = time.time()
        self.probe = MemoryProbe()
        self.policy, self.limit = build_policy(
            metric=settings.metric,
            soft=settings.max_memory,
            hard=settings.hard_max_memory,
            jitter=settings.jitter,
            min_lifetime=settings.min_lifetime,
            born=self.born,
            rng=random.Random(),  # gunicorn reseeds per worker; jitter must differ per worker
        )
        self.retiring: Verdict | None = None
        self.retire_started = 0.0
        self._lock = threading.Lock()
        self._last_exact = -EXACT_READ_MIN_GAP
        self._last_exact_rss = 0
        self._last_exact_value = 0
        self._broken = False
        self._stop = threading.Event()
        self._next_sample = 0.0
        # With a coordinator in the master, a soft retirement waits its turn (serving meanwhile).
        self.coordinated = coordinated and self.slot is not None
        self.waiting: Verdict | None = None
        if self.slot is not None:
            self.scoreboard.start(self.slot, self.pid, self.born_wall, self.limit or 0)
        if self.coordinated:
            self._wake_master()  # a replacement the master waits for is ready now
        start_thread(self._run_sampler)

    # -- feeding ------------------------------------------------------------------------
    def after_request(self) -> None:
        """The request-boundary check: one RSS read unless a limit is in reach."""
        if self.retiring is None and not self._broken:
            if self.waiting is not None:
                self._take_grant()
            self._check(from_timer=False)

    def _run_sampler(self) -> None:
        self._check(from_timer=True)  # so the master knows a baseline even if the worker dies young
        while not self._stop.wait(GRANT_POLL if self.waiting and not self.retiring else self.settings.check_interval):
            if self.retiring is None:
                if self.coordinated:
                    self._take_grant()  # also a master's own call, e.g. the server-wide budget
                if not self._broken and self.retiring is None and self._sample_due():
                    self._check(from_timer=True)
            elif time.monotonic() > self.retire_started + self.worker.cfg.graceful_timeout + DRAIN_MARGIN:
                self._overrun()

    def _check(self, from_timer: bool) -> None:
        try:
            verdict = self._judge(from_timer)
        except ProbeError as exc:
            self._degrade(f"cannot read memory ({exc})")
            return
        except Exception as exc:  # noqa: BLE001 - a memguard bug must not take the worker down
            self._degrade(f"internal error {exc!r}")
            return
        if verdict.action is Action.RETIRE and self.coordinated:
            self._wait_turn(verdict)
        elif verdict.retires:
            self._start_retirement(verdict)

    def _judge(self, from_timer: bool) -> Verdict:
        now = time.monotonic()
        rss = self.probe.rss()
        metric = self.settings.metric
        if metric == "rss":
            sample = Sample(now, rss)
        elif self.policy.clears(rss):
            sample = Sample(now, rss, exact=False)  # RSS bounds USS and PSS from above
        elif from_timer or now - self._last_exact >= EXACT_READ_MIN_GAP or not self.policy.clears(self._estimate(rss)):
            self._last_exact, self._last_exact_rss = now, rss
            self._last_exact_value = self.probe.read(metric)
            sample = Sample(now, self._last_exact_value)
        else:
            return KEEP  # far enough from the limits; the next exact read comes soon
        if from_timer and self.slot is not None:  # the master's view may lag one check_interval
            self.scoreboard.sample(self.slot, time.time(), sample.value, rss, self.requests)
        with self._lock:
            if self.retiring is not None:
                return KEEP
            verdict = self.policy.judge(sample)
            if verdict.action is Action.RETIRE_NOW or (verdict.retires and not self.coordinated):
                self.retiring = verdict
                self.retire_started = now
        return verdict

    def _estimate(self, rss: int) -> int:
        """USS/PSS now, estimated without reading smaps: the last exact value plus RSS growth
        since (new pages of a growing worker are private). Near a limit it triggers an exact read."""
        return self._last_exact_value + max(0, rss - self._last_exact_rss)

    # -- acting -------------------------------------------------------------------------
    @property
    def requests(self) -> int:
        return int(getattr(self.worker, "nr", 0))

    def _start_retirement(self, verdict: Verdict) -> None:
        self.log.warning(
            retirement_line(
                pid=self.pid,
                age=self.retire_started - self.born,
                requests=self.requests,
                metric=self.settings.metric,
                value=verdict.value,
                limit=verdict.limit,
                reason=verdict.reason,
                detail=verdict.detail,
            )
        )
        if self.slot is not None:
            self.scoreboard.retiring(self.slot, time.time(), verdict.reason)
        try:
            self.retire()
        except Exception as exc:  # noqa: BLE001
            self.log.error("memguard: could not start a graceful stop of worker %s (%r); it keeps serving", self.pid, exc)

    def _sample_due(self) -> bool:
        """While waiting, the sampler wakes every GRANT_POLL but measures once per check_interval."""
        now = time.monotonic()
        if now < self._next_sample:
            return False
        self._next_sample = now + self.settings.check_interval
        return True

    def _wait_turn(self, verdict: Verdict) -> None:
        """Over the soft limit: ask the master for a turn and keep serving until it grants one."""
        with self._lock:
            if self.retiring is not None:
                return
            first = self.waiting is None
            self.waiting = verdict
            # Only the first time, and not over a grant: the master owns the state from here on.
            if first and self.scoreboard.state(self.slot) is not State.GRANTED:
                self.scoreboard.waiting(self.slot, verdict.value, verdict.reason)
        if first:
            self.log.info(
                "memguard: worker pid=%s is over its limit (%s); serving on until the master gives it a turn "
                "to retire", self.pid, verdict.detail,
            )
            self._wake_master()

    def _take_grant(self) -> None:
        """Start the retirement the master granted, if it has."""
        if self.scoreboard.state(self.slot) is not State.GRANTED:
            return
        with self._lock:
            if self.retiring is not None:
                return
            view = self.scoreboard.read(self.slot)
            verdict = self.waiting or Verdict(
                Action.RETIRE, view.reason, f"the master's call, {self.settings.metric} {format_size(view.value)}",
                view.value, self.limit or 0,
            )
            self.retiring, self.retire_started = verdict, time.monotonic()
        self._start_retirement(verdict)

    def _wake_master(self) -> None:
        """SIGCHLD makes gunicorn's arbiter run a pass of its loop now instead of within 1 s."""
        try:
            if os.getppid() == self.worker.ppid:
                os.kill(self.worker.ppid, signal.SIGCHLD)
        except (OSError, AttributeError):
            pass

    def _overrun(self) -> None:
        self.log.error(
            "memguard: worker pid=%s did not finish draining within graceful_timeout=%gs; exiting now "
            "(requests still in flight are cut off)",
            self.pid,
            self.worker.cfg.graceful_timeout,
        )
        if self.slot is not None:
            self.scoreboard.set_state(self.slot, State.OVERRAN)
        logging.shutdown()
        os._exit(DRAIN_OVERRUN_EXIT)

    def _degrade(self, why: str) -> None:
        self._broken = True
        self.log.error("memguard: %s; worker %s keeps serving without a memory guard", why, self.pid)

    def worker_exited(self) -> None:
        """gunicorn's exit path ran. A retiring worker can still hang here (gthread joins its
        pool threads at exit), so the sampler keeps bounding the drain until the process ends."""
        if self.retiring is None:
            self._stop.set()
        if self.slot is not None:
            self.scoreboard.set_state(self.slot, State.EXITED)
