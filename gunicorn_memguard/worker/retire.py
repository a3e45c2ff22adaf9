"""How to stop a worker gracefully, per concurrency model: stop accepting, finish what is in
flight, exit. The guard decides *whether*; these decide *how*, and are safe to start from any
thread of the worker.
"""

from __future__ import annotations

import asyncio
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
    wait up to ``keepalive`` seconds for another request and serve it (a request that starts after
    ``alive`` is cleared is answered with ``Connection: close``), so a retirement also makes the
    worker's ``post_request`` hook mark each request that ends as the connection's last
    (``req.force_close()``, read by gunicorn's parser before it waits for the next request, on
    22–27): the connection closes right after its response and the client reconnects to a healthy
    worker. Nothing of this runs per request before a retirement (a wrapper around
    ``handle_request`` did, on every request).
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
        self._closing: Callable[..., None] | None = None

    def _recording(self, server_class: type) -> type:
        servers = self.servers

        class Recorded(server_class):
            def start(self) -> None:
                servers.append(self)
                super().start()

        return Recorded

    def __call__(self) -> None:
        self.worker.alive = False
        self._close_after_each_response()  # now: requests ending before the loop's callback
        self.hub.loop.run_callback_threadsafe(self._stop_accepting)

    def _close_after_each_response(self) -> None:
        """Make this worker's ``post_request`` (its config is its own copy) end with marking the
        request its connection's last. Again from the loop's callback: a switch of the hook by the
        request clock in progress on the loop's thread as the retirement began (``workers/gevent``)
        is over by then, and the clock switches no more."""
        setting = self.worker.cfg.settings["post_request"]
        if self._closing is not None and setting.value is self._closing:
            return
        hook = setting.value

        def post_request_then_close(worker: Any, req: Any, environ: Any, resp: Any) -> None:
            try:
                hook(worker, req, environ, resp)
            finally:
                force_close = getattr(req, "force_close", None)  # an HTTP/1 request (gunicorn's Message)
                if force_close is not None:
                    force_close()

        self._closing = setting.value = post_request_then_close

    def _stop_accepting(self) -> None:
        self._close_after_each_response()
        # Stop this worker's accept loop but keep its listening socket open until the worker exits:
        # gunicorn's async handler calls ``listener.getsockname()`` for every connection, so closing
        # the socket here reset a connection accepted just before (EBADF). The socket is shared with
        # the other workers, which go on accepting from it.
        for server in self.servers:
            server.stop_accepting()


class AsgiDrain:
    """Graceful stop for gunicorn's own asyncio worker (``-k asgi``, gunicorn >= 24), that stops
    accepting at once and heartbeats while it drains.

    On SIGTERM that worker only clears ``alive``, which its main loop reads once a second: it goes
    on accepting until then (as gevent's did), and its shutdown sends gunicorn's master no
    heartbeat, so a drain longer than ``--timeout`` is killed. The rest of its shutdown is what a
    retirement wants: with ``alive`` clear every connection closes after its current response
    (``Connection: close``), a connection accepted without its request yet is still served, and
    the shutdown waits up to ``graceful_timeout`` for the connections, runs the lifespan shutdown
    and exits 0.

    So a retirement runs ``_begin`` on the loop's thread: right there when decided on it (the
    check after a request), else as the first callback of the loop's next pass, before that pass's
    accepts (``call_soon_threadsafe``, from the guard's OS thread). It stops polling the
    listeners, clears ``alive`` and heartbeats until the process ends; the worker's main loop then
    runs its own shutdown within a second. Its closing of the listeners, which drops a connection
    accepted in the same loop pass (its transport can no longer attach to a closed server), comes
    at least a pass after the last accept. With uvloop, whose listeners cannot be paused on their
    own, they are closed at once.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.begun = False
        if gunicorn.version_info < (26, 2):
            count_server_closes()

    def __call__(self) -> None:
        loop = self.worker.loop
        if loop is None:  # no loop yet: gunicorn's own stop
            send_sigterm()
        elif loop.is_closed():  # its shutdown is over: it is exiting
            return
        elif _running_loop() is loop:
            self._begin()
        else:
            loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        if self.begun:
            return
        self.begun = True
        worker, loop = self.worker, self.worker.loop
        for server in worker.servers:
            for sock in server.sockets:
                if not loop.remove_reader(sock.fileno()):  # not a selector loop (uvloop): close it
                    server.close()
        worker.alive = False
        loop.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        """memguard bounds the drain itself (graceful_timeout + a margin); cancelled with the
        worker's other tasks once its shutdown is done."""
        while True:
            self.worker.notify()
            await asyncio.sleep(1.0)


def count_server_closes() -> None:
    """Make gunicorn's asgi worker count a connection out when the server closed it (in this
    worker process; from ``post_worker_init``, before it serves).

    From gunicorn 25 until 26.2 (benoitc/gunicorn#3661) its ``connection_lost`` returned early for
    any connection the server had closed (``Connection: close``, the end of keep-alive on a stop,
    a keep-alive timeout), so ``nr_conns`` only grew, and its shutdown, which waits for it to reach
    0, waited out the whole ``graceful_timeout`` every time: measured on 25.3.0, every retirement
    lasted graceful_timeout + ~1 s, however short its last responses, and was reported as a drain
    memguard had to end. The wrapper
    counts a connection out only if gunicorn's own method did not, so it changes nothing where
    gunicorn counts right."""
    from gunicorn.asgi.protocol import ASGIProtocol

    lost = ASGIProtocol.connection_lost
    if getattr(lost, "_memguard_counts", False):
        return

    def connection_lost(protocol: Any, exc: BaseException | None) -> None:
        worker, counted = protocol.worker, protocol.__dict__.get("_memguard_counted_out", False)
        before = worker.nr_conns
        try:
            lost(protocol, exc)
        finally:
            if not counted and worker.nr_conns == before:
                worker.nr_conns -= 1
            protocol._memguard_counted_out = True

    connection_lost._memguard_counts = True  # type: ignore[attr-defined]
    ASGIProtocol.connection_lost = connection_lost


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # no loop runs in this thread: the guard's OS thread
        return None


def retirement_for(worker: Any) -> Retire:
    """The graceful stop for this worker; a worker class may supply its own ``memguard_retire``."""
    own = getattr(worker, "memguard_retire", None)
    if own is not None:
        return own
    ggevent = sys.modules.get("gunicorn.workers.ggevent")  # loaded if, and only if, a gevent worker runs
    if ggevent is not None and isinstance(worker, ggevent.GeventWorker):
        return GeventDrain(worker)
    gasgi = sys.modules.get("gunicorn.workers.gasgi")  # gunicorn >= 24, loaded if its asgi worker runs
    if gasgi is not None and isinstance(worker, gasgi.ASGIWorker):
        return AsgiDrain(worker)
    if gunicorn.version_info < (24,):
        from gunicorn.workers.gthread import ThreadWorker

        if isinstance(worker, ThreadWorker) and isinstance(getattr(worker, "poller", None), selectors.BaseSelector):
            return LegacyThreadDrain(worker)
    return send_sigterm
