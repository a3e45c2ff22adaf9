"""``-k gunicorn_memguard.workers.SyncWorker``: gunicorn's sync worker, guarded.

gunicorn swaps any worker class named ``...SyncWorker`` for its stock gthread worker when
``--threads`` > 1, before this module is ever imported; use ``ThreadWorker`` with threads.
"""

from gunicorn.workers.sync import SyncWorker as _StockSyncWorker

from .base import MemguardWorker


class SyncWorker(MemguardWorker, _StockSyncWorker):
    pass
