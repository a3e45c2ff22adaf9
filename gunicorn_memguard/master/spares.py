"""Early spares (predictive spawn-first), as the coordinator keeps them: which workers are due,
when a spare has waited too long for its worker, and which worker a spare is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..policy import Reason
from ..shared.scoreboard import SlotView, State
from .readiness import Readiness

# States of a worker that is leaving: each counts against the retirement budget.
LEAVING = (State.GRANTED, State.RETIRING, State.EXITED, State.OVERRAN)
# A spare started for a worker predicted to reach its soft limit replaces it anyway if the worker
# has not got there this many replacement boot times after the spare was ready (at least 2 s).
STALL_BOOTS = 3.0
STALL_MIN = 2.0


@dataclass
class Retirement:
    """One retirement the coordinator started."""

    target: int  # pid of the worker to retire
    reason: str
    started: float  # monotonic
    raised: bool  # num_workers was raised by one for its replacement
    granted: bool  # the target was told to retire
    early: bool = False  # started ahead of the soft limit, on the worker's forecast (predictive spawn-first)
    spare_ready: float = 0.0  # monotonic, when its replacement was first ready (early ones)
    before: frozenset[int] = frozenset()  # the workers when its replacement was started (early ones)


class Spares:
    def __init__(self, readiness: Readiness, log: Any) -> None:
        self.readiness = readiness
        self.log = log

    @staticmethod
    def due(views: dict[int, SlotView], retirements: dict[int, Retirement]) -> list[int]:
        """Serving workers that said when they will reach their soft limit, the soonest first."""
        return [
            pid for _, pid in sorted(
                (v.due, pid) for pid, v in views.items()
                if v.state is State.RUNNING and v.due > 0 and pid not in retirements
            )
        ]  # fmt: skip

    def instead(self, retirement: Retirement, workers: dict[int, Any], now: float) -> Retirement | None:
        """The retirement of the spare started for ``retirement`` (the newest worker that was not
        there before it), for when its worker no longer needs replacing; None if it is gone."""
        spares = [pid for pid in workers if pid not in retirement.before]
        spare = max(spares, key=lambda pid: getattr(workers[pid], "age", 0), default=None)
        if spare is None:
            return None
        self.log.info(
            "memguard: worker pid=%s no longer projects reaching its limit (a reclaim, or its growth stopped); "
            "the replacement started for it, pid=%s, is not needed and goes",
            retirement.target, spare,
        )  # fmt: skip
        return Retirement(spare, Reason.SPARE, now, raised=True, granted=False)

    def stalled(self, retirement: Retirement, now: float) -> bool:
        """An early spare has been ready a few boot times and its worker has not asked yet."""
        if retirement.spare_ready == 0.0:
            retirement.spare_ready = now
        return now - retirement.spare_ready >= max(STALL_MIN, STALL_BOOTS * self.readiness.ready_time())

    def forecast_failed(self, retirement: Retirement, view: SlotView | None, now: float) -> bool:
        """The worker no longer projects reaching its limit (a reclaim, or its growth stopped)."""
        early = retirement.early and view is not None and view.state is State.RUNNING
        return early and view is not None and view.due == 0.0 and self.stalled(retirement, now)

    def due_now(self, retirement: Retirement, view: SlotView | None, now: float) -> bool:
        """With its replacement ready, a target goes once it asks (at its soft limit); one started
        early that still projects its limit but has not got there goes anyway after a while, so
        that the replacement is not wasted."""
        if not retirement.early or view is None or view.state is State.WAITING:
            return True
        if not self.stalled(retirement, now):
            return False
        self.log.info(
            "memguard: worker pid=%s has not reached its limit %.1fs after its replacement was ready (its growth "
            "slowed); it retires now so that the replacement is not wasted",
            retirement.target, now - retirement.spare_ready,
        )  # fmt: skip
        return True
