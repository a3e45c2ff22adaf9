"""Per-worker limits given as percentages, resolved to bytes in the master for the current worker
count, and shared with the workers (``shared/limits.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..policy.percentages import resolve
from ..probes.cgroup import ContainerMemory, read_container_memory
from ..probes.memory import own_rss
from ..units import format_size

if TYPE_CHECKING:
    from .runtime import Runtime


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
    if runtime.container is None:  # a few small files, once: shares need it, and so does the fit check
        runtime.container = read_container_memory()
        runtime.master_rss = own_rss()  # after preload_app, before the first fork
    container = runtime.container
    resolved = resolve(settings.max_memory, settings.hard_max_memory, container, runtime.master_rss, runtime.workers)
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
    if settings.max_total_memory is None:
        _warn_if_over_the_container(container, resolved.hard or resolved.soft, runtime, server.log)


def _warn_if_over_the_container(container: ContainerMemory, ceiling: int | None, runtime: Runtime, log: Any) -> None:
    """Workers that may each reach their ceiling, and together not fit the container: the kernel's
    OOM killer could act where memguard would not (each worker is within its own limit)."""
    if container.limit is None or not ceiling:
        return
    needed = ceiling * runtime.workers + runtime.master_rss
    if needed > container.limit:
        log.warning(
            "memguard: %d workers x their ceiling %s + the master's %s = %s, more than this container's %s: "
            "the kernel's OOM killer can act before memguard does; give each worker a share of the container "
            "(MEMGUARD_MAX_MEMORY=80%%) or set a server-wide budget (MEMGUARD_MAX_TOTAL_MEMORY=90%%)",
            runtime.workers, format_size(ceiling), format_size(runtime.master_rss), format_size(needed),
            format_size(container.limit),
        )  # fmt: skip
