"""Read a JSON event log (``MEMGUARD_EVENT_LOG``) back: the events, and each worker's samples as a
lifetime for ``memguard report`` and ``memguard replay``."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from typing import Any

from ..policy.replay import Lifetime, Point

Event = dict[str, Any]


class TraceError(ValueError):
    """The file cannot be read as an event log; the message says why."""


@dataclass
class Trace:
    events: list[Event]
    skipped: int = 0  # lines that were not a JSON object (a torn line, say)
    by_kind: dict[str, list[Event]] = field(default_factory=dict)

    def of(self, kind: str) -> list[Event]:
        return self.by_kind.get(kind, [])

    @property
    def start(self) -> float:
        return min(e["ts"] for e in self.events)

    @property
    def end(self) -> float:
        return max(e["ts"] for e in self.events)

    @property
    def metric(self) -> str:
        return next((e["metric"] for e in self.of("sample")), "uss")

    @cached_property
    def lifetimes(self) -> list[Lifetime]:
        """One per worker pid that sampled, its points in time order."""
        samples: dict[int, list[Event]] = defaultdict(list)
        for event in self.of("sample"):
            samples[event["pid"]].append(event)
        result = []
        for pid, events in samples.items():
            events.sort(key=lambda e: e["ts"])
            points = tuple(Point(e["ts"], int(e["value"]), int(e.get("requests") or 0)) for e in events)
            result.append(Lifetime(pid, events[0]["ts"] - events[0].get("age", 0.0), points, events[-1].get("limit")))
        return result

    def slots(self) -> dict[int, int | None]:
        """pid -> the worker slot it sampled from."""
        return {e["pid"]: e.get("worker") for e in self.of("sample")}

    def interval(self) -> float:
        """The median time between two samples of one worker: the trace's resolution."""
        gaps = [b.time - a.time for life in self.lifetimes for a, b in pairwise(life.points)]
        return statistics.median(gaps) if gaps else 0.0

    def config(self) -> dict[str, str] | None:
        """The settings the run was given, from its ``config`` event (the last, if restarted)."""
        configs = self.of("config")
        return dict(configs[-1]["settings"]) if configs else None

    def limits(self) -> Event | None:
        """The master's first resolution of the per-worker limits."""
        found = self.of("limits")
        return found[0] if found else None


def read_trace(path: str) -> Trace:
    """Parse every line; lines that are not a JSON object with ``ts`` and ``event`` are counted and skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise TraceError(f"cannot read the event log {path!r}: {exc.strerror or exc}") from None
    events: list[Event] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(event, dict) and isinstance(event.get("ts"), (int, float)) and "event" in event:
            events.append(event)
        else:
            skipped += 1
    if not events:
        raise TraceError(
            f"{path!r} holds no events ({skipped} unreadable line(s)); expected the JSON lines file that "
            "MEMGUARD_EVENT_LOG writes"
        )
    events.sort(key=lambda e: e["ts"])
    by_kind: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_kind[event["event"]].append(event)
    return Trace(events, skipped, dict(by_kind))
