"""What the master and every worker share about limits, through an anonymous mapping made before
the first fork: the per-worker limits the master resolved, the crash-loop breaker's state and its
backoff, and how long a replacement takes to be ready. Workers re-read it at their timer cadence.
Each field is read and written whole (8-byte aligned); changes of the breaker take a lock.
"""

from __future__ import annotations

import math
import mmap
import multiprocessing
import struct

from ..policy import breaker

# Why the breaker is open (for the metrics); only a crash loop opens it now.
PAUSE_NONE, PAUSE_BASELINE = 0, 1

_LIMITS = struct.Struct("<q q")  # soft, hard (bytes, 0 = none)
_BREAKER = struct.Struct("<q q q d d d")  # crash_loop, fresh baseline, trips, backoff until, backoff delay, ready
_AT = 16
_MEMORY = struct.Struct("<q q")  # the container's limit, the server-wide budget (bytes, 0 = none)
_MEMORY_AT = _AT + _BREAKER.size


class SharedLimits:
    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)
        self._lock = multiprocessing.Lock()  # a process-shared semaphore: workers booting together trip once

    # -- limits (written by the master) ------------------------------------------------
    def set_limits(self, soft: int | None, hard: int | None) -> None:
        _LIMITS.pack_into(self._map, 0, soft or 0, hard or 0)

    def limits(self) -> tuple[int | None, int | None]:
        soft, hard = _LIMITS.unpack_from(self._map, 0)
        return soft or None, hard or None

    def set_memory(self, container: int | None, budget: int | None) -> None:
        """The container's memory limit and the server-wide budget as the master last resolved them."""
        _MEMORY.pack_into(self._map, _MEMORY_AT, container or 0, budget or 0)

    def memory(self) -> tuple[int | None, int | None]:
        container, budget = _MEMORY.unpack_from(self._map, _MEMORY_AT)
        return container or None, budget or None

    # -- the crash-loop breaker ---------------------------------------------------------
    def _fields(self) -> list[float]:
        return list(_BREAKER.unpack_from(self._map, _AT))

    def _write(self, fields: list[float]) -> None:
        """Write the breaker's fields (under the lock), leaving the ready time to the master."""
        crash, fresh, trips, until, delay = fields[:5]
        struct.pack_into("<q q q d d", self._map, _AT, int(crash), int(fresh), int(trips), until, delay)

    def crash_loop(self) -> bool:
        return bool(self._fields()[0])

    def fresh_baseline(self) -> int:
        """The first exact reading of the latest fresh worker (0 before any)."""
        return int(self._fields()[1])

    def trips(self) -> int:
        return int(self._fields()[2])

    def paused(self) -> tuple[float, int]:
        """(until, why) of the breaker, for the metrics: until is inf while a crash loop lasts."""
        return (math.inf, PAUSE_BASELINE) if self.crash_loop() else (0.0, PAUSE_NONE)

    def fresh_worker(self, baseline: int, near_limit: bool, well_below: bool) -> bool | None:
        """A fresh worker's first reading: True if it opened the breaker, False if it closed it,
        None if nothing changed (or the lock was not had: the lock is only taken with a timeout, so
        a worker killed holding it cannot block the others)."""
        if not self._lock.acquire(timeout=0.1):
            return None
        try:
            fields = self._fields()
            fields[1] = baseline
            changed: bool | None = None
            if near_limit and not fields[0]:
                fields[0], fields[2], changed = 1, fields[2] + 1, True
            elif well_below and fields[0]:
                fields[0], fields[3], fields[4], changed = 0, 0.0, 0.0, False
            self._write(fields)
            return changed
        finally:
            self._lock.release()

    def admit(self, now: float) -> float:
        """Take the next slot of the backoff: 0 if a retirement may go now (the next one then waits
        longer), else the seconds left to wait."""
        if not self._lock.acquire(timeout=0.1):
            return breaker.FIRST_DELAY
        try:
            fields = self._fields()
            if now < fields[3]:
                return fields[3] - now
            fields[4] = breaker.next_delay(fields[4])
            fields[3] = now + fields[4]
            self._write(fields)
            return 0.0
        finally:
            self._lock.release()

    # -- how long a replacement takes (written by the master) ----------------------------
    def set_ready_time(self, seconds: float) -> None:
        struct.pack_into("<d", self._map, _AT + 40, seconds)  # this field alone: the breaker's lock is not needed

    def ready_time(self) -> float:
        """Seconds from fork to app loaded for this server's recent workers (0 before any)."""
        return self._fields()[5]
