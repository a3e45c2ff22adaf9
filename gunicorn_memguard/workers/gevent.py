"""``-k gunicorn_memguard.workers.GeventWorker``: gunicorn's gevent worker, guarded.

Over ``-k gevent`` with the hook module it adds what every memguard class adds (no config file
needed; survives a HUP reload), and a request clock on gevent's hub: while the limits are far,
requests end with gunicorn's own no-op ``post_request`` and a hub timer checks at the gate's
deadline (``worker/clock.py``); near them each request goes through the gate, as under the hook
module. The guard itself detects gevent's monkey-patching, samples from a real OS thread, and
retires any gevent worker through ``gunicorn_memguard.retire.GeventDrain``.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    import gevent
except ImportError as exc:
    raise ImportError(
        "gunicorn_memguard.workers.GeventWorker needs gevent: pip install 'gunicorn-memguard[gevent]'"
    ) from exc

from gunicorn.workers.ggevent import GeventWorker as _StockGeventWorker

from .. import hooks
from ..worker.clock import RequestClock
from .base import MemguardWorker


def _later(delay: float, callback: Callable[[], None]) -> object:
    """A greenlet of its own, not a bare hub timer: the check may retire the worker, which
    blocks (stops gevent's servers), and the hub must never block."""
    return gevent.spawn_later(delay, callback)


class GeventWorker(MemguardWorker, _StockGeventWorker):
    def run(self) -> None:
        guard = hooks.current_guard()  # post_worker_init ran before run()
        if guard is not None:
            switch = hooks.request_switch(self.cfg, guard.after_request)
            if switch is not None:

                def each(checked: bool) -> None:
                    # once retiring, post_request is GeventDrain's: it closes connections after their response
                    if guard.retiring is None:
                        switch(checked)

                RequestClock(guard.gate, _later, each, self.log).start()
        super().run()
