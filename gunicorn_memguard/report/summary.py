"""``memguard report``'s text: what an event log says happened, in sections that stay a screenful or
two for a day of 16 workers (one row per hour, one per worker slot; long lists are cut)."""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence

from ..units import format_size, span
from .trace import Event, Trace

EXPLAINED = ("graceful", "overran", "killed_while_retiring", "exited")  # a retirement's end, or the worker's own exit
LISTED = 10  # at most this many lines of breaker trips or deaths, then a count of the rest


def _hour(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:00", time.gmtime(ts))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return lines


def _cut(lines: list[str]) -> list[str]:
    return lines if len(lines) <= LISTED else [*lines[:LISTED], f"  ... and {len(lines) - LISTED} more"]


def retirements_by_hour(trace: Trace) -> list[str]:
    events = [(e, "") for e in trace.of("retire")] + [(e, "would ") for e in trace.of("would_retire")]
    if not events:
        return ["Retirements: none"]
    keys = sorted({f"{prefix}{e.get('reason')}" for e, prefix in events})
    hours: dict[str, Counter[str]] = defaultdict(Counter)
    for event, prefix in events:
        hours[_hour(event["ts"])][f"{prefix}{event.get('reason')}"] += 1
    rows = [[hour, *(str(hours[hour][k]) for k in keys), str(sum(hours[hour].values()))] for hour in sorted(hours)]
    totals = Counter(f"{prefix}{e.get('reason')}" for e, prefix in events)
    rows.append(["total", *(str(totals[k]) for k in keys), str(len(events))])
    return ["Retirements by hour (UTC; 'would' = dry run)", *_columns(["hour", *keys, "total"], rows)]


def lifetimes(trace: Trace) -> list[str]:
    exits = trace.of("exit")
    if not exits:
        return ["Worker lifetimes: no worker exited"]
    ages = sorted(float(e.get("age") or 0.0) for e in exits)
    outcomes = Counter(str(e.get("outcome")) for e in exits).most_common()
    requests = [int(e.get("requests") or 0) for e in exits]
    p90 = ages[min(len(ages) - 1, int(0.9 * len(ages)))]
    return [
        f"Worker lifetimes: {len(exits)} ended ({', '.join(f'{o} {n}' for o, n in outcomes)})",
        f"  age: min {span(ages[0])}, median {span(statistics.median(ages))}, p90 {span(p90)}, max {span(ages[-1])}; "
        f"requests: median {statistics.median(requests):g}, max {max(requests)}",
    ]


def memory_per_slot(trace: Trace) -> list[str]:
    samples: dict[int, list[Event]] = defaultdict(list)
    for event in trace.of("sample"):
        if event.get("worker") is not None:
            samples[int(event["worker"])].append(event)
    if not samples:
        return ["Memory per worker: no samples"]
    rows = []
    for slot in sorted(samples):
        events = samples[slot]
        values = [int(e["value"]) for e in events]
        limits = [int(e["limit"]) for e in events if e.get("limit")]
        rows.append([
            str(slot), str(len({e["pid"] for e in events})), format_size(statistics.median(values)),
            format_size(max(values)), format_size(statistics.median(limits)) if limits else "none",
        ])  # fmt: skip
    return [
        f"Memory per worker slot ({trace.metric}; typical = median of its samples)",
        *_columns(["slot", "workers", "typical", "peak", "limit"], rows),
    ]


def reclaims(trace: Trace) -> list[str]:
    found = trace.of("reclaim")
    if not found:
        return ["Reclaims: none"]
    freed = [int(e.get("freed") or 0) for e in found]
    took = [float(e.get("took") or 0.0) for e in found]
    median = format_size(statistics.median(freed))
    return [
        f"Reclaims: {len(found)}, freed {format_size(sum(freed))} in all (median {median}, max "
        f"{format_size(max(freed))}; took median {statistics.median(took) * 1000:.1f} ms)"
    ]


def breaker_trips(trace: Trace) -> list[str]:
    found = trace.of("breaker_trip")
    lines = [f"  {_when(e['ts'])}  pid {e['pid']}  {e.get('why')}: {e.get('detail')}" for e in found]
    return [f"Crash-loop breaker trips: {len(found)}", *_cut(lines)]


def deaths(trace: Trace) -> list[str]:
    found = [e for e in trace.of("exit") if e.get("outcome") not in EXPLAINED]
    oom = sum(1 for e in found if e.get("outcome") == "oom_killed")
    lines = []
    for e in found:
        how = e.get("signal") or (f"status {e['code']}" if e.get("code") is not None else "?")
        lines.append(
            f"  {_when(e['ts'])}  slot {e.get('worker')}  pid {e['pid']}  {e.get('outcome')} ({how}), "
            f"last {format_size(int(e.get('value') or 0))} at age {span(float(e.get('age') or 0.0))}"
        )
    return [f"Unexplained deaths and OOM kills: {len(found)} ({oom} OOM-killed)", *_cut(lines)]


def summary(trace: Trace, name: str) -> str:
    slots = {e.get("worker") for e in trace.of("sample")} - {None}
    head = (
        f"memguard report: {name}: {_when(trace.start)} to {_when(trace.end)} UTC "
        f"({span(trace.end - trace.start)})\n{len(slots)} worker slots, {len(trace.lifetimes)} workers sampled, "
        f"{len(trace.events)} events" + (f", {trace.skipped} unreadable line(s) skipped" if trace.skipped else "")
    )
    sections = [
        [head],
        retirements_by_hour(trace),
        lifetimes(trace),
        memory_per_slot(trace),
        reclaims(trace),
        breaker_trips(trace),
        deaths(trace),
    ]
    return "\n\n".join("\n".join(section) for section in sections) + "\n"
