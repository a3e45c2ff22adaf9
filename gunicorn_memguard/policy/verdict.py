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
    RETIRE_NOW = "retire_now"  # past the hard limit: graceful stop at once, no waiting


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

# Every Verdict.reason, in a fixed order: the scoreboard keeps a worker's dry-run reasons as bits.
REASONS = ("hard_limit", "soft_limit", "growth_rate")


class Monitor(Protocol):
    def observe(self, sample: Sample) -> Verdict | None:
        """Return a verdict to act on, or None to defer to the other monitors."""
