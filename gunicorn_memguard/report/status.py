"""The status document ``memguard top`` reads from the master's status socket: one JSON object,
built from a `Snapshot` (the figures the Prometheus endpoint serves) and what only the master
knows — its own identity, the container's working set, the last exits. Its fields are listed in
docs/top.md; ``VERSION`` changes when one changes meaning."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..shared.scoreboard import SlotView, State
from .snapshot import Snapshot

VERSION = 1
RECENT_EXITS = 10  # the exits the document keeps, newest first

# What a worker is doing, as `memguard top` shows it.
STATES = {
    State.STARTING: "starting",  # forked, its app not loaded yet
    State.RUNNING: "serving",
    State.WAITING: "waiting",  # over its soft limit, serving on until the master gives it its turn
    State.GRANTED: "draining",
    State.RETIRING: "draining",  # stopped accepting, finishing its requests
}


def worker_row(slot: int, view: SlotView, now: float, ceiling: int | None) -> dict[str, Any]:
    """One worker. ``memory`` is the enforced metric's last exact reading (taken at least every
    MEMGUARD_REPORT_INTERVAL, as the Prometheus endpoint shows it), ``memory_bound`` the guard's
    latest figure (between exact reads, an upper bound: RSS may stand in for USS/PSS)."""
    return {
        "slot": slot,
        "pid": view.pid,
        "state": STATES.get(view.state, view.state.name.lower()),
        "age": round(now - view.born, 3),
        "requests": view.requests,
        "memory": view.exact if view.exact_at else None,
        "memory_age": round(now - view.exact_at, 3) if view.exact_at else None,
        "memory_bound": view.value,
        "rss": view.rss,
        "limit": view.limit or None,
        "ceiling": ceiling,
        "share": view.allowance or None,
        "growth": None if math.isnan(view.growth) else round(view.growth, 3),
        "reason": view.reason or None,
    }


def document(
    taken: Snapshot,
    server: Mapping[str, Any],
    starting: Mapping[int, int],
    working_set: int | None,
    exits: Iterable[Mapping[str, Any]],
    now: float,
) -> dict[str, Any]:
    """``server``: the master's pid, name, bind addresses, versions, worker count, metric;
    ``starting``: slot -> pid of the workers whose guard has not started (only the master knows
    their pids); ``exits``: the last exits, oldest first."""
    # no worker serves past its ceiling: the hard limit if set, else MEMGUARD_MAX_MEMORY unjittered
    ceiling = taken.hard or taken.soft
    workers = [worker_row(slot, view, now, ceiling) for slot, view in taken.workers]
    workers += [
        {"slot": slot, "pid": starting[slot], "state": "starting"} for slot in taken.starting if slot in starting
    ]
    workers.sort(key=lambda row: row["slot"])
    live = [view for _, view in taken.workers]
    return {
        "version": VERSION,
        "time": now,
        "server": dict(server),
        "limits": {"soft": taken.soft, "hard": taken.hard, "total_budget": taken.budget},
        "container": {"limit": taken.container_limit, "working_set": working_set},
        "totals": {
            "workers": len(workers),
            "memory": sum(view.exact for view in live if view.exact_at),
            "rss": sum(view.rss for view in live),
            "requests": sum(view.requests for view in live),
            "retirements": dict(taken.totals.retirements),
            "exits": dict(taken.totals.exits),
            "reclaimed": taken.totals.reclaimed,
            "breaker_open": taken.breaker_open,
            "breaker_trips": taken.breaker_trips,
        },
        "workers": workers,
        "exits": list(exits)[::-1][:RECENT_EXITS],
    }
