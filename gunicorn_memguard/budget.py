"""Each worker's memory budget, resolved in the master and shared with every worker.

``MEMGUARD_MAX_MEMORY=80%`` means 80 % of the memory available per worker: the container's
limit (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``/``hierarchical_memory_limit``,
clamped to MemTotal; host memory when there is none), minus the master's resident memory, divided
by the worker count. The master re-resolves it when TTIN/TTOU change the worker count and writes
the result to a small shared mapping that every worker re-reads at its timer cadence, together
with the crash-loop breaker's state.
"""

from __future__ import annotations

import mmap
import multiprocessing
import struct
from dataclasses import dataclass

from .probes.cgroup import ContainerMemory
from .units import Share, format_size

# Layout: soft, hard (bytes, 0 = none) at 0; paused_until (wall-clock seconds, 0 = not paused,
# inf = until a fresh worker starts well below its limit) and pause reason (PAUSE_*) at 16; the
# number of times the breaker tripped at 32.
PAUSE_NONE, PAUSE_BASELINE, PAUSE_RATE = 0, 1, 2


@dataclass(frozen=True)
class Resolved:
    soft: int | None
    hard: int | None
    how: str  # one log line saying how percentages became bytes; "" if none were used


def per_worker(share: Share, available: int, master: int, workers: int) -> int:
    """``share`` of what is left for each worker once the master's own memory is set aside."""
    return int(share.fraction * max(available - master, 0) / max(workers, 1))


def resolve(
    soft: int | Share | None, hard: int | Share | None, container: ContainerMemory, master: int, workers: int
) -> Resolved:
    """Turn configured limits into per-worker bytes; sizes pass through unchanged."""
    shares = [x for x in (soft, hard) if isinstance(x, Share)]

    def to_bytes(value: int | Share | None) -> int | None:
        return per_worker(value, container.available, master, workers) if isinstance(value, Share) else value

    soft_b, hard_b = to_bytes(soft), to_bytes(hard)
    if not shares:
        return Resolved(soft_b, hard_b, "")
    per = max(container.available - master, 0) / max(workers, 1)
    source = container.describe() if container.limit is not None else (
        f"{container.describe()} — no container limit found, so percentages are of host memory"
    )
    parts = [f"{name} {value} = {format_size(to_bytes(value) or 0)}" for name, value in (("limit", soft), ("hard_limit", hard))
             if isinstance(value, Share)]
    how = (
        f"memguard: per-worker limits: {', '.join(parts)}; per worker: ({format_size(container.available)} "
        f"available - master {format_size(master)}) / {workers} workers = {format_size(per)}; available: {source}"
    )
    return Resolved(soft_b, hard_b, how)


class SharedBudget:
    """An anonymous shared mapping made in the master before the first fork: the master writes
    the limits, any process writes the breaker; each field is read and written whole."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)
        self._lock = multiprocessing.Lock()  # a process-shared semaphore: workers booting together trip once

    def set_limits(self, soft: int | None, hard: int | None) -> None:
        struct.pack_into("<q q", self._map, 0, soft or 0, hard or 0)

    def limits(self) -> tuple[int | None, int | None]:
        soft, hard = struct.unpack_from("<q q", self._map, 0)
        return soft or None, hard or None

    def pause(self, until: float, reason: int) -> None:
        struct.pack_into("<d q", self._map, 16, until, reason)

    def pause_if_running(self, until: float, reason: int, now: float) -> bool:
        """Pause unless already paused; True if this call paused it (and should say so).

        The lock is only ever taken with a timeout, so a worker killed while holding it cannot
        block the others: they skip this trip and try again on their next check."""
        if not self._lock.acquire(timeout=0.1):
            return False
        try:
            if self.paused()[0] > now:
                return False
            self.pause(until, reason)
            struct.pack_into("<q", self._map, 32, self.trips() + 1)
            return True
        finally:
            self._lock.release()

    def trips(self) -> int:
        return struct.unpack_from("<q", self._map, 32)[0]  # type: ignore[no-any-return]

    def paused(self) -> tuple[float, int]:
        """(until, reason); until is 0 when recycling is not paused."""
        return struct.unpack_from("<d q", self._map, 16)  # type: ignore[return-value]
