"""What the policy speaks in: a sample of memory, a verdict, and the monitor protocol.

Monitors each judge one concern (absolute limits, growth rate) and the policy asks them in order,
the most urgent first, like GitLab's memory watchdog: monitors judge, handlers act.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class Action(enum.Enum):
    KEEP = "keep"
    RETIRE = "retire"  # graceful; may wait its turn
    RETIRE_NOW = "retire_now"  # past the ceiling: graceful stop at once, no waiting


class Reason(str, enum.Enum):
    """Why a worker retires: one type for every reason the code, the log lines and the metrics use.

    The order is fixed: the scoreboard keeps a worker's dry-run reasons as bits of it."""

    HARD_LIMIT = "hard_limit"  # past MEMGUARD_HARD_MAX_MEMORY: the ceiling a user set explicitly
    SOFT_LIMIT = "soft_limit"  # past the worker's jittered MEMGUARD_MAX_MEMORY
    GROWTH_RATE = "growth_rate"
    CEILING = "ceiling"  # past MEMGUARD_MAX_MEMORY itself (before jitter), with no hard limit set
    TOTAL_MEMORY = "total_memory"  # the server-wide budget took the largest worker
    SPARE = "spare"  # a replacement started ahead of time whose worker no longer needed it

    def __str__(self) -> str:
        return self.value


class Sample(NamedTuple):
    """One reading of the enforced metric (a NamedTuple: one is made per request).

    ``exact`` is False when ``value`` is only an upper bound (RSS standing in for USS/PSS):
    a bound below a limit proves the metric is below it, but trend monitors must not use it.
    """

    time: float  # seconds on a monotonic clock
    value: int  # bytes
    exact: bool = True


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""  # short machine key, e.g. "soft_limit"
    detail: str = ""  # the figures behind it, for the log line
    value: int = 0
    limit: int = 0

    @property
    def retires(self) -> bool:
        return self.action is not Action.KEEP


KEEP = Verdict(Action.KEEP)

# Every reason's key, in the fixed order of ``Reason``.
REASONS = tuple(reason.value for reason in Reason)
# The reasons a worker's own policy gives (the master gives TOTAL_MEMORY).
GRACEFUL = (Reason.SOFT_LIMIT.value, Reason.GROWTH_RATE.value)


class Monitor(Protocol):
    limit: int

    def observe(self, sample: Sample) -> Verdict | None:
        """Return a verdict to act on, or None to defer to the other monitors."""

    def retarget(self, soft: int | None, ceiling: int | None) -> None:
        """Take re-resolved limits (a percentage limit after the worker count changed)."""

    def wants_sample(self, now: float) -> bool:
        """True when the monitor needs an exact sample now, even far below the limits."""

    @property
    def rate(self) -> float | None:
        """A measured growth rate in bytes/s, for the metrics; None if the monitor has none."""
