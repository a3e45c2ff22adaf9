"""The master's side of memguard as one object: the settings, built once, and what they need —
the scoreboard shared with the workers, the shared limits, the event log, the tally, the OOM
watch, the breaker's retirement rate, the coordinator. Every forked worker inherits it.

Everything here runs in the arbiter's main thread (or, on gunicorn 22/23, in its SIGCHLD
handler, which only ever releases slots); the one master thread memguard adds serves the
Prometheus endpoint and shares only the tally's lock (see ``tally.py`` and ``prometheus.py``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, NoReturn

from .. import __version__
from ..policy.breaker import BASELINE_RATIO, RetirementRate
from ..probes.cgroup import ContainerMemory, find_memory_cgroup
from ..probes.memory import process_pss
from ..report.eventlog import EventLog
from ..report.lines import Death
from ..report.status import RECENT_EXITS
from ..report.tally import Tally
from ..report.telemetry import Telemetry
from ..settings import Settings, SettingsError, config_namespace, given_text, load_settings
from ..shared.limits import SharedLimits
from ..shared.scoreboard import SLOT_ATTR, Scoreboard
from ..shared.tracing import TraceSlots
from ..units import format_count_rate, format_duration, format_rate, format_size, format_size_or_share
from . import arbiter, limits, status
from .coordinator import Coordinator
from .exits import OomWatch


class Runtime:
    """What the master builds once, before the first fork, and every forked worker inherits.

    With memguard disabled only ``settings`` is set. ``guard`` is set in a worker process only,
    on its own copy, once its guard runs."""

    def __init__(self, settings: Settings, events: EventLog | None = None) -> None:
        self.settings = settings
        enabled = settings.enabled
        self.scoreboard = Scoreboard() if enabled else None
        self.shared = SharedLimits() if enabled else None
        self.oom = OomWatch(find_memory_cgroup()) if enabled else None
        self.tracing = _trace_slots(settings) if enabled and settings.trace_allocations is not None else None
        rate = settings.max_retirements
        self.rate = RetirementRate(*rate) if enabled and rate is not None else None
        self.rate_warned_until = 0.0  # the retirement-rate warning is said at most once per window
        # observability
        self.events = events
        self.tally = Tally()
        self.deaths: dict[int, Death] = {}  # pid -> how it ended, peeked before gunicorn reaps it
        self.sent: dict[int, set[int]] = {}  # pid -> the signals gunicorn's master sent it
        self.metrics: Any = None  # prometheus.MetricsEndpoint, once serving
        self.status: status.StatusEndpoint | None = None  # memguard top's socket, once serving
        self.exits: deque[dict[str, Any]] = deque(maxlen=RECENT_EXITS)  # the last exits, for memguard top
        # percentage limits (limits.py)
        self.container: ContainerMemory | None = None
        self.master_rss = 0
        self.workers = 0  # the worker count the limits were last resolved for
        self.next_container_read = 0.0  # monotonic: when the master re-reads the container's limit
        # coordination: once attached, soft retirements wait their turn
        self.coordinator: Coordinator | None = None
        self.guard: Any = None  # worker.guard.Guard, in a worker process

    @property
    def coordinated(self) -> bool:
        return self.coordinator is not None

    def serve_metrics(self, log: Any) -> None:
        """Start the Prometheus endpoint once, in the master (from ``when_ready``: after gunicorn
        daemonized, before the first fork). A port in use (say, the old master of a USR2 upgrade
        still holds it) is logged and memguard carries on without the endpoint."""
        settings = self.settings
        if settings.prometheus_port is None or self.metrics is not None or self.scoreboard is None:
            return
        from ..report.prometheus import MetricsEndpoint, ScoreboardCollector

        collector = ScoreboardCollector(self.scoreboard, self.tally, settings, self.shared)
        try:
            self.metrics = MetricsEndpoint(settings.prometheus_address, settings.prometheus_port, collector, log)
        except OSError as exc:
            log.error(
                "memguard: cannot serve Prometheus metrics on %s port %s (MEMGUARD_PROMETHEUS_PORT): %s; "
                "carrying on without them",
                settings.prometheus_address,
                settings.prometheus_port,
                exc,
            )
            return
        if self.metrics.serving:  # else it said the port is in use, and says so again once it is bound
            log.info("memguard: Prometheus metrics at %s", self.metrics.url)

    def coordinate(self, server: Any) -> None:
        """Attach the retirement coordinator to the arbiter once (idempotent; from ``when_ready`` for
        the hook module and from ``pre_fork`` for both adoption paths, which runs before every fork)."""
        if self.scoreboard is None or self.coordinator is not None:
            return
        coordinator = Coordinator(
            server, self.settings, self.scoreboard, server.log, shared=self.shared, exits=self.exits
        )
        budget = coordinator.room.total_budget
        if budget is not None:
            master = process_pss(os.getpid()) or 0  # after preload_app, before the first fork
            coordinator.room.master = master  # counted from the first fork, before the first measurement
            if budget <= master:
                _refuse(
                    server,
                    f"MEMGUARD_MAX_TOTAL_MEMORY={format_size_or_share(self.settings.max_total_memory)}"
                    f"{'' if isinstance(self.settings.max_total_memory, int) else f' ({format_size(budget)})'} is "
                    f"not above the master's own {format_size(master)} (PSS), which the budget counts: no worker "
                    "could fit; set a size, or a % of the container, above it",
                )
        self.status = status.serve(self, server)
        arbiter.attach_coordinator(server, coordinator, lambda: self._every_pass(server))
        self.coordinator = coordinator
        if budget is not None:
            server.log.info(
                "memguard: server-wide budget %s (PSS of the workers and the master; %s)",
                format_size(budget),
                coordinator.room.container.describe(),
            )

    def _every_pass(self, server: Any) -> None:
        if self.status is not None:
            self.status.poll()  # never raises
        limits.follow_container(self, server, time.monotonic())

    def claim_slot(self, worker: Any, log: Any) -> None:
        """Give a worker about to fork its scoreboard slot (idempotent per worker object)."""
        if self.scoreboard is None or getattr(worker, SLOT_ATTR, None) is not None:
            return
        slot = self.scoreboard.claim(time.time())
        if slot is None:
            log.warning("memguard: scoreboard full; this worker's exit will not be explained")
        elif self.coordinator is not None and self.coordinator.room.total_budget is not None:
            others = sum(view.allowance for index, view in self.scoreboard.occupied() if index != slot)
            self.scoreboard.set_allowance(slot, self.coordinator.room.fresh_share(self.coordinator.wanted(), others))
        setattr(worker, SLOT_ATTR, slot)


def _trace_slots(settings: Settings) -> TraceSlots | None:
    """The bound on tracing workers; without it (no ``memfd_create``) each worker says it is not traced."""
    try:
        return TraceSlots(settings.trace_workers)
    except OSError:
        return None


_runtime: Runtime | None = None


def current() -> Runtime | None:
    """The runtime of this process (the master's, or a worker's inherited copy), once installed."""
    return _runtime


def load_from(cfg: Any, env: Mapping[str, str] | None = None) -> Settings:
    """The settings of gunicorn's config ``cfg``: the config module gunicorn ran, never run again."""
    namespace, name = config_namespace(getattr(cfg, "config", None), run=False)
    return load_settings(os.environ if env is None else env, namespace, name)


def install(cfg: Any, log: Any, server: Any = None) -> Runtime:
    """Build the runtime once (idempotent); bad settings log every problem and exit(1), before any fork."""
    global _runtime
    if _runtime is None:
        try:
            settings = load_from(cfg)
            events = _open_outputs(settings) if settings.enabled else None
        except SettingsError as exc:
            _refuse(server, *exc.problems, log=log)
        _runtime = Runtime(settings, events)
        if settings.enabled:
            _announce(settings, cfg, log)
            _record_config(_runtime, cfg, log)
    return _runtime


def _refuse(server: Any, *problems: str, log: Any = None) -> NoReturn:
    """Bad settings: every problem logged, and gunicorn's master exits 1 before any fork."""
    log = log or server.log
    for problem in problems:
        log.error("memguard: bad setting: %s", problem)
    log.error("memguard: refusing to start; run 'memguard check' to see every setting")
    pidfile = getattr(server, "pidfile", None)
    if pidfile is not None:
        pidfile.unlink()
    sys.exit(1)


def _open_outputs(settings: Settings) -> EventLog | None:
    """Problems with the event log or the Prometheus extra are settings errors: found before any fork."""
    if settings.prometheus_port is not None and importlib.util.find_spec("prometheus_client") is None:
        raise SettingsError(
            [
                f"MEMGUARD_PROMETHEUS_PORT={settings.prometheus_port} needs prometheus-client: "
                f"pip install 'gunicorn-memguard[prometheus]'"
            ]
        )
    if settings.event_log is None:
        return None
    try:
        return EventLog(settings.event_log)
    except OSError as exc:
        raise SettingsError(
            [f"MEMGUARD_EVENT_LOG={settings.event_log!r} cannot be opened for appending: {exc.strerror}"]
        ) from None


def _record_config(runtime: Runtime, cfg: Any, log: Any) -> None:
    """The settings as given, once, to the event log: ``memguard replay`` starts from them."""
    namespace, _ = config_namespace(getattr(cfg, "config", None), run=False)
    Telemetry(runtime.events, log, cfg).config(
        pid=os.getpid(), settings=given_text(os.environ, namespace), version=__version__
    )


def _announce(settings: Settings, cfg: Any, log: Any) -> None:
    limit = format_size_or_share(settings.max_memory) if settings.max_memory else "none (measuring only)"
    hard = format_size_or_share(settings.hard_max_memory) if settings.hard_max_memory else "none"
    ceiling = settings.hard_max_memory or settings.max_memory
    ceiling_text = f"{format_size_or_share(ceiling)} (no worker serves past it)" if ceiling else "none"
    log.info(
        "memguard: guarding workers: metric=%s limit=%s hard_limit=%s ceiling=%s jitter=%g%% min_lifetime=%gs "
        "check_interval=%gs",
        settings.metric, limit, hard, ceiling_text, settings.jitter * 100, settings.min_lifetime,
        settings.check_interval,
    )  # fmt: skip
    if settings.dry_run:
        log.warning("memguard: dry run (MEMGUARD_DRY_RUN): workers are measured and judged, none is retired")
    growth = (
        f"max_growth={format_rate(settings.max_growth)} over {format_duration(settings.growth_window)} "
        f"(grace {format_duration(settings.growth_grace)}, every {format_duration(settings.growth_interval)})"
        if settings.max_growth is not None
        else "max_growth=off"
    )
    reclaim = f"at most every {format_duration(settings.reclaim_interval)}" if settings.reclaim else "off"
    log.info(
        "memguard: leak-aware policy: %s; reclaim before retiring %s; crash-loop breaker at a fresh worker "
        ">= %g%% of its limit; a warning above %s retirements per worker",
        growth,
        reclaim,
        BASELINE_RATIO * 100,
        format_count_rate(settings.max_retirements),
    )
    if settings.max_memory is None and settings.hard_max_memory is None:
        if settings.max_total_memory is None:
            log.warning("memguard: no MEMGUARD_MAX_MEMORY or MEMGUARD_HARD_MAX_MEMORY set: no worker will be retired")
        else:
            log.info("memguard: no per-worker limit: workers are retired for the server-wide budget only")
    uri = cfg.settings["worker_class"].get()
    if isinstance(uri, str) and uri.endswith("SyncWorker") and cfg.threads > 1:
        log.warning(
            "memguard: worker class %s with --threads %s runs gunicorn's stock gthread worker (gunicorn "
            "swaps any '...SyncWorker' for it when threads > 1); memguard guards it through its hooks. "
            "Say -k gunicorn_memguard.workers.ThreadWorker to get what you asked for.",
            uri,
            cfg.threads,
        )
