"""In a real 400 MiB memory cgroup, 3 sync workers leaking 256 KiB a request at full rate: the
kernel's OOM killer never has to act, and no request fails, with memguard's container settings
alone. Observed from outside: the cgroup's own ``oom_kill`` count, the HTTP statuses, the log.
(``python -m bench.container`` runs the same load under plain ``--max-requests`` for comparison.)
"""

import re

import pytest

from bench.container import LEAK_KIB, LIMIT, WORKERS
from bench.harness import Container, Gunicorn, free_port, load, poll, scrape

from .conftest import INTERNALS, KiB, MiB

pytestmark = pytest.mark.skipif(bool(Container.unavailable()), reason=Container.unavailable() or "")

HOOKS = ["-c", "python:gunicorn_memguard.conf"]
REQUESTS = 6000
CLIENTS = 6
LEAKED = REQUESTS * LEAK_KIB * KiB  # 1.5 GiB over the run, ~4 times the container


def run(env: dict[str, str], tmp_path) -> tuple[int, list, list[str], Container]:
    with Container(LIMIT) as container:
        server = Gunicorn([*HOOKS, "apps.leaky:app"], env, tmp_path / "g.log", workers=WORKERS, container=container)
        with server:
            server.wait_ready()
            result = load(server, f"/leak?kib={LEAK_KIB}", requests=REQUESTS, concurrency=CLIENTS)
            retired = server.log_lines("retiring worker")
            kills = container.oom_kills()
        print(f"{env}: {len(retired)} retirements, {kills} OOM kills, peak {container.peak() / MiB:.0f} MiB")
    return kills, result.failed, retired, container


def test_a_share_of_the_container_per_worker_keeps_the_oom_killer_away(tmp_path):
    kills, failed, retired, _ = run({"MEMGUARD_MAX_MEMORY": "80%"}, tmp_path)
    assert kills == 0, "the kernel OOM-killed a worker"
    assert failed == []
    # each retirement frees at most one worker's ceiling (at most 80 % of the container / 3)
    ceiling = 0.8 * LIMIT / WORKERS
    assert len(retired) >= (LEAKED - WORKERS * ceiling) // ceiling
    assert all("reason=soft_limit" in line or "reason=ceiling" in line for line in retired)


@INTERNALS  # the master's side: shares written from the arbiter's loop, slots claimed in pre_fork
def test_a_server_wide_budget_acts_in_time_at_full_leak_rate(tmp_path):
    # a per-worker limit that cannot protect the container (3 x 300 MiB in 400 MiB): only the
    # server-wide budget stands between the leak and the kernel
    env = {"MEMGUARD_MAX_TOTAL_MEMORY": "90%", "MEMGUARD_MAX_MEMORY": "300MiB"}
    kills, failed, retired, _ = run(env, tmp_path)
    assert kills == 0, "the kernel OOM-killed a worker"
    assert failed == []
    # each budget retirement frees at most the whole budget
    budget = 0.9 * LIMIT
    assert len([line for line in retired if "reason=total_memory" in line]) >= (LEAKED - budget) // budget


@pytest.mark.parametrize(
    ("env", "warned"),
    [
        ({"MEMGUARD_MAX_MEMORY": "300MiB"}, True),  # 3 x 300 MiB in 400 MiB
        ({"MEMGUARD_MAX_MEMORY": "80%"}, False),
        ({"MEMGUARD_MAX_MEMORY": "300MiB", "MEMGUARD_MAX_TOTAL_MEMORY": "90%"}, False),  # the budget holds it
    ],
)
def test_limits_that_cannot_fit_the_container_are_said_at_start_up(env, warned, tmp_path):
    with Container(LIMIT) as container:
        server = Gunicorn([*HOOKS, "apps.leaky:app"], env, tmp_path / "g.log", workers=WORKERS, container=container)
        with server:
            server.wait_ready()
            lines = server.log_lines("more than this container's 400.0 MiB")
    assert bool(lines) == warned, lines
    if warned:
        assert "3 workers x their ceiling 300.0 MiB" in lines[0]


def test_every_oom_kill_is_attributed_even_several_at_once(tmp_path):
    """A dry run (memguard reports, retires nothing) lets the leak reach the kernel: each worker it
    kills is reported as the OOM killer's and no SIGKILL is left with an unknown cause; the
    kernel's own count is the reference. (Here the master mostly reaps each kill before the next;
    two counted before either is reaped are tests/unit/test_exits.py's.)"""
    env = {"MEMGUARD_MAX_MEMORY": "80%", "MEMGUARD_DRY_RUN": "yes"}
    with Container(LIMIT) as container:
        server = Gunicorn([*HOOKS, "apps.leaky:app"], env, tmp_path / "g.log", workers=WORKERS, container=container)
        with server:
            server.wait_ready()
            load(server, f"/leak?kib={LEAK_KIB}", requests=REQUESTS, concurrency=CLIENTS)
            kills = container.oom_kills()
            attributed = poll(
                lambda: len(server.log_lines("killed by the kernel OOM killer")) >= kills and kills,
                timeout=10,
                what=f"{kills} OOM kills reported",
            )
            assert attributed
            assert len(server.log_lines("killed by the kernel OOM killer")) == kills
            assert not server.log_lines("cause unknown")
        print(f"{kills} OOM kills, all attributed")


def test_a_container_limit_changed_at_run_time_is_followed(tmp_path):
    """Kubernetes resizes a pod's memory in place: lowered from 400 to 300 MiB while serving, the
    shares of it are resolved again — per-worker limits, the budget, what is exported — within a
    few check intervals (200 ms here), and the running workers take their new limits."""
    port = free_port()
    env = {
        "MEMGUARD_MAX_MEMORY": "80%",
        "MEMGUARD_MAX_TOTAL_MEMORY": "90%",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
        "MEMGUARD_PROMETHEUS_PORT": str(port),
    }
    with Container(LIMIT) as container:
        server = Gunicorn([*HOOKS, "apps.leaky:app"], env, tmp_path / "g.log", workers=WORKERS, container=container)
        with server:
            server.wait_ready()
            limit = poll(lambda: scrape(port).get("memguard_container_memory_limit_bytes"), 10, what="the metric")
            assert list(limit.values()) == [LIMIT]
            (container.path / "memory.limit_in_bytes").write_text(str(300 * MiB))
            poll(
                lambda: server.log_lines("container's memory limit changed from 400.0 MiB to 300.0 MiB"),
                5,
                what="the change said",
            )
            assert server.log_lines("server-wide budget now 270.0 MiB")
            assert server.log_lines("(container limit changed)")
            poll(lambda: len(server.log_lines("the master re-resolved them")) >= WORKERS, 5, what="the workers")
            exported = scrape(port)
            assert list(exported["memguard_container_memory_limit_bytes"].values()) == [300 * MiB]
            assert list(exported["memguard_total_budget_bytes"].values()) == [270 * MiB]
            assert server.get("/")[0] == 200


def test_without_room_in_the_container_spawn_first_drains_first(baseline_uss, master_pss, tmp_path):
    """A container with less room left than one more worker (its limit less its working set, as
    the kernel sees it): the retiree drains first instead of forking its replacement beside it,
    and the kernel never has to act. The ceiling (hard limit) and the master fit with 15 MiB to
    spare; at the soft limit that leaves less than a worker (measured: 18 MiB of room, 23 MiB a
    worker's PSS)."""
    soft = baseline_uss + 30 * MiB
    hard = soft + 10 * MiB
    limit = master_pss + hard + 15 * MiB
    env = {
        "MEMGUARD_MAX_MEMORY": f"{soft}B",
        "MEMGUARD_HARD_MAX_MEMORY": f"{hard}B",
        "MEMGUARD_JITTER": "0%",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
    }
    with Container(limit) as container:
        server = Gunicorn([*HOOKS, "apps.leaky:app"], env, tmp_path / "g.log", workers=1, container=container)
        with server:
            server.wait_ready()
            # the band between soft and hard limit holds 10 of these requests; at 10 a second the
            # master has 1 s to answer the worker's request for a turn: its loop's longest sleep
            result = load(server, "/leak?kib=1024", requests=60, concurrency=1, pace=10)
            lines = poll(lambda: server.log_lines("no room for a replacement"), 10, what="the drain-first fallback")
            pid = re.search(r"worker pid=(\d+) retires first", lines[0]).group(1)
            poll(lambda: server.log_lines(f"worker pid={pid} exited gracefully"), 10, what="its exit")
            kills = container.oom_kills()
        assert result.failed == []
        assert kills == 0, "the kernel OOM-killed a worker"
        assert not server.log_lines("starting its replacement first")
