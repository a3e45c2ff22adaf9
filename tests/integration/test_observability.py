"""Issue: Prometheus endpoint, statsd, JSON event log, dry run, OOM-kill attribution.

Real gunicorn on 127.0.0.1, real HTTP, observed from outside: scrapes of the endpoint, datagrams
at a UDP statsd listener, the event log file, worker PIDs and the error log.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter

import psutil

from bench.harness import Gunicorn, StatsdListener, free_port, load, poll, scrape

from .conftest import MiB

HOOKS = ["-c", "python:gunicorn_memguard.conf"]


def env(limit: int, **extra: str) -> dict[str, str]:
    """A ceiling (the hard limit) far above the soft limit, so every retirement here is a soft-limit
    one, the reason these tests count."""
    return {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_HARD_MAX_MEMORY": f"{limit + 200 * MiB}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
        "MEMGUARD_REPORT_INTERVAL": "200ms",
        **extra,
    }


def workers_seen(metrics: dict) -> dict[str, int]:
    """worker label -> pid, from one scrape."""
    return {dict(labels)["worker"]: int(pid) for labels, pid in metrics.get("memguard_worker_pid", {}).items()}


def counter(metrics: dict, name: str, **labels: str) -> float:
    return metrics[name][tuple(sorted(labels.items()))]


def test_prometheus_and_statsd_follow_retirements_under_load(baseline_uss, tmp_path):
    metrics_port = free_port()
    statsd = StatsdListener()
    limit = baseline_uss + 40 * MiB
    args = [*HOOKS, "--statsd-host", f"127.0.0.1:{statsd.port}", "--statsd-prefix", "app", "apps.leaky:app"]
    try:
        with Gunicorn(args, env(limit, MEMGUARD_PROMETHEUS_PORT=str(metrics_port)), tmp_path / "g.log") as server:
            server.wait_ready()
            first = server.worker_pids()
            before = poll(
                lambda: (m := scrape(metrics_port)) and set(workers_seen(m).values()) == first and m,
                timeout=10,
                what="both workers in the scrape",
            )
            assert set(workers_seen(before)) == {"0", "1"}, "worker label is the slot, bounded by the worker count"
            assert counter(before, "memguard_retirements_total", reason="soft_limit") == 0
            for pid in first:  # forked workers closed their copy of the master's metrics socket
                assert all(c.laddr.port != metrics_port for c in psutil.Process(pid).net_connections("tcp"))
            for labels, value in before["memguard_worker_limit_bytes"].items():
                assert limit * 0.9 - 1 <= value <= limit, (labels, value)

            # load: 240 x 1 MiB over two workers with ~40 MiB of headroom each; scrape all along
            result: list = []
            loader = threading.Thread(
                target=lambda: result.append(load(server, "/leak?kib=1024", requests=240, concurrency=4))
            )
            loader.start()
            scrapes = []
            while loader.is_alive():
                scrapes.append(scrape(metrics_port))
                loader.join(0.02)
            assert result[0].failed == []
            retired = server.log_lines("memguard: retiring worker")
            assert retired, "the load should have retired workers"

            after = poll(
                lambda: (
                    (m := scrape(metrics_port))
                    and counter(m, "memguard_retirements_total", reason="soft_limit") >= len(retired)
                    and m
                ),
                timeout=15,
                what="retirements counted",
            )
            assert counter(after, "memguard_retirements_total", reason="hard_limit") == 0
            assert counter(after, "memguard_worker_exits_total", outcome="graceful") >= 1
            # counters never went down across the scrapes taken under load
            seen = [counter(m, "memguard_retirements_total", reason="soft_limit") for m in scrapes + [after]]
            assert seen == sorted(seen), seen
            # the per-worker series follow the replacements, under the same bounded labels
            now = poll(
                lambda: (
                    (m := scrape(metrics_port))
                    and set(workers_seen(m).values()) == server.worker_pids()
                    and len(m.get("memguard_worker_memory_bytes", {})) == len(workers_seen(m))  # first read done
                    and m
                ),
                timeout=15,
                what="scrape to show the current workers",
            )
            assert set(workers_seen(now)) <= {"0", "1", "2", "3"}
            assert set(workers_seen(now).values()) - first, "a replacement worker should be in the scrape"
            for label, pid in workers_seen(now).items():
                age = now["memguard_worker_age_seconds"][(("worker", label),)]
                assert 0 <= age < 120, (pid, age)
                uss = now["memguard_worker_memory_bytes"][(("metric", "uss"), ("worker", label))]
                assert 0 < uss < now["memguard_worker_rss_bytes"][(("worker", label),)]  # USS, not an RSS bound

            # statsd: the same figures through gunicorn's statsd channel, with the user's prefix
            poll(
                lambda: statsd.matching("app.memguard.retirements.soft_limit:1|c"),
                timeout=10,
                what="retirement counter at statsd",
            )
            poll(lambda: statsd.matching("app.memguard.exits.graceful:1|c"), timeout=10, what="exit counter")
            gauges = poll(lambda: statsd.matching("app.memguard.worker.0.memory:"), timeout=10, what="gauges")
            assert re.fullmatch(r"app\.memguard\.worker\.0\.memory:\d+\|g", gauges[0]), gauges[0]
            assert statsd.matching("app.memguard.worker.1.limit:")
            print(
                f"{len(retired)} retirements, {len(scrapes)} scrapes under load, "
                f"{len(statsd.datagrams)} statsd datagrams"
            )
    finally:
        statsd.close()


def test_dry_run_retires_nothing_and_reports_what_it_would_do(baseline_uss, tmp_path):
    events = tmp_path / "events.jsonl"
    metrics_port = free_port()
    limit = baseline_uss + 20 * MiB
    settings = env(
        limit,
        MEMGUARD_DRY_RUN="1",
        MEMGUARD_HARD_MAX_MEMORY=f"{limit + 20 * MiB}B",
        MEMGUARD_EVENT_LOG=str(events),
        MEMGUARD_PROMETHEUS_PORT=str(metrics_port),
    )
    with Gunicorn([*HOOKS, "apps.leaky:app"], settings, tmp_path / "g.log") as server:
        server.wait_ready()
        first = server.worker_pids()
        result = load(server, "/leak?kib=1024", requests=160, concurrency=4)
        assert result.failed == []
        assert server.log_lines("dry run (MEMGUARD_DRY_RUN)")
        would = poll(lambda: server.log_lines("would retire (dry run)"), timeout=10, what="would-retire lines")
        # let a few more timer samples pass over the limits: each reason is still reported once per worker
        poll(lambda: len([e for e in _events(events) if e["event"] == "sample"]) >= 20, timeout=10)
        assert server.worker_pids() == first, "a dry run must not replace any worker"
        assert not server.log_lines("memguard: retiring worker")
        would = server.log_lines("would retire (dry run)")
        keys = Counter((re.search(r"pid=(\d+)", line)[1], re.search(r"reason=(\w+)", line)[1]) for line in would)
        assert max(keys.values()) == 1, keys
        assert {reason for _, reason in keys} == {"soft_limit", "hard_limit"}  # 80 MiB each over +20/+40 MiB
        for line in would:
            assert re.search(r"age=[\d.]+s requests=\d+ uss=\d+ .* limit=\d+ .* reason=\w+ \(uss .* > ", line), line
        logged = [e for e in _events(events) if e["event"] == "would_retire"]
        assert len(logged) == len(would)
        assert all(e["value"] > e["limit"] > 0 and e["pid"] in first for e in logged), logged
        metrics = scrape(metrics_port)
        assert counter(metrics, "memguard_would_retire_total", reason="soft_limit") == keys_for(keys, "soft_limit")
        assert counter(metrics, "memguard_retirements_total", reason="soft_limit") == 0
        assert metrics["memguard_dry_run"][()] == 1


def keys_for(keys: Counter, reason: str) -> int:
    return sum(1 for _, r in keys if r == reason)


def _events(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def test_event_log_from_several_workers_has_no_torn_lines(tmp_path):
    events = tmp_path / "events.jsonl"
    settings = {
        "MEMGUARD_EVENT_LOG": str(events),
        "MEMGUARD_CHECK_INTERVAL": "10ms",
        "MEMGUARD_REPORT_INTERVAL": "10ms",
        "MEMGUARD_MAX_MEMORY": "1GiB",
    }
    with Gunicorn([*HOOKS, "apps.leaky:app"], settings, tmp_path / "g.log", workers=4) as server:
        server.wait_ready()
        poll(lambda: events.stat().st_size > 3000 * 200, timeout=60, interval=0.5, what="thousands of events")
        assert load(server, "/", requests=200, concurrency=4).failed == []
        pids = server.worker_pids()
    raw = events.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    records = [json.loads(line) for line in lines]  # raises on any torn or interleaved line
    assert len(records) >= 3000
    assert all(r["v"] == 1 and isinstance(r["ts"], float) for r in records)
    by_pid = Counter(r["pid"] for r in records if r["event"] == "sample")
    assert set(by_pid) == pids and min(by_pid.values()) >= 100, by_pid
    sample = next(r for r in records if r["event"] == "sample")
    assert {"worker", "age", "requests", "metric", "value", "rss", "limit"} <= set(sample)
    assert all(0 < r["value"] < r["rss"] for r in records if r["event"] == "sample"), "value is USS, read exactly"
    exits = [r for r in records if r["event"] == "exit"]
    assert {r["pid"] for r in exits} == pids and {r["outcome"] for r in exits} == {"exited"}
    print(f"{len(records)} events from {len(pids)} workers, {len(raw)} bytes")


def test_a_bad_event_log_path_stops_gunicorn_before_any_fork(tmp_path):
    missing = tmp_path / "no-such-dir" / "events.jsonl"
    server = Gunicorn([*HOOKS, "apps.leaky:app"], {"MEMGUARD_EVENT_LOG": str(missing)}, tmp_path / "g.log")
    assert server.proc.wait(30) != 0
    log = server.log()
    server.stop()
    assert f"MEMGUARD_EVENT_LOG='{missing}' cannot be opened for appending" in log
    assert "Booting worker" not in log
