"""How each worker ended, said once by the master: the kernel's word on the death (peeked before
gunicorn reaps it), the cgroup's OOM-kill counter, the worker's scoreboard slot; and the
crash-loop breaker's count of graceful retirements."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

from ..probes.cgroup import MemoryCgroup, read_oom_kill_count
from ..report.lines import Death, exit_report, signal_name
from ..report.telemetry import Telemetry
from ..shared.scoreboard import SLOT_ATTR, State
from ..units import format_duration

if TYPE_CHECKING:
    from .runtime import Runtime


# How long an OOM kill the counter showed may explain a SIGKILLed worker reported after it: the
# kernel counts a kill when it picks its victim, before the master can reap it.
OOM_CREDIT_SECONDS = 10.0


class OomWatch:
    """Was this SIGKILL the kernel OOM killer's? From the cgroup's ``oom_kill`` counter.

    The counter says how many, not whom: two workers OOM-killed together raise it by two before
    the master reaps either. So each kill it counts is a credit that explains one SIGKILLed worker
    reported within ``OOM_CREDIT_SECONDS``; one more than the counter shows is of unknown cause."""

    def __init__(self, cgroup: MemoryCgroup | None) -> None:
        self.cgroup = cgroup
        self.count = read_oom_kill_count(cgroup) if cgroup is not None else None
        self._credits: list[float] = []  # when each kill not yet matched to a worker was counted

    def rose(self, now: float | None = None) -> bool | None:
        """True if an OOM kill not yet matched to a worker explains this one, False if not, None
        if there is no count."""
        if self.cgroup is None:
            return None
        count = read_oom_kill_count(self.cgroup)
        if count is None:
            return None
        now = time.monotonic() if now is None else now
        if self.count is not None and count > self.count:
            self._credits += [now] * (count - self.count)
        self.count = count
        self._credits = [t for t in self._credits if now - t <= OOM_CREDIT_SECONDS]
        if not self._credits:
            return False
        self._credits.pop(0)
        return True


def peek_deaths(pids: list[int], deaths: dict[int, Death]) -> None:
    """Record how each dead worker among ``pids`` ended, leaving it for gunicorn to reap:
    ``waitid`` with ``WNOWAIT`` (``child_exit`` is not told the status)."""
    for pid in pids:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid == pid:
            exited = info.si_code == os.CLD_EXITED
            deaths[pid] = Death(None if exited else info.si_status, info.si_status if exited else None)


def report_exit(runtime: Runtime, worker: Any, log: Any, cfg: Any) -> None:
    slot = getattr(worker, SLOT_ATTR, None)
    death = runtime.deaths.pop(worker.pid, None)
    sent = runtime.sent.pop(worker.pid, set())
    if death is not None and death.signal in sent:
        death = death._replace(sent=death.signal)
    if runtime.scoreboard is None or slot is None:
        return
    now = time.time()
    view = runtime.scoreboard.read(slot)
    oom = runtime.oom
    # no status peeked (it died between memguard's peek and gunicorn's reaping): the counter may still say
    unseen = death is None and view.state is not State.EXITED
    sigkill = death is not None and death.signal == signal.SIGKILL != death.sent
    oom_killed = oom.rose() if oom is not None and (sigkill or unseen) else None
    report = exit_report(worker.pid, view, now, death, oom_killed)
    getattr(log, report.level)(report.message)
    if view.pid == worker.pid and view.retire_started:
        _count_retirement(runtime, log, cfg)
    with runtime.tally.lock:  # a scrape sees the slot or the total, never both or neither
        runtime.tally.fold(view, report.outcome)
        runtime.scoreboard.release(slot)
    setattr(worker, SLOT_ATTR, None)
    if view.pid == worker.pid:
        runtime.exits.append(
            {
                "pid": worker.pid,
                "slot": slot,
                "time": now,
                "outcome": report.outcome,
                "reason": (view.reason or None) if view.retire_started else None,
                "age": round(now - view.born, 3),
                "requests": view.requests,
                "memory": view.value,
                "rss": view.rss,
            }
        )
        Telemetry(runtime.events, log, cfg).exit(
            pid=worker.pid,
            worker=slot,
            outcome=report.outcome,
            reason=view.reason or None,
            drain=round(now - view.retire_started, 3) if view.retire_started else None,
            age=round(now - view.born, 3),
            requests=view.requests,
            value=view.value,
            rss=view.rss,
            signal=signal_name(death.signal) if death and death.signal else None,
            code=death.code if death else None,
            oom_kills=oom.count if oom is not None and oom_killed is not None else None,
        )


def _count_retirement(runtime: Runtime, log: Any, cfg: Any) -> None:
    """Warn, at most once per window, when retirements outpace MEMGUARD_MAX_RETIREMENTS. A high rate
    where fresh workers start well below their limit is a fast leak that recycling is handling:
    it is said loudly, and recycling goes on (a crash loop is the baseline test's, in the worker)."""
    if runtime.rate is None:
        return
    now = time.time()
    seen = runtime.rate.record(now, runtime.workers)
    if seen is None or now < runtime.rate_warned_until:
        return
    count, per = runtime.settings.max_retirements or (0, 0.0)
    runtime.rate_warned_until = now + per
    log.warning(
        "memguard: %s retirements within %s, more than MEMGUARD_MAX_RETIREMENTS=%s/%s per worker (%s workers): "
        "a fast leak; recycling goes on and keeps every worker under its limit. Find the leak, or raise "
        "MEMGUARD_MAX_MEMORY. (Said at most once per %s.)",
        seen, format_duration(per), count, format_duration(per), runtime.workers, format_duration(per),
    )  # fmt: skip
