"""Where memguard reports besides its log lines: the JSON event log and gunicorn's statsd.

statsd goes through gunicorn's own logger: with ``statsd_host`` set, gunicorn's ``Statsd`` logger
turns a log call carrying ``extra={"metric", "value", "mtype"}`` into a datagram with the user's
``statsd_prefix`` (and dogstatsd tags), and an empty message logs no text. So memguard needs no
socket of its own and follows whatever the user configured for gunicorn's metrics.

statsd names (after gunicorn's prefix): gauges ``memguard.worker.<slot>.memory`` (the enforced
metric), ``.rss``, ``.limit``, ``.requests``, ``.age`` (and ``.growth``, bytes/s, once the growth
monitor has a full window) every ``MEMGUARD_REPORT_INTERVAL``; counters
``memguard.retirements.<reason>``, ``memguard.would_retire.<reason>``, ``memguard.exits.<outcome>``,
``memguard.reclaimed`` (bytes) and ``memguard.breaker.trips``.
"""

from __future__ import annotations

import logging
from typing import Any

from .eventlog import EventLog


class Statsd:
    def __init__(self, log: Any, cfg: Any) -> None:
        self.log = log
        self.enabled = bool(getattr(cfg, "statsd_host", None))

    def _emit(self, name: str, value: float, mtype: str) -> None:
        if self.enabled:
            self.log.log(logging.INFO, "", extra={"metric": name, "value": value, "mtype": mtype})

    def gauge(self, name: str, value: float) -> None:
        self._emit(name, value, "gauge")

    def count(self, name: str, value: int = 1) -> None:
        self._emit(name, value, "counter")


class Telemetry:
    """Both channels behind one call per kind of event; a failing event log is logged once per
    fault, and its recovery once (see ``EventLog``)."""

    def __init__(self, events: EventLog | None, log: Any, cfg: Any) -> None:
        self.events = events
        self.log = log
        self.statsd = Statsd(log, cfg)

    def _event(self, event: str, pid: int, **fields: Any) -> None:
        if self.events is None:
            return
        transition = self.events.write(event, pid, **fields)
        if transition is not None:  # once per fault for the whole server, not per process or event
            (self.log.error if transition.failed else self.log.warning)("%s", transition.message)

    def sample(
        self,
        *,
        pid: int,
        worker: int | None,
        age: float,
        requests: int,
        metric: str,
        value: int,
        rss: int,
        limit: int | None,
        growth: float | None,
    ) -> None:
        self._event(
            "sample",
            pid,
            worker=worker,
            age=round(age, 3),
            requests=requests,
            metric=metric,
            value=value,
            rss=rss,
            limit=limit,
            growth=None if growth is None else round(growth, 1),
        )
        if worker is not None:
            prefix = f"memguard.worker.{worker}."
            for name, figure in (
                ("memory", value),
                ("rss", rss),
                ("limit", limit or 0),
                ("requests", requests),
                ("age", round(age, 3)),
                ("growth", growth),
            ):
                if figure is not None:
                    self.statsd.gauge(prefix + name, figure)

    def reclaim(self, *, pid: int, worker: int | None, before: int, after: int, took: float, how: str) -> None:
        self._event(
            "reclaim",
            pid,
            worker=worker,
            before=before,
            after=after,
            freed=max(before - after, 0),
            took=round(took, 4),
            how=how,
        )
        self.statsd.count("memguard.reclaimed", max(before - after, 0))

    def allocations(
        self,
        *,
        pid: int,
        worker: int | None,
        share: float,
        limit: int,
        start: int,
        since: float,
        traced: int,
        blocks: int,
        overhead: int,
        took: float,
        frames: int,
        sites: list[dict[str, Any]],
    ) -> None:
        self._event(
            "allocations",
            pid,
            worker=worker,
            share=share,
            limit=limit,
            start=start,
            since=round(since, 3),
            traced=traced,
            blocks=blocks,
            overhead=overhead,
            took=round(took, 4),
            frames=frames,
            sites=sites,
        )

    def breaker_trip(self, *, pid: int, why: str, detail: str) -> None:
        self._event("breaker_trip", pid, why=why, detail=detail)
        self.statsd.count("memguard.breaker.trips")

    def retirement(
        self,
        *,
        dry_run: bool,
        pid: int,
        worker: int | None,
        age: float,
        requests: int,
        metric: str,
        value: int,
        limit: int,
        reason: str,
        detail: str,
    ) -> None:
        self._event(
            "would_retire" if dry_run else "retire",
            pid,
            worker=worker,
            age=round(age, 3),
            requests=requests,
            metric=metric,
            value=value,
            limit=limit,
            reason=reason,
            detail=detail,
        )
        self.statsd.count(f"memguard.{'would_retire' if dry_run else 'retirements'}.{reason}")

    def config(self, *, pid: int, settings: dict[str, str], version: str) -> None:
        self._event("config", pid, settings=settings, version=version)

    def limits(
        self, *, pid: int, soft: int | None, hard: int | None, workers: int, available: int, master: int
    ) -> None:
        self._event("limits", pid, soft=soft, hard=hard, workers=workers, available=available, master=master)

    def exit(self, *, pid: int, worker: int | None, outcome: str, **fields: Any) -> None:
        self._event("exit", pid, worker=worker, outcome=outcome, **fields)
        self.statsd.count(f"memguard.exits.{outcome}")
