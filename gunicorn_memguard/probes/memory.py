"""Read the current process's memory: RSS cheaply on every request, USS/PSS only when needed.

Measured costs: ``pread`` on an fd of ``/proc/self/statm`` kept open costs ~2 µs whatever the
process size (plus checks that the fd is still memguard's, see ``MemoryProbe``); psutil's
``memory_info()`` costs 17-56 µs, which is why the hot path
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
    reporting the process that opened it.

    The statm fd is memguard's, but the app shares the process's fd table: code that closes fds
    it does not own (a daemonizing library, a "close everything above 2" loop) can close it, and
    the next file the app opens can get the same number. So the probe never trusts the number
    alone: every read must look like statm (7 fields, the last one always 0 since Linux 2.6), and
    every ``VERIFY_EVERY``-th read, and every read that fails or looks wrong, compares the fd's
    ``st_dev``/``st_ino`` with those it opened. An fd that is no longer the one opened is
    forgotten, never closed nor read again; the probe opens statm afresh (at most
    ``MAX_REOPENS`` times) and falls back to psutil after that. Cost: 0.3-0.6 µs on top of the
    ~2.5 µs read (the shape check, and an ``fstat`` every ``VERIFY_EVERY``-th read).
    """

    VERIFY_EVERY = 32
    MAX_REOPENS = 3

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._statm: int | None = None
        self._identity: tuple[int, int] | None = None
        self._reads = 0
        self.reopens = 0  # how often the fd had to be opened again (it was closed or replaced)
        self._rollup_ok = True
        self._process: psutil.Process | None = None
        self._open()

    def _open(self) -> None:
        try:
            fd = os.open(STATM, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # not Linux, or /proc not mounted: psutil below
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)  # just opened by us: ours to close
            return
        self._statm, self._identity = fd, (st.st_dev, st.st_ino)

    def _owns(self, fd: int) -> bool:
        """Is ``fd`` still the statm file this probe opened?"""
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _statm_rss(self, fd: int) -> int | None:
        """The slow path: a failed, odd or due-for-verification read. RSS if ``fd`` is still the
        statm fd this probe opened, else from a fresh one, or None (then psutil)."""
        if self._owns(fd):
            try:
                fields = os.pread(fd, 128, 0).split()
                if len(fields) == 7 and fields[6] == b"0":
                    return int(fields[1]) * self._page
            except (OSError, ValueError):
                pass
            self.close()  # ours, but unreadable
        else:
            self._statm = None  # closed or replaced by someone else: not ours to close or read
        if self.reopens >= self.MAX_REOPENS:
            return None
        self.reopens += 1
        self._open()
        return None if self._statm is None else self._statm_rss(self._statm)

    def _psutil(self) -> psutil.Process:
        if self._process is None:
            self._process = psutil.Process()
        return self._process

    def rss(self) -> int:
        """Resident set size in bytes: the cheap upper bound of USS and PSS."""
        fd = self._statm
        if fd is not None:
            self._reads += 1
            if self._reads % self.VERIFY_EVERY:
                try:
                    fields = os.pread(fd, 128, 0).split()
                    if len(fields) == 7 and fields[6] == b"0":
                        return int(fields[1]) * self._page
                except (OSError, ValueError):
                    pass
            value = self._statm_rss(fd)
            if value is not None:
                return value
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
        """Close the statm fd if it is still the one this probe opened; forget it either way."""
        fd, self._statm = self._statm, None
        if fd is not None and self._owns(fd):
            try:
                os.close(fd)
            except OSError:
                pass


def process_rollup(pid: int) -> dict[str, int] | None:
    """Another process's PSS, USS and RSS in bytes from its ``smaps_rollup`` (sub-millisecond;
    psutil reads the whole ``smaps``), None if it is gone (a zombie's has no values) or unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            return _parse_rollup(fh.read().decode("ascii", "replace"))
    except (OSError, KeyError, ValueError):
        return None


def process_pss(pid: int) -> int | None:
    """Another process's PSS in bytes (the master reads its workers'), None if it is gone.

    PSS splits each shared page between the processes that map it, so a sum over workers counts
    the master's copy-on-write pages once, as the kernel charges them."""
    rollup = process_rollup(pid)
    if rollup is not None:
        return rollup["pss"]
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
