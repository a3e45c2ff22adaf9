"""The Prometheus endpoint, served by the master from the scoreboard (``MEMGUARD_PROMETHEUS_PORT``).

The master already holds every worker's latest figures in shared memory, so a scrape reads
them there: one process answers, for any number of workers, with no prometheus-client
multiprocess directory. Imported only when the endpoint is configured (the extra
``prometheus``).

Worker identity: the ``worker`` label is the worker's scoreboard slot, not its PID. A slot is
reused by the next worker forked after one exits, so the label set stays bounded by the
number of workers alive at once, and after a retirement the same series follows the
replacement (its age and requests start again from zero). The PID is a value
(``memguard_worker_pid``), not a label.

A thread in the master and ``fork()``: a lock held by this thread when the master forks a
worker would stay locked in the worker. So rendering a scrape's payload (the collector, the
tally's lock, prometheus-client's own) is done under ``fork_lock``, which ``os.register_at_fork``
takes around every fork from the master, and nothing else is: reading a request and writing the
answer happen without it, on non-blocking sockets, in one thread multiplexing at most
``MAX_CONNECTIONS`` connections, each cut off ``REQUEST_TIMEOUT`` after it was accepted. An idle
connection therefore costs a fork nothing, and when the connections are all taken the oldest one
that has not sent its request yet makes room for the new one. The forked worker closes its copies
of the listening socket and of every open scrape connection.

A port in use when the endpoint starts (the old master of a USR2 upgrade still holds it) is
bound again every ``BIND_RETRY`` seconds, one ``bind()`` each, until it is free: the new master
serves metrics once the old one exits.
"""

from __future__ import annotations

import errno
import math
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from ..policy.verdict import REASONS
from ..settings import Settings
from ..shared.limits import SharedLimits
from ..shared.scoreboard import Scoreboard, State
from . import snapshot
from .lines import OUTCOMES
from .tally import Tally

REQUEST_TIMEOUT = 2.0  # seconds from accepting a connection to having answered it, or it is dropped
MAX_CONNECTIONS = 8  # scrape connections served at once
MAX_REQUEST = 8192  # bytes of request line and headers
BIND_RETRY = 1.0  # seconds between attempts to bind a port in use
_TICK = 0.25  # the thread's longest wait: deadlines and bind retries are checked this often


class ScoreboardCollector:
    """Builds every metric afresh from the scoreboard and the master's totals at each scrape."""

    def __init__(
        self, scoreboard: Scoreboard, tally: Tally, settings: Settings, shared: SharedLimits | None = None
    ) -> None:
        self.scoreboard = scoreboard
        self.tally = tally
        self.settings = settings
        self.shared = shared  # the limits as resolved for this worker count, and the breaker

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        taken = snapshot.take(self.scoreboard, self.tally, self.settings, self.shared, now)
        yield from self._per_worker([(str(index), view) for index, view in taken.workers], now)
        yield from self._totals(taken.totals)
        yield from self._limits(taken)

    def _per_worker(self, workers: list[tuple[str, Any]], now: float) -> Iterator[Metric]:
        def per_worker(
            name: str, doc: str, figure: Callable[[Any], float | None], extra: dict[str, str] | None = None
        ) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["worker", *(extra or {})])
            for label, view in workers:
                value = figure(view)
                if value is not None:
                    family.add_metric([label, *(extra or {}).values()], value)
            return family

        yield per_worker(
            "memguard_worker_memory_bytes",
            "The enforced metric, read exactly at least every MEMGUARD_REPORT_INTERVAL",
            lambda v: v.exact if v.exact_at else None,
            {"metric": self.settings.metric},
        )
        yield per_worker("memguard_worker_rss_bytes", "Worker RSS at its last timer sample", lambda v: v.rss)
        yield per_worker(
            "memguard_worker_limit_bytes", "Worker's effective (jittered) soft limit", lambda v: v.limit or None
        )
        yield per_worker("memguard_worker_age_seconds", "Seconds since the worker started", lambda v: now - v.born)
        yield per_worker("memguard_worker_requests", "Requests served by the worker", lambda v: v.requests)
        yield per_worker(
            "memguard_worker_retiring",
            "1 while the worker drains after a retirement",
            lambda v: 1 if v.state is State.RETIRING else 0,
        )
        yield per_worker("memguard_worker_pid", "The worker's process id (a value, not a label)", lambda v: v.pid)
        yield per_worker(
            "memguard_worker_growth_bytes_per_second",
            "Growth of the worker's memory floor over MEMGUARD_GROWTH_WINDOW (with MEMGUARD_MAX_GROWTH)",
            lambda v: None if math.isnan(v.growth) else v.growth,
        )

    def _totals(self, totals: Any) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "memguard_reclaimed_bytes", "Memory given back by reclaims before retiring", value=totals.reclaimed
        )
        for name, doc, label, known, counts in (
            ("memguard_retirements", "Workers retired, by reason", "reason", REASONS, totals.retirements),
            (
                "memguard_would_retire",
                "Dry run: workers that would have been retired, by reason",
                "reason",
                REASONS,
                totals.would_retire,
            ),
            (
                "memguard_worker_exits",
                "Workers reaped by the master, by how they ended",
                "outcome",
                OUTCOMES,
                totals.exits,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=[label])
            for key in sorted(set(known) | set(counts)):
                family.add_metric([key], counts[key])
            yield family

    def _limits(self, taken: snapshot.Snapshot) -> Iterator[Metric]:
        limits = GaugeMetricFamily(
            "memguard_limit_bytes", "Per-worker limits (percentages resolved to bytes)", labels=["kind"]
        )
        for kind, value in (("soft", taken.soft), ("hard", taken.hard)):
            if value is not None:
                limits.add_metric([kind], value)
        yield limits
        if self.shared is not None:
            for name, doc, value in (
                (
                    "memguard_container_memory_limit_bytes",
                    "The container's memory limit, re-read at run time",
                    taken.container_limit,
                ),
                (
                    "memguard_total_budget_bytes",
                    "The server-wide budget (MEMGUARD_MAX_TOTAL_MEMORY) in bytes",
                    taken.budget,
                ),
            ):
                if value is not None:
                    yield GaugeMetricFamily(name, doc, value=value)
            yield GaugeMetricFamily(
                "memguard_breaker_open",
                "1 while workers start near their limit (a crash loop): useless retirements wait for the backoff",
                value=1 if taken.breaker_open else 0,
            )
            yield CounterMetricFamily(
                "memguard_breaker_trips", "Times the crash-loop breaker tripped", value=taken.breaker_trips
            )
        yield GaugeMetricFamily(
            "memguard_dry_run",
            "1 when MEMGUARD_DRY_RUN is on: nothing is retired",
            value=1 if self.settings.dry_run else 0,
        )


class _Connection:
    __slots__ = ("sock", "deadline", "accepted", "inbox", "outbox")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.accepted = now
        self.deadline = now + REQUEST_TIMEOUT
        self.inbox = b""
        self.outbox: memoryview | None = None  # set once the answer is rendered


def _response(status: str, content_type: str, body: bytes, head: bool = False) -> bytes:
    header = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    return header if head else header + body


class _MetricsServer:
    """One thread, non-blocking sockets, a selector: accept, read a request, render the answer
    under ``fork_lock``, write it, close."""

    def __init__(self, address: str, port: int, render: Callable[[str], tuple[str, str, bytes]], log: Any) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.wanted = (address, port)
        self.server_address: tuple[Any, ...] = self.wanted
        self.render = render  # Accept header -> (status, content type, payload); called under fork_lock
        self.log = log
        self.fork_lock = threading.Lock()
        self.socket: socket.socket | None = None
        self.selector = selectors.DefaultSelector()
        self.connections: dict[int, _Connection] = {}
        self.busy_since: float | None = None  # the port was in use at start-up, since then
        self._next_bind = 0.0
        self._stop = threading.Event()

    # -- binding ------------------------------------------------------------------------------
    def bind(self) -> bool:
        """Bind and listen; False if the port is in use (any other error raises OSError)."""
        sock = socket.socket(self.address_family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self.wanted)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        with self.fork_lock:  # a worker forked now must see the socket, to close its copy
            self.socket = sock
            self.server_address = sock.getsockname()
            self.selector.register(sock, selectors.EVENT_READ, None)
        return True

    def _retry_bind(self, now: float) -> None:
        if now < self._next_bind:
            return
        self._next_bind = now + BIND_RETRY
        try:
            bound = self.bind()
        except OSError as exc:
            self.log.error("memguard: cannot serve Prometheus metrics on %s port %s: %s; giving up", *self.wanted, exc)
            self.busy_since = None
            return
        if bound:
            waited, self.busy_since = now - (self.busy_since or now), None
            self.log.info("memguard: Prometheus metrics at %s (after waiting %.1fs for its port)", self.url, waited)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}/metrics"

    # -- serving --------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if self.socket is None and self.busy_since is not None:
                self._retry_bind(now)
            for key, mask in self.selector.select(_TICK):
                if key.data is None:
                    self._accept()
                else:
                    self._step(key.data, mask)
            now = time.monotonic()
            for connection in [c for c in self.connections.values() if c.deadline < now]:
                self._close(connection)  # a stalled or idle client: cut off

    def shutdown(self) -> None:
        self._stop.set()

    def _accept(self) -> None:
        assert self.socket is not None
        try:
            sock, _ = self.socket.accept()
        except OSError:
            return
        sock.setblocking(False)
        if len(self.connections) >= MAX_CONNECTIONS:
            waiting = [c for c in self.connections.values() if c.outbox is None]
            if not waiting:  # all busy being answered: this one is refused
                sock.close()
                return
            self._close(min(waiting, key=lambda c: c.accepted))  # the oldest idle one makes room
        connection = _Connection(sock, time.monotonic())
        with self.fork_lock:  # a worker forked now must know every connection, to close its copy
            self.connections[sock.fileno()] = connection
        self.selector.register(sock, selectors.EVENT_READ, connection)

    def _close(self, connection: _Connection) -> None:
        with self.fork_lock:
            self.connections.pop(connection.sock.fileno(), None)
        try:
            self.selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        try:
            connection.sock.shutdown(socket.SHUT_RDWR)  # FIN now, even if a forked worker still held a copy
        except OSError:
            pass
        connection.sock.close()

    def _step(self, connection: _Connection, mask: int) -> None:
        try:
            if connection.outbox is None:
                data = connection.sock.recv(4096)
                if not data:
                    self._close(connection)
                    return
                connection.inbox += data
                if b"\r\n\r\n" not in connection.inbox and b"\n\n" not in connection.inbox:
                    if len(connection.inbox) > MAX_REQUEST:
                        self._answer(connection, _response("431 Request Header Fields Too Large", "text/plain", b""))
                    return
                self._answer(connection, self._handle(connection.inbox))
            sent = connection.sock.send(connection.outbox)  # type: ignore[arg-type]
            connection.outbox = connection.outbox[sent:]  # type: ignore[index]
            if not connection.outbox:
                self._close(connection)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)

    def _answer(self, connection: _Connection, payload: bytes) -> None:
        connection.outbox = memoryview(payload)
        self.selector.modify(connection.sock, selectors.EVENT_WRITE, connection)

    def _handle(self, raw: bytes) -> bytes:
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
        lines = head.splitlines()
        parts = lines[0].split() if lines else []
        if len(parts) < 2:
            return _response("400 Bad Request", "text/plain", b"")
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", "text/plain", b"")
        if urlsplit(target).path == "/favicon.ico":
            return _response("200 OK", "text/plain", b"")
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        with self.fork_lock:  # the only work done under it: no socket I/O
            status, content_type, body = self.render(accept)
        return _response(status, content_type, body, head=method == "HEAD")

    # -- fork -----------------------------------------------------------------------------------
    def close_in_child(self) -> None:
        """In a worker just forked from the master: drop every copy of the endpoint's sockets
        (close only; a shutdown() would end the master's connections)."""
        for connection in self.connections.values():
            connection.sock.close()
        self.connections.clear()
        if self.socket is not None:
            self.socket.close()
        self.selector.close()  # through its object: an fd closed by number could be closed again later


class MetricsEndpoint:
    """The endpoint's server and thread in the master, paused around every fork."""

    def __init__(self, address: str, port: int, collector: ScoreboardCollector, log: Any) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        self.log = log
        self._failed = False

        def render(accept: str) -> tuple[str, str, bytes]:
            try:
                encoder, content_type = choose_encoder(accept)
                return "200 OK", content_type, encoder(registry)
            except Exception as exc:  # noqa: BLE001 - a memguard bug must not take the master down
                if not self._failed:
                    self._failed = True
                    log.exception("memguard: error while collecting Prometheus metrics")
                return "500 Internal Server Error", "text/plain", f"memguard: {exc!r}\n".encode()

        self.server = _MetricsServer(address, port, render, log)
        if not self.server.bind():  # any error but "in use" raises OSError
            self.server.busy_since = time.monotonic()
            self.server._next_bind = self.server.busy_since + BIND_RETRY
            log.warning(
                "memguard: Prometheus metrics port %s on %s is in use (during a USR2 upgrade the old master "
                "holds it); binding again every %gs until it is free",
                port,
                address,
                BIND_RETRY,
            )
        self.master_pid = os.getpid()
        self._forking = False
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )
        self.thread = threading.Thread(target=self.server.serve_forever, name="memguard-metrics", daemon=True)
        self.thread.start()

    @property
    def serving(self) -> bool:
        """The port is bound (False while it waits for a port in use)."""
        return self.server.socket is not None

    @property
    def url(self) -> str:
        return self.server.url

    def _before_fork(self) -> None:
        if os.getpid() == self.master_pid:
            self.server.fork_lock.acquire()
            self._forking = True

    def _after_fork_in_parent(self) -> None:
        if self._forking:
            self._forking = False
            self.server.fork_lock.release()

    def _after_fork_in_child(self) -> None:
        if self._forking:  # forked from the master: this process never serves metrics
            self._forking = False
            self.server.close_in_child()
