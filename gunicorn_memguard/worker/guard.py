"""The per-worker guard: measure, ask the policy, act once.

It is fed from two places: after requests (one RSS read, at most every 100 ms while the limits
are far, after every request near them: ``gate.py``), and from a real OS thread on a timer, so a
worker stuck in a long request or sitting idle is still seen. Over the ceiling a worker stops
accepting at once, whatever its age, its turn or a replacement booting; between its
soft limit and the ceiling it waits for the master's turn (coordinated recycling). Whatever goes
wrong inside memguard is logged once and the worker keeps serving: the guard must never be the
thing that loses a request.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import replace
from time import monotonic
from typing import Any

from ..policy import KEEP, Action, Sample, Verdict
from ..policy.forecast import Forecast
from ..probes.memory import ProbeError
from ..report.telemetry import Telemetry
from ..settings import Settings
from ..shared.limits import SharedLimits
from ..shared.scoreboard import Scoreboard
from ..shared.tracing import TraceSlots
from . import native
from .crashloop import CrashLoop
from .drain import Drain
from .forensics import Forensics
from .gate import RequestGate
from .limits import WorkerLimits
from .publish import Publisher
from .reading import Reader
from .reclaim import Reclaimer, freeze_inherited
from .retire import Retire
from .sampler import Cadence, start_os_thread
from .turns import WAIT_LINE, Turns

StartThread = Callable[[Callable[[], None]], None]


class Step(enum.Enum):
    """What the guard does with a verdict."""

    NONE = "none"  # nothing now (retiring already, or deferred by the crash-loop backoff)
    KEEP = "keep"
    RETIRE = "retire"
    WAIT = "wait"  # ask the master for a turn
    WOULD = "would"  # dry run: report it


class Guard:
    def __init__(
        self,
        worker: Any,
        settings: Settings,
        retire: Retire,
        log: Any,
        scoreboard: Scoreboard | None,
        slot: int | None,
        *,
        telemetry: Telemetry | None = None,
        shared: SharedLimits | None = None,
        coordinated: bool = False,
        tracing: TraceSlots | None = None,
        start_thread: StartThread = start_os_thread,
    ) -> None:
        self.worker = worker
        self.settings = settings
        self.log = log
        self.pid = os.getpid()
        self.born = time.monotonic()
        self.shared = shared
        allowance = None if scoreboard is None or slot is None else (lambda: scoreboard.allowance(slot))
        self.limits = WorkerLimits(settings, shared, self.born, allowance)
        self.policy = self.limits.policy
        self.reader = Reader(settings.metric)
        self.forecast = Forecast()
        self.reclaimer = Reclaimer(settings.reclaim_interval) if settings.reclaim else None
        self.publisher = Publisher(scoreboard, slot, telemetry, log, settings.metric)
        self.crash_loop = CrashLoop(shared, settings.metric, log, self.publisher.breaker_trip)
        self.drain = Drain(worker, retire, log, scoreboard, slot)
        self.forensics = Forensics(settings, tracing, log, self.publisher)
        self.turns: Turns | None = None  # with a coordinator in the master, soft retirements wait their turn
        # a dry run takes no turns and asks for no spare: it only reports
        if coordinated and not settings.dry_run and scoreboard is not None and slot is not None:
            self.turns = Turns(worker, scoreboard, slot, settings.metric)
        self.retiring: Verdict | None = None
        self._reclaiming = False
        self._broken = False
        self.cadence = Cadence(settings.check_interval)
        self.gate = RequestGate(self._request_check, worker)
        # what a request runs (gunicorn's post_request hook, uvicorn's request tasks): the gate's own method
        self.after_request: Callable[..., None] = self.gate.request_ended
        # Shared with the sampler OS thread: unpatched primitives even under gevent.
        self._lock = native.allocate_lock()
        self._stop = native.StopFlag()
        freeze_inherited()
        if scoreboard is not None and slot is not None:
            scoreboard.start(slot, self.pid, time.time(), self.limit or 0)
        if self.turns is not None:
            self.turns.wake_master()  # a replacement the master waits for is ready now
        start_thread(self._run_sampler)

    @property
    def limit(self) -> int | None:
        """This worker's effective (jittered) soft limit."""
        return self.limits.soft

    @property
    def requests(self) -> int:
        return int(getattr(self.worker, "nr", 0))

    # -- feeding ------------------------------------------------------------------------
    def _request_check(self) -> None:
        """The request-boundary check, for the requests the gate does not let pass (``after_request``
        is the gate's): while the limits are far, most requests end with a comparison and a clock
        read; near them, each is checked."""
        try:
            if self.retiring is None and not self._broken:
                if self.turns is not None and self.turns.waiting is not None:
                    self._take_grant()
                self._check(from_timer=False)  # regates
            else:
                self.gate.never()
        except Exception as exc:  # noqa: BLE001 - a memguard bug must not reach the request
            self._degrade(f"internal error {exc!r}")
            self.gate.never()

    def _run_sampler(self) -> None:
        self._check(from_timer=True)  # so the master knows a baseline even if the worker dies young
        while not self._stop.wait(self.cadence.wait(self._polling())):
            if self.retiring is None:
                if self.turns is not None:
                    self._take_grant()  # also a master's own call, e.g. the server-wide budget
                if not self._broken and self.retiring is None and self.cadence.due():
                    self._check(from_timer=True)
            elif self.drain.overran():
                self.drain.cut()

    def _polling(self) -> bool:
        """Poll fast while a turn is near: waiting for a grant, or due soon."""
        turns = self.turns
        return self.retiring is None and turns is not None and (turns.waiting is not None or turns.due > 0)

    # -- judging ------------------------------------------------------------------------
    def _check(self, from_timer: bool) -> None:
        try:
            verdict, step = self._judge(from_timer)
        except ProbeError as exc:
            self._degrade(f"cannot read memory ({exc})")
            return
        except Exception as exc:  # noqa: BLE001 - a memguard bug must not take the worker down
            self._degrade(f"internal error {exc!r}")
            return
        if step is Step.RETIRE:
            self._start_retirement(verdict)
        elif step is Step.WAIT:
            self._wait_turn(verdict)
        elif step is Step.WOULD:
            self.publisher.would_retire(verdict, time.monotonic() - self.born, self.requests)
        elif step is Step.KEEP and self.turns is not None:
            self._expect()
        self._regate()

    def _regate(self) -> None:
        """After a check: how many of the next requests may end unchecked."""
        if self.retiring is not None or self._broken:
            self.gate.never()
        elif self.turns is not None and self.turns.waiting is not None:
            self.gate.close()
        else:
            reader = self.reader
            self.gate.reopen(monotonic(), reader.rss, reader.estimate(), self.requests, self.policy.floor)

    def _judge(self, from_timer: bool) -> tuple[Verdict, Step]:
        now = time.monotonic()
        if from_timer:
            self._sync_shared_limits()
        self.limits.sync_allowance()
        sample = self.reader.sample(now, self.policy, from_timer, want_exact=self.crash_loop.baseline is None)
        self.forensics.observe(self.reader.estimate(), self.policy.soft or self.policy.ceiling)
        if sample is None:
            return KEEP, Step.KEEP  # far enough from the limits; the next exact read comes soon
        self.forecast.add(now, sample.value)
        if from_timer:
            self._publish(sample)
        if self.crash_loop.baseline is None and sample.exact:
            self.crash_loop.first_reading(sample.value, self.limits.breaker_limit)
        with self._lock:
            if self.retiring is not None:
                return KEEP, Step.NONE
            verdict = self.policy.judge(sample)
            if self._reclaiming:  # another thread reclaims: only the ceiling is acted on meanwhile
                return self._step(verdict, now) if verdict.action is Action.RETIRE_NOW else (KEEP, Step.NONE)
            if self.reclaimer is None or self.settings.dry_run or not self.reclaimer.wanted(verdict, now):
                return self._step(verdict, now)
            self._reclaiming = True
        return self._reclaim(verdict)

    def _step(self, verdict: Verdict, now: float) -> tuple[Verdict, Step]:
        """Under the lock: what to do with a verdict, and the verdict acted on. Over the ceiling
        (retire-now) the worker goes at once, even while it waits for a turn (said in the verdict it
        retires on); a graceful retirement waits for the master's turn when a coordinator runs; in a
        crash loop, either may first have to wait for the backoff."""
        if not verdict.retires:
            return verdict, Step.KEEP
        if self.settings.dry_run:
            return verdict, Step.WOULD
        waiting = self.turns is not None and self.turns.waiting is not None
        if not waiting and not self.crash_loop.admit(verdict):
            return verdict, Step.NONE  # deferred: it serves on and asks again at its next sample
        if verdict.action is Action.RETIRE and self.turns is not None:
            return verdict, Step.WAIT
        if waiting:
            verdict = replace(verdict, detail=f"{verdict.detail}, while waiting for its turn: drain-first")
        self.retiring = verdict
        self.drain.begin(verdict, now)
        return verdict, Step.RETIRE

    def _expect(self) -> None:
        """Predictive spawn-first (``Turns.expect``), with the spare's lead from the master's boot times."""
        assert self.turns is not None
        if self.limit is not None and self.settings.spawn_first and self.shared is not None:
            self.turns.forecast(self.forecast, self.reader.estimate(), self.limit, self.shared.ready_time())

    def _sync_shared_limits(self) -> None:
        changed = self.limits.sync()
        if changed is not None:
            self.publisher.set_limit(self.limit)
            self.log.info("memguard: worker pid=%s %s", self.pid, changed)

    # -- reclaim before retiring ----------------------------------------------------------
    def _reclaim(self, verdict: Verdict) -> tuple[Verdict, Step]:
        """Try to get memory back; retire only if the worker is still over its soft limit."""
        assert self.reclaimer is not None
        try:
            took = self.reclaimer.run(time.monotonic())
            after = self.reader.exact(time.monotonic()).value
        except BaseException:
            self._reclaiming = False
            raise
        self.publisher.reclaimed(verdict.value, after, took, self.reclaimer.how)
        line, freed = self.reclaimer.describe(self.pid, self.settings.metric, verdict, after, took)
        with self._lock:
            self._reclaiming = False  # under the lock: no other check judges until this one has
            if self.retiring is not None:
                return KEEP, Step.NONE  # the ceiling was reached meanwhile: that retirement goes on
            now = time.monotonic()
            again = self.policy.judge(Sample(now, after))
            if not again.retires:
                self.log.info("%s; it keeps serving (next reclaim at most in %gs)", line, self.reclaimer.interval)
                self.forecast.reset(now, after)  # its growth starts again from here
                return KEEP, Step.KEEP
            self.log.info("%s; still over: retiring", line)
            verdict = replace(again, detail=f"{again.detail}, after a reclaim ({freed})")
            return self._step(verdict, now)

    # -- acting -------------------------------------------------------------------------
    def _publish(self, sample: Sample) -> None:
        self.publisher.publish(
            sample, self.reader, self.requests, sample.time - self.born, self.limit, self.policy.growth_rate(),
            self.settings.report_interval,
        )  # fmt: skip

    def _start_retirement(self, verdict: Verdict) -> None:
        age, requests = self.drain.started - self.born, self.requests
        self.drain.start(lambda: self.publisher.retirement(verdict, age, requests, dry_run=False))
        ceiling = self.policy.ceiling
        room = None if ceiling is None else ceiling - verdict.value
        self.forensics.retiring(room)  # after the drain began: its report never delays the retirement
        if self.turns is not None:
            self.turns.wake_master()  # it counts against the budget from now, and its replacement is due

    def _wait_turn(self, verdict: Verdict) -> None:
        """Over the soft limit: ask the master for a turn and keep serving until it grants one."""
        assert self.turns is not None
        with self._lock:
            if self.retiring is not None:
                return
            first = self.turns.wait(verdict)
        if first:
            self.log.info("memguard: worker pid=%s is over its limit (%s); %s", self.pid, verdict.detail, WAIT_LINE)

    def _take_grant(self) -> None:
        """Start the retirement the master granted, if it has."""
        assert self.turns is not None
        if not self.turns.granted():
            return
        with self._lock:
            if self.retiring is not None:
                return
            verdict = self.turns.granted_verdict(self.limit or 0)
            self.retiring = verdict
            self.drain.begin(verdict, time.monotonic())
        self._start_retirement(verdict)

    def _degrade(self, why: str) -> None:
        self._broken = True
        self.log.error("memguard: %s; worker %s keeps serving without a memory guard", why, self.pid)

    def worker_exited(self) -> None:
        """gunicorn's exit path ran. A retiring worker can still hang here (gthread joins its pool
        threads at exit), so the sampler keeps bounding the drain until the process ends."""
        if self.retiring is None:
            self._stop.set()
        self.drain.exited(self.requests)
