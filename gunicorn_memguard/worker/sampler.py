"""The guard's sampler: a real OS thread, and how often it wakes.

In a gevent worker a patched ``threading.Thread`` is a greenlet, which never runs while a handler
is CPU-bound, so the sampler takes the unpatched original there: a worker stuck in a long request
is still measured. Each wake-up of an idle sampler costs a busy worker ~140 µs of GIL hand-offs,
about 0.015 % at the default 1 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from . import native

# While waiting for the master's go-ahead, how often the sampler looks for it (an 8-byte read).
GRANT_POLL = 0.05


def start_os_thread(target: Callable[[], None]) -> None:
    if native.is_monkey_patched():
        native.start_thread(target)
    else:
        threading.Thread(target=target, name="memguard-sampler", daemon=True).start()


class Cadence:
    """Sample once per ``interval``; while a turn is near, wake every GRANT_POLL to look for it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0

    def wait(self, polling: bool) -> float:
        return GRANT_POLL if polling else self.interval

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True
