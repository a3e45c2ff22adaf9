"""Master-side running totals behind the Prometheus counters.

A live worker's retirement (or dry-run "would retire") is read from its scoreboard slot; when
the master reaps it, ``fold`` adds the slot to the totals and the caller frees the slot, under
the same lock a scrape takes, so a counter never counts a worker twice or goes down. The lock is
re-entrant because on gunicorn 22/23 the master reaps inside its SIGCHLD handler, which can
interrupt itself.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from ..shared.scoreboard import SlotView, decode_reasons


class Totals(NamedTuple):
    retirements: Counter[str]
    would_retire: Counter[str]
    exits: Counter[str]
    reclaimed: int  # bytes


def _contributions(view: SlotView) -> tuple[list[str], list[str]]:
    retired = [view.reason] if view.retire_started and view.reason else []
    return retired, decode_reasons(view.would_retire)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._totals = Totals(Counter(), Counter(), Counter(), 0)

    def fold(self, view: SlotView, outcome: str) -> None:
        """A worker was reaped: keep what its slot counted, and how it ended. Hold ``lock``."""
        retired, would = _contributions(view)
        self._totals.retirements.update(retired)
        self._totals.would_retire.update(would)
        self._totals.exits[outcome] += 1
        self._totals = self._totals._replace(reclaimed=self._totals.reclaimed + view.reclaimed)

    def totals(self, live: Iterable[SlotView]) -> Totals:
        """The counters now: reaped workers plus the live ``slots``. Hold ``lock``."""
        live = list(live)
        result = Totals(
            Counter(self._totals.retirements),
            Counter(self._totals.would_retire),
            Counter(self._totals.exits),
            self._totals.reclaimed + sum(view.reclaimed for view in live),
        )
        for view in live:
            retired, would = _contributions(view)
            result.retirements.update(retired)
            result.would_retire.update(would)
        return result
