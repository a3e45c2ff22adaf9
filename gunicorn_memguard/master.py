"""Master-side adapter: build the settings once, share a scoreboard with the workers, make sure
memguard's hooks are in gunicorn's config, and say how each worker ended.

Everything here runs in the arbiter's main thread (or, on gunicorn 22/23, in its SIGCHLD
handler, which only ever releases slots), so it needs no locks.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Mapping

from .events import exit_line
from .coordinator import Coordinator
from .scoreboard import SLOT_ATTR, Scoreboard
from .settings import Settings, SettingsError, load_settings
from .units import format_size

COORDINATOR_ATTR = "memguard_coordinator"


class MasterState:
    """What the master builds once and every forked worker inherits."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.scoreboard: Scoreboard | None = None
        self.coordinated = False  # a coordinator runs in the master: soft retirements wait their turn


STATE = MasterState()


def config_namespace(cfg: Any) -> tuple[Mapping[str, object], str]:
    """The variables of the gunicorn config module, without running it again.

    gunicorn keeps a config file in ``sys.modules['__config__']`` and imports ``python:`` modules
    normally; ``memguard_*`` variables are ignored by gunicorn, so memguard reads them here.
    """
    location = getattr(cfg, "config", None) or ""
    if location.startswith("python:"):
        module = sys.modules.get(location[len("python:"):])
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
    from .hooks import compose_into

    if STATE.settings is None:
        try:
            STATE.settings = load_from(cfg)
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
            _announce(settings, cfg, log)
    if STATE.settings.enabled:
        for name in compose_into(cfg):
            log.info("memguard: composed your %s hook with memguard's (yours runs first)", name)
    return STATE.settings


def _announce(settings: Settings, cfg: Any, log: Any) -> None:
    limit = format_size(settings.max_memory) if settings.max_memory else "none (measuring only)"
    hard = format_size(settings.hard_max_memory) if settings.hard_max_memory else "none"
    log.info(
        "memguard: guarding workers: metric=%s limit=%s hard_limit=%s jitter=%g%% min_lifetime=%gs "
        "check_interval=%gs",
        settings.metric, limit, hard, settings.jitter * 100, settings.min_lifetime, settings.check_interval,
    )
    if settings.max_memory is None and settings.hard_max_memory is None:
        log.warning("memguard: no MEMGUARD_MAX_MEMORY or MEMGUARD_HARD_MAX_MEMORY set: no worker will be retired")
    uri = cfg.settings["worker_class"].get()
    if isinstance(uri, str) and uri.endswith("SyncWorker") and cfg.threads > 1:
        log.warning(
            "memguard: worker class %s with --threads %s runs gunicorn's stock gthread worker (gunicorn "
            "swaps any '...SyncWorker' for it when threads > 1); memguard guards it through its hooks. "
            "Say -k gunicorn_memguard.workers.ThreadWorker to get what you asked for.",
            uri, cfg.threads,
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


def report_exit(worker: Any, log: Any) -> None:
    slot = getattr(worker, SLOT_ATTR, None)
    if STATE.scoreboard is None or slot is None:
        return
    level, message = exit_line(worker.pid, STATE.scoreboard.read(slot), time.time())
    getattr(log, level)(message)
    STATE.scoreboard.release(slot)
    setattr(worker, SLOT_ATTR, None)
