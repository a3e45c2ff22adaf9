"""``-k gunicorn_memguard.workers.GeventWorker``: gunicorn's gevent worker, guarded.

Over ``-k gevent`` with the hook module it adds only what every memguard class adds (no config
file needed; survives a HUP reload): the guard itself detects gevent's monkey-patching, samples
from a real OS thread, and retires any gevent worker through ``gunicorn_memguard.retire.GeventDrain``.
"""

try:
    import gevent  # noqa: F401 - only to turn a missing extra into a clear error
except ImportError as exc:
    raise ImportError(
        "gunicorn_memguard.workers.GeventWorker needs gevent: pip install 'gunicorn-memguard[gevent]'"
    ) from exc

from gunicorn.workers.ggevent import GeventWorker as _StockGeventWorker

from .base import MemguardWorker


class GeventWorker(MemguardWorker, _StockGeventWorker):
    pass
