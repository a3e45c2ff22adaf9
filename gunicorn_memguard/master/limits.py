"""Per-worker limits given as percentages, resolved to bytes in the master for the current worker
count, and shared with the workers (``shared/limits.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..policy.percentages import resolve
from ..probes.cgroup import ContainerMemory, read_container_memory
from ..probes.memory import own_rss
from ..units import Share, format_size

if TYPE_CHECKING:
    from .runtime import Runtime

_NO_CONTAINER = ContainerMemory(limit=None, mem_total=0, cgroup=None)  # only byte limits: never read


def resolve_limits(runtime: Runtime, server: Any) -> None:
    """Resolve per-worker limits before the first fork and whenever the worker count changed
    (TTIN/TTOU); live workers pick the new values up from the shared limits."""
    settings, shared, coordinator = runtime.settings, runtime.shared, runtime.coordinator
    # a spawn-first raise of num_workers is not a new worker count
    workers = coordinator.wanted() if coordinator is not None else server.num_workers
    if shared is None or workers == runtime.workers:
        return
    first = runtime.workers == 0
    runtime.workers = workers
    if runtime.container is None and any(isinstance(x, Share) for x in (settings.max_memory, settings.hard_max_memory)):
        runtime.container = read_container_memory()
        runtime.master_rss = own_rss()  # after preload_app, before the first fork
    resolved = resolve(
        settings.max_memory,
        settings.hard_max_memory,
        runtime.container or _NO_CONTAINER,
        runtime.master_rss,
        runtime.workers,
    )
    shared.set_limits(resolved.soft, resolved.hard)
    if resolved.how:
        server.log.info("%s%s", resolved.how, "" if first else " (worker count changed)")
        if resolved.soft and resolved.hard and resolved.hard < resolved.soft:
            server.log.warning(
                "memguard: the hard limit (%s) resolved below the soft limit (%s): workers will be retired at "
                "once at the hard limit, never gracefully",
                format_size(resolved.hard),
                format_size(resolved.soft),
            )
