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


# Each slot's fields, declared once: name, struct code, and what it holds.
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("pid", "q", "the worker's pid, once its guard started"),
    ("state", "q", "a State"),
    ("born", "d", "wall-clock seconds when its guard started (app loaded)"),
    ("updated", "d", "when it last published a sample"),
    ("value", "q", "last reading of the enforced metric (an upper bound while it cleared the limits)"),
    ("rss", "q", "last RSS"),
    ("limit", "q", "the worker's effective soft limit, 0 if none"),
    ("requests", "q", "requests served"),
    ("retire_started", "d", "wall-clock seconds, 0 if not retiring"),
    ("reason", "24s", "why it retires or waits (a policy.Reason key)"),
    ("would_retire", "q", "dry run: bit i set once the worker would have retired for policy.REASONS[i]"),
    ("exact", "q", "last exact reading of the enforced metric (for metrics: ``value`` may be a bound)"),
    ("exact_at", "d", "when it was read, 0 if never"),
    ("growth", "d", "the growth monitor's floor rate, bytes/s (NaN until it has a full window)"),
    ("reclaimed", "q", "bytes given back by reclaims (gc.collect + malloc_trim) in this worker"),
    ("due", "d", "wall-clock seconds when it projects to reach its soft limit, 0 if not soon"),
    ("spawned", "d", "wall-clock seconds when the master forked it (slot claimed)"),
    ("allowance", "q", "its share of the server-wide budget, in the enforced metric, 0 if none (master)"),
)
_SLOT = struct.Struct("<" + " ".join(code for _, code, _ in FIELDS))
_SIZE = 192
assert _SLOT.size <= _SIZE
_OFFSETS = {
    name: struct.calcsize("<" + " ".join(code for _, code, _ in FIELDS[:i])) for i, (name, _, _) in enumerate(FIELDS)
}
_Q = struct.Struct("<q")
_D = struct.Struct("<d")


@dataclass(frozen=True)
class SlotView:
    """One slot as read (the fields of ``FIELDS``, in order)."""

    pid: int
    state: State
    born: float
    updated: float
    value: int
    rss: int
    limit: int
    requests: int
    retire_started: float
    reason: str
    would_retire: int
    exact: int
    exact_at: float
    growth: float
    reclaimed: int
    due: float
    spawned: float
    allowance: int


assert tuple(SlotView.__dataclass_fields__) == tuple(name for name, _, _ in FIELDS)
_EMPTY = {name: (b"" if code == "24s" else 0) for name, code, _ in FIELDS} | {"growth": math.nan}


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
    def _pack(self, index: int, **fields: object) -> None:
        values = _EMPTY | fields
        _SLOT.pack_into(self._map, self._base(index), *(values[name] for name, _, _ in FIELDS))

    def claim(self, now: float = 0.0) -> int | None:
        """Reserve a free slot for a worker about to be forked; None when all are taken."""
        for index in range(self.slots):
            if _Q.unpack_from(self._map, self._base(index) + _OFFSETS["state"])[0] == State.FREE:
                self._pack(index, state=State.STARTING, spawned=now)
                return index
        return None

    def grant(self, index: int, reason: str) -> None:
        """Tell a worker to retire; it picks this up within 50 ms (waiting) or one check_interval.
        A worker already retiring on its own (its ceiling, its share of the budget) is left as it is:
        the grant would overwrite the state and reason it wrote, and its exit would be misread."""
        if self.state(index) not in (State.WAITING, State.RUNNING):
            return
        self._reason(index, reason)
        self.set_state(index, State.GRANTED)

    def set_allowance(self, index: int, allowance: int) -> None:
        """A worker's share of the server-wide budget (``policy.fleet.allowances``)."""
        _Q.pack_into(self._map, self._base(index) + _OFFSETS["allowance"], allowance)

    def release(self, index: int) -> None:
        self.set_state(index, State.FREE)

    def read(self, index: int) -> SlotView:
        fields = list(_SLOT.unpack_from(self._map, self._base(index)))
        fields[1] = State(fields[1])
        fields[9] = fields[9].rstrip(b"\0").decode("ascii", "replace")
        return SlotView(*fields)

    def occupied(self) -> list[tuple[int, SlotView]]:
        """Every slot in use, with its index (the metrics' bounded worker identity)."""
        return [
            (index, self.read(index))
            for index in range(self.slots)
            if _Q.unpack_from(self._map, self._base(index) + _OFFSETS["state"])[0] != State.FREE
        ]

    # -- worker side --------------------------------------------------------------------
    def start(self, index: int, pid: int, born: float, limit: int) -> None:
        base = self._base(index)
        spawned = _D.unpack_from(self._map, base + _OFFSETS["spawned"])[0]
        allowance = self.allowance(index)
        self._pack(
            index, pid=pid, state=State.RUNNING, born=born, updated=born, limit=limit, spawned=spawned,
            allowance=allowance,
        )  # fmt: skip

    def allowance(self, index: int) -> int:
        """Its share of the server-wide budget, as the master last set it (0: none)."""
        return int(_Q.unpack_from(self._map, self._base(index) + _OFFSETS["allowance"])[0])

    def set_due(self, index: int, due: float) -> None:
        """When this worker projects to reach its soft limit (0: not soon): the master may start its
        replacement now."""
        _D.pack_into(self._map, self._base(index) + _OFFSETS["due"], due)

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
