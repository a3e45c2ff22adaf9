"""Start a retirement, and bound how long it drains.

gunicorn's master does not bound one worker's drain (only the heartbeat timeout eventually
SIGABRTs it) and uvicorn's shutdown waits without limit, so memguard does: a worker still
draining ``graceful_timeout`` + 1 s after its retirement began is made to exit.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..policy import Verdict
from ..shared.scoreboard import Scoreboard, State
from .retire import Retire

# How long past graceful_timeout the sampler waits before it ends a drain that will not finish.
DRAIN_MARGIN = 1.0
# Exit code of a worker whose drain overran: not 3 or 4, which make gunicorn's master halt.
DRAIN_OVERRUN_EXIT = 1


class Drain:
    def __init__(self, worker: Any, retire: Retire, log: Any, scoreboard: Scoreboard | None, slot: int | None) -> None:
        self.worker = worker
        self.retire = retire
        self.log = log
        self.scoreboard = scoreboard
        self.slot = slot
        self.started = 0.0  # monotonic; 0 until a retirement starts
        self._reason = ""

    def start(self, report: Callable[[], None]) -> None:
        """Report the retirement (``report``), mark the slot, and start the graceful stop."""
        report()
        if self.scoreboard is not None and self.slot is not None:
            self.scoreboard.retiring(self.slot, time.time(), self._reason)
        try:
            self.retire()
        except Exception as exc:  # noqa: BLE001
            self.log.error(
                "memguard: could not start a graceful stop of worker %s (%r); it keeps serving", os.getpid(), exc
            )

    def begin(self, verdict: Verdict, now: float) -> None:
        """Claim the retirement (under the guard's lock); ``start`` follows outside it."""
        self.started = now
        self._reason = verdict.reason

    def overran(self, margin: float = DRAIN_MARGIN) -> bool:
        return self.started > 0 and time.monotonic() > self.started + self.worker.cfg.graceful_timeout + margin

    def cut(self) -> None:
        """The drain outlived graceful_timeout + margin: exit now."""
        self.log.error(
            "memguard: worker pid=%s did not finish draining within graceful_timeout=%gs; exiting now "
            "(requests still in flight are cut off)",
            os.getpid(),
            self.worker.cfg.graceful_timeout,
        )
        self._set_state(State.OVERRAN)
        logging.shutdown()
        os._exit(DRAIN_OVERRUN_EXIT)

    def exited(self, requests: int) -> None:
        """gunicorn's exit path ran. A drain can outlive graceful_timeout and still end before the
        sampler's bound: gevent's worker cuts its own off (its loop checks once a second), gthread's
        can finish late."""
        overran = self.overran(margin=0.0)
        if overran:
            self.log.error(
                "memguard: worker pid=%s did not finish draining within graceful_timeout=%gs; it exits "
                "%.1fs into its retirement",
                os.getpid(),
                self.worker.cfg.graceful_timeout,
                time.monotonic() - self.started,
            )
        if self.scoreboard is not None and self.slot is not None:
            self.scoreboard.set_requests(self.slot, requests)  # the exit line's count, not the last sample's
        self._set_state(State.OVERRAN if overran else State.EXITED)

    def _set_state(self, state: State) -> None:
        if self.scoreboard is not None and self.slot is not None:
            self.scoreboard.set_state(self.slot, state)
