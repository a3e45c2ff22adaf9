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

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..policy import Reason
from ..policy.fleet import Candidate, free_turns, has_room, retirement_order
from ..probes.cgroup import ContainerMemory
from ..settings import Settings
from ..shared.limits import SharedLimits
from ..shared.scoreboard import SLOT_ATTR, Scoreboard, SlotView, State
from ..units import format_size
from .readiness import Readiness
from .room import Room
from .spares import LEAVING, Retirement, Spares

TOTAL_REASON = Reason.TOTAL_MEMORY


class Coordinator:
    def __init__(
        self,
        arbiter: Any,
        settings: Settings,
        scoreboard: Scoreboard,
        log: Any,
        container: ContainerMemory | None = None,
        shared: SharedLimits | None = None,
        exits: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.arbiter = arbiter
        self.exits = exits  # the master's record of recent exits, newest last (exits.report_exit)
        self.settings = settings
        self.scoreboard = scoreboard
        self.log = log
        self.room = Room(settings, container, shared)
        self.readiness = Readiness(shared)
        self.spares = Spares(self.readiness, log)
        self.retirements: dict[int, Retirement] = {}
        self._next_total_check = 0.0
        self.drain_first = 0  # retirees that reached the ceiling before their replacement was ready
        self._paused = False
        self._broken = False

    @contextlib.contextmanager
    def reloading(self) -> Iterator[None]:
        """Paused across a HUP reload: ``setup()`` resets ``num_workers``, so memguard's raises for
        replacements vanish with it and are forgotten first."""
        self._paused = True
        self.retirements.clear()
        try:
            yield
        finally:
            self._paused = False

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
        self._forget_gone(now, workers, views)
        self.readiness.measure_boots(views)
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
        if self.settings.spawn_first:
            busy += self._start_spares(now, workers, views, busy)
        if self.room.total_budget is not None and now >= self._next_total_check:
            self._next_total_check = now + self.settings.check_interval
            self._enforce_total(now, workers, views, busy)

    def _start_spares(self, now: float, workers: dict[int, Any], views: dict[int, SlotView], busy: int) -> int:
        """Predictive spawn-first: a worker whose forecast reaches its soft limit within a few boot
        times gets its replacement started now. Returns how many were started."""
        due = self.spares.due(views, self.retirements)[: free_turns(self.settings.max_concurrent_retirements, busy)]
        return sum(self._start(now, pid, Reason.SOFT_LIMIT, workers, views, early=True) for pid in due)

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

    def _forget_gone(self, now: float, workers: dict[int, Any], views: dict[int, SlotView]) -> None:
        gone = [pid for pid in self.retirements if pid not in workers]
        retired_itself = {e["pid"] for e in self.exits if e["reason"]} if gone else set()
        reached_ceiling = []
        for pid in gone:
            retirement = self.retirements.pop(pid)
            self._lower(retirement)
            if retirement.granted:
                continue
            if pid in retired_itself:  # it reached its ceiling and was gone within one arbiter pass
                reached_ceiling.append(retirement)
            else:
                self.log.warning(
                    "memguard: worker pid=%s left before its turn came (it died or was stopped); "
                    "its retirement slot is free again",
                    pid,
                )
        if reached_ceiling and len(self._serving(workers, views)) < self.wanted():
            for retirement in reached_ceiling:  # with its replacement ready it would only have been first
                self._drained_first(retirement, now)
        self.readiness.forget(workers)

    def _drained_first(self, retirement: Retirement, now: float) -> None:
        self.drain_first += 1
        self.log.warning(
            "memguard: worker pid=%s reached its ceiling %.1fs after its replacement was started, "
            "before it was ready: it drains first (%d such so far; the leak fills the band between "
            "soft limit and ceiling faster than a worker boots)",
            retirement.target, now - retirement.started, self.drain_first,
        )  # fmt: skip

    def _serving(self, workers: dict[int, Any], views: dict[int, SlotView]) -> set[int]:
        """The workers ready to serve that are not leaving: neither granted nor retiring."""
        granted = {r.target for r in self.retirements.values() if r.granted}
        return {
            pid
            for pid, worker in workers.items()
            if pid not in granted
            and not (pid in views and views[pid].state in LEAVING)
            and self.readiness.ready(pid, worker, views)
        }

    def wanted(self) -> int:
        """The worker count gunicorn wants, without memguard's temporary raises for replacements."""
        return int(self.arbiter.num_workers) - sum(r.raised for r in self.retirements.values())

    def _advance(self, now: float, workers: dict[int, Any], views: dict[int, SlotView]) -> None:
        """Grant a target once the workers ready to serve without it are at least the count gunicorn
        wants without memguard's raises: a replacement has loaded its app (or TTIN added one)."""
        wanted = self.wanted()
        serving = self._serving(workers, views)
        for retirement in sorted(self.retirements.values(), key=lambda r: r.started):
            view = views.get(retirement.target)
            if retirement.granted:
                if view is not None and view.state is State.WAITING:
                    self._grant(retirement, workers)  # the worker's first "waiting" crossed our grant
                continue
            ready = len(serving - {retirement.target}) >= wanted
            if view is not None and view.state in LEAVING:
                retirement.granted = True  # past its ceiling while waiting: it did not wait
                serving.discard(retirement.target)
                if not ready:
                    self._drained_first(retirement, now)
            elif ready and self.spares.forecast_failed(retirement, view, now):
                self._spare_goes(retirement, workers, now)
            elif ready and self.spares.due_now(retirement, view, now):
                self._grant(retirement, workers)
                serving.discard(retirement.target)
                self.log.info(
                    "memguard: %d workers serve without worker pid=%s (replacement ready after %.1fs); it retires now",
                    len(serving), retirement.target, now - retirement.started,
                )  # fmt: skip
            elif now - retirement.started > self.arbiter.timeout:
                self._grant(retirement, workers)
                serving.discard(retirement.target)
                self.log.warning(
                    "memguard: no replacement ready after %.0fs (gunicorn timeout); worker pid=%s retires anyway",
                    now - retirement.started, retirement.target,
                )  # fmt: skip

    def _spare_goes(self, retirement: Retirement, workers: dict[int, Any], now: float) -> None:
        """The worker a spare was started for no longer needs replacing: the spare goes instead, and
        the worker count comes back down once it has exited."""
        del self.retirements[retirement.target]
        replaced = self.spares.instead(retirement, workers, now)
        if replaced is None:
            self._lower(retirement)
            return
        self.retirements[replaced.target] = replaced
        self._grant(replaced, workers)

    def _start(
        self, now: float, pid: int, reason: str, workers: dict[int, Any], views: dict[int, SlotView],
        early: bool = False,
    ) -> bool:  # fmt: skip
        """Start a retirement; True if a replacement was started first."""
        expected = min((v.rss for v in views.values() if v.rss), default=0)
        if early:
            if not has_room(self.room.headroom(workers), expected):
                return False  # no spare ahead of time: at its soft limit it drains first
            self.retirements[pid] = Retirement(
                pid, reason, now, raised=True, granted=False, early=True, before=frozenset(workers)
            )
            self.arbiter.num_workers += 1
            self.log.info(
                "memguard: worker pid=%s will reach its limit within %.1fs; starting its replacement now",
                pid, max(0.0, views[pid].due - time.time()),
            )  # fmt: skip
            return True
        retirement = Retirement(pid, reason, now, raised=False, granted=False)
        self.retirements[pid] = retirement
        if not self.settings.spawn_first or reason == TOTAL_REASON:
            self._grant(retirement, workers)
            return False
        headroom = self.room.headroom(workers)
        if not has_room(headroom, expected):
            self._grant(retirement, workers)
            self.log.warning(
                "memguard: no room for a replacement (headroom %s < a worker's %s); worker pid=%s "
                "retires first and is replaced after it exits",
                format_size(headroom or 0),
                format_size(expected),
                pid,
            )
            return False
        self.arbiter.num_workers += 1
        retirement.raised = True
        self.log.info("memguard: worker pid=%s may retire (reason=%s); starting its replacement first", pid, reason)
        return True

    def _enforce_total(self, now: float, workers: dict[int, Any], views: dict[int, SlotView], busy: int) -> None:
        """The server-wide budget: each staying worker gets its share, which it enforces itself
        at every check; over the budget, the largest retires, drain-first, one at a time."""
        staying = {pid for pid, v in views.items() if pid not in self.retirements and v.state not in LEAVING}
        victim = None
        one_at_a_time = any(r.reason == TOTAL_REASON for r in self.retirements.values())
        if not one_at_a_time and free_turns(self.settings.max_concurrent_retirements, busy) > 0:
            victim = self.room.victim(workers, staying, self.log)
        else:
            self.room.measure_total(workers)
        for pid, share in self.room.allowances(views, staying).items():
            slot = getattr(workers[pid], SLOT_ATTR, None)
            if slot is not None:
                self.scoreboard.set_allowance(slot, share)
        if victim is not None:
            self._start(now, victim, TOTAL_REASON, workers, views)

    # -- acting -------------------------------------------------------------------------
    def _grant(self, retirement: Retirement, workers: dict[int, Any]) -> None:
        retirement.granted = True
        slot = getattr(workers.get(retirement.target), SLOT_ATTR, None)
        if slot is not None:
            self.scoreboard.grant(slot, retirement.reason)

    def worker_left(self, pid: int) -> None:
        """gunicorn has just taken ``pid`` out of ``WORKERS`` (its ``child_exit`` hook, in the same
        step): undo the raise made for its replacement now. Left to the next tick, gunicorn 22/23,
        which reaps in its SIGCHLD handler, could take the worker out between the tick's copy of
        ``WORKERS`` and ``manage_workers``, see one worker missing with the raise still on, fork one
        more, and at the next pass SIGTERM its oldest worker — a serving replacement — for the
        surplus. ``wanted()`` is unchanged (the count and the raise go together)."""
        retirement = self.retirements.get(pid)
        if retirement is not None:
            self._lower(retirement)
            retirement.raised = False

    def _lower(self, retirement: Retirement) -> None:
        """Undo a raise; never to 0 (TTOU never goes below 1 either, and WINCH's 0 stays)."""
        if retirement.raised and self.arbiter.num_workers > 1:
            self.arbiter.num_workers -= 1

    def _grant_everyone(self) -> None:
        for worker in list(self.arbiter.WORKERS.values()):
            slot = getattr(worker, SLOT_ATTR, None)
            if slot is not None and self.scoreboard.state(slot) is State.WAITING:
                self.scoreboard.grant(slot, self.scoreboard.read(slot).reason)
