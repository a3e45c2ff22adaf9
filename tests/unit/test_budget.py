"""Percentage limits → per-worker bytes, the shared budget, the breaker's tests, reclaim, and
the settings that drive them."""

from __future__ import annotations

import gc
import os
import random

import pytest

from gunicorn_memguard.policy import Sample, build_policy
from gunicorn_memguard.policy.breaker import RetirementRate, starts_near_limit, starts_well_below
from gunicorn_memguard.policy.percentages import per_worker, resolve
from gunicorn_memguard.probes.cgroup import ContainerMemory, MemoryCgroup, read_container_memory
from gunicorn_memguard.settings import SettingsError, load_settings
from gunicorn_memguard.shared.limits import PAUSE_BASELINE, SharedLimits
from gunicorn_memguard.units import Share
from gunicorn_memguard.worker.reclaim import Reclaimer

from .test_cgroup import MEMINFO, PROC_MOUNT, V2_MOUNT, make_tree

MiB, GiB = 2**20, 2**30
POD = ContainerMemory(limit=4 * GiB, mem_total=16 * GiB, cgroup=MemoryCgroup("v2", "/sys/fs/cgroup"))
HOST = ContainerMemory(limit=None, mem_total=16 * GiB, cgroup=None)


def test_a_share_is_of_what_is_left_per_worker_after_the_master():
    # (4 GiB - 256 MiB master) / 4 workers = 960 MiB; 80 % of that = 768 MiB
    assert per_worker(Share(0.8), 4 * GiB, 256 * MiB, 4) == 768 * MiB


def test_resolve_explains_percentages_and_passes_sizes_through():
    resolved = resolve(Share(0.8), 2 * GiB, POD, 256 * MiB, 4)
    assert (resolved.soft, resolved.hard) == (768 * MiB, 2 * GiB)
    assert "limit 80% = 768.0 MiB" in resolved.how and "/ 4 workers = 960.0 MiB" in resolved.how
    assert "cgroup v2 limit 4.0 GiB" in resolved.how
    assert resolve(512 * MiB, None, POD, 0, 4) == type(resolved)(512 * MiB, None, "")


def test_without_a_container_limit_percentages_are_of_host_memory_and_say_so():
    resolved = resolve(Share(0.5), Share(0.9), HOST, 0, 2)
    assert (resolved.soft, resolved.hard) == (4 * GiB, int(0.9 * 8 * GiB))
    assert "no container limit found, so percentages are of host memory" in resolved.how


def test_resolve_from_a_cgroup_v2_fixture_tree(tmp_path):
    cg = "/sys/fs/cgroup/kubepods/pod1"
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "0::/kubepods/pod1\n",
            "/proc/self/mountinfo": PROC_MOUNT + V2_MOUNT,
            f"{cg}/memory.max": f"{2 * GiB}\n",
        },
    )
    resolved = resolve(Share(0.75), None, read_container_memory(root), 0, 3)
    assert resolved.soft == 512 * MiB


def test_shared_budget_crosses_fork():
    budget = SharedLimits()
    pid = os.fork()
    if pid == 0:
        budget.set_limits(100, 200)
        budget.fresh_worker(95, near_limit=True, well_below=False)
        os._exit(0)
    os.waitpid(pid, 0)
    assert budget.limits() == (100, 200)
    assert budget.paused() == (float("inf"), PAUSE_BASELINE) and budget.fresh_baseline() == 95
    assert budget.fresh_worker(96, near_limit=True, well_below=False) is None, "already open: the second stays quiet"
    assert budget.trips() == 1


def test_starts_near_limit_and_resets_only_well_below():
    assert starts_near_limit(90, 100) and starts_near_limit(150, 100)
    assert not starts_near_limit(89, 100) and not starts_near_limit(10**9, None)
    assert starts_well_below(74, 100) and not starts_well_below(80, 100), "hysteresis wider than the jitter"


def test_retirement_rate_is_over_above_its_count_per_worker_and_recovers():
    rate = RetirementRate(count=2, per=600)
    assert [rate.record(t, workers=2) for t in (0, 10, 20, 30)] == [None] * 4
    assert rate.record(40, workers=2) == 5  # the 5th in 10 min: over 2 per worker, said with the count
    assert rate.record(700, workers=2) is None  # only 20..700 minus expired: back under


def test_policy_retarget_and_pause():
    policy, _ = build_policy(
        metric="uss", soft=100 * MiB, hard=200 * MiB, jitter=0.0, min_lifetime=0, born=0, rng=random.Random(0)
    )
    policy.retarget(50 * MiB, 150 * MiB)
    assert policy.floor == 50 * MiB
    assert [policy.judge(Sample(t, 60 * MiB)).reason for t in (1, 2)] == ["", "soft_limit"]
    policy.paused = True
    assert not policy.judge(Sample(3, 60 * MiB)).retires
    assert policy.judge(Sample(4, 160 * MiB)).reason == "hard_limit", "the hard limit still applies"


def test_reclaim_gives_freed_glibc_heap_back():
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [b"x" * (1024 + i % 1024) for i in range(64 * MiB // 1536)]
    survivors = blocks[::500]  # pin the heap so free() alone cannot shrink it
    del blocks
    gc.collect()
    before = rss()
    reclaimer = Reclaimer(interval=60)
    assert reclaimer.due(0)
    took = reclaimer.run(0)
    assert not reclaimer.due(59) and reclaimer.due(60)
    if reclaimer.how.endswith("malloc_trim"):
        assert before - rss() > 40 * MiB
    assert took < 5
    del survivors


def test_new_settings_parse_and_refuse_bad_values():
    s = load_settings(
        {"MEMGUARD_MAX_MEMORY": "80%", "MEMGUARD_MAX_GROWTH": "50MiB/h", "MEMGUARD_MAX_RETIREMENTS": "off"},
        {"memguard_hard_max_memory": "90%"},
    )
    assert s.max_memory == Share(0.8) and s.hard_max_memory == Share(0.9)
    assert s.max_growth == pytest.approx(50 * MiB / 3600) and s.max_retirements is None
    assert (s.growth_window, s.growth_grace, s.growth_interval, s.reclaim) == (5400, 600, 30, True)
    with pytest.raises(SettingsError) as err:
        load_settings(
            {
                "MEMGUARD_MAX_MEMORY": "90%",
                "MEMGUARD_HARD_MAX_MEMORY": "80%",
                "MEMGUARD_MAX_GROWTH": "50MiB",
                "MEMGUARD_MAX_RETIREMENTS": "ten/1h",
                "MEMGUARD_GROWTH_WINDOW": "10m",
                "MEMGUARD_GROWTH_INTERVAL": "1m",
            },
            {},
        )
    text = str(err.value)
    assert "MEMGUARD_MAX_GROWTH='50MiB' is invalid: expected a size per time unit" in text
    assert "MEMGUARD_MAX_RETIREMENTS='ten/1h' is invalid" in text
    assert "HARD_MAX_MEMORY (80%) is below MEMGUARD_MAX_MEMORY (90%)" in text
    with pytest.raises(SettingsError, match="at most 20s"):
        load_settings(
            {"MEMGUARD_MAX_GROWTH": "1MiB/m", "MEMGUARD_GROWTH_WINDOW": "10m", "MEMGUARD_GROWTH_INTERVAL": "1m"}, {}
        )
    with pytest.raises(SettingsError, match="at most 100%"):
        load_settings({"MEMGUARD_MAX_MEMORY": "150%"}, {})
