"""``-k gunicorn_memguard.workers.UvicornWorker`` (and ``UvicornH11Worker``): uvicorn's gunicorn
worker, guarded.

The parent is ``uvicorn_worker.UvicornWorker`` when the ``uvicorn-worker`` package is installed,
else the deprecated ``uvicorn.workers.UvicornWorker`` (the same code). Over a stock uvicorn worker
under the hook module, this class adds:

- a clean retirement: uvicorn's ``Server`` is kept, and retiring sets its ``should_exit`` (noticed
  within 0.1 s), so the worker drains, exits 0 and ``worker_exit`` runs. A stock worker can only be
  sent SIGTERM, which uvicorn re-raises after its drain, so it dies *by* the signal;
- no lost requests: uvicorn's own shutdown resets connections accepted just before it (see
  ``_memguard_drain``);
- a heartbeat to gunicorn's master while draining, which uvicorn does not send;
- a check after every HTTP request and WebSocket session (uvicorn never calls ``post_request``),
  ASGI 2 and 3 apps alike, from uvicorn's own set of request tasks (``RequestTasks``), and
  ``worker.nr`` is uvicorn's own count of requests, for the log line;
- no config file needed, as for every memguard class.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any

from gunicorn.arbiter import Arbiter

try:
    from uvicorn.server import Server
except ImportError as exc:
    raise ImportError(
        "gunicorn_memguard.workers.UvicornWorker needs uvicorn: pip install 'gunicorn-memguard[uvicorn]'"
    ) from exc

try:
    from uvicorn_worker import UvicornH11Worker as _StockH11Worker
    from uvicorn_worker import UvicornWorker as _StockUvicornWorker
except ImportError:
    with warnings.catch_warnings():  # uvicorn.workers warns that it moved to uvicorn-worker
        warnings.simplefilter("ignore", DeprecationWarning)
        from uvicorn.workers import UvicornH11Worker as _StockH11Worker
        from uvicorn.workers import UvicornWorker as _StockUvicornWorker

from .. import hooks
from ..worker.clock import RequestClock
from ..worker.retire import send_sigterm
from .base import MemguardWorker

# How long a retiring worker waits for connections it accepted to send their request.
ACCEPTED_GRACE = 1.0
# How long it looks on every loop pass for connections accepted just before it stopped accepting.
ACCEPTED_SETTLE = 0.05


class _Tasks(set[Any]):
    __slots__ = ("check",)

    def __init__(self, check: Callable[[], None]) -> None:
        super().__init__()
        self.check = check  # the guard's after_request: gated, and it catches its own faults

    def each(self, checked: bool) -> None:
        """Check after each request (``RequestTasks``), or let them go with the set's own discard
        (``UncheckedTasks``). The class itself changes: an override in the instance's dict cost a
        request 1.4–1.9 µs with the CPU's caches cold, a subclass with no method of its own
        0.5–0.9 µs (``python -m bench.overhead``)."""
        self.__class__ = RequestTasks if checked else UncheckedTasks


class RequestTasks(_Tasks):
    """uvicorn's set of running request tasks (``ServerState.tasks``), checking memory as it lets
    each go. uvicorn discards an HTTP request's task in that task's done callback — once the app's
    call has returned, background tasks included, whether it succeeded, failed or the client left —
    and a WebSocket session's task when the session ends. So every request can be checked once,
    with no coroutine of memguard's around the app. The set is uvicorn's to read and change as
    before (``len`` for ``limit_concurrency``, the wait for tasks at shutdown).

    While the limits are far, ``RequestClock`` turns it into ``UncheckedTasks`` and checks on a loop
    timer instead: even this method cost a hello-world uvicorn worker 1.2 % more CPU per request,
    its code and data being out of the CPU's caches after the request (``python -m
    bench.overhead``; 1.008 with set's own discard, 1.020 with this one)."""

    __slots__ = ()

    def discard(self, task: Any) -> None:
        try:
            self.remove(task)
        except KeyError:
            return  # not one of the server's (or already let go): no request ended
        self.check()


class UncheckedTasks(_Tasks):
    """The same set, letting tasks go with the set's own discard (uvicorn looks it up as it
    creates each request's task)."""

    __slots__ = ()


class _Server(Server):
    """uvicorn's ``Server``, except that a stop signal ends the worker with exit status 0.

    uvicorn (0.29 and later) re-raises SIGTERM/SIGINT once it has shut down, and the worker's
    handlers are SIG_DFL by then, so every normal stop of gunicorn (SIGTERM or SIGINT to the
    master, HUP, TTOU) killed each worker *by* the signal: gunicorn's ``worker_exit`` hook never
    ran, and the master could only report a worker killed by SIGTERM. gunicorn's own workers
    exit 0 after a graceful stop; so does this one."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)  # absent before uvicorn 0.29
        if captured and captured[-1] == sig:
            captured.pop()


class _Guarded(MemguardWorker):
    memguard_server: Server | None = None
    _nr = 0
    memguard_loop: asyncio.AbstractEventLoop | None = None
    # set or defined by uvicorn's worker, the other base of each class below
    wsgi: Any
    config: Any
    sockets: Any
    notify: Callable[[], None]
    _install_sigquit_handler: Callable[[], None]

    @property
    def nr(self) -> int:
        """Requests served, for memguard's log lines and its gate: uvicorn's own count once it
        serves (responses completed), which it keeps anyway; counting again per request would
        cost a request ~1 µs of cache misses. gunicorn sets ``nr`` but never counts for uvicorn."""
        server = self.memguard_server
        return self._nr if server is None else server.server_state.total_requests

    @nr.setter
    def nr(self, value: int) -> None:
        self._nr = value

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGQUIT, gunicorn's quick stop (SIGINT or SIGQUIT to the master): the parent installs
        this as its handler, but gunicorn's ``handle_exit`` only clears ``alive``, which uvicorn
        never reads, so the worker served on until the master SIGKILLed it after
        graceful_timeout. Stop uvicorn at once instead, and exit 0."""
        super().handle_exit(sig, frame)  # type: ignore[misc]
        server = self.memguard_server
        if server is not None and sig == signal.SIGQUIT:
            server.should_exit = server.force_exit = True

    async def _serve(self) -> None:
        """The parent's ``_serve``, keeping the ``Server`` it otherwise holds in a local."""
        self.memguard_loop = asyncio.get_running_loop()
        self.config.app = self.wsgi
        server = self.memguard_server = _Server(config=self.config)
        guard = hooks.current_guard()  # post_worker_init ran before the worker's run()
        if guard is not None:  # before any connection: every protocol shares the server's set
            tasks = server.server_state.tasks = RequestTasks(guard.after_request)
            RequestClock(guard.gate, self.memguard_loop.call_later, tasks.each, self.log, busy=tasks.__len__).start()
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def memguard_retire(self) -> None:
        """Stop accepting before the loop's next pass, then drain. Called on the loop's thread (the
        check after a request) it stops accepting right here; from the guard's OS thread, as the
        first callback of the loop's next pass, before that pass's accepts. Each pass accepts every
        connection waiting, so when a task did it (two passes later) a retiring worker took about
        one more request per client on a loaded 2-core machine: 30 after the decision, at 20
        clients."""
        server, loop = self.memguard_server, self.memguard_loop
        if server is None or loop is None:  # not serving yet
            send_sigterm()
            return
        if _running_loop() is loop:
            self._memguard_begin_drain(server, loop)
        else:
            loop.call_soon_threadsafe(self._memguard_begin_drain, server, loop)

    def _memguard_begin_drain(self, server: Server, loop: asyncio.AbstractEventLoop) -> None:
        for listener in server.servers:
            for sock in listener.sockets:
                if not loop.remove_reader(sock.fileno()):  # not a selector loop (uvloop): close it
                    listener.close()
        loop.create_task(self._memguard_drain(server))

    async def _memguard_drain(self, server: Server) -> None:
        """Let just-accepted connections deliver their request, then let uvicorn shut down: it
        closes idle keep-alive connections, lets in-flight responses (streams included) finish
        with ``Connection: close``, and returns, so the worker exits 0. The guard bounds all of it
        by graceful_timeout.

        uvicorn's own shutdown loses requests (12 of 1,200 under load with ``--max-requests``):
        closing an asyncio server drops connections accepted in the same loop pass (their transport
        can no longer attach to the closed server), and uvicorn closes at once every connection
        whose request has not arrived yet. So the listeners' readers are removed first
        (``_memguard_begin_drain``), and the servers are closed by uvicorn only once those
        connections have a request in."""
        loop = asyncio.get_running_loop()
        told: set[Any] = set()
        try:
            _end_keep_alive(server, told)
            deadline, settled = loop.time() + ACCEPTED_GRACE, loop.time() + ACCEPTED_SETTLE
            while loop.time() < settled:  # connections accepted just before get their protocol
                await asyncio.sleep(0)  # on every loop pass: each is told before its first response ends
                _end_keep_alive(server, told)
            while loop.time() < deadline and any(_awaits_request(c) for c in server.server_state.connections):
                await asyncio.sleep(0.01)
                _end_keep_alive(server, told)  # a request that arrived meanwhile is its connection's last
        finally:
            server.should_exit = True  # read by uvicorn's main loop every 0.1 s
        # uvicorn sends no heartbeat while it shuts down, so gunicorn's master would kill a long drain
        # at --timeout; memguard bounds the drain itself, so it heartbeats until the process ends.
        while True:
            self.notify()
            await asyncio.sleep(1.0)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # no loop runs in this thread: the guard's OS thread
        return None


def _end_keep_alive(server: Server, told: set[Any]) -> None:
    """Every HTTP connection that has had a request ends after its current response: uvicorn's
    own per-connection ``shutdown()`` closes it if idle, else turns keep-alive off for the
    response in flight. Without this, keep-alive clients go on being served for the whole grace,
    up to ``ACCEPTED_GRACE``. Connections still waiting for their first request are left to
    deliver it (see ``_memguard_drain``), and told as it arrives; WebSocket connections have no
    ``cycle``."""
    for connection in list(server.server_state.connections):
        if connection in told:
            continue
        if getattr(connection, "cycle", None) is not None:
            told.add(connection)
            connection.shutdown()
        elif _awaits_request(connection) and "data_received" not in vars(connection):
            _tell_on_first_request(connection, told)


def _tell_on_first_request(connection: Any, told: set[Any]) -> None:
    """Tell a connection of this retiring worker the moment its first request is in: found
    between two polls of the drain it had been served with keep-alive on, and a client that sends
    its next request as soon as it has the answer (1 MiB requests, 8 keep-alive clients) got ~40
    more requests through that one connection in the 50 ms before the next poll, 1.5 × the
    worker's ceiling. The wrapper is this connection's own (the asyncio transport calls its
    protocol's ``data_received``); uvicorn's protocol class is untouched."""
    received = connection.data_received

    def data_received(data: bytes) -> None:
        received(data)
        if connection not in told and getattr(connection, "cycle", None) is not None:
            told.add(connection)
            connection.shutdown()

    connection.data_received = data_received


def _awaits_request(connection: Any) -> bool:
    """An HTTP connection accepted but without a complete request yet (uvicorn's h11 and httptools
    protocols set ``cycle`` when a request's headers are in)."""
    return getattr(connection, "cycle", False) is None


class UvicornWorker(_Guarded, _StockUvicornWorker):
    pass


class UvicornH11Worker(_Guarded, _StockH11Worker):
    pass
