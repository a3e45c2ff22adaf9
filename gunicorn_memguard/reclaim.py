"""Get memory back before retiring a worker for it: ``gc.collect()``, then glibc's ``malloc_trim(0)``.

Freed glibc-heap memory often stays resident; ``malloc_trim(0)`` returned 93–100 % of it in tens of
ms (RESEARCH §3). It cannot help pymalloc arenas pinned by a few live objects; only a new process
does. ``gc.collect()`` holds the GIL (the worker, or an async worker's event loop, waits for it);
``malloc_trim`` runs through ctypes with the GIL released.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from typing import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on musl, macOS and anything else without it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class Reclaimer:
    """Runs a reclaim at most once per ``interval`` seconds per worker."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._trim = _find_malloc_trim()
        self._last = float("-inf")

    @property
    def how(self) -> str:
        return "gc.collect + malloc_trim" if self._trim is not None else "gc.collect"

    def due(self, now: float) -> bool:
        return now - self._last >= self.interval

    def run(self, now: float) -> float:
        """Collect and trim; return how long it took, in seconds."""
        self._last = now
        started = time.perf_counter()
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        return time.perf_counter() - started
