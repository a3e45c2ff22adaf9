"""Issue: memory-guarded sync and gthread workers, via the hook module and via memguard's classes.

Real gunicorn on 127.0.0.1, real HTTP, observed from outside (PIDs, psutil memory, logs).
"""

from __future__ import annotations

import json
import re
import signal
import textwrap
import threading

import psutil
import pytest

from bench.harness import Gunicorn, MemoryWatch, load, poll

from .conftest import INTERNALS, KiB, MiB, marking

HOOKS = ["-c", "python:gunicorn_memguard.conf"]
THREADS = 4  # per gthread worker
# (label, gunicorn args) for each way a user can adopt memguard on sync and gthread
MODES = {
    "hooks-sync": [*HOOKS, "-k", "sync"],
    "hooks-gthread": [*HOOKS, "-k", "gthread", "--threads", str(THREADS)],
    "class-sync": ["-k", "gunicorn_memguard.workers.SyncWorker"],
    "class-gthread": ["-k", "gunicorn_memguard.workers.ThreadWorker", "--threads", str(THREADS)],
}
LEAK_KIB = 256
CLIENTS = 4  # concurrent clients of the load, each with one request at a time


def guard_env(limit: int, **extra: str) -> dict[str, str]:
    return {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
        # The bounds below are each worker's own, retiring at once: spawn-first and a budget of
        # one retirement at a time serve on meanwhile (tests/integration/test_coordination.py).
        "MEMGUARD_SPAWN_FIRST": "no",
        "MEMGUARD_MAX_CONCURRENT_RETIREMENTS": "8",
        **extra,
    }


# For a bound on each worker: the soft limit jittered below the hard one, and no reclaim. While the
# sampler thread reclaims (gc.collect + malloc_trim, 20-30 ms measured), the guard answers every
# other check "keep" (worker/guard.py ``_judge``, ``_reclaiming``), the hard limit's included, so a
# worker serves on unchecked meanwhile; that is reported to be fixed in the guard, not bounded here.
CEILING_ONLY = {"MEMGUARD_JITTER": "10%", "MEMGUARD_RECLAIM": "no"}


def overshoot_bound(mode: str) -> int:
    """The most a worker of ``mode`` can allocate past a passing check of its guard, under this load.

    The guard checks after every request. A request that allocates after the worker's last check
    below the limit is either unchecked when the retirement is decided (one per thread: a request
    holds its thread until its check) or accepted before the worker stops accepting (one per client:
    each client has one request at a time). A sync worker has one thread and accepts only between
    requests, so it is one request; a gthread worker, its threads plus the clients. Scheduling
    delays change when this happens, not how much: it holds on a busy machine."""
    requests = 1 if mode.endswith("sync") else THREADS + CLIENTS
    return requests * LEAK_KIB * KiB


@pytest.mark.parametrize("mode", marking(MODES, {"hooks-gthread"}))  # gthread drains on its own before 24
def test_leaking_workers_are_retired_gracefully_within_the_limit(mode, idle_leaky, tmp_path):
    """The limit is also the hard limit: past it a worker retires at once, drain-first, whether or
    not its graceful turn has come (the soft limits, jittered up to 10 % below it, go first)."""
    limit = idle_leaky.uss + 60 * MiB
    env = guard_env(limit, **CEILING_ONLY, MEMGUARD_HARD_MAX_MEMORY=f"{limit}B")
    with Gunicorn([*MODES[mode], "apps.leaky:app"], env, tmp_path / "g.log") as server:
        server.wait_ready()
        first = server.worker_pids()
        watch = MemoryWatch(server, metric="uss")
        result = load(server, f"/leak?kib={LEAK_KIB}", requests=2000, concurrency=CLIENTS)
        watch.stop()
        seen = set(watch.peak)

        assert result.failed == [], f"failed requests: {result.failed[:10]}"
        assert seen - first, "no worker was replaced"
        peak = max(watch.peak.values())
        # + the one-off unsharing of a worker's first full collection, which the guard's estimate
        # between exact reads does not see (measured: conftest.Idle)
        bound = limit + overshoot_bound(mode) + idle_leaky.gc_unshare
        assert peak <= bound, (
            f"peak {peak / MiB:.1f} MiB > limit {limit / MiB:.1f} + {overshoot_bound(mode) / MiB:.2f} MiB of requests "
            f"+ {idle_leaky.gc_unshare / MiB:.1f} MiB unshared"
        )

        retirements = server.log_lines("memguard: retiring worker")
        # 2000 x 256 KiB = 500 MiB leaked over 2 workers with ~60 MiB headroom each
        assert len(retirements) >= 5
        for line in retirements:
            assert re.search(
                r"pid=\d+ age=[\d.]+s requests=\d+ uss=\d+ .* limit=\d+ .* reason=(?:soft_limit|hard_limit)", line
            ), line
        # every retired worker exits gracefully, and the master says so
        poll(
            lambda: len(server.log_lines("exited gracefully after retirement")) >= len(retirements) - 2,
            timeout=20,
            what="graceful exits",
        )
        # ... counting every request it served, not only those up to its last timer sample
        retired_at = {
            pid: int(n) for pid, n in (re.search(r"pid=(\d+) age=\S+ requests=(\d+)", x).groups() for x in retirements)
        }
        for line in server.log_lines("exited gracefully after retirement"):
            pid, served = re.search(r"pid=(\d+) .* requests=(\d+)", line).groups()
            assert int(served) >= retired_at[pid], (line, retired_at[pid])
        hard = sum("reason=hard_limit" in line for line in retirements)
        print(
            f"{mode}: {len(retirements)} retirements ({hard} at the hard limit), peak uss {peak / MiB:.1f} MiB, "
            f"limit {limit / MiB:.1f} MiB, bound {bound / MiB:.1f} MiB, {watch.samples} samples"
        )


def test_a_worker_stuck_in_a_long_request_is_seen_by_the_timer(baseline_uss, tmp_path):
    limit = baseline_uss + 40 * MiB
    with Gunicorn([*HOOKS, "apps.leaky:app"], guard_env(limit), tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        # one request leaks 80 MiB and then works for 4 s: the decision comes during that request
        answer: list[int] = []
        thread = threading.Thread(target=lambda: answer.append(server.get("/leak?kib=81920&s=4")[0]))
        thread.start()
        poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=3, what="retirement mid-request")
        assert thread.is_alive(), "the retirement should be decided while the request is still running"
        thread.join(20)
        assert answer == [200]
        poll(lambda: pid not in server.worker_pids() and len(server.worker_pids()) == 1, timeout=15, what="replacement")


@INTERNALS
def test_drain_that_overruns_graceful_timeout_is_bounded_and_logged(baseline_uss, tmp_path):
    limit = baseline_uss + 40 * MiB
    args = [*HOOKS, "-k", "gthread", "--threads", "2", "--graceful-timeout", "2", "apps.leaky:app"]
    with Gunicorn(args, guard_env(limit), tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        cut: list[str] = []

        def slow_request() -> None:
            try:
                server.get("/slow?s=30", timeout=40)
            except OSError as exc:  # the point of the bound: this request is cut off
                cut.append(type(exc).__name__)

        slow = threading.Thread(target=slow_request)
        slow.start()
        poll(lambda: server.get("/leak?kib=81920")[0] == 200, timeout=5)
        poll(lambda: server.log_lines("did not finish draining"), timeout=15, what="drain bound")
        poll(lambda: pid not in server.worker_pids(), timeout=5, what="overrun worker to exit")
        poll(lambda: server.log_lines(f"worker pid={pid} was made to exit"), timeout=5, what="master's exit report")
        slow.join(40)
        assert cut, "the request that outlived graceful_timeout should have been cut off"


@INTERNALS
def test_sigkill_without_retirement_is_attributed(tmp_path):
    """No OOM kill happened in this cgroup, so the report says SIGKILL, cause unknown (the OOM
    path is covered with cgroup fixture files in tests/unit/test_exit_attribution.py)."""
    events = tmp_path / "events.jsonl"
    settings = guard_env(1024 * MiB, MEMGUARD_EVENT_LOG=str(events))
    with Gunicorn([*HOOKS, "apps.leaky:app"], settings, tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        assert server.get("/pid")[0] == 200  # the worker is serving, so its sampler has run once
        psutil.Process(pid).send_signal(signal.SIGKILL)
        lines = poll(lambda: server.log_lines(f"worker pid={pid} was killed by SIGKILL (cause unknown"), timeout=10)
        assert "with no retirement in progress; last " in lines[0], lines[0]
    (exit_event,) = [
        e for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "exit" and e["pid"] == pid
    ]
    assert exit_event["outcome"] == "sigkill" and exit_event["signal"] == "SIGKILL" and exit_event["rss"] > 0


@pytest.mark.parametrize("args", [[*HOOKS], ["-k", "gunicorn_memguard.workers.SyncWorker"]], ids=["hooks", "class"])
def test_bad_setting_stops_gunicorn_before_any_worker_forks(args, tmp_path):
    server = Gunicorn([*args, "apps.leaky:app"], {"MEMGUARD_MAX_MEMORY": "512"}, tmp_path / "g.log")
    assert server.proc.wait(30) != 0
    log = server.log()
    server.stop()
    assert "MEMGUARD_MAX_MEMORY='512'" in log and "did you mean '512MiB'" in log
    assert "Booting worker" not in log


def test_user_hooks_in_a_config_file_are_composed_not_clobbered(baseline_uss, tmp_path):
    conf = tmp_path / "myconf.py"
    conf.write_text(
        textwrap.dedent(f"""
        from gunicorn_memguard.conf import *

        memguard_max_memory = "{baseline_uss + 40 * MiB}B"
        memguard_min_lifetime = "0s"

        def post_worker_init(worker):
            worker.log.info("user post_worker_init ran in %s", worker.pid)

        def child_exit(server, worker):
            server.log.info("user child_exit ran for %s", worker.pid)
    """)
    )
    with Gunicorn(["-c", str(conf), "apps.leaky:app"], {}, tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        assert server.log_lines(f"user post_worker_init ran in {pid}")
        assert server.log_lines("composed your post_worker_init hook")
        for _ in range(4):
            server.get("/leak?kib=20480")
        poll(lambda: server.log_lines(f"user child_exit ran for {pid}"), timeout=10, what="user child_exit")
        assert server.log_lines(f"retiring worker pid={pid}")
        assert server.log_lines(f"worker pid={pid} exited gracefully after retirement")


def test_user_hooks_above_the_import_at_the_bottom_survive_it_and_a_reload(baseline_uss, tmp_path):
    """The star import at the bottom would rebind the user's hooks to memguard's; it composes them."""
    markers = tmp_path / "markers"
    markers.mkdir()
    conf = tmp_path / "myconf.py"
    conf.write_text(
        textwrap.dedent(f"""
        import os

        memguard_max_memory = "{baseline_uss + 40 * MiB}B"
        memguard_min_lifetime = "0s"

        def post_worker_init(worker):
            open(os.path.join({str(markers)!r}, f"post_worker_init-{{worker.pid}}"), "w").close()

        def worker_exit(server, worker):
            open(os.path.join({str(markers)!r}, f"worker_exit-{{worker.pid}}"), "w").close()

        from gunicorn_memguard.conf import *
    """)
    )
    with Gunicorn(["-c", str(conf), "apps.leaky:app"], {}, tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        assert (markers / f"post_worker_init-{pid}").exists()
        assert server.log_lines("memguard: guarding workers: metric=uss")
        assert len(server.log_lines("composed your post_worker_init hook")) == 1
        assert len(server.log_lines("composed your worker_exit hook")) == 1
        for _ in range(4):
            server.get("/leak?kib=20480")
        poll(lambda: server.log_lines(f"worker pid={pid} exited gracefully after retirement"), 10, what="retirement")
        assert server.log_lines(f"retiring worker pid={pid}")
        assert (markers / f"worker_exit-{pid}").exists()
        # HUP: gunicorn runs the config file again, memguard's module stays imported
        server.wait_ready()
        before = server.worker_pids()
        server.proc.send_signal(signal.SIGHUP)
        poll(lambda: len(server.log_lines("composed your post_worker_init hook")) == 2, 15, what="the reload")
        (reloaded,) = poll(lambda: (pids := server.worker_pids() - before) and pids, 15, what="a reloaded worker")
        poll(lambda: (markers / f"post_worker_init-{reloaded}").exists(), 10, what="the user's hook after HUP")


def test_syncworker_with_threads_is_still_guarded_and_says_why(baseline_uss, tmp_path):
    args = [*HOOKS, "-k", "gunicorn_memguard.workers.SyncWorker", "--threads", "2", "apps.leaky:app"]
    with Gunicorn(args, guard_env(baseline_uss + 40 * MiB), tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        assert server.log_lines("runs gunicorn's stock gthread worker")
        (pid,) = server.worker_pids()
        for _ in range(4):
            server.get("/leak?kib=20480")
        poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=10, what="retirement")


def test_a_server_wide_budget_the_master_alone_exceeds_is_refused_before_any_fork(tmp_path):
    """The budget counts the master's own PSS (tens of MiB): one below it can never be met, and every
    fresh worker would be retired at once. Refused like any bad setting: exit 1, no worker forked."""
    server = Gunicorn([*HOOKS, "apps.leaky:app"], {"MEMGUARD_MAX_TOTAL_MEMORY": "1MiB"}, tmp_path / "g.log")
    assert server.proc.wait(30) == 1
    server.stop()
    lines = server.log_lines("bad setting: MEMGUARD_MAX_TOTAL_MEMORY=1.0 MiB is not above the master's own")
    assert lines and "(PSS), which the budget counts" in lines[0]
    assert not server.log_lines("Booting worker")
    assert "Traceback" not in server.log()
