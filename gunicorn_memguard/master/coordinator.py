"""The master's side of retirement: at most N workers retiring at once, the furthest over its
limit first; a replacement brought up *before* a soft retirement (spawn-first); and a
server-wide memory budget.

Why changing the arbiter's state from here is safe: gunicorn's arbiter is single-threaded and
signal-driven, and every change memguard makes happens in `Coordinator.tick`, which runs at the
start of ``arbiter.manage_workers`` — in the arbiter's main thread, at the very point where
gunicorn itself reconciles ``num_workers`` with ``WORKERS``. On gunicorn 22/23 the SIGCHLD
handler may remove entries from ``WORKERS`` at any moment, so ``tick`` works on a copy. memguard
only ever raises ``num_workers`` by one for a replacement and lowers it by one once the worker it
replaces is gone, so relative changes (TTIN/TTOU) made meanwhile are kept. It never lowers the
count while its target lives: ``manage_workers`` answers "too many workers" by SIGTERMing the
oldest (lowest ``age``), which would not be the worker we mean. A HUP reload resets
``num_workers`` to the configured count, so memguard forgets its raises before a reload.
gunicorn 27's control-socket thread can also change ``num_workers``; it is off in our tests and
its changes are relative, like TTIN/TTOU.

Workers ask for their turn through the scoreboard and wake the arbiter with a SIGCHLD (a signal
every gunicorn version already turns into a pass of its loop, and harmless: ``waitpid`` finds no
child); without it a decision would wait for the loop's 1 s timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..policy.fleet import Candidate, free_turns, has_room, largest_over_budget, retirement_order
from ..probes.cgroup import ContainerMemory, read_container_memory, read_working_set
from ..probes.memory import available_memory, process_pss
from ..settings import Settings
from ..shared.scoreboard import SLOT_ATTR, Scoreboard, SlotView, State
from ..units import format_size

TOTAL_REASON = "total_memory"
# States of a worker that is leaving: each counts against the retirement budget.
LEAVING = (State.GRANTED, State.RETIRING, State.EXITED, State.OVERRAN)


@dataclass
class Retirement:
    """One retirement the coordinator started."""

    target: int  # pid of the worker to retire
    reason: str
    started: float  # monotonic
    raised: bool  # num_workers was raised by one for its replacement
    granted: bool  # the target was told to retire


class Coordinator:
    def __init__(
        self,
        arbiter: Any,
        settings: Settings,
        scoreboard: Scoreboard,
        log: Any,
        container: ContainerMemory | None = None,
    ) -> None:
        self.arbiter = arbiter
        self.settings = settings
        self.scoreboard = scoreboard
        self.log = log
        self.container = container or read_container_memory()
        budget = settings.max_total_memory
        self.total_budget = budget.resolve(self.container.available) if budget is not None else None
        self.retirements: dict[int, Retirement] = {}
        self.total = 0  # last measured sum of the workers' PSS, when a total budget is set
        self._next_total_check = 0.0
        self._beats: dict[int, float] = {}
        self._paused = False
        self._broken = False

    def tick(self) -> None:
        if self._paused:
            return
        try:
            if self._broken:
                self._grant_everyone()
            else:
                self._tick(time.monotonic())
        except Exception:  # noqa: BLE001 - a memguard bug must not stop the arbiter
            if not self._broken:
                self._broken = True
                self.log.exception(
                    "memguard: error in the retirement coordinator; workers now retire on "
                    "their own, without a budget or spawn-first"
                )
                for retirement in self.retirements.values():
                    self._lower(retirement)
                self.retirements.clear()

    # -- one pass -----------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        workers = dict(self.arbiter.WORKERS)
        views = self._views(workers)
        self._forget_gone(workers)
        self._advance(now, workers, views)
        busy = len(self.retirements) + sum(
            1 for pid, view in views.items() if pid not in self.retirements and view.state in LEAVING
        )
        waiting = [
            Candidate(pid, v.value, v.limit)
            for pid, v in views.items()
            if v.state is State.WAITING and pid not in self.retirements
        ]
        for candidate in retirement_order(waiting)[: free_turns(self.settings.max_concurrent_retirements, busy)]:
            self._start(now, candidate.pid, views[candidate.pid].reason, workers, views)
            busy += 1
        if self.total_budget is not None and now >= self._next_total_check:
            self._next_total_check = now + self.settings.check_interval
            self._enforce_total(now, workers, views, busy)

    def _views(self, workers: dict[int, Any]) -> dict[int, SlotView]:
        """Slots of the workers whose guard has started (it writes its pid when the app is loaded)."""
        views = {}
        for pid, worker in workers.items():
            slot = getattr(worker, SLOT_ATTR, None)
            if slot is not None:
                view = self.scoreboard.read(slot)
                if view.pid == pid:
                    views[pid] = view
        return views

    def _forget_gone(self, workers: dict[int, Any]) -> None:
        for pid in [pid for pid in self.retirements if pid not in workers]:
            retirement = self.retirements.pop(pid)
            self._lower(retirement)
            if not retirement.granted:
                self.log.warning(
                    "memguard: worker pid=%s left before its turn came (it died or was stopped); "
                    "its retirement slot is free again",
                    pid,
                )
        for pid in [pid for pid in self._beats if pid not in workers]:
            del self._beats[pid]

    def wanted(self) -> int:
        """The worker count gunicorn wants, without memguard's temporary raises for replacements."""
        return int(self.arbiter.num_workers) - sum(r.raised for r in self.retirements.values())

    def _advance(self, now: float, workers: dict[int, Any], views: dict[int, SlotView]) -> None:
        """Grant a target once the workers ready to serve without it are at least the count gunicorn
        wants without memguard's raises: a replacement has loaded its app (or TTIN added one)."""
        wanted = self.wanted()
        granted = {r.target for r in self.retirements.values() if r.granted}
        serving = {
            pid
            for pid, worker in workers.items()
            if pid not in granted
            and not (pid in views and views[pid].state in LEAVING)
            and self._ready(pid, worker, views)
        }
        for retirement in sorted(self.retirements.values(), key=lambda r: r.started):
            view = views.get(retirement.target)
            if retirement.granted:
                if view is not None and view.state is State.WAITING:
                    self._grant(retirement, workers)  # the worker's first "waiting" crossed our grant
                continue
            if view is not None and view.state in LEAVING:
                retirement.granted = True  # past its hard limit while waiting: it did not wait
                serving.discard(retirement.target)
            elif len(serving - {retirement.target}) >= wanted:
                self._grant(retirement, workers)
                serving.discard(retirement.target)
                self.log.info(
                    "memguard: %d workers serve without worker pid=%s (replacement ready after %.1fs); it retires now",
                    len(serving),
                    retirement.target,
                    now - retirement.started,
                )
            elif now - retirement.started > self.arbiter.timeout:
                self._grant(retirement, workers)
                serving.discard(retirement.target)
                self.log.warning(
                    "memguard: no replacement ready after %.0fs (gunicorn timeout); worker pid=%s retires anyway",
                    now - retirement.started,
                    retirement.target,
                )

    def _ready(self, pid: int, worker: Any, views: dict[int, SlotView]) -> bool:
        """The worker has loaded its app: its guard has started, or (without a slot) its heartbeat
        has moved — the master's ``booted`` flag is never set."""
        if pid in views:
            return True
        try:
            beat = worker.tmp.last_update()
        except (OSError, ValueError):
            return False
        return self._beats.setdefault(pid, beat) != beat

    def _start(self, now: float, pid: int, reason: str, workers: dict[int, Any], views: dict[int, SlotView]) -> None:
        retirement = Retirement(pid, reason, now, raised=False, granted=False)
        self.retirements[pid] = retirement
        if not self.settings.spawn_first or reason == TOTAL_REASON:
            self._grant(retirement, workers)
            return
        expected = min((v.rss for v in views.values() if v.rss), default=0)
        headroom = self._headroom(workers)
        if not has_room(headroom, expected):
            self._grant(retirement, workers)
            self.log.warning(
                "memguard: no room for a replacement (headroom %s < a worker's %s); worker pid=%s "
                "retires first and is replaced after it exits",
                format_size(headroom or 0),
                format_size(expected),
                pid,
            )
            return
        self.arbiter.num_workers += 1
        retirement.raised = True
        self.log.info("memguard: worker pid=%s may retire (reason=%s); starting its replacement first", pid, reason)

    def _headroom(self, workers: dict[int, Any]) -> int | None:
        """Bytes one more worker may take: the container's limit less its working set (what the OOM
        killer weighs), else the host's free memory; and the server-wide budget less the total now."""
        room: list[int] = []
        cgroup = self.container.cgroup
        if self.container.limit is not None and cgroup is not None:
            used = read_working_set(cgroup)
            if used is not None:
                room.append(self.container.limit - used)
        else:
            room.append(available_memory())
        if self.total_budget is not None:
            room.append(self.total_budget - sum(self._measure_total(workers).values()))
        return min(room) if room else None

    def _enforce_total(self, now: float, workers: dict[int, Any], views: dict[int, SlotView], busy: int) -> None:
        budget = self.total_budget or 0
        sizes = self._measure_total(workers)
        if any(r.reason == TOTAL_REASON for r in self.retirements.values()):
            return  # one at a time: the next is judged once this one is gone
        staying = {
            pid: size
            for pid, size in sizes.items()
            if pid not in self.retirements and pid in views and views[pid].state not in LEAVING
        }
        leaving = self.total - sum(staying.values())  # still counted: it is freed only at exit
        victim = largest_over_budget(staying, budget - leaving)
        if victim is None or free_turns(self.settings.max_concurrent_retirements, busy) == 0:
            return
        self.log.warning(
            "memguard: workers' total PSS %s > max_total_memory %s; retiring the largest, pid=%s "
            "(pss %s), before the kernel has to",
            format_size(self.total),
            format_size(budget),
            victim,
            format_size(sizes[victim]),
        )
        self._start(now, victim, TOTAL_REASON, workers, views)

    def _measure_total(self, workers: dict[int, Any]) -> dict[int, int]:
        """Each worker's PSS, read by the master (0.4-17 ms each, so only with a total budget)."""
        sizes = {pid: size for pid in workers if (size := process_pss(pid)) is not None}
        self.total = sum(sizes.values())
        return sizes

    # -- acting -------------------------------------------------------------------------
    def _grant(self, retirement: Retirement, workers: dict[int, Any]) -> None:
        retirement.granted = True
        slot = getattr(workers.get(retirement.target), SLOT_ATTR, None)
        if slot is not None:
            self.scoreboard.grant(slot, retirement.reason)

    def _lower(self, retirement: Retirement) -> None:
        """Undo a raise; never to 0 (TTOU never goes below 1 either, and WINCH's 0 stays)."""
        if retirement.raised and self.arbiter.num_workers > 1:
            self.arbiter.num_workers -= 1

    def _grant_everyone(self) -> None:
        for worker in list(self.arbiter.WORKERS.values()):
            slot = getattr(worker, SLOT_ATTR, None)
            if slot is not None and self.scoreboard.state(slot) is State.WAITING:
                self.scoreboard.grant(slot, self.scoreboard.read(slot).reason)
