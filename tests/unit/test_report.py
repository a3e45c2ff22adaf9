"""``memguard report`` and ``memguard replay`` on synthetic traces: the replay model on hand-made
lifetimes whose answers are worked out in the comments, a 24-hour 16-worker log for size and
speed, and every bad input a user can give."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from gunicorn_memguard.cli import main
from gunicorn_memguard.policy import Growth
from gunicorn_memguard.policy.replay import Candidate, Lifetime, Point, replay
from gunicorn_memguard.report.replay import candidate, settings_with
from gunicorn_memguard.report.summary import summary
from gunicorn_memguard.report.trace import read_trace

from .conftest import MiB
from .synthetic import leaking_fleet


def steady(samples: int, per_sample: int = MiB, requests: int = 10) -> Lifetime:
    """One worker sampled once a second from 100 MiB, growing ``per_sample`` and serving
    ``requests`` each second."""
    points = tuple(Point(float(i), 100 * MiB + i * per_sample, i * requests) for i in range(samples))
    return Lifetime(pid=1, born=0.0, points=points)


def test_a_steady_leak_retires_on_the_second_sample_over_and_restarts_at_the_baseline():
    # 100 MiB + i MiB: over 120 MiB from i = 21, second strike at i = 22 (122 MiB); the replacement
    # starts at the next sample at 100 MiB and takes 23 samples again: retirements at 22, 45, 68, 91.
    # (Without a hard limit the ceiling would be the soft limit before jitter, 0 here: it would fire first.)
    outcome = replay([steady(100)], Candidate("soft", soft=120 * MiB, hard=200 * MiB), workers=1)
    assert [t for t, _ in outcome.retirements] == [22.0, 45.0, 68.0, 91.0]
    assert set(outcome.by_reason) == {"soft_limit"}
    assert outcome.peak == 122 * MiB
    # a replacement is born as its worker retires (this trace has no handover): 23 s old at its own
    assert outcome.ages == [22.0, 23.0, 23.0, 23.0]


def test_the_ceiling_retires_at_the_first_sample_over():
    outcome = replay([steady(100)], Candidate("hard", soft=120 * MiB, hard=110 * MiB), workers=1)
    # over 110 MiB at i = 11 (one sample is enough), then every 12 samples: 11, 23, ..., 95
    assert [t for t, _ in outcome.retirements] == [11.0 + 12 * k for k in range(8)]
    assert set(outcome.by_reason) == {"hard_limit"} and outcome.peak == 111 * MiB


def test_max_requests_counts_each_replacements_own_requests():
    # 10 requests a second: 100 by i = 10; the replacement counts from its first sample (i = 11)
    outcome = replay([steady(100)], Candidate("requests", max_requests=100), workers=1)
    assert [t for t, _ in outcome.retirements] == [10.0 + 11 * k for k in range(9)]
    assert set(outcome.by_reason) == {"max_requests"}


def test_a_fresh_worker_near_its_limit_is_counted_as_a_breaker_trip():
    # a worker that starts at 100 MiB is >= 90 % of a 105 MiB limit
    outcome = replay([steady(10)], Candidate("tight", soft=105 * MiB, hard=200 * MiB), workers=1)
    assert outcome.breaker_trips == len(outcome.retirements) + 1


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> tuple[Path, int]:
    """24 hours of 16 workers sampled every 10 s (MEMGUARD_REPORT_INTERVAL's default), each leaking
    40 MiB/h from 100 MiB to a 150 MiB limit: about 15 retirements an hour."""
    path = tmp_path_factory.mktemp("day") / "events.jsonl"
    return path, leaking_fleet(path)


def test_the_report_of_a_day_of_16_workers_is_two_screenfuls(day, capsys):
    path, retired = day
    started = time.perf_counter()
    assert main(["report", str(path)]) == 0
    took = time.perf_counter() - started
    out = capsys.readouterr().out
    lines = out.splitlines()
    print(f"{len(lines)} lines, at most {max(map(len, lines))} columns, in {took:.2f}s", file=sys.stderr)
    assert len(lines) <= 70 and max(map(len, lines)) <= 130  # 24 hours + 16 slots + headings
    hours = [line for line in lines if line.startswith("20")]
    assert len(hours) in (24, 25)  # the first worker boots up to one interval after the hour
    assert re.search(rf"^total +{retired} +{retired}$", out, re.M), out
    assert f"Worker lifetimes: {retired} ended (graceful {retired})" in out
    assert len([line for line in lines if line[:2].strip().isdigit() and "MiB" in line]) == 16
    assert took < 30  # a day's log (139 000 events) on one core


def test_replay_of_a_day_reproduces_it_and_ranks_other_limits(day, capsys):
    path, retired = day
    trace = read_trace(str(path))
    lifetimes = trace.lifetimes
    recorded = candidate("as recorded", settings_with(trace.config() or {}, {}), trace.limits())
    lower = candidate("lower", settings_with(trace.config() or {}, {"MEMGUARD_MAX_MEMORY": "130MiB"}), None)
    same = replay(lifetimes, recorded, workers=16, recorded_soft=recorded.soft)
    more = replay(lifetimes, lower, workers=16, recorded_soft=recorded.soft)
    assert abs(len(same.retirements) - retired) <= 1
    # a lifetime is (limit - 100 MiB) / 40 MiB/h: 1.1 h at ~145 MiB, 0.7 h at ~127 MiB (jitter as recorded)
    assert 1.4 < len(more.retirements) / len(same.retirements) < 2.0
    assert more.peak < 131 * MiB < same.peak <= 151 * MiB


def test_a_percentage_candidate_is_resolved_as_the_master_resolved_the_run(tmp_path):
    path = tmp_path / "events.jsonl"
    leaking_fleet(path, hours=0.1)  # the master resolved for 16 workers, 64 GiB, a 50 MiB master
    trace = read_trace(str(path))
    limits = trace.limits()
    assert limits is not None
    half = candidate("half", settings_with({}, {"MEMGUARD_MAX_MEMORY": "50%"}), limits)
    assert half.soft == int(0.5 * (64 * 2**30 - 50 * MiB) / 16)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--set", "MEMGUARD_MAX_MEMORY=lots"], "MEMGUARD_MAX_MEMORY='lots' is invalid: expected a number with a unit"),
        (["--set", "MEMGUARD_MAX_MEMORI=1GiB"], "unknown setting MEMGUARD_MAX_MEMORI (environment); did you mean "),
        (["--set", "400MiB"], "--set '400MiB' is invalid: expected NAME=VALUE, e.g. MEMGUARD_MAX_MEMORY=400MiB"),
        (["--candidate", ""], "--candidate '' is empty: expected NAME=VALUE"),
        (["--candidate", "MEMGUARD_MAX_MEMORY=40%"], "is a percentage and the event log has no 'limits' event"),
    ],
)
def test_bad_replay_settings_exit_1_with_one_clear_line(tmp_path, capsys, args, says):
    path = tmp_path / "events.jsonl"
    leaking_fleet(path, workers=1, hours=0.1)
    if "40%" in args[1]:  # a log from before the limits event
        path.write_text("".join(line for line in path.read_text().splitlines(True) if '"limits"' not in line))
    assert main(["replay", str(path), *args]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1


def test_a_bad_max_requests_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["replay", str(tmp_path / "x"), "--max-requests", "0"])
    assert exit_.value.code == 2
    assert "'0' is not a whole number of requests from 1 (e.g. 1000)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "replay"])
def test_a_file_that_is_not_an_event_log_exits_2(tmp_path, capsys, command):
    text = tmp_path / "notes.txt"
    text.write_text("not json\n")
    assert main([command, str(text), "--max-requests", "1"] if command == "replay" else [command, str(text)]) == 2
    assert "holds no events (1 unreadable line(s)); expected the JSON lines file" in capsys.readouterr().err
    assert main([command, str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read the event log" in capsys.readouterr().err


def test_plot_needs_the_plot_extra_and_a_known_format(tmp_path, capsys, monkeypatch):
    path = tmp_path / "events.jsonl"
    leaking_fleet(path, workers=1, hours=0.1)
    assert main(["report", str(path), "--plot", str(tmp_path / "memory.svg")]) == 2
    assert "expected a file name ending in .png or .html" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    assert main(["report", str(path), "--plot", str(tmp_path / "memory.png")]) == 2
    assert "--plot needs matplotlib: pip install 'gunicorn-memguard[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "memory.png").exists()


def test_a_torn_line_is_skipped_and_counted(tmp_path):
    path = tmp_path / "events.jsonl"
    leaking_fleet(path, workers=2, hours=0.5)
    with open(path, "a") as fh:
        fh.write('{"v":1,"ts":18000')  # a short write cut this one
    trace = read_trace(str(path))
    assert trace.skipped == 1
    assert "1 unreadable line(s) skipped" in summary(trace, "events.jsonl")


def test_a_growth_limit_retires_a_slow_leak_after_grace_and_window():
    # a sample every 10 s for 4 h, growing 40 MiB/h against a 30 MiB/h limit (window 90 m, grace 10 m,
    # one evaluation every 30 s): the first full window ends at 600 + 5400 = 6000 s, and three evaluations
    # in a row must agree (by 6000 + 3 x 30 s, one more interval for where the buckets fall)
    per_sample = 40 * MiB * 10 // 3600
    points = tuple(Point(10.0 * i, 100 * MiB + i * per_sample, i) for i in range(4 * 360))
    growth = Growth(max_rate=30 * MiB / 3600, window=5400.0, grace=600.0, interval=30.0)
    outcome = replay([Lifetime(1, 0.0, points)], Candidate("growth", growth=growth), workers=1)
    first, reason = outcome.retirements[0]
    assert reason == "growth_rate" and 6000 <= first <= 6120, outcome.retirements
