"""Issue: coordinated recycling in the master — a retirement budget, spawn-first replacement, a
server-wide budget, and gunicorn's own controls (TTIN/TTOU, HUP, worker deaths) still working.

Real gunicorn on 127.0.0.1, real HTTP, observed from outside (PIDs, psutil memory, logs).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from bench.harness import Gunicorn, MemoryWatch, load, poll
from bench.recycling import FleetWatch

from .conftest import INTERNALS, KiB, MiB

HOOKS = ["-c", "python:gunicorn_memguard.conf"]
SLOWBOOT = "apps.slowboot:app"


def guard_env(limit: int, boot: float, **extra: str) -> dict[str, str]:
    """These tests are of the turns' mechanics, so they give workers a wide band to wait in: a
    ceiling (the hard limit) 200 MiB above the soft limit. Without one the ceiling is the soft limit
    itself (before jitter), and a fast leak reaches it before any turn could matter
    (tests/integration/test_bound.py)."""
    return {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_HARD_MAX_MEMORY": f"{limit + 200 * MiB}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
        "SLOWBOOT_SECONDS": str(boot),
        **extra,
    }


def granted_pids(server: Gunicorn) -> list[int]:
    """Workers whose replacement was started first: at their soft limit, or ahead of it (predictive)."""
    return [int(m) for m in re.findall(r"worker pid=(\d+) (?:may retire|will reach its limit)", server.log())]


def spawned_first(server: Gunicorn) -> int:
    return len(server.log_lines("starting its replacement first")) + len(
        server.log_lines("starting its replacement now")
    )


RETIRING = re.compile(r"memguard: retiring worker pid=(\d+)")
# every way the master reports the end of a worker (report/lines.py, exit_report)
ENDED = re.compile(r"memguard: worker pid=(\d+) (?:exited|ended|was made|was killed|died)")


def most_retiring_at_once(log: str) -> int:
    """The most workers between their "retiring worker" line and the master's report of their exit,
    in log order. The worker writes the first after taking its turn and the master writes the second
    after removing it from its workers, before it can grant that turn again: each interval lies
    inside the time the budget counts the worker, so this never exceeds a budget that holds, yet it
    sees a drain of a few milliseconds that sampling every 20 ms misses."""
    retiring: set[int] = set()
    most = 0
    for line in log.splitlines():
        if started := RETIRING.search(line):
            retiring.add(int(started[1]))
            most = max(most, len(retiring))
        elif ended := ENDED.search(line):
            retiring.discard(int(ended[1]))
    return most


def test_identically_leaking_workers_retire_within_the_budget(baseline_uss, tmp_path):
    """Drain-first, budget 2, four workers leaking alike: never more than two drain at once, the
    others say they wait and retire in their turn, and nothing fails."""
    env = guard_env(
        baseline_uss + 30 * MiB,
        0.3,
        MEMGUARD_SPAWN_FIRST="no",
        MEMGUARD_MAX_CONCURRENT_RETIREMENTS="2",
        MEMGUARD_JITTER="0%",
    )
    with Gunicorn([*HOOKS, SLOWBOOT], env, tmp_path / "g.log", workers=4) as server:
        server.wait_ready()
        result = load(server, "/leak?kib=256&s=0.005", requests=2400, concurrency=8)

        assert result.failed == [], f"failed requests: {result.failed[:10]}"
        retired = [int(pid) for pid in RETIRING.findall(server.log())]
        assert len(retired) >= 8
        graceful = re.compile(r"memguard: worker pid=(\d+) exited gracefully after retirement")
        poll(lambda: set(retired) <= {int(pid) for pid in graceful.findall(server.log())}, 15, what="graceful exits")
        waited = {int(pid) for pid in re.findall(r"worker pid=(\d+) is over its limit", server.log())}
        assert waited & set(retired), "no worker waited for its turn and then retired"
        most = most_retiring_at_once(server.log())
        assert 1 <= most <= 2, f"{most} workers retiring at once"
        print(f"budget 2: {len(retired)} retirements, {len(waited)} waited for a turn, at most {most} at once")


# gthread on gunicorn < 24 drains from its loop's once-a-second tick, so it recycles more slowly.
@pytest.mark.parametrize(
    ("worker", "recycles"),
    [
        pytest.param(["-k", "sync"], 10, id="sync"),
        pytest.param(["-k", "gthread", "--threads", "2"], 6, id="gthread", marks=INTERNALS),
    ],
)
def test_spawn_first_keeps_every_configured_worker_serving(worker, recycles, baseline_uss, tmp_path):
    """Budget 1, spawn-first, an app that takes 0.5 s to import: over many recycles (ten for sync),
    sampled every 20 ms, there are always four workers ready to serve and never two draining."""
    env = guard_env(baseline_uss + 24 * MiB, 0.5)
    with Gunicorn([*HOOKS, *worker, SLOWBOOT], env, tmp_path / "g.log", workers=4) as server:
        server.wait_ready()
        watch = FleetWatch(server)
        poll(lambda: watch.min_serving <= 4, 10, what="all four workers serving")
        result = load(server, "/leak?kib=256&s=0.01", requests=1600, concurrency=4, pace=80, timeout=60)
        poll(lambda: len(watch.exiting) >= recycles, 15, what=f"{recycles} recycles")
        watch.stop()

        assert result.failed == [], f"failed requests: {result.failed[:10]}"
        assert watch.min_serving >= 4, f"only {watch.min_serving} workers ready at one point"
        assert watch.max_draining <= 1
        assert spawned_first(server) >= recycles
        assert len(server.log_lines("retires now")) >= recycles
        print(f"spawn-first: {len(watch.exiting)} recycles, min ready {watch.min_serving}, {watch.samples} samples")


def test_a_fast_leak_is_stopped_at_the_hard_limit_while_waiting_for_its_replacement(baseline_uss, tmp_path):
    """16 MiB per request at full speed (hundreds of MB/s) while the replacement takes 2 s to boot:
    the worker does not wait past its hard limit. The guard checks between requests and never cuts
    one short, so the bound is the hard limit plus what one request allocates."""
    hard, chunk = baseline_uss + 100 * MiB, 16 * MiB
    env = guard_env(baseline_uss + 30 * MiB, 2, MEMGUARD_HARD_MAX_MEMORY=f"{hard}B")
    with Gunicorn([*HOOKS, SLOWBOOT], env, tmp_path / "g.log", workers=2) as server:
        server.wait_ready()
        watch = MemoryWatch(server, metric="uss")
        result = load(server, f"/leak?kib={chunk // 1024}", requests=40, concurrency=2)
        watch.stop()

        assert result.failed == [], f"failed requests: {result.failed[:10]}"
        assert spawned_first(server)
        (first, *_) = server.log_lines("reason=hard_limit")
        age, uss = re.search(r"age=([\d.]+)s requests=\d+ uss=(\d+)", first).groups()
        rate = (int(uss) - baseline_uss) / MiB / float(age)  # that worker's own growth, from its start
        peak = max(watch.peak.values())
        # + 6 MiB: a worker's first full garbage collection unshares the pages it inherited from the
        # master (about 5 MiB of USS at once, README "Reclaim before retiring"), whenever it comes
        assert peak <= hard + chunk + 6 * MiB, (
            f"peak {peak / MiB:.0f} MiB > hard limit {hard / MiB:.0f} MiB + one request"
        )
        print(f"fast leak {rate:.0f} MiB/s: peak uss {peak / MiB:.0f} MiB, hard limit {hard / MiB:.0f} MiB")


def _settle(server: Gunicorn, count: int) -> None:
    """Wait until every retirement has ended and exactly ``count`` workers run, then check that it
    holds for 2 s; only a retirement or a worker booting meanwhile may change the count (and
    restarts this): a spawn-first replacement's "may retire" line can come just before the count
    was read, its fork just after."""

    def settled() -> bool:
        log = server.log()
        retiring = set(re.findall(r"retiring worker pid=(\d+)", log))
        ended = set(re.findall(r"worker pid=(\d+) (?:exited|ended|was made)", log))
        return retiring <= ended and len(server.worker_pids()) == count

    def activity() -> int:
        log = server.log()
        return len(re.findall(r"memguard: .*retir", log)) + log.count("Booting worker")

    deadline = time.monotonic() + 60
    while True:
        poll(settled, 30, what=f"retirements to end and {count} workers")
        seen, held = activity(), time.monotonic() + 2
        while time.monotonic() < held and len(server.worker_pids()) == count:
            time.sleep(0.05)
        if time.monotonic() >= held:
            return
        assert activity() > seen, f"{len(server.worker_pids())} workers, expected {count}"
        assert time.monotonic() < deadline, "retirements did not stop"


@INTERNALS
def test_ttin_then_ttou_during_a_spawn_first_recycle_leave_the_configured_count(baseline_uss, tmp_path):
    env = guard_env(baseline_uss + 20 * MiB, 1.5)
    with Gunicorn([*HOOKS, SLOWBOOT], env, tmp_path / "g.log", workers=2) as server:
        server.wait_ready()
        stop = threading.Event()
        loader = threading.Thread(target=lambda: [server.get("/leak?kib=512") for _ in range(400) if not stop.is_set()])
        loader.start()
        poll(lambda: granted_pids(server), 30, what="a spawn-first recycle")
        server.proc.send_signal(signal.SIGTTIN)
        time.sleep(0.3)  # two separate signals: gunicorn handles them one loop pass apart
        server.proc.send_signal(signal.SIGTTOU)
        stop.set()
        loader.join(60)
        poll(lambda: server.log_lines("exited gracefully after retirement"), 30, what="the recycle to finish")
        _settle(server, 2)


@INTERNALS
def test_control_socket_worker_add_and_remove_during_a_spawn_first_recycle(baseline_uss, tmp_path):
    """gunicorn 25+'s control socket (``gunicornc``) changes the worker count from its own thread:
    relative changes, like TTIN/TTOU, so memguard's raise for a replacement and its lowering once
    the retiree is gone leave exactly the count the operator asked for."""
    from gunicorn.config import KNOWN_SETTINGS

    if not any(s.name == "control_socket" for s in KNOWN_SETTINGS):
        pytest.skip("this gunicorn has no control socket (25 and later)")
    ctl = shutil.which("gunicornc", path=os.path.dirname(sys.executable)) or "gunicornc"

    def command(text: str) -> None:
        subprocess.run([ctl, "-s", str(sock), "-c", text], check=True, capture_output=True, timeout=30)

    sock = tmp_path / "ctl.sock"
    env = guard_env(baseline_uss + 20 * MiB, 1.5)
    with Gunicorn([*HOOKS, SLOWBOOT], env, tmp_path / "g.log", workers=2, control_socket=sock) as server:
        server.wait_ready()
        stop = threading.Event()
        loader = threading.Thread(target=lambda: [server.get("/leak?kib=512") for _ in range(400) if not stop.is_set()])
        loader.start()
        poll(lambda: granted_pids(server), 30, what="a spawn-first recycle")
        command("worker add 1")  # while memguard's raise for the replacement is in place
        stop.set()
        loader.join(60)
        poll(lambda: server.log_lines("exited gracefully after retirement"), 30, what="the recycle to finish")
        _settle(server, 3)
        command("worker remove 1")
        _settle(server, 2)


@INTERNALS
def test_a_worker_killed_while_holding_a_turn_releases_it(baseline_uss, tmp_path):
    env = guard_env(baseline_uss + 20 * MiB, 3)
    with Gunicorn([*HOOKS, SLOWBOOT], env, tmp_path / "g.log", workers=2) as server:
        server.wait_ready()
        for _ in range(60):  # 60 MiB over two workers: one passes its limit; its replacement takes 3 s to boot
            server.get("/leak?kib=1024")
        (victim,) = poll(lambda: granted_pids(server), 30, what="a spawn-first recycle")
        os.kill(victim, signal.SIGKILL)
        poll(lambda: server.log_lines(f"worker pid={victim} left before its turn came"), 10, what="the turn released")
        _settle(server, 2)
        # the budget is free: the next worker over its limit gets its turn
        poll(
            lambda: (server.get("/leak?kib=2048"), len(granted_pids(server)) >= 2)[1],
            60,
            interval=0,
            what="a second retirement",
        )


@INTERNALS
def test_hup_during_a_spawn_first_recycle_leaves_the_configured_count(baseline_uss, tmp_path):
    env = guard_env(baseline_uss + 20 * MiB, 1.5)
    with Gunicorn([*HOOKS, SLOWBOOT], env, tmp_path / "g.log", workers=2) as server:
        server.wait_ready()
        for _ in range(60):  # 60 MiB over two workers: one passes its limit
            server.get("/leak?kib=1024")
        poll(lambda: granted_pids(server), 30, what="a spawn-first recycle")
        server.proc.send_signal(signal.SIGHUP)
        poll(lambda: server.log_lines("Handling signal: hup"), 10, what="the reload")
        _settle(server, 2)
        assert server.get("/")[0] == 200


def test_server_wide_budget_holds_the_total_with_the_master_counted(baseline_uss, master_pss, tmp_path):
    """No per-worker limit; the PSS of three workers and the master must stay under a total. One
    client leaks 6 MiB a request; between two requests nothing is in flight, so the total seen
    from outside then may pass the budget by at most the last request's 6 MiB (its worker checks
    after it, and stops accepting)."""
    per_request = 6 * MiB
    total = 3 * baseline_uss + master_pss + 60 * MiB
    env = {"MEMGUARD_MAX_TOTAL_MEMORY": f"{total}B", "MEMGUARD_CHECK_INTERVAL": "200ms", "SLOWBOOT_SECONDS": "0"}
    with Gunicorn([*HOOKS, SLOWBOOT], env, tmp_path / "g.log", workers=3) as server:
        server.wait_ready()
        leaked, seen = 0, []
        while leaked < 200 * MiB and len(server.log_lines("reason=total_memory")) < 4:
            status, _ = server.get(f"/leak?kib={per_request // KiB}")
            assert status == 200
            leaked += per_request
            seen.append(_total_pss(server))
        retired = server.log_lines("retiring worker")
        assert len(retired) >= 2, f"leaked {leaked / MiB:.0f} MiB over a {total / MiB:.0f} MiB budget"
        assert all("reason=total_memory" in line for line in retired)
        assert max(seen) <= total + per_request, (
            f"total {max(seen) / MiB:.1f} MiB > budget {total / MiB:.1f} + {per_request / MiB:.0f} MiB"
        )
        _settle(server, 3)


def _total_pss(server: Gunicorn) -> int:
    """The master's and its workers' PSS; a worker that exits while it is read is left out (its
    memory is freed)."""
    total = 0
    for pid in [server.proc.pid, *server.worker_pids()]:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except psutil.Error:
            continue
    return total


def test_without_room_for_a_replacement_the_worker_drains_first(baseline_uss, master_pss, tmp_path):
    """A server-wide budget that leaves less room than one more worker: spawn-first falls back to
    drain-first and says so; nothing fails. (One worker, so the room left is known.) At the soft
    limit the budget leaves about 12 MiB + the jitter (measured: 18-19 MiB): less than a worker
    (~23.5 MiB RSS, what the master expects a replacement to take), and some 20 leaking requests of
    512 KiB before the worker's share of the budget would retire it on its own: time for the
    master's turn."""
    limit = baseline_uss + 20 * MiB
    env = guard_env(limit, 0, MEMGUARD_MAX_TOTAL_MEMORY=f"{limit + master_pss + 12 * MiB}B")
    with Gunicorn([*HOOKS, SLOWBOOT], env, tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        # at 20 requests a second those ~20 requests give the master 1 s, its loop's longest sleep
        result = load(server, "/leak?kib=512", requests=80, concurrency=1, pace=20)
        assert result.failed == []
        lines = poll(lambda: server.log_lines("no room for a replacement"), 10, what="the drain-first fallback")
        pid = re.search(r"worker pid=(\d+) retires first", lines[0]).group(1)
        poll(lambda: server.log_lines(f"worker pid={pid} exited gracefully"), 10, what="its exit")
        assert not spawned_first(server)
        _settle(server, 1)
