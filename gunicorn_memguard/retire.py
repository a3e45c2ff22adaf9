"""How to stop a worker gracefully, per concurrency model: stop accepting, finish what is in
flight, exit. The guard decides *whether*; these decide *how*, and are safe to start from any
thread of the worker.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from typing import Any, Callable

import gunicorn

Retire = Callable[[], None]


def send_sigterm() -> None:
    """gunicorn's own graceful stop. Measured: the sync, gthread and gevent workers notice a
    SIGTERM sent to themselves at once, even when it arrives on a non-main thread, because the
    signal wakes their select() through ``set_wakeup_fd``; setting ``alive = False`` alone
    leaves an idle sync worker asleep for up to ``timeout / 2``."""
    os.kill(os.getpid(), signal.SIGTERM)


class LegacyThreadDrain:
    """Graceful stop for gthread workers on gunicorn < 24.

    There, a SIGTERM makes the worker leave its loop and close the poller at once, resetting
    every connection it had accepted but not yet read (benoitc/gunicorn#3038, fixed in 24.0), so
    a retirement would lose requests. Instead, from the worker's own main loop (its ``notify``
    call, once a second or more): stop accepting, serve every accepted connection with
    keep-alive off, and clear ``alive`` only when none is left — or at ``deadline``.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.requested = False
        self.draining = False
        self.deadline = 0.0
        self._notify = worker.notify
        worker.notify = self.tick  # the instance attribute shadows the class method

    def __call__(self) -> None:
        self.deadline = time.monotonic() + self.worker.cfg.graceful_timeout
        self.requested = True

    def tick(self) -> None:
        self._notify()
        if not self.requested or not self.worker.alive:
            return
        if not self.draining:
            self.draining = True
            self.worker.cfg.set("keepalive", 0)  # this worker's copy: close after each response
            for sock in self.worker.sockets:
                try:
                    self.worker.poller.unregister(sock)
                except (KeyError, ValueError, OSError):
                    pass
        if self.worker.nr_conns <= 0 or time.monotonic() >= self.deadline:
            self.worker.alive = False


def retirement_for(worker: Any) -> Retire:
    """The graceful stop for this worker; a worker class may supply its own ``memguard_retire``."""
    own = getattr(worker, "memguard_retire", None)
    if own is not None:
        return own
    if gunicorn.version_info < (24,):
        from gunicorn.workers.gthread import ThreadWorker

        if isinstance(worker, ThreadWorker) and isinstance(getattr(worker, "poller", None), selectors.BaseSelector):
            return LegacyThreadDrain(worker)
    return send_sigterm
