"""Get memory back before retiring a worker for it: ``gc.collect()``, then glibc's ``malloc_trim(0)``.

Freed glibc-heap memory often stays resident; ``malloc_trim(0)`` returned 93–100 % of it in tens of
ms (measured on glibc 2.36). It cannot help pymalloc arenas pinned by a few live objects; only a new process
does. ``gc.collect()`` holds the GIL (the worker, or an async worker's event loop, waits for it);
``malloc_trim`` runs through ctypes with the GIL released. glibc's ``mallinfo2`` says first how much
freed heap it holds, so a worker that is over its limit because of live memory (a leak) is retired
at once instead of waiting for a reclaim that cannot help.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

from ..policy import Reason, Verdict
from ..units import format_size


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _find_malloc_trim(libc: ctypes.CDLL | None) -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on musl, macOS and anything else without it."""
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def _find_mallinfo2(libc: ctypes.CDLL | None) -> Callable[[], _Mallinfo2] | None:
    """glibc >= 2.33's mallinfo2 (64-bit counters), or None."""
    info = getattr(libc, "mallinfo2", None)
    if info is None:
        return None
    info.argtypes = []
    info.restype = _Mallinfo2
    return info


def freeze_inherited() -> None:
    """Move the objects this worker has now (inherited from the master, and its loaded app) to the
    collector's permanent generation: a full collection — a reclaim's, or Python's own — then no
    longer writes to each of them, which turned ~5 MiB of pages shared with the master private per
    worker and could push a worker over its limit by reclaiming. gc state is the process's; this
    only changes which objects later collections visit (cyclic garbage among them stays, as with
    ``gc.freeze()`` before fork, the pattern Python's documentation recommends)."""
    gc.freeze()


class Reclaimer:
    """Runs a reclaim at most once per ``interval`` seconds per worker."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        libc = _libc()
        self._trim = _find_malloc_trim(libc)
        self._mallinfo2 = _find_mallinfo2(libc)
        self._last = float("-inf")

    @property
    def how(self) -> str:
        return "gc.collect + malloc_trim" if self._trim is not None else "gc.collect"

    def wanted(self, verdict: Verdict, now: float) -> bool:
        """A reclaim comes before a soft-limit retirement (never at the ceiling: no waiting there),
        at most once per interval, and only if glibc's free lists could bring the worker under."""
        return verdict.reason == Reason.SOFT_LIMIT and self.due(now) and self.could_free(verdict.value - verdict.limit)

    def due(self, now: float) -> bool:
        return now - self._last >= self.interval

    def could_free(self, over: int) -> bool:
        """False when glibc says its free lists hold less than ``over`` bytes: then a trim cannot
        bring the worker under its limit, and a leaking worker should not wait for one. Where
        mallinfo2 is missing, assume it could."""
        if self._trim is None or self._mallinfo2 is None:
            return True
        return int(self._mallinfo2().fordblks) >= over

    def describe(self, pid: int, metric: str, verdict: Verdict, after: int, took: float) -> tuple[str, str]:
        """The reclaim's log line, and what it freed in words."""
        freed = f"reclaimed {format_size(verdict.value - after)}" if after < verdict.value else "reclaimed nothing"
        line = (
            f"memguard: {freed} in {took * 1000:.0f} ms ({self.how}) in worker pid={pid}: {metric} "
            f"{format_size(verdict.value)} -> {format_size(after)}, limit {format_size(verdict.limit)}"
        )
        return line, freed

    def run(self, now: float) -> float:
        """Collect and trim; return how long it took, in seconds."""
        self._last = now
        started = time.perf_counter()
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        return time.perf_counter() - started
