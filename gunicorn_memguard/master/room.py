"""Room for one more worker, and the server-wide budget (``MEMGUARD_MAX_TOTAL_MEMORY``), measured in
the master. The decisions on the figures are pure (``policy/fleet.py``, ``policy/breaker.py``)."""

from __future__ import annotations

import os
import time
from typing import Any

from ..policy import breaker
from ..policy.fleet import allowances, fresh_share, largest_over_budget
from ..probes.cgroup import ContainerMemory, read_container_memory, read_working_set
from ..probes.memory import available_memory, process_pss
from ..settings import Settings
from ..shared.limits import SharedLimits
from ..shared.scoreboard import SlotView
from ..units import format_size


class Room:
    def __init__(self, settings: Settings, container: ContainerMemory | None, shared: SharedLimits | None) -> None:
        self.container = container or read_container_memory()
        self.budget = settings.max_total_memory
        self.total_budget = self.budget.resolve(self.container.available) if self.budget is not None else None
        self.total = 0  # last measured PSS of the workers and the master, when a total budget is set
        self.master = 0  # the master's own PSS at that measurement
        self.shared = shared

    def follow(self, container: ContainerMemory) -> None:
        """The container's limit changed: the budget, if a share of it, is resolved again."""
        self.container = container
        if self.budget is not None:
            self.total_budget = self.budget.resolve(container.available)

    def headroom(self, workers: dict[int, Any]) -> int | None:
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
            room.append(self.total_budget - sum(self.measure_total(workers).values()))
        return min(room) if room else None

    def measure_total(self, workers: dict[int, Any]) -> dict[int, int]:
        """Each worker's PSS, read by the master (0.4-17 ms each, so only with a total budget); the
        total counts the master's own too (tens of MiB for a preloaded app)."""
        sizes = {pid: size for pid in workers if (size := process_pss(pid)) is not None}
        self.master = process_pss(os.getpid()) or 0
        self.total = sum(sizes.values()) + self.master
        return sizes

    def allowances(self, views: dict[int, SlotView], staying: set[int]) -> dict[int, int]:
        """Each staying worker's share of the budget, from the total just measured: the room is
        the budget less that total, and no more than the container has left. A worker's own figure
        is its last exact reading (a stale one is lower, so its share is tighter, never looser)."""
        if self.total_budget is None:
            return {}
        room = self.total_budget - self.total
        cgroup = self.container.cgroup
        if self.container.limit is not None and cgroup is not None:
            used = read_working_set(cgroup)
            if used is not None:
                room = min(room, self.container.limit - used)
        values = {pid: v.exact or v.value for pid, v in views.items() if pid in staying}
        return allowances(values, room)

    def fresh_share(self, workers: int, others: int) -> int:
        """The share a worker about to fork starts with, until the master measures it (``others``:
        the shares the live workers hold now)."""
        return fresh_share(self.total_budget or 0, self.master, workers, others)

    def over_budget(self, workers: dict[int, Any], staying: set[int]) -> tuple[int, int] | None:
        """(pid, size) of the largest staying worker when the total is over the budget, else None.
        Leaving workers still count: their memory is freed only when they exit."""
        if self.total_budget is None:
            return None
        sizes = self.measure_total(workers)
        mine = {pid: size for pid, size in sizes.items() if pid in staying}
        victim = largest_over_budget(mine, self.total_budget - (self.total - sum(mine.values())))
        return None if victim is None else (victim, sizes[victim])

    def victim(self, workers: dict[int, Any], staying: set[int], log: Any) -> int | None:
        """The worker the server-wide budget retires now (the largest staying one), if any: over the
        budget, and not held back by the crash-loop backoff."""
        over = self.over_budget(workers, staying)
        if over is None or not self.admit(over[1]):
            return None
        log.warning(
            "memguard: workers' total PSS %s > max_total_memory %s; retiring the largest, pid=%s (pss %s), "
            "before the kernel has to",
            format_size(self.total), format_size(self.total_budget or 0), over[0], format_size(over[1]),
        )  # fmt: skip
        return over[0]

    def admit(self, size: int) -> bool:
        """In a crash loop, the server-wide budget's retirements wait for the same backoff as the
        workers' own unless the worker is clearly bigger than a fresh one (``policy/breaker.py``)."""
        shared = self.shared
        if shared is None or not shared.crash_loop() or breaker.worth_replacing(size, shared.fresh_baseline()):
            return True
        return shared.admit(time.time()) <= 0
