"""The master's figures at one moment, gathered once for every reader: the Prometheus endpoint
(``prometheus.py``) and ``memguard top``'s status socket (``master/status.py``). Reads shared
memory only: the scoreboard, the tally, the shared limits."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import Settings
from ..shared.limits import SharedLimits
from ..shared.scoreboard import Scoreboard, SlotView, State
from .tally import Tally, Totals

LIVE = (State.RUNNING, State.WAITING, State.GRANTED, State.RETIRING)


@dataclass(frozen=True)
class Snapshot:
    workers: list[tuple[int, SlotView]]  # (slot, view) of each live worker whose guard started
    starting: list[int]  # slots claimed for workers whose guard has not started yet
    totals: Totals
    soft: int | None  # per-worker limits, percentages resolved to bytes
    hard: int | None
    container_limit: int | None
    budget: int | None  # the server-wide budget, bytes
    breaker_open: bool
    breaker_trips: int


def take(scoreboard: Scoreboard, tally: Tally, settings: Settings, shared: SharedLimits | None, now: float) -> Snapshot:
    with tally.lock:  # a reaped worker is in the slots or in the totals, never both or neither
        slots = scoreboard.occupied()
        totals = tally.totals(view for _, view in slots)
    resolved = shared.limits() if shared is not None else (None, None)
    configured = [v if isinstance(v, int) else None for v in (settings.max_memory, settings.hard_max_memory)]
    container, budget = shared.memory() if shared is not None else (None, None)
    return Snapshot(
        workers=[(index, view) for index, view in slots if view.pid and view.state in LIVE],
        starting=[index for index, view in slots if view.state is State.STARTING],
        totals=totals,
        soft=resolved[0] if resolved[0] is not None else configured[0],
        hard=resolved[1] if resolved[1] is not None else configured[1],
        container_limit=container,
        budget=budget,
        breaker_open=shared is not None and shared.paused()[0] > now,
        breaker_trips=shared.trips() if shared is not None else 0,
    )
