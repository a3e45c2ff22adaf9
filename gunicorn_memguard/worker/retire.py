"""How to stop a worker gracefully, per concurrency model: stop accepting, finish what is in
flight, exit. The guard decides *whether*; these decide *how*, and are safe to start from any
thread of the worker.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import gunicorn

Retire = Callable[[], None]


def send_sigterm() -> None:
    """gunicorn's own graceful stop. Measured: the sync and gthread workers notice a SIGTERM sent
    to themselves at once, even when it arrives on a non-main thread, because the signal wakes
    their select() through ``set_wakeup_fd``; setting ``alive = False`` alone leaves an idle sync
    worker asleep for up to ``timeout / 2``. (gevent's loop acts on it only once a second: see
    ``GeventDrain``.)"""
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


class GeventDrain:
    """Graceful stop for gevent workers that stops accepting at once.

    gunicorn's gevent worker checks ``alive`` (which SIGTERM clears) only once a second and keeps
    accepting until then: under load a leaking worker grew from its 43 MiB limit to 100 MiB in that
    second. So, set up before ``run`` (from ``post_worker_init``), this records the servers the worker
    makes — in this worker process only, gunicorn's gevent module's ``StreamServer`` (or the worker's
    ``server_class``) becomes a subclass that records itself — and a retirement clears ``alive`` and
    hands the stopping of their accept loops to the loop (gevent objects belong to it;
    ``run_callback_threadsafe`` also wakes it). The parent's loop then drains as on SIGTERM.

    A keep-alive connection whose response was under way when the retirement began would then
    wait up to ``keepalive`` seconds for another request (a request that starts after it is answered
    with ``Connection: close``), so each request of the worker ends by checking ``alive``: once
    retiring, its connection is closed right after the response and the client reconnects to a
    healthy worker.
    """

    def __init__(self, worker: Any) -> None:
        import gevent
        from gunicorn.workers import ggevent

        self.worker = worker
        self.hub = gevent.get_hub()  # the worker's main thread: its loop
        self.servers: list[Any] = []
        if worker.server_class is not None:
            worker.server_class = self._recording(worker.server_class)
        else:
            ggevent.StreamServer = self._recording(ggevent.StreamServer)
        worker.handle_request = self._closing_when_retired(worker.handle_request)  # shadows the method

    def _recording(self, server_class: type) -> type:
        servers = self.servers

        class Recorded(server_class):
            def start(self) -> None:
                servers.append(self)
                super().start()

        return Recorded

    def _closing_when_retired(self, handle_request: Callable[..., Any]) -> Callable[..., Any]:
        worker = self.worker

        def handle_request_then_close_if_retiring(*args: Any) -> Any:
            handled = handle_request(*args)
            if not worker.alive:
                raise StopIteration  # the worker's connection loop closes the connection
            return handled

        return handle_request_then_close_if_retiring

    def __call__(self) -> None:
        self.worker.alive = False
        self.hub.loop.run_callback_threadsafe(self._stop_accepting)

    def _stop_accepting(self) -> None:
        # Stop this worker's accept loop but keep its listening socket open until the worker exits:
        # gunicorn's async handler calls ``listener.getsockname()`` for every connection, so closing
        # the socket here reset a connection accepted just before (EBADF). The socket is shared with
        # the other workers, which go on accepting from it.
        for server in self.servers:
            server.stop_accepting()


def retirement_for(worker: Any) -> Retire:
    """The graceful stop for this worker; a worker class may supply its own ``memguard_retire``."""
    own = getattr(worker, "memguard_retire", None)
    if own is not None:
        return own
    ggevent = sys.modules.get("gunicorn.workers.ggevent")  # loaded if, and only if, a gevent worker runs
    if ggevent is not None and isinstance(worker, ggevent.GeventWorker):
        return GeventDrain(worker)
    if gunicorn.version_info < (24,):
        from gunicorn.workers.gthread import ThreadWorker

        if isinstance(worker, ThreadWorker) and isinstance(getattr(worker, "poller", None), selectors.BaseSelector):
            return LegacyThreadDrain(worker)
    return send_sigterm
