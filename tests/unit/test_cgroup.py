"""Tests for the cgroup memory probe, against fixture trees so they never depend on the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gunicorn_memguard.probes.cgroup import (
    ContainerMemory,
    MemoryCgroup,
    find_memory_cgroup,
    read_container_memory,
    read_oom_kill_count,
    read_usage,
    read_working_set,
)
from gunicorn_memguard.units import format_size

from .conftest import (
    HYBRID_UNIFIED_MOUNT,
    MEMINFO,
    MEMINFO_KB,
    PROC_MOUNT,
    V1_CPU_MOUNT,
    V1_MEMORY_MOUNT,
    V2_MOUNT,
    make_tree,
)

GIB = 2**30
V1_UNLIMITED = "9223372036854771712\n"


def under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


# --- v2 ---------------------------------------------------------------------------------


def test_v2_with_limit(tmp_path: Path) -> None:
    cg = "/sys/fs/cgroup/system.slice/app.service"
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "0::/system.slice/app.service\n",
            "/proc/self/mountinfo": PROC_MOUNT + V2_MOUNT,
            f"{cg}/memory.max": f"{2 * GIB}\n",
            f"{cg}/memory.high": "max\n",
        },
    )
    mem = read_container_memory(root)
    assert mem.cgroup == MemoryCgroup("v2", under(root, cg))
    assert mem.limit == 2 * GIB
    assert mem.mem_total == MEMINFO_KB * 1024
    assert mem.available == 2 * GIB
    assert mem.describe() == f"cgroup v2 limit 2.0 GiB ({under(root, cg)})"


def test_v2_max_is_unlimited(tmp_path: Path) -> None:
    cg = "/sys/fs/cgroup/user.slice"
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "0::/user.slice\n",
            "/proc/self/mountinfo": V2_MOUNT,
            f"{cg}/memory.max": "max\n",
        },
    )
    mem = read_container_memory(root)
    assert mem.cgroup == MemoryCgroup("v2", under(root, cg))
    assert mem.limit is None
    assert mem.available == MEMINFO_KB * 1024
    assert mem.describe().startswith("no cgroup memory limit; host memory 16.0 GiB")


def test_v2_mount_root_is_container_cgroup(tmp_path: Path) -> None:
    # Inside a container with a cgroup namespace off: the mount's root is the container's
    # own cgroup, so /sys/fs/cgroup *is* the cgroup directory.
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "0::/docker/abc123\n",
            "/proc/self/mountinfo": (
                "700 650 0:26 /docker/abc123 /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw\n"
            ),
            "/sys/fs/cgroup/memory.max": f"{512 * 2**20}\n",
            # Decoy: joining the unstripped path onto the mount point would land here.
            "/sys/fs/cgroup/docker/abc123/memory.max": f"{GIB}\n",
        },
    )
    mem = read_container_memory(root)
    assert mem.cgroup == MemoryCgroup("v2", under(root, "/sys/fs/cgroup"))
    assert mem.limit == 512 * 2**20


def test_v2_nested_below_container_root(tmp_path: Path) -> None:
    # Mount root is the container cgroup, the process sits in a child of it.
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "0::/kubepods/pod1/ctr/init\n",
            "/proc/self/mountinfo": "700 650 0:26 /kubepods/pod1/ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            "/sys/fs/cgroup/memory.max": f"{GIB}\n",
            "/sys/fs/cgroup/init/memory.max": "max\n",
        },
    )
    mem = read_container_memory(root)
    assert mem.cgroup == MemoryCgroup("v2", under(root, "/sys/fs/cgroup/init"))
    # The parent's limit binds the child too.
    assert mem.limit == GIB


def test_v2_missing_directory_falls_back_to_mount_point(tmp_path: Path) -> None:
    # cgroup namespace: /proc/self/cgroup path is not under the mount root, or the
    # computed directory does not exist; the mount point is the best guess.
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "0::/elsewhere/xyz\n",
            "/proc/self/mountinfo": "700 650 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            "/sys/fs/cgroup/memory.max": f"{3 * GIB}\n",
        },
    )
    mem = read_container_memory(root)
    assert mem.cgroup == MemoryCgroup("v2", under(root, "/sys/fs/cgroup"))
    assert mem.limit == 3 * GIB


def test_v2_parent_limit_is_effective(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "0::/app.slice/web.service\n",
            "/proc/self/mountinfo": V2_MOUNT,
            "/sys/fs/cgroup/app.slice/memory.max": f"{GIB}\n",
            "/sys/fs/cgroup/app.slice/web.service/memory.max": f"{4 * GIB}\n",
        },
    )
    assert read_container_memory(root).limit == GIB


def test_mountinfo_octal_escapes(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "0::/\n",
            "/proc/self/mountinfo": "30 23 0:26 / /my\\040cgroup rw - cgroup2 cgroup2 rw\n",
            "/my cgroup/memory.max": f"{GIB}\n",
        },
    )
    mem = read_container_memory(root)
    assert mem.cgroup == MemoryCgroup("v2", under(root, "/my cgroup"))
    assert mem.limit == GIB


# --- v1 ---------------------------------------------------------------------------------


def test_v1_hierarchical_limit_is_smaller(tmp_path: Path) -> None:
    cg = "/sys/fs/cgroup/memory/docker/abc"
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n",
            "/proc/self/mountinfo": V1_CPU_MOUNT + V1_MEMORY_MOUNT,
            f"{cg}/memory.limit_in_bytes": f"{4 * GIB}\n",
            f"{cg}/memory.stat": f"cache 100\nrss 200\nhierarchical_memory_limit {GIB}\ntotal_inactive_file 50\n",
        },
    )
    mem = read_container_memory(root)
    assert mem.cgroup == MemoryCgroup("v1", under(root, cg))
    assert mem.limit == GIB
    assert mem.describe() == f"cgroup v1 limit 1.0 GiB ({under(root, cg)})"


def test_v1_own_limit_smaller_than_hierarchical(tmp_path: Path) -> None:
    cg = "/sys/fs/cgroup/memory/app"
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "4:memory:/app\n",
            "/proc/self/mountinfo": V1_MEMORY_MOUNT,
            f"{cg}/memory.limit_in_bytes": f"{GIB}\n",
            f"{cg}/memory.stat": f"hierarchical_memory_limit {V1_UNLIMITED}",
        },
    )
    assert read_container_memory(root).limit == GIB


@pytest.mark.parametrize("value", [V1_UNLIMITED, f"{2**63 - 1}\n", f"{2**60}\n"])
def test_v1_unlimited(tmp_path: Path, value: str) -> None:
    cg = "/sys/fs/cgroup/memory/app"
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "4:memory:/app\n",
            "/proc/self/mountinfo": V1_MEMORY_MOUNT,
            f"{cg}/memory.limit_in_bytes": value,
            f"{cg}/memory.stat": f"hierarchical_memory_limit {value}",
        },
    )
    mem = read_container_memory(root)
    assert mem.cgroup == MemoryCgroup("v1", under(root, cg))
    assert mem.limit is None
    assert mem.available == MEMINFO_KB * 1024


def test_v1_mount_root_is_container_cgroup(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "4:memory:/docker/abc\n",
            "/proc/self/mountinfo": "800 790 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": f"{GIB}\n",
        },
    )
    mem = read_container_memory(root)
    assert mem.cgroup == MemoryCgroup("v1", under(root, "/sys/fs/cgroup/memory"))
    assert mem.limit == GIB


def test_hybrid_uses_v1_when_v2_has_no_memory_controller(tmp_path: Path) -> None:
    cg = "/sys/fs/cgroup/memory/app"
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "4:memory:/app\n1:name=systemd:/app\n0::/app\n",
            "/proc/self/mountinfo": (
                "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
                + V1_MEMORY_MOUNT
                + HYBRID_UNIFIED_MOUNT
            ),
            "/sys/fs/cgroup/unified/app/cgroup.procs": "1\n",
            f"{cg}/memory.limit_in_bytes": f"{3 * GIB}\n",
        },
    )
    mem = read_container_memory(root)
    assert mem.cgroup == MemoryCgroup("v1", under(root, cg))
    assert mem.limit == 3 * GIB


def test_limit_above_mem_total_is_clamped(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "0::/big\n",
            "/proc/self/mountinfo": V2_MOUNT,
            "/sys/fs/cgroup/big/memory.max": f"{64 * GIB}\n",
        },
    )
    mem = read_container_memory(root)
    assert mem.limit == MEMINFO_KB * 1024
    assert mem.available == mem.mem_total


def test_no_cgroup_files(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"/proc/meminfo": MEMINFO})
    assert find_memory_cgroup(root) is None
    mem = read_container_memory(root)
    assert mem == ContainerMemory(limit=None, mem_total=MEMINFO_KB * 1024, cgroup=None)
    assert mem.describe() == "no cgroup memory limit; host memory 16.0 GiB"


def test_empty_root_still_reports_host_memory(tmp_path: Path) -> None:
    # No /proc/meminfo at all: fall back to sysconf rather than fail.
    mem = read_container_memory(str(tmp_path))
    assert mem.limit is None
    assert mem.cgroup is None
    assert mem.mem_total >= 0


GARBAGE = "\x00\xff garbage: -- :: \n- - -\nnot a number\n\n"


@pytest.mark.parametrize(
    "files",
    [
        {
            "/proc/meminfo": "MemTotal: lots kB\n",
            "/proc/self/cgroup": GARBAGE,
            "/proc/self/mountinfo": GARBAGE,
        },
        {
            "/proc/meminfo": GARBAGE,
            "/proc/self/cgroup": "0::/x\n",
            "/proc/self/mountinfo": "1 2 3\n30 23 0:26 / /sys/fs/cgroup rw - cgroup2\n" + V2_MOUNT,
            "/sys/fs/cgroup/x/memory.max": "12abc\n",
            "/sys/fs/cgroup/x/memory.current": "-5\n",
            "/sys/fs/cgroup/x/memory.stat": GARBAGE,
            "/sys/fs/cgroup/x/memory.events": "oom_kill many\n",
        },
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "4:memory:/x\n",
            "/proc/self/mountinfo": V1_MEMORY_MOUNT,
            "/sys/fs/cgroup/memory/x/memory.limit_in_bytes": "-1\n",
            "/sys/fs/cgroup/memory/x/memory.stat": "hierarchical_memory_limit\ntotal_inactive_file x\n",
            "/sys/fs/cgroup/memory/x/memory.usage_in_bytes": GARBAGE,
            "/sys/fs/cgroup/memory/x/memory.oom_control": GARBAGE,
        },
    ],
)
def test_garbage_never_raises(tmp_path: Path, files: dict[str, str]) -> None:
    root = make_tree(tmp_path, files)
    mem = read_container_memory(root)
    assert isinstance(mem, ContainerMemory)
    assert mem.limit is None
    if mem.cgroup is not None:
        assert read_usage(mem.cgroup) is None
        assert read_working_set(mem.cgroup) is None
        assert read_oom_kill_count(mem.cgroup) is None
    mem.describe()


def test_control_file_that_is_a_directory_does_not_raise(tmp_path: Path) -> None:
    (tmp_path / "proc" / "self" / "cgroup").mkdir(parents=True)
    mem = read_container_memory(str(tmp_path))
    assert mem.cgroup is None


def test_counters_on_missing_cgroup_directory(tmp_path: Path) -> None:
    for version in ("v1", "v2"):
        cgroup = MemoryCgroup(version, str(tmp_path / "gone"))
        assert read_usage(cgroup) is None
        assert read_working_set(cgroup) is None
        assert read_oom_kill_count(cgroup) is None


# --- counters ---------------------------------------------------------------------------


def test_v2_counters(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            "cg/memory.current": "1000000\n",
            "cg/memory.stat": "anon 600000\nfile 400000\nactive_file 100000\ninactive_file 300000\n",
            "cg/memory.events": "low 0\nhigh 4\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n",
        },
    )
    cgroup = MemoryCgroup("v2", str(tmp_path / "cg"))
    assert read_usage(cgroup) == 1_000_000
    assert read_working_set(cgroup) == 700_000
    assert read_oom_kill_count(cgroup) == 2


def test_v1_counters(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            "cg/memory.usage_in_bytes": "5000\n",
            # inactive_file is this cgroup only; Kubernetes uses the hierarchical total_ one.
            "cg/memory.stat": "inactive_file 100\ntotal_inactive_file 1500\n",
            "cg/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        },
    )
    cgroup = MemoryCgroup("v1", str(tmp_path / "cg"))
    assert read_usage(cgroup) == 5000
    assert read_working_set(cgroup) == 3500
    assert read_oom_kill_count(cgroup) == 3


def test_working_set_not_below_zero(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cg/memory.current": "100\n", "cg/memory.stat": "inactive_file 500\n"})
    assert read_working_set(MemoryCgroup("v2", str(tmp_path / "cg"))) == 0


def test_working_set_without_stat_is_usage(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cg/memory.usage_in_bytes": "4096\n"})
    assert read_working_set(MemoryCgroup("v1", str(tmp_path / "cg"))) == 4096


def test_old_v1_kernel_has_no_oom_kill_line(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cg/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n"})
    assert read_oom_kill_count(MemoryCgroup("v1", str(tmp_path / "cg"))) is None


def test_end_to_end_counters_via_find(tmp_path: Path) -> None:
    cg = "/sys/fs/cgroup/memory/app"
    root = make_tree(
        tmp_path,
        {
            "/proc/self/cgroup": "4:memory:/app\n",
            "/proc/self/mountinfo": V1_MEMORY_MOUNT,
            f"{cg}/memory.usage_in_bytes": "2048\n",
            f"{cg}/memory.stat": "total_inactive_file 1024\n",
        },
    )
    cgroup = find_memory_cgroup(root)
    assert cgroup is not None
    assert read_usage(cgroup) == 2048
    assert read_working_set(cgroup) == 1024


# --- formatting and the real host -------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536 * 2**20, "1.5 GiB"), (3 * 2**40, "3.0 TiB")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


def test_real_host() -> None:
    mem = read_container_memory()
    assert isinstance(mem, ContainerMemory)
    assert mem.mem_total > 0
    assert mem.available > 0
    assert isinstance(mem.describe(), str)
