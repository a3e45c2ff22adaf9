"""Leak forensics (``MEMGUARD_TRACE_ALLOCATIONS``): trace the last stretch of a worker's life and,
when it retires, name the lines that allocated what it still holds.

Past the configured share of its limit a worker starts ``tracemalloc``; it only ever traces
allocations made from then on, so one snapshot at retirement holds exactly the growth since: the
blocks allocated since tracing began and still alive. No baseline snapshot is needed. Tracing slows
a worker (see docs/forensics.md for the figures) and tracemalloc's own memory counts in its USS, so
it runs only in that last stretch and in at most ``MEMGUARD_TRACE_WORKERS`` workers at once
(``shared/tracing.py``).

At retirement the drain starts first; the snapshot is taken on a thread of its own, tracing stops
at once, and the grouping (Python code that yields the GIL) runs while the worker drains, so an
event loop still finishing requests keeps its turns. Sites are grouped by the innermost frame of
the app: the first frame, from the allocation outwards, outside the standard library, site-packages
and memguard, so a leak through a library (a cache, a serializer) is named by the app's line that
called it; the library line where the allocation happened is shown beside it.

A fault here is one log line and forensics off for this worker; the guard never sees it.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import time
import tracemalloc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..settings import Settings
from ..shared.tracing import TraceSlots
from ..units import format_percent, format_size
from . import native
from .publish import Publisher

TOP_SITES = 5
# a snapshot and its grouping, while they run: at most this many times tracemalloc's own memory
# (measured 3.4 ×: 146 MiB beside 43 MiB for 900,000 traced blocks of 5 frames)
SNAPSHOT_FACTOR = 4
# How long a worker on its way out waits for its report (a snapshot takes milliseconds to a few
# hundred of them for a million live blocks).
FINISH_TIMEOUT = 5.0
# How often a worker past its threshold tries again for a slot while all are taken.
CLAIM_RETRY = 1.0


@dataclass(frozen=True)
class Site:
    """One allocation site: the app's line, what it allocated since tracing began and still holds."""

    file: str
    line: int
    size: int  # bytes
    count: int  # blocks
    origin: str | None = None  # "file:line" of the allocation itself, when in a library below the app's line

    @property
    def place(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Report:
    share: float  # the threshold, as a share of the limit
    limit: int
    start: int  # the reading when tracing began
    since: float  # seconds traced
    traced: int  # bytes allocated since tracing began and still alive
    blocks: int
    overhead: int  # tracemalloc's own memory at the snapshot
    took: float  # seconds: snapshot and grouping
    frames: int
    sites: list[Site]


class Places:
    """Which source files are the app's, and how a file is shown: relative to the working directory,
    else to the ``sys.path`` entry it was imported from."""

    def __init__(self, cwd: str, library: Iterable[str], roots: Iterable[str] = ()) -> None:
        self.cwd = os.path.join(cwd, "")
        self.not_the_app = tuple(_directory(d) for d in library)
        self.roots = tuple(_directory(d) for d in roots if d)
        self._known: dict[str, bool] = {}

    @classmethod
    def here(cls) -> Places:
        paths = sysconfig.get_paths()
        library = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
        library.update(site.getsitepackages())
        library.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # memguard itself
        return cls(os.getcwd(), library, sys.path)

    def is_library(self, filename: str) -> bool:
        known = self._known.get(filename)
        if known is None:
            # "<frozen importlib._bootstrap>", "<string>": the interpreter's own, or code without a file
            path = os.path.abspath(filename)
            known = self._known[filename] = filename.startswith("<") or path.startswith(self.not_the_app)
        return known

    def show(self, filename: str) -> str:
        path = os.path.abspath(filename)
        if path.startswith(self.cwd):
            return path[len(self.cwd) :]
        within = [d for d in self.roots if path.startswith(d)]  # as its module is named: json/decoder.py
        return path[len(max(within, key=len)) :] if within else filename


def _directory(path: str) -> str:
    return os.path.join(os.path.abspath(path), "")


def top_sites(stats: Iterable[tracemalloc.Statistic], places: Places, limit: int = TOP_SITES) -> list[Site]:
    """The largest sites of ``snapshot.statistics("traceback")``, grouped by the app's innermost frame
    (the innermost frame when every frame is a library's)."""
    totals: dict[tuple[str, int], list[int]] = {}
    origins: dict[tuple[str, int], dict[tuple[str, int], int]] = {}
    for stat in stats:
        frames = list(reversed(stat.traceback))  # tracemalloc lists the oldest frame first
        if not frames:
            continue
        app = next((f for f in frames if not places.is_library(f.filename)), frames[0])
        key = (app.filename, app.lineno)
        total = totals.setdefault(key, [0, 0])
        total[0] += stat.size
        total[1] += stat.count
        if frames[0] is not app:
            where = (frames[0].filename, frames[0].lineno)
            below = origins.setdefault(key, {})
            below[where] = below.get(where, 0) + stat.size
    ranked = sorted(totals.items(), key=lambda item: item[1][0], reverse=True)[:limit]
    sites = []
    for (filename, line), (size, count) in ranked:
        within = origins.get((filename, line), {})
        origin = None
        if within:
            where_file, where_line = max(within, key=within.__getitem__)  # the library line that allocated most
            origin = f"{places.show(where_file)}:{where_line}"
        sites.append(Site(places.show(filename), line, size, count, origin))
    return sites


def header_line(pid: int, report: Report) -> str:
    return (
        f"memguard: worker pid={pid} allocations since it passed {format_percent(report.share)} of its limit "
        f"{format_size(report.limit)} (at {format_size(report.start)}, {report.since:.1f}s ago): "
        f"{format_size(report.traced)} in {report.blocks} blocks still held; top sites below "
        f"(tracemalloc used {format_size(report.overhead)}, {report.frames} frames; the report took "
        f"{report.took * 1000:.0f} ms)"
    )


def site_line(pid: int, rank: int, site: Site) -> str:
    via = f" (allocated in {site.origin})" if site.origin else ""
    return (
        f"memguard: worker pid={pid} allocation site {rank}: {site.place} +{format_size(site.size)} "
        f"in {site.count} blocks{via}"
    )


class Forensics:
    """One worker's tracing: started by ``observe`` past the threshold, reported by ``retiring``.

    ``observe`` runs in every check (after a request, or in the sampler thread): a comparison until
    the threshold is passed, one lock and a ``tracemalloc.start`` then. A dry run retires nothing,
    so it traces nothing."""

    def __init__(self, settings: Settings, slots: TraceSlots | None, log: Any, publisher: Publisher) -> None:
        self.share = None if settings.dry_run else settings.trace_allocations
        self.frames = settings.trace_frames
        self.slots = slots
        self.log = log
        self.publisher = publisher
        self.pid = os.getpid()
        self._off = self.share is None  # set for good once reported, refused or faulted
        self._lock = native.allocate_lock()  # observe runs in two threads: one starts tracing
        self._slot: int | None = None
        self._started = 0.0  # monotonic
        self._start = 0
        self._limit = 0
        self._next_try = 0.0
        self._said_full = False
        self._done: native.StopFlag | None = None

    @property
    def tracing(self) -> bool:
        return self._slot is not None

    def observe(self, value: int, limit: int | None) -> None:
        """A reading of the enforced metric against the worker's soft limit (or its ceiling)."""
        if self._off or self._slot is not None or not limit or self.share is None or value < self.share * limit:
            return
        now = time.monotonic()
        if now < self._next_try or not self._lock.acquire(False):
            return
        try:
            self._begin(value, limit, now)
        except Exception as exc:  # noqa: BLE001 - forensics must never take the guard down
            self._fault(f"could not start tracing allocations ({exc!r})")
        finally:
            self._lock.release()

    def _begin(self, value: int, limit: int, now: float) -> None:
        assert self.share is not None
        if self._off or self._slot is not None:
            return
        if tracemalloc.is_tracing():
            self._off = True
            self.log.warning(
                "memguard: worker pid=%s: tracemalloc is already tracing (PYTHONTRACEMALLOC, or the app started "
                "it); memguard leaves it to its owner and reports no allocation sites for this worker",
                self.pid,
            )
            return
        if self.slots is None:
            self._off = True
            self.log.error(
                "memguard: worker pid=%s: no shared tracing slots (the master could not make them); not traced",
                self.pid,
            )
            return
        slot = self.slots.claim()
        if slot is None:
            self._next_try = now + CLAIM_RETRY
            if not self._said_full:
                self._said_full = True
                self.log.info(
                    "memguard: worker pid=%s passed %s of its limit but is not traced: MEMGUARD_TRACE_WORKERS=%d "
                    "worker(s) trace already; it tries again while it serves",
                    self.pid, format_percent(self.share), self.slots.count,
                )  # fmt: skip
            return
        try:
            tracemalloc.start(self.frames)
        except BaseException:
            self.slots.release(slot)
            raise
        self._slot, self._started, self._start, self._limit = slot, now, value, limit
        self.log.info(
            "memguard: worker pid=%s passed %s of its limit (%s of %s): tracing allocations (%d frames) until "
            "it retires",
            self.pid, format_percent(self.share), format_size(value), format_size(limit), self.frames,
        )  # fmt: skip

    def retiring(self, room: int | None) -> None:
        """Its drain has started: report from a thread of its own — if the snapshot fits in ``room``
        (bytes left below the worker's ceiling; None: no ceiling). A snapshot and its grouping take
        ~3.4 × tracemalloc's own memory while they run (900,000 blocks: 146 MiB beside 43 MiB), so
        a report that could take the worker past its ceiling is not made: the limit holds."""
        with self._lock:
            self._off = True
            if self._slot is None or self._done is not None:
                return
            need = SNAPSHOT_FACTOR * tracemalloc.get_tracemalloc_memory()
            if room is not None and need > room:
                self._stop_tracing()
                self.log.warning(
                    "memguard: worker pid=%s: no allocation report: its snapshot would need ~%s, more than the %s "
                    "left below its ceiling (trace fewer blocks: a higher MEMGUARD_TRACE_ALLOCATIONS, or fewer "
                    "MEMGUARD_TRACE_FRAMES)",
                    self.pid, format_size(need), format_size(max(room, 0)),
                )  # fmt: skip
                return
            self._done = native.StopFlag()
        try:
            native.start_thread(self._report)
        except Exception as exc:  # noqa: BLE001
            self._fault(f"could not start its report ({exc!r})")
            self._done.set()

    def _report(self) -> None:
        assert self._done is not None and self.share is not None
        try:
            began = time.perf_counter()
            snapshot = tracemalloc.take_snapshot()
            overhead = tracemalloc.get_tracemalloc_memory()
            since = time.monotonic() - self._started
            self._stop_tracing()  # the drain goes on untraced
            stats = snapshot.statistics("traceback")
            del snapshot
            sites = top_sites(stats, Places.here())
            report = Report(
                share=self.share, limit=self._limit, start=self._start, since=since,
                traced=sum(s.size for s in stats), blocks=sum(s.count for s in stats), overhead=overhead,
                took=time.perf_counter() - began, frames=self.frames, sites=sites,
            )  # fmt: skip
            del stats
            self.log.warning(header_line(self.pid, report))
            for rank, found in enumerate(sites, 1):
                self.log.warning(site_line(self.pid, rank, found))
            self.publisher.allocations(report)
        except Exception as exc:  # noqa: BLE001
            self._fault(f"could not report its allocation sites ({exc!r})")
        finally:
            self._done.set()

    def finish(self, timeout: float = FINISH_TIMEOUT) -> None:
        """On the way out: let a report under way end first (at most ``timeout`` seconds)."""
        if self._done is not None:
            self._done.wait(timeout)

    def _stop_tracing(self) -> None:
        if self._slot is None:
            return
        slot, self._slot = self._slot, None
        if tracemalloc.is_tracing():
            tracemalloc.stop()  # frees its traces
        if self.slots is not None:
            self.slots.release(slot)

    def _fault(self, why: str) -> None:
        self._off = True
        try:
            self._stop_tracing()
        except Exception:  # noqa: BLE001, S110 - already reporting a fault; the slot frees when the worker ends
            pass
        self.log.error("memguard: worker pid=%s %s; it keeps serving without leak forensics", self.pid, why)
