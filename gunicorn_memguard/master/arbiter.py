"""Every change memguard makes to gunicorn's arbiter object, in one place.

Each patch replaces one method with an instance attribute that calls memguard, then the original;
gunicorn calls these methods through ``self``, so the instance attribute shadows the class's method
for this arbiter only. Each patch is applied once (marked) and keeps the original's signature.
Why each is safe is said at each function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..report.lines import Death
from .coordinator import Coordinator
from .exits import peek_deaths

MARK = "__memguard__"


def watch_deaths(arbiter: Any, deaths: dict[int, Death]) -> None:
    """Wrap ``reap_workers`` so that, just before gunicorn reaps, memguard peeks at how each dead
    worker ended into ``deaths``.

    Safe: the peek uses ``WNOWAIT``, so every child is still there for gunicorn's own
    ``waitpid``; it works on a copy of ``WORKERS`` (on gunicorn 22/23 SIGCHLD can change it under
    us, as ``reap_workers`` runs in that handler); and any error skips the peek, after which exits
    are reported as without it, and gunicorn's reaping runs regardless."""
    original: Callable[[], None] = arbiter.reap_workers
    if getattr(original, MARK, False):
        return

    def reap_workers() -> None:
        try:
            peek_deaths(list(arbiter.WORKERS), deaths)
        except Exception:  # noqa: BLE001 - without the peek, exits are reported as before
            pass
        original()

    setattr(reap_workers, MARK, True)
    arbiter.reap_workers = reap_workers


def watch_kills(arbiter: Any, sent: dict[int, set[int]]) -> None:
    """Wrap ``kill_worker`` so that memguard knows which signals the master itself sent each worker:
    a worker SIGKILLed by gunicorn (still running graceful_timeout after a stop, or after
    --timeout's SIGABRT) is then reported as that, not as a SIGKILL of unknown cause.

    Safe: it records the pid and signal, then calls gunicorn's own method with the same arguments;
    the record is dropped when the worker's exit is reported."""
    original: Callable[[int, int], None] = arbiter.kill_worker
    if getattr(original, MARK, False):
        return

    def kill_worker(pid: int, sig: int) -> None:
        if pid in arbiter.WORKERS:
            sent.setdefault(pid, set()).add(sig)
        original(pid, sig)

    setattr(kill_worker, MARK, True)
    arbiter.kill_worker = kill_worker


def attach_coordinator(arbiter: Any, coordinator: Coordinator, every_pass: Callable[[], None]) -> None:
    """Run ``every_pass`` (the container limit's re-read) and `Coordinator.tick` at the start of
    every ``manage_workers``, and pause the coordinator across reloads.

    Safe: ``manage_workers`` runs in the arbiter's main thread, at the point where gunicorn itself
    reconciles ``num_workers`` with ``WORKERS``, so the coordinator's changes are made where
    gunicorn expects them (``coordinator.py`` says which it makes), and ``tick`` never raises.
    ``reload`` resets ``num_workers`` to the configured count, so the coordinator forgets its
    raises for replacements before it and stays paused until the reload is done."""
    if getattr(arbiter.manage_workers, MARK, False):
        return
    manage_workers, reload = arbiter.manage_workers, arbiter.reload

    failed: list[bool] = []

    def managed() -> None:
        try:
            every_pass()
        except Exception:  # noqa: BLE001 - the limits stay as they were; gunicorn's pass runs regardless
            if not failed:
                failed.append(True)
                arbiter.log.exception("memguard: cannot follow the container's memory limit; limits stay as they are")
        coordinator.tick()
        manage_workers()

    def reloaded() -> None:
        with coordinator.reloading():
            reload()

    setattr(managed, MARK, True)
    setattr(reloaded, MARK, True)
    arbiter.manage_workers = managed
    arbiter.reload = reloaded
