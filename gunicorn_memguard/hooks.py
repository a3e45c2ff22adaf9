"""memguard's gunicorn server hooks, and how they are composed with the user's own.

gunicorn calls each hook by name from the config, so a config file holds one function per name:
either the user's or memguard's would be lost. A user's ``post_worker_init`` defined after
``from gunicorn_memguard.conf import *`` replaces memguard's: every master-side entry point goes
through `install`, which builds the master's runtime once and re-composes every time. One defined
before the import would be replaced by memguard's: the import binds `star_imported` instead (see
``conf.py``). Either way the user's hook runs first, memguard's after it (in ``finally``, so it
runs even if the user's raises).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .master import arbiter, exits, limits, runtime
from .report.telemetry import Telemetry
from .shared.scoreboard import SLOT_ATTR
from .worker import leave
from .worker.guard import Guard
from .worker.retire import retirement_for

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
def install(cfg: Any, log: Any, server: Any = None) -> runtime.Runtime:
    """Idempotent: the master's runtime once, then memguard's hooks composed into ``cfg``.

    Called from every master-side entry point (memguard's hooks, the worker classes'
    ``check_config`` and constructors), so a config reloaded by HUP, or a user hook that
    replaced one of memguard's, is composed again before the next fork.
    """
    master = runtime.install(cfg, log, server)
    if master.settings.enabled:
        for name in compose_into(cfg):
            log.info("memguard: composed your %s hook with memguard's (yours runs first)", name)
    return master


@_never_raises
def on_starting(server: Any) -> None:
    install(server.cfg, server.log, server)  # bad settings: SystemExit, before any fork


@_never_raises
def when_ready(server: Any) -> None:
    master = install(server.cfg, server.log, server)
    if master.settings.enabled:
        arbiter.watch_deaths(server, master.deaths)
        arbiter.watch_kills(server, master.sent)
        master.serve_metrics(server.log)
        master.coordinate(server)


@_never_raises
def pre_fork(server: Any, worker: Any) -> None:
    master = install(server.cfg, server.log, server)
    limits.resolve_limits(master, server)
    master.claim_slot(worker, server.log)
    master.coordinate(server)  # last: if it fails, workers still get slots and retire on their own


@_never_raises
def child_exit(server: Any, worker: Any) -> None:
    master = runtime.current()
    if master is not None:
        if master.coordinator is not None:  # first: in the same step as gunicorn's removal of the worker
            master.coordinator.worker_left(worker.pid)
        exits.report_exit(master, worker, server.log, server.cfg)
        limits.resolve_limits(master, server)


# -- worker side ----------------------------------------------------------------------------
@_never_raises
def post_worker_init(worker: Any) -> None:
    inherited = runtime.current()
    if inherited is None or not inherited.settings.enabled or inherited.guard is not None:
        return
    inherited.guard = Guard(
        worker,
        inherited.settings,
        retirement_for(worker),
        worker.log,
        inherited.scoreboard,
        getattr(worker, SLOT_ATTR, None),
        telemetry=Telemetry(inherited.events, worker.log, worker.cfg),
        shared=inherited.shared,
        coordinated=inherited.coordinated,
        tracing=inherited.tracing,
    )
    _bind_post_request(worker.cfg, inherited.guard.after_request)


def _bind_post_request(cfg: Any, after_request: Callable[..., None]) -> None:
    """Make this worker's ``post_request`` hook the guard's gated check itself, instead of
    ``post_request`` below, which finds the guard through the runtime on every request: in a
    serving worker that lookup's memory is out of the CPU's caches: with them cold it cost 3.6 µs
    more than a no-op hook, the gate's method 1.0 µs (``python -m bench.overhead``). The config is
    this worker's own copy (the master's is untouched); only memguard's own hook is replaced, alone
    or as the second half of a composition."""
    setting = cfg.settings["post_request"]
    current = setting.get()
    if current is post_request:
        setting.value = after_request  # not cfg.set: the value is memguard's, already validated
    elif isinstance(current, Composed) and current.ours is post_request:
        current.ours = after_request


def request_switch(cfg: Any, after_request: Callable[..., None]) -> Callable[[bool], None] | None:
    """Once ``_bind_post_request`` made this worker's ``post_request`` the guard's: a switch
    between that gated check (True) and gunicorn's own no-op hook (False), for a worker whose
    event loop checks on a timer while the limits are far (``worker/clock.py``). None if
    memguard's hook is not this worker's (a user's config replaced it)."""
    setting = cfg.settings["post_request"]
    current, unchecked = setting.get(), setting.default
    if current is after_request:

        def switch(checked: bool) -> None:
            setting.value = after_request if checked else unchecked  # gunicorn reads it per request

        return switch
    if isinstance(current, Composed) and current.ours is after_request:
        composed = current

        def switch_ours(checked: bool) -> None:
            composed.ours = after_request if checked else unchecked  # the user's hook runs as before

        return switch_ours
    return None


def current_guard() -> Guard | None:
    """The guard of this worker process, once post_worker_init ran."""
    inherited = runtime.current()
    return None if inherited is None else inherited.guard


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    """Until the guard runs; then each worker's hook is the guard's own (``_bind_post_request``).
    No ``_never_raises`` wrapper: the guard's ``after_request`` catches its own faults."""
    inherited = runtime.current()
    if inherited is not None and inherited.guard is not None:
        inherited.guard.after_request()


setattr(post_request, MARK, True)  # memguard's own hook, as _never_raises marks the others


@_never_raises
def worker_exit(server: Any, worker: Any) -> None:
    guard = current_guard()
    if guard is not None:
        guard.worker_exited()
        guard.forensics.finish()  # a report of its allocation sites under way ends first
        # last of gunicorn's exit path (the user's worker_exit ran first): skip the teardown that
        # would unshare the inherited heap (worker/leave.py); a dry run changes nothing
        if guard.settings.fast_exit and not guard.settings.dry_run and leave.leaving_gracefully():
            leave.leave()


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

    def __init__(self, theirs: Callable[..., Any], ours: Callable[..., None], *, announce: bool = False) -> None:
        self.theirs = theirs
        self.ours = ours
        self.__signature__ = inspect.signature(ours)
        # composed before gunicorn had a logger (star_imported): `compose_into` says so once
        self.unannounced = announce
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
            if getattr(current, "unannounced", False):
                current.unannounced = False
                composed.append(name)
            continue
        if current is cfg.settings[name].default:
            cfg.set(name, ours)  # gunicorn's own default does nothing: no composition to pay per call
        else:
            cfg.set(name, Composed(current, ours))
            composed.append(name)
    return composed


def chain(theirs: Callable[..., Any]) -> Composed:
    """Decorator for a user's config file: ``@chain def post_worker_init(worker): ...`` runs
    yours, then memguard's hook of the same name. Optional — memguard composes on its own, at
    start-up or at the ``import *`` — but it keeps the composition visible in the file."""
    return Composed(theirs, HOOKS[theirs.__name__])


def star_imported(name: str, theirs: object) -> object:
    """What ``from gunicorn_memguard.conf import *`` binds ``name`` to in a namespace that holds
    ``theirs`` under that name (None: nothing): memguard's hook, composed after the user's if the
    user's hook is there already — the import would otherwise replace it."""
    ours = HOOKS[name]
    if isinstance(theirs, str):  # gunicorn also takes "package.module.function"; resolve it as it would
        from gunicorn.config import validate_callable

        theirs = validate_callable(-1)(theirs)
    if not callable(theirs):
        return ours
    if getattr(theirs, MARK, False):  # memguard's own or a composition (@chain, an earlier import)
        return theirs
    return Composed(theirs, ours, announce=True)
