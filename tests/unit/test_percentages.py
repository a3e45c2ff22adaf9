"""Percentage limits → per-worker bytes (``policy/percentages.py``), on fixed container figures and
on a cgroup fixture tree."""

from __future__ import annotations

from gunicorn_memguard.policy.percentages import per_worker, resolve
from gunicorn_memguard.probes.cgroup import ContainerMemory, MemoryCgroup, read_container_memory
from gunicorn_memguard.units import Share

from .conftest import MEMINFO, PROC_MOUNT, V2_MOUNT, GiB, MiB, make_tree

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
