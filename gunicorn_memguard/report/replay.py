"""``memguard replay``'s side that is not pure: candidates from settings (parsed by the real settings
parser, so bad values get the same errors), the trace from the event log, and the table."""

from __future__ import annotations

import shlex
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..policy import Growth
from ..policy.percentages import per_worker
from ..policy.replay import MAX_REQUESTS, Candidate, Lifetime, Outcome, chains, handover, replay
from ..settings import ENV_PREFIX, Settings, SettingsError, load_settings
from ..units import Share, format_duration, format_size, span
from .trace import Event, Trace

SET_FORM = "NAME=VALUE, e.g. MEMGUARD_MAX_MEMORY=400MiB"
AS_RECORDED = "as recorded"


class ReplayError(ValueError):
    """A candidate that cannot be replayed; each problem is one line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_assignments(items: Sequence[str], option: str) -> dict[str, str]:
    """``NAME=VALUE`` items (``--set``, or one ``--candidate`` split like a shell) to a mapping."""
    found: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise ReplayError([f"{option} {item!r} is invalid: expected {SET_FORM}"])
        found[name.strip().upper()] = value.strip()
    return found


def split_candidate(text: str) -> dict[str, str]:
    try:
        items = shlex.split(text)
    except ValueError as exc:
        raise ReplayError([f"--candidate {text!r} is invalid: {exc}; expected {SET_FORM} ..."]) from None
    if not items:
        raise ReplayError([f"--candidate {text!r} is empty: expected {SET_FORM} ..."])
    return parse_assignments(items, "--candidate")


def _bytes(value: int | Share | None, env: str, limits: Event | None) -> int | None:
    if not isinstance(value, Share):
        return value
    if limits is None:
        raise ReplayError(
            [f"{env}={value} is a percentage and the event log has no 'limits' event to resolve it with; give a size"]
        )
    return per_worker(value, int(limits["available"]), int(limits["master"]), int(limits["workers"]))


def candidate(name: str, settings: Settings, limits: Event | None) -> Candidate:
    growth = None
    if settings.max_growth is not None:
        growth = Growth(settings.max_growth, settings.growth_window, settings.growth_grace, settings.growth_interval)
    return Candidate(
        name,
        metric=settings.metric,
        soft=_bytes(settings.max_memory, "MEMGUARD_MAX_MEMORY", limits),
        hard=_bytes(settings.hard_max_memory, "MEMGUARD_HARD_MAX_MEMORY", limits),
        jitter=settings.jitter,
        min_lifetime=settings.min_lifetime,
        growth=growth,
    )


def settings_with(recorded: Mapping[str, str], changes: Mapping[str, str]) -> Settings:
    """The recorded settings with ``changes`` on top, through ``load_settings``."""
    try:
        return load_settings({**recorded, **changes}, {}, "the event log")
    except SettingsError as exc:
        raise ReplayError(exc.problems) from None


def _title(changes: Mapping[str, str]) -> str:
    return " ".join(f"{k.removeprefix(ENV_PREFIX)}={v}" for k, v in changes.items())


@dataclass(frozen=True)
class Replayed:
    outcomes: list[Outcome]
    header: list[str]


def run(trace: Trace, groups: Sequence[Mapping[str, str]], max_requests: Sequence[int], seed: int = 0) -> Replayed:
    """Replay the recorded settings (if the log has them), each group of changes and each
    ``--max-requests N`` over the trace."""
    recorded = trace.config()
    limits = trace.limits()
    base = recorded or {}
    lifetimes = trace.lifetimes
    if not lifetimes:
        raise ReplayError(["the event log holds no samples: nothing to replay"])
    interval = trace.interval()
    workers = int(limits["workers"]) if limits else _concurrent(lifetimes)
    header = []
    candidates: list[Candidate] = []
    recorded_soft = None
    if recorded is not None:
        settings = settings_with(recorded, {})
        candidates.append(candidate(AS_RECORDED, settings, limits))
        recorded_soft = candidates[0].soft
        if settings.dry_run:
            header.append(f"the run was a dry run: '{AS_RECORDED}' is what enforcing its settings would have done")
    else:
        header.append("the event log has no 'config' event (an older memguard): no 'as recorded' column")
    for changes in groups:
        candidates.append(candidate(_title(changes), settings_with(base, changes), limits))
    for count in max_requests:
        candidates.append(Candidate(f"--max-requests {count}", metric=trace.metric, max_requests=count))
    if not candidates:
        raise ReplayError(["nothing to replay: give --set, --candidate or --max-requests"])
    for c in candidates:
        if c.growth is not None and interval > c.growth.window / 30:
            header.append(
                f"{c.name}: samples every {interval:.3g}s are too coarse for the growth limit over "
                f"{format_duration(c.growth.window)}, which needs one every {c.growth.window / 30:.3g}s: record "
                "with a shorter MEMGUARD_REPORT_INTERVAL"
            )
    samples = sum(len(life.points) for life in lifetimes)
    lead = handover(chains(lifetimes, workers))
    header.insert(
        0,
        f"memguard replay: {samples} samples of {len(lifetimes)} workers ({workers} at a time) over "
        f"{span(trace.end - trace.start)}, one every {interval:.3g}s per worker; "
        f"handover (verdict to replacement) {lead:.3g}s",
    )
    retired = trace.of("retire")
    by_reason = ", ".join(f"{r} {n}" for r, n in Counter(str(e.get("reason")) for e in retired).most_common())
    header.insert(1, f"recorded: {len(retired)} retirements" + (f" ({by_reason})" if by_reason else ""))
    outcomes = [replay(lifetimes, c, workers=workers, recorded_soft=recorded_soft, seed=seed) for c in candidates]
    return Replayed(outcomes, header)


def _concurrent(lifetimes: Sequence[Lifetime]) -> int:
    """Without a ``limits`` event: the workers that booted before any other stopped sampling."""
    first_end = min(x.end for x in lifetimes)
    return max(1, sum(1 for x in lifetimes if x.born <= first_end))


def table(replayed: Replayed) -> str:
    outcomes = replayed.outcomes
    reasons = sorted({r for o in outcomes for r in o.by_reason}, key=lambda r: (r == MAX_REQUESTS, r))
    rows: list[tuple[str, list[str]]] = [
        ("retirements", [str(len(o.retirements)) for o in outcomes]),
        ("  per hour", [f"{o.per_hour:.1f}" for o in outcomes]),
        *((f"  {reason}", [str(o.by_reason.get(reason, 0)) for o in outcomes]) for reason in reasons),
        ("peak memory", [format_size(o.peak) for o in outcomes]),
        ("median age at retirement", [span(statistics.median(o.ages)) if o.ages else "-" for o in outcomes]),
        ("fresh workers near limit", [str(o.breaker_trips) for o in outcomes]),
    ]
    names = [o.name for o in outcomes]
    first = max(len(label) for label, _ in rows)
    widths = [max(len(name), *(len(cells[i]) for _, cells in rows)) for i, name in enumerate(names)]
    lines = [*replayed.header, ""]
    lines.append(" " * first + "".join(f"  {name:>{w}}" for name, w in zip(names, widths, strict=True)))
    for label, cells in rows:
        lines.append(f"{label:<{first}}" + "".join(f"  {cell:>{w}}" for cell, w in zip(cells, widths, strict=True)))
    return "\n".join(lines) + "\n"
