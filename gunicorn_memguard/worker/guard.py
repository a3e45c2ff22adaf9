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
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..policy import breaker
from ..policy.verdict import KEEP, Action, Sample, Verdict
from ..policy.worker import Growth, build_policy
from ..probes.memory import MemoryProbe, ProbeError
from ..report.lines import retirement_line
from ..report.telemetry import Telemetry
from ..settings import Settings
from ..shared.limits import PAUSE_BASELINE, PAUSE_NONE, SharedLimits
from ..shared.scoreboard import Scoreboard, State, encode_reasons
from ..units import format_size
from . import native
from .reclaim import Reclaimer
from .retire import Retire

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
    """The sampler must be a real OS thread: in a gevent worker a patched ``threading.Thread`` is a
    greenlet, which never runs while a handler is CPU-bound (so use the unpatched original there)."""
    if native.is_monkey_patched():
        native.start_thread(target)
    else:
        threading.Thread(target=target, name="memguard-sampler", daemon=True).start()


def _show(size: int | None) -> str:
    return "none" if size is None else format_size(size)


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
        telemetry: Telemetry | None = None,
        shared: SharedLimits | None = None,
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
        self.shared = shared
        # The master resolved the limits (percentages need the worker count) before this fork;
        # byte limits from the settings stand in if it could not.
        self._shared_seen = shared.limits() if shared is not None else (None, None)
        soft = self._shared_seen[0] or (settings.max_memory if isinstance(settings.max_memory, int) else None)
        hard = self._shared_seen[1] or (settings.hard_max_memory if isinstance(settings.hard_max_memory, int) else None)
        growth = None
        if settings.max_growth is not None:
            growth = Growth(
                settings.max_growth, settings.growth_window, settings.growth_grace, settings.growth_interval
            )
        self.policy, self.limit = build_policy(
            metric=settings.metric,
            soft=soft,
            hard=hard,
            jitter=settings.jitter,
            min_lifetime=settings.min_lifetime,
            born=self.born,
            rng=random.Random(),  # gunicorn reseeds per worker; jitter must differ per worker
            growth=growth,
        )
        self._jitter_factor = self.limit / soft if self.limit and soft else 1.0
        self.reclaimer = Reclaimer(settings.reclaim_interval) if settings.reclaim else None
        self._reclaiming = False
        self._baseline: int | None = None  # the first exact reading, for the crash-loop breaker
        self.retiring: Verdict | None = None
        self.retire_started = 0.0
        # Shared with the sampler OS thread: unpatched primitives even under gevent.
        self._lock = native.allocate_lock()
        self._last_exact = -EXACT_READ_MIN_GAP
        self._last_exact_rss = 0
        self._last_exact_value = 0
        self._broken = False
        self._stop = native.StopFlag()
        self.telemetry = telemetry
        self._last_report = -float("inf")
        self._dry_reasons: set[str] = set()  # dry run: reasons already reported
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
            elif self._drain_overran(margin=DRAIN_MARGIN):
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
        if not verdict.retires:
            return
        if self.settings.dry_run:
            self._dry_retirement(verdict)
        elif verdict.action is Action.RETIRE and self.coordinated:
            self._wait_turn(verdict)
        else:
            self._start_retirement(verdict)

    def _judge(self, from_timer: bool) -> Verdict:
        now = time.monotonic()
        if from_timer:
            self._sync_shared_limits()
        rss = self.probe.rss()
        metric = self.settings.metric
        wants_exact = from_timer and (self._baseline is None or self.policy.wants_exact(now))
        if metric == "rss":
            sample = Sample(now, rss)
        elif self.policy.clears(rss) and not wants_exact:
            sample = Sample(now, rss, exact=False)  # RSS bounds USS and PSS from above
        elif from_timer or now - self._last_exact >= EXACT_READ_MIN_GAP or not self.policy.clears(self._estimate(rss)):
            self._last_exact, self._last_exact_rss = now, rss
            self._last_exact_value = self.probe.read(metric)
            sample = Sample(now, self._last_exact_value)
        else:
            return KEEP  # far enough from the limits; the next exact read comes soon
        if from_timer:  # the master's view may lag one check_interval
            self._record(sample, rss)
        if self._baseline is None and sample.exact:
            self._baseline = sample.value
            self._check_baseline()
        with self._lock:
            if self.retiring is not None or self._reclaiming:
                return KEEP
            verdict = self.policy.judge(sample)
            reclaim = (
                verdict.reason == "soft_limit"
                and not self.settings.dry_run
                and self.reclaimer is not None
                and self.reclaimer.due(now)
                and self.reclaimer.could_free(verdict.value - verdict.limit)
            )
            if reclaim:
                self._reclaiming = True
            elif (
                verdict.retires
                and not self.settings.dry_run
                and (verdict.action is Action.RETIRE_NOW or not self.coordinated)
            ):
                self.retiring = verdict
                self.retire_started = now
        return self._reclaim(verdict) if reclaim else verdict

    # -- leak-aware policy: shared limits, crash-loop breaker, reclaim before retiring ----
    def _sync_shared_limits(self) -> None:
        """Pick up limits the master re-resolved (worker count changed) and the breaker's state."""
        if self.shared is None:
            return
        soft, hard = self.shared.limits()
        if (soft, hard) != self._shared_seen:
            self._shared_seen = (soft, hard)
            was, self.limit = self.limit, int(soft * self._jitter_factor) if soft else None
            self.policy.retarget(self.limit, hard)
            if self.slot is not None:
                self.scoreboard.set_limit(self.slot, self.limit or 0)
            self.log.info(
                "memguard: worker pid=%s now has limit %s (was %s), hard limit %s: the master re-resolved them",
                self.pid,
                _show(self.limit),
                _show(was),
                _show(hard),
            )
            self._check_baseline()
        self.policy.paused = self.shared.paused()[0] > time.time()

    def _check_baseline(self) -> None:
        """Trip the breaker if this worker starts at or near its limit; reset it if it does not."""
        if self.shared is None or self._baseline is None or self.limit is None:
            return
        if breaker.starts_near_limit(self._baseline, self.limit):
            self.policy.paused = True
            if not self.shared.pause_if_running(float("inf"), PAUSE_BASELINE, time.time()):
                return  # already paused: one loud line, not one per worker
            self.log.error(
                "memguard: CRASH-LOOP BREAKER: worker pid=%s starts at %s=%s, already %.0f%% of its limit %s: "
                "retiring it would only fork another worker as big. Recycling for the soft limit and growth "
                "rate is paused until a worker starts below %.0f%% of its limit (the hard limit still applies). "
                "Raise MEMGUARD_MAX_MEMORY well above %s, or make the app load less at start-up.",
                self.pid,
                self.settings.metric,
                format_size(self._baseline),
                100 * self._baseline / self.limit,
                format_size(self.limit),
                100 * breaker.RESET_RATIO,
                format_size(self._baseline),
            )
            detail = f"starts at {self.settings.metric}={self._baseline}, limit {self.limit}"
            self._tell(lambda telemetry: telemetry.breaker_trip(pid=self.pid, why="baseline", detail=detail))
        elif breaker.starts_well_below(self._baseline, self.limit) and self.shared.paused()[1] == PAUSE_BASELINE:
            self.shared.pause(0.0, PAUSE_NONE)
            self.policy.paused = False
            self.log.warning(
                "memguard: crash-loop breaker reset: worker pid=%s starts at %s=%s, below %.0f%% of its limit %s; "
                "recycling for the soft limit resumes",
                self.pid,
                self.settings.metric,
                format_size(self._baseline),
                100 * breaker.RESET_RATIO,
                format_size(self.limit),
            )

    def _reclaim(self, verdict: Verdict) -> Verdict:
        """Try to get memory back; retire only if the worker is still over its soft limit."""
        assert self.reclaimer is not None
        try:
            took = self.reclaimer.run(time.monotonic())
            after = self.probe.read(self.settings.metric)
        except BaseException:
            self._reclaiming = False
            raise
        now = time.monotonic()
        if self.slot is not None and after < verdict.value:
            self.scoreboard.add_reclaimed(self.slot, verdict.value - after)
        how = self.reclaimer.how
        self._tell(
            lambda telemetry: telemetry.reclaim(
                pid=self.pid, worker=self.slot, before=verdict.value, after=after, took=took, how=how
            )
        )
        with self._lock:
            self._reclaiming = False
            again = self.policy.judge(Sample(now, after))
            freed = f"reclaimed {format_size(verdict.value - after)}" if after < verdict.value else "reclaimed nothing"
            line = (
                f"memguard: {freed} in {took * 1000:.0f} ms "
                f"({how}) in worker pid={self.pid}: {self.settings.metric} "
                f"{format_size(verdict.value)} -> {format_size(after)}, limit {format_size(verdict.limit)}"
            )
            if not again.retires:
                self.log.info("%s; it keeps serving (next reclaim at most in %gs)", line, self.reclaimer.interval)
                return KEEP
            self.log.info("%s; still over: retiring", line)
            verdict = replace(again, detail=f"{again.detail}, after a reclaim ({freed})")
            if verdict.action is Action.RETIRE_NOW or not self.coordinated:
                self.retiring, self.retire_started = verdict, now
            return verdict

    def _record(self, sample: Sample, rss: int) -> None:
        """Publish a timer sample to the scoreboard. Every report_interval, also read the metric
        exactly if the sample was only a bound (one smaps read per interval, in this thread), so
        that metrics and the event log show the real USS/PSS, and report it to telemetry."""
        now = time.time()
        report_due = sample.time - self._last_report >= self.settings.report_interval
        if report_due and not sample.exact:
            self._last_exact, self._last_exact_rss = sample.time, rss
            self._last_exact_value = self.probe.read(self.settings.metric)
            exact: Sample | None = Sample(sample.time, self._last_exact_value)
        else:
            exact = sample if sample.exact else None
        growth = self.policy.growth_rate()
        if self.slot is not None:
            self.scoreboard.sample(self.slot, now, sample.value, rss, self.requests)
            if exact is not None:
                self.scoreboard.exact(self.slot, now, exact.value)
            if growth is not None:
                self.scoreboard.set_growth(self.slot, growth)
        if report_due and exact is not None:
            self._last_report = sample.time
            self._tell(
                lambda telemetry: telemetry.sample(
                    pid=self.pid,
                    worker=self.slot,
                    age=sample.time - self.born,
                    requests=self.requests,
                    metric=self.settings.metric,
                    value=exact.value,
                    rss=rss,
                    limit=self.limit,
                    growth=growth,
                )
            )

    def _tell(self, report: Callable[[Telemetry], None]) -> None:
        """Telemetry is best effort: a fault there turns telemetry off (logged once), never the guard."""
        telemetry = self.telemetry
        if telemetry is None:
            return
        try:
            report(telemetry)
        except Exception as exc:  # noqa: BLE001
            self.telemetry = None
            self.log.error(
                "memguard: reporting failed in worker %s (%r); it carries on without the event log and statsd",
                self.pid,
                exc,
            )

    def _estimate(self, rss: int) -> int:
        """USS/PSS now, estimated without reading smaps: the last exact value plus RSS growth
        since (new pages of a growing worker are private). Near a limit it triggers an exact read."""
        return self._last_exact_value + max(0, rss - self._last_exact_rss)

    # -- acting -------------------------------------------------------------------------
    @property
    def requests(self) -> int:
        return int(getattr(self.worker, "nr", 0))

    def _report_retirement(self, verdict: Verdict, age: float, dry_run: bool) -> None:
        figures = dict(
            pid=self.pid,
            age=age,
            requests=self.requests,
            metric=self.settings.metric,
            value=verdict.value,
            limit=verdict.limit,
            reason=verdict.reason,
            detail=verdict.detail,
        )
        self.log.warning(retirement_line(**figures, dry_run=dry_run))
        self._tell(lambda telemetry: telemetry.retirement(dry_run=dry_run, worker=self.slot, **figures))

    def _dry_retirement(self, verdict: Verdict) -> None:
        """Dry run: report what would have been retired, once per worker per reason; retire nothing."""
        with self._lock:
            if verdict.reason in self._dry_reasons:
                return
            self._dry_reasons.add(verdict.reason)
        self._report_retirement(verdict, time.monotonic() - self.born, dry_run=True)
        if self.slot is not None:
            self.scoreboard.would_retire(self.slot, encode_reasons(self._dry_reasons))

    def _start_retirement(self, verdict: Verdict) -> None:
        self._report_retirement(verdict, self.retire_started - self.born, dry_run=False)
        if self.slot is not None:
            self.scoreboard.retiring(self.slot, time.time(), verdict.reason)
        try:
            self.retire()
        except Exception as exc:  # noqa: BLE001
            self.log.error(
                "memguard: could not start a graceful stop of worker %s (%r); it keeps serving", self.pid, exc
            )

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
                "memguard: worker pid=%s is over its limit (%s); serving on until the master gives it a turn to retire",
                self.pid,
                verdict.detail,
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
                Action.RETIRE,
                view.reason,
                f"the master's call, {self.settings.metric} {format_size(view.value)}",
                view.value,
                self.limit or 0,
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
        # A drain can outlive graceful_timeout and still end before the sampler's bound: gevent's
        # worker cuts its own off (its loop checks once a second), gthread's can finish late.
        overran = self.retiring is not None and self._drain_overran(margin=0.0)
        if overran:
            self.log.error(
                "memguard: worker pid=%s did not finish draining within graceful_timeout=%gs; it exits "
                "%.1fs into its retirement",
                self.pid,
                self.worker.cfg.graceful_timeout,
                time.monotonic() - self.retire_started,
            )
        if self.slot is not None:
            self.scoreboard.set_requests(self.slot, self.requests)  # the exit line's count, not the last sample's
            self.scoreboard.set_state(self.slot, State.OVERRAN if overran else State.EXITED)

    def _drain_overran(self, margin: float) -> bool:
        return time.monotonic() > self.retire_started + self.worker.cfg.graceful_timeout + margin
