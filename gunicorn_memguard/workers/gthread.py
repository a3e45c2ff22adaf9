"""``-k gunicorn_memguard.workers.ThreadWorker``: gunicorn's gthread worker, guarded.

On gunicorn < 24 the retirement drains without resetting accepted connections (see
``gunicorn_memguard.retire.LegacyThreadDrain``).
"""

from gunicorn.workers.gthread import ThreadWorker as _StockThreadWorker

from .base import MemguardWorker


class ThreadWorker(MemguardWorker, _StockThreadWorker):
    pass
