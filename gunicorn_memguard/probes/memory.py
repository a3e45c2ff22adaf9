"""Read the current process's memory: RSS cheaply on every request, USS/PSS only when needed.

Measured costs: ``pread`` on an fd of ``/proc/self/statm`` kept open costs ~2 µs
whatever the process size; psutil's ``memory_info()`` costs 17-56 µs, which is why the hot path
does not use it. ``/proc/self/smaps_rollup`` (USS, PSS) costs 0.4-17 ms, so it is read only when
RSS, an upper bound of both, is over a limit. psutil is the fallback where /proc is missing.
"""

from __future__ import annotations

import os

import psutil

STATM = "/proc/self/statm"
SMAPS_ROLLUP = "/proc/self/smaps_rollup"


class ProbeError(RuntimeError):
    """Memory could not be read by any means."""


def _parse_rollup(text: str) -> dict[str, int]:
    """Return PSS and USS in bytes from smaps_rollup text (values are in kB)."""
    kb: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kb[key] = int(parts[0])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0) + kb.get("Private_Hugetlb", 0)
    return {"pss": kb["Pss"] * 1024, "uss": uss * 1024, "rss": kb["Rss"] * 1024}


class MemoryProbe:
    """This process's memory. Create it in the worker after fork: an inherited statm fd keeps
    reporting the process that opened it."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._statm: int | None = None
        self._rollup_ok = True
        self._process: psutil.Process | None = None
        try:
            self._statm = os.open(STATM, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._statm = None  # not Linux, or /proc not mounted: psutil below

    def _psutil(self) -> psutil.Process:
        if self._process is None:
            self._process = psutil.Process()
        return self._process

    def rss(self) -> int:
        """Resident set size in bytes: the cheap upper bound of USS and PSS."""
        if self._statm is not None:
            try:
                return int(os.pread(self._statm, 128, 0).split()[1]) * self._page
            except (OSError, ValueError, IndexError):
                self.close()  # unreadable now: stay on psutil from here on
        try:
            return int(self._psutil().memory_info().rss)
        except psutil.Error as exc:
            raise ProbeError(f"cannot read RSS: {exc}") from exc

    def read(self, metric: str) -> int:
        """The exact value of ``metric`` ("rss", "uss" or "pss") in bytes."""
        if metric == "rss":
            return self.rss()
        if self._rollup_ok:
            try:
                with open(SMAPS_ROLLUP, "rb") as fh:
                    return _parse_rollup(fh.read().decode("ascii", "replace"))[metric]
            except (OSError, KeyError, ValueError):
                self._rollup_ok = False  # old kernel or no /proc: psutil below
        try:
            return int(getattr(self._psutil().memory_full_info(), metric))
        except (psutil.Error, AttributeError) as exc:
            raise ProbeError(f"cannot read {metric.upper()}: {exc}") from exc

    def close(self) -> None:
        if self._statm is not None:
            fd, self._statm = self._statm, None
            os.close(fd)


def process_pss(pid: int) -> int | None:
    """Another process's PSS in bytes (the master reads its workers'), None if it is gone.

    PSS splits each shared page between the processes that map it, so a sum over workers counts
    the master's copy-on-write pages once, as the kernel charges them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            return _parse_rollup(fh.read().decode("ascii", "replace"))["pss"]
    except (OSError, KeyError, ValueError):
        pass
    try:
        return int(psutil.Process(pid).memory_full_info().pss)
    except (psutil.Error, AttributeError):
        return None


def own_rss() -> int:
    """This process's resident set size in bytes, once (the master's, before the first fork)."""
    return int(psutil.Process().memory_info().rss)


def available_memory() -> int:
    """Bytes the host can still give without swapping (``MemAvailable``), for a spawn-first
    replacement when there is no container limit."""
    return int(psutil.virtual_memory().available)
