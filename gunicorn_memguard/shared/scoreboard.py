"""Shared memory between the master and its workers: one fixed-size slot per live worker.

Workers write their latest figures and their retirement into their slot; the master reads a
slot when the worker exits (to say how it ended — gunicorn's ``child_exit`` hook is not told
the exit status) and, for metrics and coordination, while it runs. An anonymous shared mapping
made in the master before the first fork needs no files, locks or threads: each field has one
writer at a time and 8-byte aligned fields are read whole.
"""

from __future__ import annotations

import enum
import math
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ..policy.verdict import REASONS

DEFAULT_SLOTS = 512
SLOT_ATTR = "memguard_slot"  # the attribute of gunicorn's worker object holding its slot index


class State(enum.IntEnum):
    FREE = 0
    STARTING = 1  # claimed by the master for a worker about to fork
    RUNNING = 2
    RETIRING = 3
    EXITED = 4  # left through gunicorn's normal exit path (worker_exit ran)
    OVERRAN = 5  # memguard ended it: its drain outlived graceful_timeout
    WAITING = 6  # over its soft limit, serving on until the master grants it a retirement
    GRANTED = 7  # the master's go-ahead: retire now (the worker moves on to RETIRING)


# pid, state, born, updated, value, rss, limit, requests, retire_started, reason, would_retire, exact, exact_at,
# growth, reclaimed
_SLOT = struct.Struct("<q q d d q q q q d 24s q q d d q")
_SIZE = 192
_OFFSETS = {
    "pid": 0,
    "state": 8,
    "born": 16,
    "updated": 24,
    "value": 32,
    "rss": 40,
    "limit": 48,
    "requests": 56,
    "retire_started": 64,
    "reason": 72,
    "would_retire": 96,
    "exact": 104,
    "exact_at": 112,
    "growth": 120,
    "reclaimed": 128,
}
_Q = struct.Struct("<q")
_D = struct.Struct("<d")


@dataclass(frozen=True)
class SlotView:
    pid: int
    state: State
    born: float  # wall-clock seconds
    updated: float
    value: int  # last reading of the enforced metric (an upper bound while it cleared the limits)
    rss: int
    limit: int  # the worker's effective soft limit, 0 if none
    requests: int
    retire_started: float  # wall-clock seconds, 0 if not retiring
    reason: str
    would_retire: int  # dry run: bit i set once the worker would have retired for policy.REASONS[i]
    exact: int  # last exact reading of the enforced metric (for metrics: ``value`` may be a bound)
    exact_at: float  # when it was read, 0 if never
    growth: float  # the growth monitor's measured floor rate, bytes/s (NaN until it has a full window)
    reclaimed: int  # bytes given back by reclaims (gc.collect + malloc_trim) in this worker


def encode_reasons(reasons: Iterable[str]) -> int:
    """Retirement reasons as bits of ``policy.REASONS`` (unknown ones are dropped)."""
    return sum(1 << REASONS.index(r) for r in set(reasons) if r in REASONS)


def decode_reasons(mask: int) -> list[str]:
    return [reason for i, reason in enumerate(REASONS) if mask & (1 << i)]


class Scoreboard:
    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, slots * _SIZE)  # MAP_SHARED | MAP_ANONYMOUS: survives fork

    def _base(self, index: int) -> int:
        return index * _SIZE

    # -- master side --------------------------------------------------------------------
    def claim(self) -> int | None:
        """Reserve a free slot for a worker about to be forked; None when all are taken."""
        for index in range(self.slots):
            if _Q.unpack_from(self._map, self._base(index) + _OFFSETS["state"])[0] == State.FREE:
                _SLOT.pack_into(
                    self._map, self._base(index), 0, State.STARTING, 0, 0, 0, 0, 0, 0, 0, b"", 0, 0, 0, math.nan, 0
                )
                return index
        return None

    def grant(self, index: int, reason: str) -> None:
        """Tell a worker to retire; it picks this up within 50 ms (waiting) or one check_interval."""
        self._reason(index, reason)
        self.set_state(index, State.GRANTED)

    def release(self, index: int) -> None:
        self.set_state(index, State.FREE)

    def read(self, index: int) -> SlotView:
        (
            pid,
            state,
            born,
            updated,
            value,
            rss,
            limit,
            requests,
            retire_started,
            reason,
            would,
            exact,
            exact_at,
            growth,
            reclaimed,
        ) = _SLOT.unpack_from(self._map, self._base(index))
        return SlotView(
            pid,
            State(state),
            born,
            updated,
            value,
            rss,
            limit,
            requests,
            retire_started,
            reason.rstrip(b"\0").decode("ascii", "replace"),
            would,
            exact,
            exact_at,
            growth,
            reclaimed,
        )

    def occupied(self) -> list[tuple[int, SlotView]]:
        """Every slot in use, with its index (the metrics' bounded worker identity)."""
        return [
            (index, self.read(index))
            for index in range(self.slots)
            if _Q.unpack_from(self._map, self._base(index) + _OFFSETS["state"])[0] != State.FREE
        ]

    # -- worker side --------------------------------------------------------------------
    def start(self, index: int, pid: int, born: float, limit: int) -> None:
        _SLOT.pack_into(
            self._map, self._base(index), pid, State.RUNNING, born, born, 0, 0, limit, 0, 0, b"", 0, 0, 0, math.nan, 0
        )

    def sample(self, index: int, now: float, value: int, rss: int, requests: int) -> None:
        base = self._base(index)
        _D.pack_into(self._map, base + _OFFSETS["updated"], now)
        _Q.pack_into(self._map, base + _OFFSETS["value"], value)
        _Q.pack_into(self._map, base + _OFFSETS["rss"], rss)
        _Q.pack_into(self._map, base + _OFFSETS["requests"], requests)

    def waiting(self, index: int, value: int, reason: str) -> None:
        self._reason(index, reason)
        _Q.pack_into(self._map, self._base(index) + _OFFSETS["value"], value)
        self.set_state(index, State.WAITING)

    def retiring(self, index: int, now: float, reason: str) -> None:
        base = self._base(index)
        self._reason(index, reason)
        _D.pack_into(self._map, base + _OFFSETS["retire_started"], now)
        _Q.pack_into(self._map, base + _OFFSETS["state"], State.RETIRING)

    def set_requests(self, index: int, requests: int) -> None:
        _Q.pack_into(self._map, self._base(index) + _OFFSETS["requests"], requests)

    def exact(self, index: int, now: float, value: int) -> None:
        base = self._base(index)
        _Q.pack_into(self._map, base + _OFFSETS["exact"], value)
        _D.pack_into(self._map, base + _OFFSETS["exact_at"], now)

    def set_growth(self, index: int, rate: float) -> None:
        _D.pack_into(self._map, self._base(index) + _OFFSETS["growth"], rate)

    def add_reclaimed(self, index: int, freed: int) -> None:
        """Add what a reclaim gave back (only the worker itself writes its slot's total)."""
        base = self._base(index) + _OFFSETS["reclaimed"]
        _Q.pack_into(self._map, base, _Q.unpack_from(self._map, base)[0] + freed)

    def would_retire(self, index: int, mask: int) -> None:
        """Dry run: the reasons (bits of ``policy.REASONS``) this worker would have retired for."""
        _Q.pack_into(self._map, self._base(index) + _OFFSETS["would_retire"], mask)

    def set_limit(self, index: int, limit: int) -> None:
        """A re-resolved soft limit (percentage limits after the worker count changed)."""
        _Q.pack_into(self._map, self._base(index) + _OFFSETS["limit"], limit)

    # -- either side ------------------------------------------------------------------
    def state(self, index: int) -> State:
        return State(_Q.unpack_from(self._map, self._base(index) + _OFFSETS["state"])[0])

    def set_state(self, index: int, state: State) -> None:
        _Q.pack_into(self._map, self._base(index) + _OFFSETS["state"], state)

    def _reason(self, index: int, reason: str) -> None:
        struct.pack_into(
            "<24s", self._map, self._base(index) + _OFFSETS["reason"], reason.encode("ascii", "replace")[:24]
        )
