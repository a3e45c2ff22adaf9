"""Event log, statsd through gunicorn's own Statsd logger, the master's tally and the Prometheus
collector over a real scoreboard (the observability settings are in test_settings.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import StatsdListener, poll
from gunicorn_memguard.report.eventlog import SCHEMA_VERSION, EventLog
from gunicorn_memguard.report.prometheus import ScoreboardCollector
from gunicorn_memguard.report.tally import Tally
from gunicorn_memguard.report.telemetry import Telemetry
from gunicorn_memguard.settings import Settings
from gunicorn_memguard.shared.limits import SharedLimits
from gunicorn_memguard.shared.scoreboard import Scoreboard, decode_reasons, encode_reasons

MiB = 2**20


# -- event log ------------------------------------------------------------------------------
def test_event_log_appends_one_json_object_per_line(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"v":1,"event":"older"}\n')
    log = EventLog(str(path))
    log.write("retire", 42, worker=0, value=300 * MiB, reason="soft_limit")
    log.write("exit", 42, worker=0, outcome="graceful", drain=None)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["event"] == "older"  # appended, not truncated
    first = json.loads(lines[1])
    assert first["v"] == SCHEMA_VERSION and first["pid"] == 42 and first["value"] == 300 * MiB
    assert json.loads(lines[2])["drain"] is None


class RecordingLog:
    """Stands in for gunicorn's logger where only what memguard says matters."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, msg: str, *args: object) -> None:
        self.errors.append(msg % args)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failing_event_log_is_reported_once_and_then_left_alone():
    log = RecordingLog()
    telemetry = Telemetry(EventLog("/dev/full"), log, Config())
    for _ in range(3):
        telemetry.exit(pid=1, worker=0, outcome="exited")
    assert len(log.errors) == 1 and "cannot write the event log /dev/full" in log.errors[0]


# -- statsd, through gunicorn's own Statsd logger --------------------------------------------
def test_statsd_goes_through_gunicorns_logger_with_its_prefix():
    listener = StatsdListener()
    try:
        cfg = Config()
        cfg.set("statsd_host", f"127.0.0.1:{listener.port}")
        cfg.set("statsd_prefix", "web")
        telemetry = Telemetry(None, Statsd(cfg), cfg)
        telemetry.sample(
            pid=1, worker=3, age=5.0, requests=9, metric="uss", value=100, rss=120, limit=None, growth=12.5
        )
        telemetry.reclaim(pid=1, worker=3, before=500, after=200, took=0.01, how="gc.collect")
        telemetry.breaker_trip(pid=1, why="rate", detail="")
        telemetry.retirement(
            dry_run=True,
            pid=1,
            worker=3,
            age=5.0,
            requests=9,
            metric="uss",
            value=100,
            limit=90,
            reason="soft_limit",
            detail="",
        )
        expected = {
            "web.memguard.worker.3.memory:100|g",
            "web.memguard.worker.3.rss:120|g",
            "web.memguard.worker.3.limit:0|g",
            "web.memguard.worker.3.requests:9|g",
            "web.memguard.worker.3.age:5.0|g",
            "web.memguard.would_retire.soft_limit:1|c|@1.0",
            "web.memguard.worker.3.growth:12.5|g",
            "web.memguard.reclaimed:300|c|@1.0",
            "web.memguard.breaker.trips:1|c|@1.0",
        }
        poll(lambda: expected <= set(listener.datagrams), timeout=5, what=f"{expected} in {listener.datagrams}")
    finally:
        listener.close()


def test_without_statsd_host_nothing_is_logged(capsys):
    cfg = Config()
    Telemetry(None, Logger(cfg), cfg).exit(pid=1, worker=0, outcome="exited")
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""  # gunicorn's plain logger would print an empty line


# -- tally and collector over a real scoreboard ----------------------------------------------
def scrape(registry: CollectorRegistry) -> dict[str, dict[tuple, float]]:
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def test_collector_reads_the_scoreboard_and_counters_survive_the_exit():
    board, tally = Scoreboard(slots=8), Tally()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScoreboardCollector(board, tally, Settings(max_memory=256 * MiB, dry_run=True)))
    a, b = board.claim(), board.claim()
    board.start(a, 1001, born=1000.0, limit=250 * MiB)
    board.start(b, 1002, born=1000.0, limit=240 * MiB)
    board.sample(a, 1010.0, 210 * MiB, 210 * MiB, requests=17)  # a bound: RSS standing in for USS
    board.exact(a, 1010.0, 200 * MiB)
    board.retiring(b, 1011.0, "soft_limit")
    board.would_retire(a, encode_reasons(["soft_limit", "hard_limit"]))

    live = scrape(registry)
    assert live["memguard_worker_pid"] == {(("worker", "0"),): 1001, (("worker", "1"),): 1002}
    assert live["memguard_worker_memory_bytes"] == {(("metric", "uss"), ("worker", "0")): 200 * MiB}  # b: unread
    assert live["memguard_worker_rss_bytes"][(("worker", "0"),)] == 210 * MiB
    assert live["memguard_worker_limit_bytes"][(("worker", "1"),)] == 240 * MiB
    assert live["memguard_worker_requests"][(("worker", "0"),)] == 17
    assert live["memguard_worker_retiring"] == {(("worker", "0"),): 0, (("worker", "1"),): 1}
    assert live["memguard_retirements_total"][(("reason", "soft_limit"),)] == 1
    assert live["memguard_would_retire_total"] == {
        (("reason", "hard_limit"),): 1,
        (("reason", "soft_limit"),): 1,
        (("reason", "growth_rate"),): 0,
        (("reason", "ceiling"),): 0,
        (("reason", "total_memory"),): 0,
        (("reason", "spare"),): 0,
    }
    assert live["memguard_dry_run"][()] == 1 and live["memguard_limit_bytes"] == {(("kind", "soft"),): 256 * MiB}

    with tally.lock:  # what report_exit does when it reaps worker b
        tally.fold(board.read(b), "graceful")
        board.release(b)
    reaped = scrape(registry)
    assert set(reaped["memguard_worker_pid"]) == {(("worker", "0"),)}
    assert reaped["memguard_retirements_total"][(("reason", "soft_limit"),)] == 1  # still counted, once
    assert reaped["memguard_worker_exits_total"][(("outcome", "graceful"),)] == 1

    c = board.claim()  # the replacement takes the freed slot: the same bounded label
    board.start(c, 1003, born=1020.0, limit=245 * MiB)
    assert c == b and scrape(registry)["memguard_worker_pid"][(("worker", str(b)),)] == 1003


def test_collector_shows_growth_reclaim_breaker_and_resolved_limits():
    board, tally, budget = Scoreboard(slots=4), Tally(), SharedLimits()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScoreboardCollector(board, tally, Settings(), budget))
    budget.set_limits(300 * MiB, 400 * MiB)  # e.g. resolved from MEMGUARD_MAX_MEMORY=80%
    a, b = board.claim(), board.claim()
    board.start(a, 2001, born=1000.0, limit=290 * MiB)
    board.start(b, 2002, born=1000.0, limit=280 * MiB)
    board.set_growth(a, 1234.5)
    board.add_reclaimed(a, 10 * MiB)
    board.add_reclaimed(a, 5 * MiB)
    board.add_reclaimed(b, 1 * MiB)
    before = scrape(registry)
    assert before["memguard_worker_growth_bytes_per_second"] == {(("worker", "0"),): 1234.5}  # b: no window yet
    assert before["memguard_reclaimed_bytes_total"][()] == 16 * MiB
    assert before["memguard_limit_bytes"] == {(("kind", "soft"),): 300 * MiB, (("kind", "hard"),): 400 * MiB}
    assert before["memguard_breaker_open"][()] == 0 and before["memguard_breaker_trips_total"][()] == 0

    assert budget.fresh_worker(290 * MiB, near_limit=True, well_below=False)
    assert budget.fresh_worker(290 * MiB, near_limit=True, well_below=False) is None  # open: not a new trip
    with tally.lock:
        tally.fold(board.read(a), "graceful")
        board.release(a)
    after = scrape(registry)
    assert after["memguard_reclaimed_bytes_total"][()] == 16 * MiB  # the reaped worker's share is kept
    assert after["memguard_breaker_open"][()] == 1 and after["memguard_breaker_trips_total"][()] == 1


def test_reason_bits_round_trip():
    assert decode_reasons(encode_reasons(["soft_limit", "hard_limit", "soft_limit"])) == ["hard_limit", "soft_limit"]
    assert encode_reasons(["not_a_reason"]) == 0


# -- a broken reporter never costs the guard -------------------------------------------------
class BrokenTelemetry(Telemetry):
    def __init__(self) -> None:
        pass

    def sample(self, **fields: object) -> None:
        raise RuntimeError("disk on fire")

    def retirement(self, **fields: object) -> None:
        raise RuntimeError("disk on fire")


class WarningsToo(RecordingLog):
    def warning(self, msg: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_failing_reporter_turns_itself_off_and_the_guard_still_acts(dry_run):
    from types import SimpleNamespace

    from gunicorn_memguard.worker.guard import Guard

    retired: list[bool] = []
    log = WarningsToo()
    guard = Guard(
        SimpleNamespace(nr=0, cfg=SimpleNamespace(graceful_timeout=1)),
        Settings(hard_max_memory=1, metric="rss", report_interval=0.01, dry_run=dry_run),
        lambda: retired.append(True),
        log,
        None,
        None,
        start_thread=lambda target: None,
        telemetry=BrokenTelemetry(),
    )
    guard._check(from_timer=True)  # any RSS is over a 1-byte hard limit
    assert retired == ([] if dry_run else [True])
    assert guard.publisher.telemetry is None and len(log.errors) == 1 and "reporting failed" in log.errors[0]
    assert not guard._broken, "the guard itself keeps working"
