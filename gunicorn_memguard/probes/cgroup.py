"""Find the memory this process's container may use, on cgroup v1, v2 and hybrid hosts.

A worker's memory only matters relative to what the container may use before the kernel's
OOM killer steps in, and inside a container that is the cgroup limit, not the host's RAM
(which ``psutil.virtual_memory()`` reports). This module locates the memory cgroup the way
the kernel describes it (``/proc/self/cgroup`` + ``/proc/self/mountinfo``) rather than
guessing ``/sys/fs/cgroup/...``, because inside containers and on hybrid hosts the guess is
wrong often enough to matter.

Everything here runs inside production web workers, so no function raises ``OSError`` or
``ValueError``: a missing, unreadable or garbled file reads as "unknown" (``None``) and the
caller falls back to host memory. Only the standard library is used.

``root`` is prefixed to every absolute path read, so tests can point it at a fixture tree.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..units import format_size

ROOT = "/"

# cgroup v1 reports "no limit" as a huge page-aligned number (e.g. 9223372036854771712);
# anything this large cannot be a real limit.
V1_UNLIMITED_THRESHOLD = 2**60

# Control files are tiny; cap reads so a garbled file cannot cost much memory or time.
_MAX_READ = 1 << 20

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MemoryCgroup:
    """Where this process's memory cgroup lives, so usage and counters can be re-read cheaply."""

    version: str  # "v1" or "v2"
    path: str  # directory of the memory cgroup (absolute, with the root prefix applied)


@dataclass(frozen=True)
class ContainerMemory:
    """The memory budget of this container: the cgroup limit if there is one, else host RAM."""

    limit: int | None  # cgroup limit in bytes, clamped to mem_total; None when unlimited / no cgroup
    mem_total: int  # host MemTotal in bytes
    cgroup: MemoryCgroup | None

    @property
    def available(self) -> int:
        """Bytes the container may use: the limit if set, since host RAM beyond it is unreachable."""
        return self.limit if self.limit is not None else self.mem_total

    def describe(self) -> str:
        """One human line for startup logs, so operators can see which budget memguard uses."""
        if self.limit is not None and self.cgroup is not None:
            return f"cgroup {self.cgroup.version} limit {format_size(self.limit)} ({self.cgroup.path})"
        text = f"no cgroup memory limit; host memory {format_size(self.mem_total)}"
        if self.cgroup is not None:
            text += f" (cgroup {self.cgroup.version} {self.cgroup.path})"
        return text


# --- low-level, never-raising readers -------------------------------------------------------


def _under_root(root: str, path: str) -> str:
    """Prefix an absolute system path with ``root`` so tests can use a fixture tree."""
    return os.path.join(root, path.lstrip("/"))


def _read_text(path: str) -> str | None:
    """Return a file's text, or None if it is missing or unreadable (never raise)."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(_MAX_READ)
    except (OSError, ValueError):
        return None


def _parse_int(text: str | None) -> int | None:
    """Parse a single integer, or None for anything else."""
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _read_int(path: str) -> int | None:
    """Read a file holding one integer, such as ``memory.current``."""
    return _parse_int(_read_text(path))


def _read_keyed(path: str) -> dict[str, int]:
    """Read a flat-keyed file (``memory.stat``, ``memory.events``) into a dict; skip bad lines."""
    values: dict[str, int] = {}
    text = _read_text(path)
    if text is None:
        return values
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        number = _parse_int(parts[1])
        if number is not None:
            values.setdefault(parts[0], number)
    return values


def _isfile(path: str) -> bool:
    try:
        return os.path.isfile(path)
    except (OSError, ValueError):
        return False


def _isdir(path: str) -> bool:
    try:
        return os.path.isdir(path)
    except (OSError, ValueError):
        return False


def _read_mem_total(root: str) -> int | None:
    """Host RAM from ``/proc/meminfo`` (kB), or None if it cannot be read."""
    text = _read_text(_under_root(root, "/proc/meminfo"))
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2:
                kib = _parse_int(parts[1])
                if kib is not None and kib > 0:
                    return kib * 1024
            return None
    return None


def _sysconf_mem_total() -> int:
    """Host RAM from sysconf, used only when ``/proc/meminfo`` is unreadable."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 0
    return total if total > 0 else 0


# --- locating the cgroup ----------------------------------------------------------------


def _proc_cgroup_paths(root: str) -> tuple[str | None, str | None]:
    """Return (v2 path, v1 memory path) from ``/proc/self/cgroup``."""
    text = _read_text(_under_root(root, "/proc/self/cgroup"))
    v2_path: str | None = None
    v1_path: str | None = None
    if text is None:
        return None, None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            if v2_path is None:
                v2_path = path
        elif "memory" in controllers.split(","):
            if v1_path is None:
                v1_path = path
    return v2_path, v1_path


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, and so on)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def _cgroup_mounts(root: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Return (v2 mounts, v1 memory mounts) as (mount root, mount point) from mountinfo."""
    text = _read_text(_under_root(root, "/proc/self/mountinfo"))
    v2: list[tuple[str, str]] = []
    v1: list[tuple[str, str]] = []
    if text is None:
        return v2, v1
    for line in text.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < separator + 2 or len(fields) < 5:
            continue
        mount_root = _unescape(fields[3])
        mount_point = _unescape(fields[4])
        fstype = fields[separator + 1]
        super_options = fields[separator + 3] if len(fields) > separator + 3 else ""
        if fstype == "cgroup2":
            v2.append((mount_root, mount_point))
        elif fstype == "cgroup" and "memory" in super_options.split(","):
            v1.append((mount_root, mount_point))
    return v2, v1


def _relative_to(path: str, base: str) -> str | None:
    """``path`` relative to ``base`` (both cgroup paths), or None if it lies outside it."""
    path = path.rstrip("/") or "/"
    base = base.rstrip("/") or "/"
    if base == "/":
        relative = path.lstrip("/")
    elif path == base:
        relative = ""
    elif path.startswith(base + "/"):
        relative = path[len(base) + 1 :]
    else:
        return None
    if ".." in relative.split("/"):
        return None
    return relative


def _resolve_dir(root: str, cgroup_path: str, mounts: list[tuple[str, str]]) -> str | None:
    """Turn a cgroup path into a directory, relative to the best-matching mount's root.

    Inside containers the mount root is usually the container's own cgroup, so the path from
    ``/proc/self/cgroup`` must be made relative to it or we would look for a directory that
    does not exist. When no directory exists, the mount point itself is the best guess.
    """
    candidates: list[tuple[int, str, str]] = []
    for mount_root, mount_point in mounts:
        relative = _relative_to(cgroup_path, mount_root)
        if relative is None:
            continue
        candidates.append((len(mount_root.rstrip("/")), mount_point, relative))
    # Longest matching mount root first: it is the most specific view of our cgroup.
    candidates.sort(key=lambda item: -item[0])
    for _, mount_point, relative in candidates:
        directory = _under_root(root, mount_point)
        if relative:
            directory = os.path.join(directory, relative)
        if _isdir(directory):
            return os.path.normpath(directory)
    if candidates:
        return os.path.normpath(_under_root(root, candidates[0][1]))
    if mounts:
        return os.path.normpath(_under_root(root, mounts[0][1]))
    return None


def _v2_mount_point_for(root: str, directory: str, mounts: list[tuple[str, str]]) -> str:
    """The mount point that contains ``directory``, bounding the walk up through ancestors."""
    best = directory
    best_length = -1
    for _, mount_point in mounts:
        prefix = os.path.normpath(_under_root(root, mount_point))
        if (directory == prefix or directory.startswith(prefix.rstrip("/") + "/")) and len(prefix) > best_length:
            best, best_length = prefix, len(prefix)
    return best


def find_memory_cgroup(root: str = ROOT) -> MemoryCgroup | None:
    """Locate this process's memory cgroup, preferring v2 only where v2 controls memory.

    Hybrid hosts mount cgroup2 (often at ``/sys/fs/cgroup/unified``) without the memory
    controller while memory stays on v1, so v2 counts only if its directory has
    ``memory.max``. Returns None when there is no memory cgroup to be found.
    """
    root = os.path.abspath(root)
    v2_path, v1_path = _proc_cgroup_paths(root)
    v2_mounts, v1_mounts = _cgroup_mounts(root)
    if v2_path is not None and v2_mounts:
        directory = _resolve_dir(root, v2_path, v2_mounts)
        if directory is not None and _isfile(os.path.join(directory, "memory.max")):
            return MemoryCgroup("v2", directory)
    if v1_path is not None and v1_mounts:
        directory = _resolve_dir(root, v1_path, v1_mounts)
        if directory is not None:
            return MemoryCgroup("v1", directory)
    return None


# --- limits and counters ----------------------------------------------------------------


def _v2_limit_value(text: str | None) -> int | None:
    """Parse ``memory.max``: ``max`` (or garbage, or 0) means no usable limit."""
    if text is None or text.strip() == "max":
        return None
    value = _parse_int(text)
    return value if value is not None and 0 < value < V1_UNLIMITED_THRESHOLD else None


def _v1_limit_value(value: int | None) -> int | None:
    """v1 spells "unlimited" as a huge number; treat those (and garbage) as no limit."""
    return value if value is not None and 0 < value < V1_UNLIMITED_THRESHOLD else None


def _min_limit(*limits: int | None) -> int | None:
    present = [limit for limit in limits if limit is not None]
    return min(present) if present else None


def _read_v2_limit(root: str, cgroup: MemoryCgroup) -> int | None:
    """The tightest ``memory.max`` from our cgroup up to the mount point.

    v2 has no ``hierarchical_memory_limit``; a parent's limit (say a systemd slice) binds the
    child just as much, so walk up, but never above the cgroup mount.
    """
    top = _v2_mount_point_for(root, cgroup.path, _cgroup_mounts(root)[0])
    directory = cgroup.path
    limit = _v2_limit_value(_read_text(os.path.join(directory, "memory.max")))
    while directory != top and directory.startswith(top.rstrip("/") + "/"):
        directory = os.path.dirname(directory)
        limit = _min_limit(limit, _v2_limit_value(_read_text(os.path.join(directory, "memory.max"))))
    return limit


def _read_v1_limit(cgroup: MemoryCgroup) -> int | None:
    """The smaller of ``memory.limit_in_bytes`` and the ancestors' ``hierarchical_memory_limit``."""
    own = _v1_limit_value(_read_int(os.path.join(cgroup.path, "memory.limit_in_bytes")))
    stat = _read_keyed(os.path.join(cgroup.path, "memory.stat"))
    hierarchical = _v1_limit_value(stat.get("hierarchical_memory_limit"))
    return _min_limit(own, hierarchical)


def read_container_memory(root: str = ROOT) -> ContainerMemory:
    """The memory budget of this container, clamped to host RAM; never raises.

    A limit above MemTotal can never be reached (the host runs out first), so it is clamped.
    """
    root = os.path.abspath(root)
    mem_total = _read_mem_total(root)
    if mem_total is None:
        mem_total = _sysconf_mem_total()
    cgroup = find_memory_cgroup(root)
    limit: int | None = None
    if cgroup is not None:
        limit = _read_v2_limit(root, cgroup) if cgroup.version == "v2" else _read_v1_limit(cgroup)
    if limit is not None and mem_total > 0:
        limit = min(limit, mem_total)
    return ContainerMemory(limit=limit, mem_total=mem_total, cgroup=cgroup)


def reread_limit(container: ContainerMemory, root: str = ROOT) -> ContainerMemory:
    """The same container with its limit read again (Kubernetes resizes a pod's memory in place):
    only the limit files of the cgroup already found, never /proc's cgroup and mount tables."""
    cgroup = container.cgroup
    if cgroup is None:
        return container
    root = os.path.abspath(root)
    limit = _read_v2_limit(root, cgroup) if cgroup.version == "v2" else _read_v1_limit(cgroup)
    if limit is not None and container.mem_total > 0:
        limit = min(limit, container.mem_total)
    return ContainerMemory(limit=limit, mem_total=container.mem_total, cgroup=cgroup)


def read_usage(cgroup: MemoryCgroup) -> int | None:
    """The cgroup's charged memory (``memory.current`` / ``memory.usage_in_bytes``), or None."""
    name = "memory.current" if cgroup.version == "v2" else "memory.usage_in_bytes"
    value = _read_int(os.path.join(cgroup.path, name))
    return value if value is not None and value >= 0 else None


def read_working_set(cgroup: MemoryCgroup) -> int | None:
    """Usage minus inactive file cache, as Kubernetes computes it for eviction and OOM decisions.

    Raw usage includes page cache the kernel reclaims before it OOM-kills, so it overstates
    pressure. If ``memory.stat`` lacks the inactive_file counter, usage is returned as is
    (as cAdvisor does); None only when usage itself is unknown.
    """
    usage = read_usage(cgroup)
    if usage is None:
        return None
    stat = _read_keyed(os.path.join(cgroup.path, "memory.stat"))
    key = "inactive_file" if cgroup.version == "v2" else "total_inactive_file"
    inactive = stat.get(key)
    if inactive is None or inactive < 0:
        return usage
    return max(usage - inactive, 0)


def read_oom_kill_count(cgroup: MemoryCgroup) -> int | None:
    """How many processes the OOM killer has killed in this cgroup, or None if not reported.

    A rising count means the limit is being hit despite memguard, which is worth logging.
    v2 reads ``memory.events``; v1 reads ``memory.oom_control`` (only newer kernels have it).
    """
    name = "memory.events" if cgroup.version == "v2" else "memory.oom_control"
    value = _read_keyed(os.path.join(cgroup.path, name)).get("oom_kill")
    return value if value is not None and value >= 0 else None
