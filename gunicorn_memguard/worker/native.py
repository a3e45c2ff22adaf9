"""Real OS threads and locks, even in a gevent worker.

Under gevent's monkey-patching ``threading.Thread`` is a greenlet, which never runs while a
handler is CPU-bound, and ``threading.Lock``/``Event`` are greenlet primitives that must not be
shared with another OS thread. The guard's sampler must see a worker stuck in a long request, so it
takes the unpatched originals. gevent is never imported here: if it is not loaded, nothing is
patched.
"""

from __future__ import annotations

import _thread
import sys
from collections.abc import Callable
from typing import Any


def is_monkey_patched() -> bool:
    """True in a process whose ``threading`` gevent has patched (a gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def _original(name: str) -> Any:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original("_thread", name)  # the saved original if patched, else the current
    return getattr(_thread, name)


def start_thread(target: Callable[[], None]) -> None:
    """Run ``target`` on a new OS thread. Like a daemon thread it does not hold up interpreter exit."""
    _original("start_new_thread")(target, ())


def allocate_lock() -> Any:
    return _original("allocate_lock")()


class StopFlag:
    """``threading.Event`` reduced to set/wait, built on an unpatched lock: the lock is held while
    the flag is clear, so ``wait`` is one timed acquire."""

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True as soon as the flag is set."""
        if not self._lock.acquire(True, timeout):
            return False
        self.set()  # leave it set for the next wait
        return True
