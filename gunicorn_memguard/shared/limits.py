"""The per-worker limits the master resolved, and the crash-loop breaker's state, shared with
every worker through an anonymous mapping made before the first fork. Workers re-read it at
their timer cadence.
"""

from __future__ import annotations

import mmap
import multiprocessing
import struct

# Layout: soft, hard (bytes, 0 = none) at 0; paused_until (wall-clock seconds, 0 = not paused,
# inf = until a fresh worker starts well below its limit) and pause reason (PAUSE_*) at 16; the
# number of times the breaker tripped at 32.
PAUSE_NONE, PAUSE_BASELINE, PAUSE_RATE = 0, 1, 2


class SharedLimits:
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
        return int(struct.unpack_from("<q", self._map, 32)[0])

    def paused(self) -> tuple[float, int]:
        """(until, reason); until is 0 when recycling is not paused."""
        until, reason = struct.unpack_from("<d q", self._map, 16)
        return float(until), int(reason)
