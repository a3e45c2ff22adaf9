"""The log lines memguard writes: one per retirement, one per worker exit it can explain.

Lines are ``key=value`` so they grep and parse; sizes are in bytes next to a readable form.
"""

from __future__ import annotations

import signal
from typing import NamedTuple

from ..shared.scoreboard import SlotView, State
from ..units import format_size


def retirement_line(
    *,
    pid: int,
    age: float,
    requests: int,
    metric: str,
    value: int,
    limit: int,
    reason: str,
    detail: str,
    dry_run: bool = False,
) -> str:
    action = "would retire (dry run)" if dry_run else "retiring"
    return (
        f"memguard: {action} worker pid={pid} age={age:.1f}s requests={requests} "
        f"{metric}={value} ({format_size(value)}) limit={limit} ({format_size(limit)}) "
        f"reason={reason} ({detail})"
    )


class Death(NamedTuple):
    """How the kernel says a worker ended, read in the master just before gunicorn reaps it."""

    signal: int | None  # the signal that ended it; None if it exited
    code: int | None  # its exit status, if it exited
    sent: int | None = None  # ``signal`` again if gunicorn's master sent it that signal


class ExitReport(NamedTuple):
    level: str
    message: str
    outcome: str  # machine key for metrics and the event log, one of OUTCOMES


OUTCOMES = (
    "graceful",
    "overran",
    "killed_while_retiring",
    "exited",
    "oom_killed",
    "sigkill",
    "signal",
    "died",
    "unknown",
)


# The signals that ask a worker to stop (gunicorn's master sends TERM for a graceful stop, QUIT for
# a quick one; INT reaches workers from a terminal's Ctrl-C): dying by one of them is not a fault.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGQUIT, signal.SIGINT})


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _killed_by(death: Death | None, oom_killed: bool | None) -> tuple[str, str]:
    """(outcome, phrase) for a worker that ended without a clean exit."""
    if death is None and oom_killed:  # its status was reaped before memguard could peek at it
        return "oom_killed", "was killed by the kernel OOM killer (its cgroup's oom_kill count rose; status unseen)"
    if death is None or death.signal is None:
        return "died", "died without exiting cleanly"
    if death.sent == death.signal:
        return _from_master(death.signal)
    if death.signal == signal.SIGKILL:
        if oom_killed:
            return "oom_killed", "was killed by the kernel OOM killer (its cgroup's oom_kill count rose)"
        why = "its cgroup's oom_kill count did not rise" if oom_killed is False else "no cgroup oom_kill count to check"
        return "sigkill", f"was killed by SIGKILL (cause unknown: {why})"
    return "signal", f"was killed by {signal_name(death.signal)}"


def _from_master(sig: int) -> tuple[str, str]:
    """gunicorn's master sent the signal that ended it: say so, and why the master does that."""
    why = {
        signal.SIGKILL: "it was still running graceful_timeout after a stop, or after --timeout's SIGABRT",
        signal.SIGABRT: "no heartbeat within --timeout",
    }.get(signal.Signals(sig), "")
    outcome = "sigkill" if sig == signal.SIGKILL else "signal"
    return outcome, f"was killed by {signal_name(sig)} from gunicorn's master" + (f" ({why})" if why else "")


def exit_report(
    pid: int, slot: SlotView | None, now: float, death: Death | None = None, oom_killed: bool | None = None
) -> ExitReport:
    """How a worker ended, from what it left in its slot, how the kernel says it died, and whether
    the cgroup's OOM-kill count rose (``oom_killed`` is None when there is no count to check)."""
    if slot is None or slot.pid != pid:
        return ExitReport("debug", f"memguard: worker pid={pid} exited (no memguard record)", "unknown")
    last = f"last {format_size(slot.value)} (rss {format_size(slot.rss)})" if slot.rss else "never sampled"
    if slot.retire_started:
        return _after_retirement(pid, slot, now - slot.retire_started, death, oom_killed, last)
    return _unretired(pid, slot, death, oom_killed, last)


def _after_retirement(
    pid: int, slot: SlotView, drained: float, death: Death | None, oom_killed: bool | None, last: str
) -> ExitReport:
    """A retired worker's end: graceful, overran, or killed while it drained."""
    if slot.state is State.OVERRAN:
        return ExitReport(
            "error",
            (
                f"memguard: worker pid={pid} was made to exit {drained:.1f}s into its retirement "
                f"(reason={slot.reason}): its drain outlived graceful_timeout"
            ),
            "overran",
        )
    # EXITED, or exit status 0 after a retirement began (its slot's state may have been overwritten)
    clean = death is not None and death.signal is None and death.code == 0
    if (slot.state is State.EXITED and (death is None or death.signal is None)) or clean:
        return ExitReport(
            "info",
            (
                f"memguard: worker pid={pid} exited gracefully after retirement "
                f"reason={slot.reason} drain={drained:.1f}s requests={slot.requests}"
            ),
            "graceful",
        )
    if death is not None and death.signal == signal.SIGTERM:  # stock uvicorn re-raises it after its shutdown
        return ExitReport(
            "info",
            (
                f"memguard: worker pid={pid} ended by SIGTERM after its own shutdown, following retirement "
                f"reason={slot.reason} drain={drained:.1f}s (stock uvicorn workers end this way)"
            ),
            "graceful",
        )
    outcome, how = _killed_by(death, oom_killed)
    if outcome == "died":
        how = "ended without a clean exit; its drain overran graceful_timeout or it was killed"
    # EXITED: its drain was over and gunicorn's exit path had run (a kill while the process ended)
    when = f"while exiting, {drained:.1f}s after" if slot.state is State.EXITED else f"{drained:.1f}s into"
    return ExitReport(
        "warning",
        f"memguard: worker pid={pid} {how} {when} its retirement (reason={slot.reason}); {last}",
        "killed_while_retiring",
    )


def _unretired(pid: int, slot: SlotView, death: Death | None, oom_killed: bool | None, last: str) -> ExitReport:
    """A worker that ended with no retirement in progress: a stop, or a fault to explain."""
    if slot.state is State.EXITED and (death is None or death.signal is None):
        return ExitReport("debug", f"memguard: worker pid={pid} exited; {last}", "exited")
    if death is not None and death.signal in STOP_SIGNALS:
        # how gunicorn's master stops a worker (shutdown, HUP, TTOU, USR2) or an operator does:
        # a stop, not a fault (stock uvicorn workers re-raise it after their shutdown and die by it)
        return ExitReport(
            "info",
            f"memguard: worker pid={pid} was stopped by {signal_name(death.signal)} with no retirement in progress",
            "signal",
        )
    outcome, how = _killed_by(death, oom_killed)
    if outcome == "died":
        return ExitReport(
            "error",
            (
                f"memguard: worker pid={pid} died without exiting cleanly and with no retirement in progress; "
                f"{last}. If gunicorn reports SIGKILL for it, the kernel OOM killer is the likely cause: "
                f"lower MEMGUARD_MAX_MEMORY or set MEMGUARD_HARD_MAX_MEMORY below the container's limit"
            ),
            outcome,
        )
    advice = (
        ": lower MEMGUARD_MAX_MEMORY or set MEMGUARD_HARD_MAX_MEMORY below the container's limit"
        if outcome == "oom_killed"
        else ""
    )
    level = "warning" if death is not None and death.sent else "error"  # gunicorn's own doing, said by it too
    message = f"memguard: worker pid={pid} {how} with no retirement in progress; {last}{advice}"
    return ExitReport(level, message, outcome)
