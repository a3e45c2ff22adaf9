"""Master-side adapter: build the settings once, share a scoreboard with the workers, make sure
memguard's hooks are in gunicorn's config, and say how each worker ended.

Everything here runs in the arbiter's main thread (or, on gunicorn 22/23, in its SIGCHLD
handler, which only ever releases slots); the one master thread memguard adds serves the
Prometheus endpoint and shares only the tally's lock (see ``tally.py`` and ``prometheus.py``).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from ..policy.breaker import BASELINE_RATIO, RetirementRate
from ..policy.percentages import resolve
from ..probes.cgroup import (
    ContainerMemory,
    MemoryCgroup,
    find_memory_cgroup,
    read_container_memory,
    read_oom_kill_count,
)
from ..report.eventlog import EventLog
from ..report.lines import Death, exit_report, signal_name
from ..report.tally import Tally
from ..report.telemetry import Telemetry
from ..settings import Settings, SettingsError, load_settings
from ..shared.limits import PAUSE_RATE, SharedLimits
from ..shared.scoreboard import SLOT_ATTR, Scoreboard
from ..units import Share, format_count_rate, format_duration, format_rate, format_size, format_size_or_share
from .coordinator import Coordinator

_NO_CONTAINER = ContainerMemory(limit=None, mem_total=0, cgroup=None)  # only byte limits: never read
COORDINATOR_ATTR = "memguard_coordinator"


class MasterState:
    """What the master builds once and every forked worker inherits."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.scoreboard: Scoreboard | None = None
        # observability
        self.events: EventLog | None = None
        self.tally = Tally()
        self.oom: OomWatch | None = None
        self.deaths: dict[int, Death] = {}  # pid -> how it ended, peeked before gunicorn reaps it
        self.metrics: Any = None  # prometheus.MetricsEndpoint, once serving
        # leak-aware policy
        self.shared: SharedLimits | None = None
        self.container: ContainerMemory | None = None
        self.master_rss = 0
        self.workers = 0  # the worker count the limits were last resolved for
        self.rate: RetirementRate | None = None
        # coordination
        self.coordinated = False  # a coordinator runs in the master: soft retirements wait their turn


STATE = MasterState()


def config_namespace(cfg: Any) -> tuple[Mapping[str, object], str]:
    """The variables of the gunicorn config module, without running it again.

    gunicorn keeps a config file in ``sys.modules['__config__']`` and imports ``python:`` modules
    normally; ``memguard_*`` variables are ignored by gunicorn, so memguard reads them here.
    """
    location = getattr(cfg, "config", None) or ""
    if location.startswith("python:"):
        module = sys.modules.get(location[len("python:") :])
    else:
        module = sys.modules.get("__config__")
    if module is None:
        return {}, location or "config"
    return vars(module), location or "config"


def load_from(cfg: Any, env: Mapping[str, str] | None = None) -> Settings:
    namespace, name = config_namespace(cfg)
    return load_settings(os.environ if env is None else env, namespace, name)


def install(cfg: Any, log: Any, server: Any = None) -> Settings:
    """Idempotent: settings and scoreboard once, then memguard's hooks composed into ``cfg``.

    Called from every master-side entry point (memguard's hooks, the worker classes'
    ``check_config`` and constructors), so a config reloaded by HUP, or a user hook that
    replaced one of memguard's, is composed again before the next fork.
    """
    from ..hooks import compose_into

    if STATE.settings is None:
        try:
            STATE.settings = load_from(cfg)
            if STATE.settings.enabled:
                _open_outputs(STATE.settings)
        except SettingsError as exc:
            for problem in exc.problems:
                log.error("memguard: bad setting: %s", problem)
            log.error("memguard: refusing to start; run 'memguard check' to see every setting")
            pidfile = getattr(server, "pidfile", None)
            if pidfile is not None:
                pidfile.unlink()
            sys.exit(1)
        settings = STATE.settings
        if settings.enabled:
            STATE.scoreboard = Scoreboard()
            STATE.oom = OomWatch(find_memory_cgroup())
            STATE.shared = SharedLimits()
            if settings.max_retirements is not None:
                STATE.rate = RetirementRate(*settings.max_retirements)
            _announce(settings, cfg, log)
    if STATE.settings.enabled:
        for name in compose_into(cfg):
            log.info("memguard: composed your %s hook with memguard's (yours runs first)", name)
    return STATE.settings


def _open_outputs(settings: Settings) -> None:
    """Problems with the event log or the Prometheus extra are settings errors: found before any fork."""
    if settings.prometheus_port is not None and importlib.util.find_spec("prometheus_client") is None:
        raise SettingsError(
            [
                f"MEMGUARD_PROMETHEUS_PORT={settings.prometheus_port} needs prometheus-client: "
                f"pip install 'gunicorn-memguard[prometheus]'"
            ]
        )
    if settings.event_log is not None:
        try:
            STATE.events = EventLog(settings.event_log)
        except OSError as exc:
            raise SettingsError(
                [f"MEMGUARD_EVENT_LOG={settings.event_log!r} cannot be opened for appending: {exc.strerror}"]
            ) from None


def serve_metrics(settings: Settings, log: Any) -> None:
    """Start the Prometheus endpoint once, in the master (from ``when_ready``: after gunicorn
    daemonized, before the first fork). A port in use (say, the old master of a USR2 upgrade
    still holds it) is logged and memguard carries on without the endpoint."""
    if settings.prometheus_port is None or STATE.metrics is not None or STATE.scoreboard is None:
        return
    from ..report.prometheus import MetricsEndpoint, ScoreboardCollector

    collector = ScoreboardCollector(STATE.scoreboard, STATE.tally, settings, STATE.shared)
    try:
        STATE.metrics = MetricsEndpoint(settings.prometheus_address, settings.prometheus_port, collector, log)
    except OSError as exc:
        log.error(
            "memguard: cannot serve Prometheus metrics on %s port %s (MEMGUARD_PROMETHEUS_PORT): %s; "
            "carrying on without them",
            settings.prometheus_address,
            settings.prometheus_port,
            exc,
        )
        return
    if STATE.metrics.serving:  # else it said the port is in use, and says so again once it is bound
        log.info("memguard: Prometheus metrics at %s", STATE.metrics.url)


class OomWatch:
    """Did the kernel OOM killer act in our cgroup since we last looked? (``oom_kill`` counter)"""

    def __init__(self, cgroup: MemoryCgroup | None) -> None:
        self.cgroup = cgroup
        self.count = read_oom_kill_count(cgroup) if cgroup is not None else None

    def rose(self) -> bool | None:
        """True if the count rose since the last look, False if not, None if there is no count."""
        if self.cgroup is None:
            return None
        count = read_oom_kill_count(self.cgroup)
        if count is None:
            return None
        rose = self.count is not None and count > self.count
        self.count = count
        return rose


def watch_deaths(arbiter: Any) -> None:
    """Wrap the arbiter's ``reap_workers`` so that, just before gunicorn reaps, memguard peeks
    (``waitid`` with ``WNOWAIT``) at how each dead worker ended: ``child_exit`` is not told."""
    original: Callable[[], None] = arbiter.reap_workers
    if getattr(original, "__memguard__", False):
        return

    def reap_workers() -> None:
        try:
            for pid in list(arbiter.WORKERS):  # a copy: on 22/23 SIGCHLD can change it under us
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                if info is not None and info.si_pid == pid:
                    exited = info.si_code == os.CLD_EXITED
                    STATE.deaths[pid] = Death(None if exited else info.si_status, info.si_status if exited else None)
        except Exception:  # noqa: BLE001 - without the peek, exits are reported as before
            pass
        original()

    reap_workers.__memguard__ = True  # type: ignore[attr-defined]
    arbiter.reap_workers = reap_workers


def _announce(settings: Settings, cfg: Any, log: Any) -> None:
    limit = format_size_or_share(settings.max_memory) if settings.max_memory else "none (measuring only)"
    hard = format_size_or_share(settings.hard_max_memory) if settings.hard_max_memory else "none"
    log.info(
        "memguard: guarding workers: metric=%s limit=%s hard_limit=%s jitter=%g%% min_lifetime=%gs check_interval=%gs",
        settings.metric,
        limit,
        hard,
        settings.jitter * 100,
        settings.min_lifetime,
        settings.check_interval,
    )
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
        ">= %g%% of its limit or more than %s retirements per worker",
        growth,
        reclaim,
        BASELINE_RATIO * 100,
        format_count_rate(settings.max_retirements),
    )
    if settings.max_memory is None and settings.hard_max_memory is None:
        log.warning("memguard: no MEMGUARD_MAX_MEMORY or MEMGUARD_HARD_MAX_MEMORY set: no worker will be retired")
    uri = cfg.settings["worker_class"].get()
    if isinstance(uri, str) and uri.endswith("SyncWorker") and cfg.threads > 1:
        log.warning(
            "memguard: worker class %s with --threads %s runs gunicorn's stock gthread worker (gunicorn "
            "swaps any '...SyncWorker' for it when threads > 1); memguard guards it through its hooks. "
            "Say -k gunicorn_memguard.workers.ThreadWorker to get what you asked for.",
            uri,
            cfg.threads,
        )


def resolve_limits(server: Any) -> None:
    """Resolve per-worker limits before the first fork and whenever the worker count changed
    (TTIN/TTOU); live workers pick the new values up from the shared limits."""
    settings, shared = STATE.settings, STATE.shared
    coordinator = getattr(server, COORDINATOR_ATTR, None)  # a spawn-first raise is not a new worker count
    workers = coordinator.wanted() if coordinator is not None else server.num_workers
    if settings is None or shared is None or workers == STATE.workers:
        return
    first = STATE.workers == 0
    STATE.workers = workers
    if STATE.container is None and any(isinstance(x, Share) for x in (settings.max_memory, settings.hard_max_memory)):
        STATE.container = read_container_memory()
        STATE.master_rss = psutil.Process().memory_info().rss  # after preload_app, before the first fork
    resolved = resolve(
        settings.max_memory, settings.hard_max_memory, STATE.container or _NO_CONTAINER, STATE.master_rss, STATE.workers
    )
    shared.set_limits(resolved.soft, resolved.hard)
    if resolved.how:
        server.log.info("%s%s", resolved.how, "" if first else " (worker count changed)")
        if resolved.soft and resolved.hard and resolved.hard < resolved.soft:
            server.log.warning(
                "memguard: the hard limit (%s) resolved below the soft limit (%s): workers will be retired at "
                "once at the hard limit, never gracefully",
                format_size(resolved.hard),
                format_size(resolved.soft),
            )


def coordinate(server: Any) -> None:
    """Attach the retirement coordinator to the arbiter once (idempotent; from ``when_ready`` for
    the hook module and from ``pre_fork`` for both adoption paths, which runs before every fork)."""
    if STATE.scoreboard is None or STATE.settings is None or getattr(server, COORDINATOR_ATTR, None) is not None:
        return
    coordinator = Coordinator(server, STATE.settings, STATE.scoreboard, server.log)
    coordinator.attach()
    setattr(server, COORDINATOR_ATTR, coordinator)
    STATE.coordinated = True


def claim_slot(worker: Any, log: Any) -> None:
    """Give a worker about to fork its scoreboard slot (idempotent per worker object)."""
    if STATE.scoreboard is None or getattr(worker, SLOT_ATTR, None) is not None:
        return
    slot = STATE.scoreboard.claim()
    if slot is None:
        log.warning("memguard: scoreboard full; this worker's exit will not be explained")
    setattr(worker, SLOT_ATTR, slot)


def report_exit(worker: Any, log: Any, cfg: Any) -> None:
    slot = getattr(worker, SLOT_ATTR, None)
    death = STATE.deaths.pop(worker.pid, None)
    if STATE.scoreboard is None or slot is None:
        return
    now = time.time()
    view = STATE.scoreboard.read(slot)
    oom_killed = STATE.oom.rose() if STATE.oom is not None and death and death.signal == signal.SIGKILL else None
    report = exit_report(worker.pid, view, now, death, oom_killed)
    getattr(log, report.level)(report.message)
    if view.pid == worker.pid and view.retire_started and view.reason in ("soft_limit", "growth_rate"):
        _count_retirement(log, cfg)
    with STATE.tally.lock:  # a scrape sees the slot or the total, never both or neither
        STATE.tally.fold(view, report.outcome)
        STATE.scoreboard.release(slot)
    setattr(worker, SLOT_ATTR, None)
    if view.pid == worker.pid:
        Telemetry(STATE.events, log, cfg).exit(
            pid=worker.pid,
            worker=slot,
            outcome=report.outcome,
            reason=view.reason or None,
            drain=round(now - view.retire_started, 3) if view.retire_started else None,
            age=round(now - view.born, 3),
            requests=view.requests,
            value=view.value,
            rss=view.rss,
            signal=signal_name(death.signal) if death and death.signal else None,
            code=death.code if death else None,
            oom_kills=STATE.oom.count if STATE.oom is not None and oom_killed is not None else None,
        )


def _count_retirement(log: Any, cfg: Any) -> None:
    """Trip the crash-loop breaker when graceful retirements outpace MEMGUARD_MAX_RETIREMENTS."""
    if STATE.rate is None or STATE.shared is None or STATE.settings is None:
        return
    now = time.time()
    until = STATE.rate.record(now, STATE.workers)
    if until is None or not STATE.shared.pause_if_running(until, PAUSE_RATE, now):
        return
    count, per = STATE.settings.max_retirements or (0, 0.0)
    log.error(
        "memguard: CRASH-LOOP BREAKER: more than %s soft-limit/growth retirements per worker within %s "
        "(MEMGUARD_MAX_RETIREMENTS=%s/%s, %s workers); recycling for the soft limit and growth rate is paused "
        "for %s (the hard limit still applies). Workers are being replaced faster than they should need to be: "
        "raise MEMGUARD_MAX_MEMORY or MEMGUARD_MAX_GROWTH, or find the leak.",
        count,
        format_duration(per),
        count,
        format_duration(per),
        STATE.workers,
        format_duration(round(until - now)),
    )
    Telemetry(STATE.events, log, cfg).breaker_trip(
        pid=os.getpid(),
        why="rate",
        detail=f"more than {count} retirements per worker within {format_duration(per)}",
    )
