"""Pure decisions the master takes over the whole fleet of workers: who retires next, whether a
replacement fits, which worker a server-wide budget takes. No I/O, no gunicorn: the coordinator
gathers the figures and acts on the answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple


class Candidate(NamedTuple):
    """A worker waiting for its turn to retire, with the figures it reported."""

    pid: int
    value: int  # bytes of the enforced metric
    limit: int  # the worker's effective soft limit, 0 if it has none


def overage(candidate: Candidate) -> float:
    """How far over its own limit a worker is, as a fraction of that limit (limits are jittered,
    so raw bytes would favour the worker with the highest limit)."""
    if candidate.limit <= 0:
        return 0.0
    return (candidate.value - candidate.limit) / candidate.limit


def retirement_order(waiting: Sequence[Candidate]) -> list[Candidate]:
    """The furthest over its limit goes first; ties by pid, so the order is stable."""
    return sorted(waiting, key=lambda c: (-overage(c), c.pid))


def free_turns(budget: int, busy: int) -> int:
    """How many more retirements may start now."""
    return max(0, budget - busy)


def has_room(headroom: int | None, expected: int) -> bool:
    """True if one more worker of ``expected`` bytes fits; an unknown headroom does not block."""
    return headroom is None or headroom >= expected


def largest_over_budget(sizes: Mapping[int, int], budget: int) -> int | None:
    """The pid of the largest worker when the sum exceeds ``budget``, else None."""
    if not sizes or sum(sizes.values()) <= budget:
        return None
    return max(sizes, key=lambda pid: (sizes[pid], -pid))


def allowances(values: Mapping[int, int], room: int) -> dict[int, int]:
    """Each worker's share of a server-wide budget: what it holds now plus an equal part of the
    room left (none when over), so together they cannot pass the budget before the next
    measurement whatever their growth rates. The largest-over-budget rule still picks who goes
    when the total is already over."""
    if not values:
        return {}
    part = max(0, room) // len(values)
    return {pid: value + part for pid, value in values.items()}


def fresh_share(budget: int, master: int, workers: int, others: int) -> int:
    """The share a worker about to fork starts with, until the master measures it: an equal part of
    the budget less the master, and never more than the other workers' shares leave, so the shares
    still add up to the budget at most. At least 1 byte: 0 would mean "no share" (none left: it
    retires at its first check, and a crash loop is seen as such)."""
    return max(1, min(max(0, budget - master) // max(1, workers), budget - master - others))
