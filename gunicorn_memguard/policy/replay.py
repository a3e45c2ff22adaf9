"""Replay recorded memory through the worker policy with other settings (``memguard replay``).

Pure: recorded lifetimes in, what a candidate's settings would have done out, judged by the very
``WorkerPolicy`` the workers build (``build_policy``) and the crash-loop breaker's baseline rule.

The model. Workers are put in chains, one per worker position: a lifetime continues the chain whose
current worker stops sampling first (its replacement, whether spawned first or after). A chain's
memory over time is its growth: the change from one sample to the next of the same worker (the drop
back to a replacement's baseline is not growth). A simulated worker's memory is its baseline plus
the growth its chain recorded since it started. A worker the candidate retires is replaced: by the
chain's next recorded worker if that one boots before the handover has passed (the time the
recorded run took from a verdict to the handover, ``handover()``), else, once it has, by one
starting at the baseline of the worker recorded in that chain then. Requests are counted the same way, for
gunicorn's ``--max-requests``.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from . import breaker
from .verdict import Sample
from .worker import Growth, build_policy

MAX_REQUESTS = "max_requests"  # the reason gunicorn's --max-requests would give


@dataclass(frozen=True)
class Point:
    time: float  # Unix time
    value: int  # bytes of the enforced metric
    requests: int  # the worker's request count so far


@dataclass(frozen=True)
class Lifetime:
    """One recorded worker: its samples in time order."""

    pid: int
    born: float
    points: tuple[Point, ...]
    limit: int | None = None  # its recorded effective (jittered) soft limit

    @property
    def end(self) -> float:
        return self.points[-1].time


@dataclass(frozen=True)
class Candidate:
    """Settings to replay: per-worker limits in bytes, or gunicorn's max_requests alone."""

    name: str
    metric: str = "uss"
    soft: int | None = None  # MEMGUARD_MAX_MEMORY, before jitter
    hard: int | None = None
    jitter: float = 0.0
    min_lifetime: float = 0.0
    growth: Growth | None = None
    max_requests: int | None = None


@dataclass
class Outcome:
    """What a candidate would have done over the trace."""

    name: str
    span: float  # seconds the trace covers
    retirements: list[tuple[float, str]] = field(default_factory=list)  # (time, reason)
    ages: list[float] = field(default_factory=list)  # of the workers it retired
    peak: int = 0
    breaker_trips: int = 0  # fresh workers starting at or near their limit

    @property
    def by_reason(self) -> Counter[str]:
        return Counter(reason for _, reason in self.retirements)

    @property
    def per_hour(self) -> float:
        return len(self.retirements) * 3600 / self.span if self.span > 0 else 0.0


def chains(lifetimes: Sequence[Lifetime], workers: int) -> list[list[Lifetime]]:
    """Lifetimes by worker position: the first ``workers`` start one each; every later one
    continues the chain whose current worker stops sampling first."""
    result: list[list[Lifetime]] = []
    for life in sorted((x for x in lifetimes if x.points), key=lambda x: (x.born, x.pid)):
        if len(result) < max(workers, 1):
            result.append([life])
        else:
            min(result, key=lambda chain: (chain[-1].end, chain[-1].born)).append(life)
    return result


def handover(chained: Sequence[Sequence[Lifetime]]) -> float:
    """The recorded run's median time from a worker's second sample in a row over its limit (the
    soft limit's verdict, as the samples show it) to the later of its last sample and its
    successor's boot; 0 if no recorded worker was over its limit."""
    delays = []
    for chain in chained:
        for old, new in pairwise(chain):
            if old.limit is None:
                continue
            verdict = next((b.time for a, b in pairwise(old.points) if min(a.value, b.value) > old.limit), None)
            if verdict is not None:
                delays.append(max(0.0, max(old.end, new.born) - verdict))
    return statistics.median(delays) if delays else 0.0


class _Worker:
    """One simulated worker: the real policy, its baseline and where in its chain it started."""

    def __init__(self, candidate: Candidate, born: float, rng: random.Random, factor: float | None) -> None:
        self.born = born
        self.policy, self.limit = build_policy(
            metric=candidate.metric, soft=candidate.soft, hard=candidate.hard, jitter=candidate.jitter,
            min_lifetime=candidate.min_lifetime, born=born, rng=rng, growth=candidate.growth,
        )  # fmt: skip
        if factor is not None and candidate.soft is not None:
            # the recorded worker's own draw, so candidates differ by their settings, not by luck
            self.limit = int(candidate.soft * factor)
            self.policy.retarget(self.limit, None)
        self.baseline = 0
        self.growth_at_start = 0
        self.requests_at_start = 0
        self.started = False

    def start(self, baseline: int, growth: int, requests: int) -> None:
        self.baseline, self.growth_at_start, self.requests_at_start = baseline, growth, requests
        self.started = True

    def value(self, growth: int) -> int:
        return self.baseline + growth - self.growth_at_start


def replay(
    lifetimes: Sequence[Lifetime],
    candidate: Candidate,
    *,
    workers: int,
    recorded_soft: int | None = None,
    seed: int = 0,
) -> Outcome:
    """Run ``candidate`` over the recorded lifetimes (see the module's model). ``recorded_soft``:
    the run's MEMGUARD_MAX_MEMORY in bytes, which tells each recorded worker's jitter draw."""
    rng = random.Random(seed)
    chained = chains(lifetimes, workers)
    lead = handover(chained)
    points = [p.time for life in lifetimes for p in life.points]
    outcome = Outcome(candidate.name, span=max(points) - min(points) if points else 0.0)

    def factor(life: Lifetime) -> float | None:
        return life.limit / recorded_soft if life.limit and recorded_soft else None

    for chain in chained:
        growth = requests = 0
        worker: _Worker | None = None
        retiring: _Worker | None = None  # the old worker, still holding its memory during the handover
        for life in chain:
            previous: Point | None = None
            for point in life.points:
                if previous is not None:
                    growth += point.value - previous.value
                    requests += max(0, point.requests - previous.requests)
                first, previous = previous is None, point
                if worker is None or not worker.started:
                    if worker is not None and not first and point.time < worker.born:  # the old one drains
                        if retiring is not None:
                            outcome.peak = max(outcome.peak, retiring.value(growth))
                        continue
                    if worker is None or first:  # the chain's first, or the recorded replacement booting now
                        worker = _Worker(candidate, life.born, rng, factor(life))
                    worker.start(point.value if first else life.points[0].value, growth, requests)
                    retiring = None
                    if worker.limit is not None and breaker.starts_near_limit(worker.baseline, worker.limit):
                        outcome.breaker_trips += 1
                value = worker.value(growth)
                outcome.peak = max(outcome.peak, value)
                reason = _reason(worker, candidate, Sample(point.time, value), requests)
                if reason is not None:
                    outcome.retirements.append((point.time, reason))
                    outcome.ages.append(point.time - worker.born)
                    retiring, worker = worker, _Worker(candidate, point.time + lead, rng, None)
    return outcome


def _reason(worker: _Worker, candidate: Candidate, sample: Sample, requests: int) -> str | None:
    verdict = worker.policy.judge(sample)
    if verdict.retires:
        return verdict.reason
    if candidate.max_requests is not None and requests - worker.requests_at_start >= candidate.max_requests:
        return MAX_REQUESTS
    return None
