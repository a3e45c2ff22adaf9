"""Publish what a worker measured: its scoreboard slot (for the master, the metrics and the exit
line) and, every report interval, a sample to the event log and statsd. Best effort: a fault in
telemetry turns telemetry off (logged once), never the guard."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..policy import Sample, Verdict
from ..report.lines import retirement_line
from ..report.telemetry import Telemetry
from ..shared.scoreboard import Scoreboard, encode_reasons
from .reading import Reader

if TYPE_CHECKING:
    from .forensics import Report


class Publisher:
    def __init__(
        self, scoreboard: Scoreboard | None, slot: int | None, telemetry: Telemetry | None, log: Any, metric: str
    ) -> None:
        self.scoreboard = scoreboard if slot is not None else None
        self.slot = slot
        self.telemetry = telemetry
        self.log = log
        self.metric = metric
        self.pid = os.getpid()
        self._last_report = -float("inf")
        self._dry_reasons: set[str] = set()

    def report_due(self, now: float, interval: float) -> bool:
        return now - self._last_report >= interval

    def publish(self, sample: Sample, reader: Reader, requests: int, age: float, limit: int | None,
                growth: float | None, interval: float) -> None:  # fmt: skip
        """A timer sample to the scoreboard; every report interval an exact one to telemetry too (one
        USS/PSS read in the sampler thread, if the sample was only an RSS bound)."""
        exact = sample if sample.exact else None
        if exact is None and self.report_due(sample.time, interval):
            exact = reader.exact(sample.time)
        self.sample(sample, exact, reader.rss, requests, age, limit, growth, interval)

    def sample(self, sample: Sample, exact: Sample | None, rss: int, requests: int, age: float, limit: int | None,
               growth: float | None, interval: float) -> None:  # fmt: skip
        now = time.time()
        if self.scoreboard is not None and self.slot is not None:
            self.scoreboard.sample(self.slot, now, sample.value, rss, requests)
            if exact is not None:
                self.scoreboard.exact(self.slot, now, exact.value)
            if growth is not None:
                self.scoreboard.set_growth(self.slot, growth)
        if exact is not None and self.report_due(sample.time, interval):
            self._last_report = sample.time
            self.tell(
                lambda t: t.sample(
                    pid=self.pid, worker=self.slot, age=age, requests=requests, metric=self.metric,
                    value=exact.value, rss=rss, limit=limit, growth=growth,
                )
            )  # fmt: skip

    def retirement(self, verdict: Verdict, age: float, requests: int, dry_run: bool) -> None:
        self.log.warning(
            retirement_line(
                pid=self.pid, age=age, requests=requests, metric=self.metric, value=verdict.value,
                limit=verdict.limit, reason=verdict.reason, detail=verdict.detail, dry_run=dry_run,
            )
        )  # fmt: skip
        self.tell(
            lambda t: t.retirement(
                dry_run=dry_run, worker=self.slot, pid=self.pid, age=age, requests=requests, metric=self.metric,
                value=verdict.value, limit=verdict.limit, reason=verdict.reason, detail=verdict.detail,
            )
        )  # fmt: skip

    def would_retire(self, verdict: Verdict, age: float, requests: int) -> None:
        """Dry run: report what would have been retired, once per worker per reason."""
        if verdict.reason in self._dry_reasons:
            return
        self._dry_reasons.add(verdict.reason)
        self.retirement(verdict, age, requests, dry_run=True)
        if self.scoreboard is not None and self.slot is not None:
            self.scoreboard.would_retire(self.slot, encode_reasons(self._dry_reasons))

    def reclaimed(self, before: int, after: int, took: float, how: str) -> None:
        if self.scoreboard is not None and self.slot is not None and after < before:
            self.scoreboard.add_reclaimed(self.slot, before - after)
        self.tell(lambda t: t.reclaim(pid=self.pid, worker=self.slot, before=before, after=after, took=took, how=how))

    def allocations(self, report: Report) -> None:
        """Leak forensics at retirement: the top allocation sites, as an event."""
        sites = [
            {"file": s.file, "line": s.line, "size": s.size, "count": s.count, "origin": s.origin} for s in report.sites
        ]
        self.tell(
            lambda t: t.allocations(
                pid=self.pid, worker=self.slot, share=report.share, limit=report.limit, start=report.start,
                since=report.since, traced=report.traced, blocks=report.blocks, overhead=report.overhead,
                took=report.took, frames=report.frames, sites=sites,
            )
        )  # fmt: skip

    def breaker_trip(self, detail: str) -> None:
        self.tell(lambda t: t.breaker_trip(pid=self.pid, why="baseline", detail=detail))

    def set_limit(self, limit: int | None) -> None:
        if self.scoreboard is not None and self.slot is not None:
            self.scoreboard.set_limit(self.slot, limit or 0)

    def tell(self, report: Callable[[Telemetry], None]) -> None:
        telemetry = self.telemetry
        if telemetry is None:
            return
        try:
            report(telemetry)
        except Exception as exc:  # noqa: BLE001
            self.telemetry = None
            self.log.error(
                "memguard: reporting failed in worker %s (%r); it carries on without the event log and statsd",
                self.pid, exc,
            )  # fmt: skip
