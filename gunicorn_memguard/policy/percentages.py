"""Per-worker limits from percentages: pure arithmetic, resolved in the master.

``MEMGUARD_MAX_MEMORY=80%`` means 80 % of the memory available per worker: the container's
limit (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``/``hierarchical_memory_limit``,
clamped to MemTotal; host memory when there is none), minus the master's resident memory, divided
by the worker count. The master re-resolves it when TTIN/TTOU change the worker count and shares the result with the
workers (``shared/limits.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..units import Share, format_size

if TYPE_CHECKING:
    from ..probes.cgroup import ContainerMemory


@dataclass(frozen=True)
class Resolved:
    soft: int | None
    hard: int | None
    how: str  # one log line saying how percentages became bytes; "" if none were used


def per_worker(share: Share, available: int, master: int, workers: int) -> int:
    """``share`` of what is left for each worker once the master's own memory is set aside."""
    return int(share.fraction * max(available - master, 0) / max(workers, 1))


def resolve(
    soft: int | Share | None, hard: int | Share | None, container: ContainerMemory, master: int, workers: int
) -> Resolved:
    """Turn configured limits into per-worker bytes; sizes pass through unchanged."""
    shares = [x for x in (soft, hard) if isinstance(x, Share)]

    def to_bytes(value: int | Share | None) -> int | None:
        return per_worker(value, container.available, master, workers) if isinstance(value, Share) else value

    soft_b, hard_b = to_bytes(soft), to_bytes(hard)
    if not shares:
        return Resolved(soft_b, hard_b, "")
    per = max(container.available - master, 0) / max(workers, 1)
    source = (
        container.describe()
        if container.limit is not None
        else (f"{container.describe()} — no container limit found, so percentages are of host memory")
    )
    parts = [
        f"{name} {value} = {format_size(to_bytes(value) or 0)}"
        for name, value in (("limit", soft), ("hard_limit", hard))
        if isinstance(value, Share)
    ]
    how = (
        f"memguard: per-worker limits: {', '.join(parts)}; per worker: ({format_size(container.available)} "
        f"available - master {format_size(master)}) / {workers} workers = {format_size(per)}; available: {source}"
    )
    return Resolved(soft_b, hard_b, how)
