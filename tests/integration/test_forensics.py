"""Leak forensics: a worker traced past its threshold names the app's leaking line when it retires,
in gunicorn's log and as an ``allocations`` event, on sync, gevent and uvicorn workers.

Real gunicorn on 127.0.0.1, real HTTP, observed from outside (the log, the event log).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import psutil
import pytest

from bench.harness import Gunicorn, poll

from .conftest import KiB, MiB, measure_idle

CULPRIT = Path(__file__).resolve().parents[1] / "apps" / "culprit.py"
LEAK_LINE = next(i for i, text in enumerate(CULPRIT.read_text().splitlines(), 1) if text.endswith("# the leak"))
LEAK_KIB = 256
# Each leaking request keeps one bytes object of LEAK_KIB KiB plus its header, allocated on the leak line.
BLOCK = LEAK_KIB * KiB + sys.getsizeof(b"")
TRACED_FROM = 8 * MiB  # over an idle worker, where tracing starts
HEADROOM = 16 * MiB  # over an idle worker, the soft limit: 8 MiB (32 requests) are traced before it

CLASSES = {
    "sync": (["-k", "gunicorn_memguard.workers.SyncWorker"], "apps.culprit:app"),
    "gevent": (["-k", "gunicorn_memguard.workers.GeventWorker"], "apps.culprit:app"),
    "uvicorn": (["-k", "gunicorn_memguard.workers.UvicornWorker"], "apps.culprit:asgi"),
}


@pytest.mark.parametrize("kind", list(CLASSES))
def test_a_retiring_worker_names_the_leaking_line_among_its_top_three_sites(kind, tmp_path):
    if kind != "sync":
        pytest.importorskip(kind)
    args, app = CLASSES[kind]
    idle = measure_idle(args, app, gc_path="/").uss  # the app has no /gc: "/" measures it twice, unchanged
    limit = idle + HEADROOM
    events = tmp_path / "events.jsonl"
    env = {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_HARD_MAX_MEMORY": f"{limit + HEADROOM}B",  # a soft-limit retirement, through the master's turn
        "MEMGUARD_JITTER": "0%",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "100ms",
        "MEMGUARD_SPAWN_FIRST": "no",
        "MEMGUARD_RECLAIM": "no",
        "MEMGUARD_TRACE_ALLOCATIONS": f"{100 * (idle + TRACED_FROM) / limit:.2f}%",
        "MEMGUARD_EVENT_LOG": str(events),
    }
    with Gunicorn([*args, app], env, tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        sent = 0

        def reported() -> bool:
            nonlocal sent
            if not server.log_lines(f"worker pid={pid} allocation site 3:"):
                server.get(f"/leak?kib={LEAK_KIB}")
                server.get("/")  # a request that only allocates transiently
                sent += 1
                return False
            return True

        # the soft limit is HEADROOM over idle, 64 leaking requests; tracing itself adds its own
        # memory: well within 4 × that many requests
        poll(reported, 60, interval=0, what=f"worker {pid} to retire and report its allocation sites")
        assert sent <= 4 * HEADROOM // (LEAK_KIB * KiB)
        log = server.log()

    assert re.search(rf"worker pid={pid} passed [\d.]+% of its limit .*: tracing allocations \(5 frames\)", log)
    retired = log.index(f"retiring worker pid={pid}")
    assert re.search(rf"retiring worker pid={pid} .* reason=soft_limit", log)
    top3 = [re.search(rf"worker pid={pid} allocation site {rank}: (\S+) ", log)[1] for rank in (1, 2, 3)]
    assert f"apps/culprit.py:{LEAK_LINE}" in top3, log
    assert log.index(f"worker pid={pid} allocation site 1:") > retired  # the retirement line comes first

    (event,) = [e for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "allocations"]
    assert event["pid"] == pid and event["frames"] == 5 and event["limit"] == limit
    assert event["start"] >= event["share"] * limit  # traced only from its threshold on
    (culprit,) = [s for s in event["sites"][:3] if (s["file"], s["line"]) == ("apps/culprit.py", LEAK_LINE)]
    # every block of the leak line is one leaked bytes object, each allocated after tracing began
    assert culprit["size"] == culprit["count"] * BLOCK and 1 <= culprit["count"] <= sent


def test_the_cost_benchmark_runs_and_prints_its_tables(capsys):
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    from bench import forensics

    assert forensics.main(["--seconds", "1", "--reps", "1", "--frames", "1", "--paths", "/", "--blocks", "1000"]) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| GET /")]
    assert [(r[1], r[3]) for r in rows] == [("off", "1.00×"), ("1 frame", rows[1][3])]
    assert all(float(r[2].replace(",", "")) > 0 for r in rows), rows
    blocks = next(line for line in out.splitlines() if line.startswith("| 1,000 |"))
    assert int(blocks.split("|")[3].split()[0]) > 0, blocks  # tracemalloc's bytes per live block


def test_one_worker_traces_at_a_time_and_a_killed_ones_slot_goes_to_the_next(tmp_path):
    """MEMGUARD_TRACE_WORKERS=1 of two workers past their threshold: one traces, the other says it is
    not; once the tracing one is SIGKILLed (no exit path of its own runs), the other takes its slot."""
    args, app = CLASSES["sync"]
    idle = measure_idle(args, app, gc_path="/").uss
    limit = idle + 256 * MiB  # never reached: the threshold is what this test is about
    env = {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_CHECK_INTERVAL": "100ms",
        "MEMGUARD_TRACE_ALLOCATIONS": f"{100 * (idle + 4 * MiB) / limit:.2f}%",
        "MEMGUARD_TRACE_WORKERS": "1",
    }
    with Gunicorn([*args, app], env, tmp_path / "g.log", workers=2) as server:
        server.wait_ready()
        pids = server.worker_pids()

        def said(pid: int, what: str) -> bool:
            return any(what in line for line in server.log_lines(f"worker pid={pid} passed "))

        def both_past() -> bool:
            if all(said(pid, "of its limit") for pid in pids):
                return True
            server.get(f"/leak?kib={LEAK_KIB}")  # either worker may take it: until both passed
            return False

        # each worker passes its threshold 16 leaking requests after idle
        poll(both_past, 60, interval=0, what="both workers to pass their threshold")
        traced = [pid for pid in pids if said(pid, "tracing allocations")]
        assert len(traced) == 1, server.log()
        (waiting,) = pids - set(traced)
        assert said(waiting, "is not traced") and not said(waiting, "tracing allocations")
        psutil.Process(traced[0]).kill()
        # it tries again every second while it serves: a request or its 100 ms timer check
        poll(lambda: said(waiting, "tracing allocations"), 10, what=f"worker {waiting} to take the freed slot")
