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
worker would stay locked in the worker. So each scrape is handled entirely under
``fork_lock``, which ``os.register_at_fork`` takes around every fork from the master (waiting
out a scrape in progress; a client that stalls is cut off after ``REQUEST_TIMEOUT``), and the
forked worker closes its copy of the listening socket.
"""

from __future__ import annotations

import math
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..policy.verdict import REASONS
from ..settings import Settings
from ..shared.limits import SharedLimits
from ..shared.scoreboard import Scoreboard, State
from .lines import OUTCOMES
from .tally import Tally

REQUEST_TIMEOUT = 2.0  # seconds a scrape may take on the socket before it is dropped
_LIVE = (State.RUNNING, State.WAITING, State.GRANTED, State.RETIRING)


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
        with self.tally.lock:
            slots = self.scoreboard.occupied()
            totals = self.tally.totals(view for _, view in slots)
        workers = [(str(index), view) for index, view in slots if view.pid and view.state in _LIVE]

        def per_worker(
            name: str, doc: str, figure: Callable[[Any], float | None], extra: dict[str, str] | None = None
        ) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["worker", *(extra or {})])
            for label, view in workers:
                value = figure(view)
                if value is not None:
                    family.add_metric([label, *(extra or {}).values()], value)
            return family

        metric = self.settings.metric
        yield per_worker(
            "memguard_worker_memory_bytes",
            "The enforced metric, read exactly at least every MEMGUARD_REPORT_INTERVAL",
            lambda v: v.exact if v.exact_at else None,
            {"metric": metric},
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

        configured = self.shared.limits() if self.shared is not None else (None, None)
        limits = GaugeMetricFamily(
            "memguard_limit_bytes", "Per-worker limits (percentages resolved to bytes)", labels=["kind"]
        )
        for kind, resolved, value in (
            ("soft", configured[0], self.settings.max_memory),
            ("hard", configured[1], self.settings.hard_max_memory),
        ):
            if resolved is not None:
                limits.add_metric([kind], resolved)
            elif isinstance(value, int):
                limits.add_metric([kind], value)
        yield limits
        if self.shared is not None:
            yield GaugeMetricFamily(
                "memguard_breaker_open",
                "1 while the crash-loop breaker pauses soft recycling",
                value=1 if self.shared.paused()[0] > now else 0,
            )
            yield CounterMetricFamily(
                "memguard_breaker_trips", "Times the crash-loop breaker tripped", value=self.shared.trips()
            )
        yield GaugeMetricFamily(
            "memguard_dry_run",
            "1 when MEMGUARD_DRY_RUN is on: nothing is retired",
            value=1 if self.settings.dry_run else 0,
        )


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: gunicorn's own log is the place for memguard's messages."""


class _MetricsServer(WSGIServer):
    fork_lock: threading.Lock

    def server_bind(self) -> None:
        """HTTPServer.server_bind without its reverse-DNS lookup of the address."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.fork_lock:
            super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A broken scrape connection is the scraper's problem; nothing to print."""


class MetricsEndpoint:
    """The endpoint's server and thread in the master, paused around every fork."""

    def __init__(self, address: str, port: int, collector: ScoreboardCollector, log: Any) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        metrics_app = make_wsgi_app(registry)
        self.log = log
        self._failed = False

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            try:
                return metrics_app(environ, start_response)
            except Exception as exc:  # noqa: BLE001 - a memguard bug must not take the master down
                if not self._failed:
                    self._failed = True
                    log.exception("memguard: error while collecting Prometheus metrics")
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
                return [f"memguard: {exc!r}\n".encode()]

        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        server_class = type("MetricsServer", (_MetricsServer,), {"address_family": family})
        self.server: _MetricsServer = server_class((address, port), _QuietHandler)  # raises OSError if taken
        self.server.set_app(app)
        self.server.fork_lock = threading.Lock()
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
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        if isinstance(host, bytes):  # an AF_UNIX address; never, for the TCP address memguard binds
            host = host.decode()
        return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}/metrics"

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
            self.server.socket.close()
