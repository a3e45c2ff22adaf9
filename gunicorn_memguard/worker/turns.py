"""The worker's side of coordination with the master, through its scoreboard slot.

Over its soft limit a worker asks for a turn (state WAITING) and keeps serving until the master
grants it (GRANTED). Growing fast toward its soft limit, it tells the master when it will get
there (``due``) so that the replacement is started that long before. Every change wakes the
master with a SIGCHLD, which gunicorn's arbiter turns into a pass of its loop at once (otherwise
within 1 s); the arbiter's ``waitpid`` then finds no child, so the signal is harmless.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from ..policy import Action, Verdict
from ..policy.forecast import Forecast
from ..shared.scoreboard import Scoreboard, State
from ..units import format_size

# Tell the master a worker is due this many replacement boot times ahead (a boot varies), plus one
# poll of the sampler.
SPARE_LEAD = 2.0
LEAD_SLACK = 0.05
WAIT_LINE = "serving on until the master gives it a turn to retire"


class Turns:
    def __init__(self, worker: Any, scoreboard: Scoreboard, slot: int, metric: str) -> None:
        self.worker = worker
        self.scoreboard = scoreboard
        self.slot = slot
        self.metric = metric
        self.waiting: Verdict | None = None
        self.due = 0.0  # what this worker last told the master, wall-clock

    def wait(self, verdict: Verdict) -> bool:
        """Ask for a turn; True the first time (the caller logs it)."""
        first = self.waiting is None
        self.waiting = verdict
        # Only the first time, and not over a grant: the master owns the state from here on.
        if first and self.scoreboard.state(self.slot) is not State.GRANTED:
            self.scoreboard.waiting(self.slot, verdict.value, verdict.reason)
            self.wake_master()
        return first

    def granted(self) -> bool:
        return self.scoreboard.state(self.slot) is State.GRANTED

    def granted_verdict(self, limit: int) -> Verdict:
        """The verdict to retire on once granted: the worker's own, or the master's call."""
        if self.waiting is not None:
            return self.waiting
        view = self.scoreboard.read(self.slot)
        return Verdict(
            Action.RETIRE, view.reason, f"the master's call, {self.metric} {format_size(view.value)}", view.value, limit
        )

    def forecast(self, forecast: Forecast, value: int, limit: int, ready: float) -> None:
        """Predictive spawn-first: tell the master when this worker will reach its soft limit if that
        is within a few replacement boot times (``ready``), so its replacement is ready by then."""
        if self.due == 0.0 and (value < limit // 2 or value >= limit):
            return  # far away, and the request path stays cheap; or over already: it asks for a turn
        eta = forecast.eta(value, limit)
        self.expect(eta if ready > 0 and eta <= SPARE_LEAD * ready + LEAD_SLACK else None)

    def expect(self, eta: float | None) -> None:
        """Say when this worker will reach its soft limit (None: not soon). The master is woken
        only when that first becomes known, not on every update."""
        due = time.time() + eta if eta is not None else 0.0
        if due == 0.0 and self.due == 0.0:
            return
        first = self.due == 0.0
        self.due = due
        self.scoreboard.set_due(self.slot, due)
        if first:
            self.wake_master()

    def wake_master(self) -> None:
        try:
            if os.getppid() == self.worker.ppid:
                os.kill(self.worker.ppid, signal.SIGCHLD)
        except (OSError, AttributeError):
            pass
