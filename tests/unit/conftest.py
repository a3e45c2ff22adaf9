"""What several unit test modules share: sizes, cgroup fixture trees, a logger that records."""

from __future__ import annotations

from pathlib import Path

MiB, GiB = 2**20, 2**30

MEMINFO_KB = 16 * 1024 * 1024  # 16 GiB host
MEMINFO = f"MemTotal:       {MEMINFO_KB} kB\nMemFree:        1234 kB\n"
V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MEMORY_MOUNT = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n"
V1_CPU_MOUNT = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
HYBRID_UNIFIED_MOUNT = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
PROC_MOUNT = "22 1 0:20 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n"


def make_tree(tmp_path: Path, files: dict[str, str]) -> str:
    """Write ``files`` (absolute-looking paths -> content) under tmp_path; return it as root."""
    for name, content in files.items():
        target = tmp_path / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return str(tmp_path)


class Lines:
    """Stands in for gunicorn's logger where only what memguard says matters: (level, text)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def _record(self, level: str, msg: str, args: tuple[object, ...]) -> None:
        self.lines.append((level, msg % args if args else msg))

    def info(self, msg: str, *args: object) -> None:
        self._record("info", msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._record("warning", msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._record("error", msg, args)

    def exception(self, msg: str, *args: object) -> None:
        self._record("exception", msg, args)

    def text(self, level: str | None = None) -> str:
        return "\n".join(line for lv, line in self.lines if level in (None, lv))
