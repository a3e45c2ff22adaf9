"""Per-worker limits given as percentages, resolved to bytes in the master for the current worker
count, and shared with the workers (``shared/limits.py``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..policy.percentages import resolve
from ..probes.cgroup import ContainerMemory, read_container_memory, reread_limit
from ..probes.memory import own_rss
from ..report.telemetry import Telemetry
from ..units import format_size

if TYPE_CHECKING:
    from .runtime import Runtime


def resolve_limits(runtime: Runtime, server: Any) -> None:
    """Resolve per-worker limits before the first fork and whenever the worker count changed
    (TTIN/TTOU); live workers pick the new values up from the shared limits."""
    coordinator = runtime.coordinator
    # a spawn-first raise of num_workers is not a new worker count
    workers = coordinator.wanted() if coordinator is not None else server.num_workers
    if runtime.shared is None or workers == runtime.workers:
        return
    first = runtime.workers == 0
    runtime.workers = workers
    if runtime.container is None:  # a few small files, once: shares need it, and so does the fit check
        runtime.container = read_container_memory()
        runtime.master_rss = own_rss()  # after preload_app, before the first fork
    _resolve(runtime, server, "" if first else " (worker count changed)")


def follow_container(runtime: Runtime, server: Any, now: float) -> None:
    """Kubernetes (1.35) resizes a pod's memory limit in place, lower than what is in use too: once
    every MEMGUARD_CHECK_INTERVAL the master re-reads the limit (its own cgroup's limit files only,
    ~10 us), and on a change resolves the percentage limits and the server-wide budget again and
    says so. Running workers take the new limits at their next timer check."""
    container = runtime.container
    if container is None or container.cgroup is None or now < runtime.next_container_read:
        return
    runtime.next_container_read = now + runtime.settings.check_interval
    latest = reread_limit(container)
    if latest.limit == container.limit:
        return
    runtime.container = latest
    server.log.warning(
        "memguard: the container's memory limit changed from %s to %s",
        _show(container.limit), _show(latest.limit),
    )  # fmt: skip
    coordinator = runtime.coordinator
    if coordinator is not None:
        coordinator.room.follow(latest)
        if coordinator.room.total_budget is not None:
            server.log.warning("memguard: server-wide budget now %s", format_size(coordinator.room.total_budget))
    _resolve(runtime, server, " (container limit changed)")


def _show(limit: int | None) -> str:
    return "none" if limit is None else format_size(limit)


def _resolve(runtime: Runtime, server: Any, why: str) -> None:
    settings, shared, container = runtime.settings, runtime.shared, runtime.container
    assert shared is not None and container is not None
    resolved = resolve(settings.max_memory, settings.hard_max_memory, container, runtime.master_rss, runtime.workers)
    shared.set_limits(resolved.soft, resolved.hard)
    budget = runtime.coordinator.room.total_budget if runtime.coordinator is not None else None
    shared.set_memory(container.limit, budget)
    Telemetry(runtime.events, server.log, server.cfg).limits(
        pid=os.getpid(), soft=resolved.soft, hard=resolved.hard, workers=runtime.workers,
        available=container.available, master=runtime.master_rss,
    )  # fmt: skip
    if resolved.how:
        server.log.info("%s%s", resolved.how, why)
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
