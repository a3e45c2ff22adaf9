"""memguard's gunicorn server hooks, and how they are composed with the user's own.

gunicorn calls each hook by name from the config; a user's config that defines, say,
``post_worker_init`` after ``from gunicorn_memguard.conf import *`` would silently replace
memguard's and lose the guard. So every master-side entry point re-composes: the user's hook
runs first, memguard's after it (in ``finally``, so it runs even if the user's raises).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .master import runtime as master
from .report.telemetry import Telemetry
from .worker.guard import Guard
from .worker.retire import retirement_for

_guard: Guard | None = None  # the guard of this worker process, once post_worker_init ran
_failed: set[str] = set()

MARK = "__memguard__"


def _never_raises(hook: Callable[..., None]) -> Callable[..., None]:
    """A fault in memguard is logged once per hook and never reaches gunicorn or the request."""

    @functools.wraps(hook)
    def safe(*args: Any) -> None:
        try:
            hook(*args)
        except SystemExit:
            raise
        except Exception:  # noqa: BLE001
            if hook.__name__ not in _failed:
                _failed.add(hook.__name__)
                log = getattr(args[0], "log", None)
                if log is not None:
                    log.exception("memguard: error in its %s hook; carrying on without it", hook.__name__)

    safe.__signature__ = inspect.signature(hook)  # type: ignore[attr-defined]
    setattr(safe, MARK, True)
    return safe


# -- master side ----------------------------------------------------------------------------
@_never_raises
def on_starting(server: Any) -> None:
    master.install(server.cfg, server.log, server)  # bad settings: SystemExit, before any fork


@_never_raises
def when_ready(server: Any) -> None:
    settings = master.install(server.cfg, server.log, server)
    if settings.enabled:
        master.watch_deaths(server)
        master.serve_metrics(settings, server.log)
        master.coordinate(server)


@_never_raises
def pre_fork(server: Any, worker: Any) -> None:
    master.install(server.cfg, server.log, server)
    master.resolve_limits(server)
    master.claim_slot(worker, server.log)
    master.coordinate(server)  # last: if it fails, workers still get slots and retire on their own


@_never_raises
def child_exit(server: Any, worker: Any) -> None:
    master.report_exit(worker, server.log, server.cfg)
    master.resolve_limits(server)


# -- worker side ----------------------------------------------------------------------------
@_never_raises
def post_worker_init(worker: Any) -> None:
    global _guard
    settings = master.STATE.settings
    if settings is None or not settings.enabled or _guard is not None:
        return
    _guard = Guard(
        worker,
        settings,
        retirement_for(worker),
        worker.log,
        master.STATE.scoreboard,
        getattr(worker, master.SLOT_ATTR, None),
        telemetry=Telemetry(master.STATE.events, worker.log, worker.cfg),
        shared=master.STATE.shared,
        coordinated=master.STATE.coordinated,
    )


@_never_raises
def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    if _guard is not None:
        _guard.after_request()


@_never_raises
def worker_exit(server: Any, worker: Any) -> None:
    if _guard is not None:
        _guard.worker_exited()


HOOKS: dict[str, Callable[..., None]] = {
    "on_starting": on_starting,
    "when_ready": when_ready,
    "pre_fork": pre_fork,
    "post_worker_init": post_worker_init,
    "post_request": post_request,
    "worker_exit": worker_exit,
    "child_exit": child_exit,
}


class Composed:
    """Call the user's hook, then memguard's; presents memguard's signature, because gunicorn
    checks a hook's arity and rejects ``*args``."""

    def __init__(self, theirs: Callable[..., Any], ours: Callable[..., None]) -> None:
        self.theirs = theirs
        self.ours = ours
        self.__signature__ = inspect.signature(ours)
        setattr(self, MARK, True)

    def __call__(self, *args: Any) -> None:
        try:
            self.theirs(*args)
        finally:
            self.ours(*args)


def compose_into(cfg: Any) -> list[str]:
    """Make every memguard hook part of ``cfg``; return the names of user hooks composed."""
    composed = []
    for name, ours in HOOKS.items():
        current = cfg.settings[name].get()
        if getattr(current, MARK, False):
            continue
        cfg.set(name, Composed(current, ours))
        if current is not cfg.settings[name].default:
            composed.append(name)
    return composed


def chain(theirs: Callable[..., Any]) -> Composed:
    """Decorator for a user's config file: ``@chain def post_worker_init(worker): ...`` runs
    yours, then memguard's hook of the same name. Optional — memguard composes on its own at
    start-up — but it keeps the composition visible in the file."""
    return Composed(theirs, HOOKS[theirs.__name__])
