"""The log lines memguard writes: one per retirement, one per worker exit it can explain.

Lines are ``key=value`` so they grep and parse; sizes are in bytes next to a readable form.
"""

from __future__ import annotations

from .scoreboard import SlotView, State
from .units import format_size


def retirement_line(
    *, pid: int, age: float, requests: int, metric: str, value: int, limit: int, reason: str, detail: str
) -> str:
    return (
        f"memguard: retiring worker pid={pid} age={age:.1f}s requests={requests} "
        f"{metric}={value} ({format_size(value)}) limit={limit} ({format_size(limit)}) "
        f"reason={reason} ({detail})"
    )


def exit_line(pid: int, slot: SlotView | None, now: float) -> tuple[str, str]:
    """(level, message) describing how a worker ended, from what it left in its slot."""
    if slot is None or slot.pid != pid:
        return "debug", f"memguard: worker pid={pid} exited (no memguard record)"
    last = f"last {format_size(slot.value)} (rss {format_size(slot.rss)})" if slot.rss else "never sampled"
    if slot.retire_started:
        drained = now - slot.retire_started
        if slot.state is State.OVERRAN:
            return "error", (
                f"memguard: worker pid={pid} was made to exit {drained:.1f}s into its retirement "
                f"(reason={slot.reason}): its drain outlived graceful_timeout"
            )
        if slot.state is State.EXITED:
            return "info", (
                f"memguard: worker pid={pid} exited gracefully after retirement "
                f"reason={slot.reason} drain={drained:.1f}s requests={slot.requests}"
            )
        return "warning", (
            f"memguard: worker pid={pid} ended without a clean exit {drained:.1f}s into its retirement "
            f"(reason={slot.reason}); its drain overran graceful_timeout or it was killed; {last}"
        )
    if slot.state is State.EXITED:
        return "debug", f"memguard: worker pid={pid} exited; {last}"
    return "error", (
        f"memguard: worker pid={pid} died without exiting cleanly and with no retirement in progress; "
        f"{last}. If gunicorn reports SIGKILL for it, the kernel OOM killer is the likely cause: "
        f"lower MEMGUARD_MAX_MEMORY or set MEMGUARD_HARD_MAX_MEMORY below the container's limit"
    )
