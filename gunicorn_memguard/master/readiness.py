"""Which workers are ready to serve, and how long this server's workers take to get there.

The master's ``booted`` flag is never set (``worker.booted`` is set in the child only), so a worker
counts as ready once its guard has started (its app is loaded: it writes its slot) or, without a
slot, once its heartbeat file has moved. The time from fork to that point, for recent workers, is
what a worker's forecast must look ahead by for its replacement to be ready in time.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..shared.limits import SharedLimits
from ..shared.scoreboard import SlotView

BOOTS_KEPT = 5  # boot times remembered, to publish the slowest recent one


class Readiness:
    def __init__(self, shared: SharedLimits | None) -> None:
        self.shared = shared
        self._beats: dict[int, float] = {}
        self._boots: deque[float] = deque(maxlen=BOOTS_KEPT)
        self._booted: set[int] = set()

    def ready(self, pid: int, worker: Any, views: dict[int, SlotView]) -> bool:
        if pid in views:
            return True
        try:
            beat = worker.tmp.last_update()
        except (OSError, ValueError):
            return False
        return self._beats.setdefault(pid, beat) != beat

    def measure_boots(self, views: dict[int, SlotView]) -> None:
        for pid, view in views.items():
            if pid not in self._booted and view.spawned > 0 and view.born >= view.spawned:
                self._booted.add(pid)
                self._boots.append(view.born - view.spawned)
                if self.shared is not None:
                    self.shared.set_ready_time(max(self._boots))

    def ready_time(self) -> float:
        return max(self._boots, default=0.0)

    def forget(self, workers: dict[int, Any]) -> None:
        for pid in [pid for pid in self._beats if pid not in workers]:
            del self._beats[pid]
        self._booted &= set(workers)
