"""What observability costs: a Prometheus scrape, an event-log write, a sample report, and a fork
from a master that serves metrics. Run: ``python -m bench.observability``; prints a table."""

from __future__ import annotations

import http.client
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from gunicorn.config import Config
from gunicorn.glogging import Logger
from prometheus_client import CollectorRegistry, generate_latest

from gunicorn_memguard.report.eventlog import EventLog
from gunicorn_memguard.report.prometheus import MetricsEndpoint, ScoreboardCollector
from gunicorn_memguard.report.tally import Tally
from gunicorn_memguard.report.telemetry import Telemetry
from gunicorn_memguard.settings import Settings
from gunicorn_memguard.shared.scoreboard import Scoreboard

MiB = 2**20


def median_us(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def board_with(workers: int) -> Scoreboard:
    board = Scoreboard()
    for pid in range(workers):
        index = board.claim()
        assert index is not None
        board.start(index, 1000 + pid, time.time(), 256 * MiB)
        board.sample(index, time.time(), 200 * MiB, 210 * MiB, 1234)
    return board


def fork_and_reap() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def main() -> None:
    rows: list[tuple[str, float]] = []
    settings = Settings(max_memory=256 * MiB)
    for workers in (4, 32, 128):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ScoreboardCollector(board_with(workers), Tally(), settings))
        rows.append(
            (
                f"collect + render, {workers} workers (512-slot scoreboard)",
                median_us(lambda registry=registry: generate_latest(registry), 200),
            )
        )

    with tempfile.TemporaryDirectory() as tmp:
        events = EventLog(os.path.join(tmp, "events.jsonl"))
        rows.append(
            (
                "event log: one retire event",
                median_us(
                    lambda: events.write(
                        "retire",
                        1,
                        worker=0,
                        age=1.0,
                        requests=1,
                        metric="uss",
                        value=1,
                        limit=1,
                        reason="soft_limit",
                        detail="uss 1 B > limit 1 B",
                    ),
                    2000,
                ),
            )
        )
        cfg = Config()
        telemetry = Telemetry(events, Logger(cfg), cfg)
        rows.append(
            (
                "sample report (event log on, statsd off)",
                median_us(
                    lambda: telemetry.sample(
                        pid=1, worker=0, age=1.0, requests=1, metric="uss", value=1, rss=1, limit=1, growth=None
                    ),
                    2000,
                ),
            )
        )

    rows.append(("fork + reap, no metrics endpoint", median_us(fork_and_reap, 200)))
    endpoint = MetricsEndpoint("127.0.0.1", 0, ScoreboardCollector(board_with(32), Tally(), settings), Logger(Config()))
    rows.append(("fork + reap, metrics endpoint serving", median_us(fork_and_reap, 200)))
    port = endpoint.server.server_address[1]

    def http_scrape() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        conn.getresponse().read()
        conn.close()

    rows.append(("HTTP scrape over loopback, 32 workers", median_us(http_scrape, 200)))

    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  median")
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:8.1f} µs")


if __name__ == "__main__":
    main()
