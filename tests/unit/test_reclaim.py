"""Reclaim before retiring (``worker/reclaim.py``): glibc heap given back to the kernel."""

from __future__ import annotations

import gc
import os

from gunicorn_memguard.worker.reclaim import Reclaimer

from .conftest import MiB


def test_reclaim_gives_freed_glibc_heap_back():
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [b"x" * (1024 + i % 1024) for i in range(64 * MiB // 1536)]
    survivors = blocks[::500]  # pin the heap so free() alone cannot shrink it
    del blocks
    gc.collect()
    before = rss()
    reclaimer = Reclaimer(interval=60)
    assert reclaimer.due(0)
    took = reclaimer.run(0)
    assert not reclaimer.due(59) and reclaimer.due(60)
    if reclaimer.how.endswith("malloc_trim"):
        assert before - rss() > 40 * MiB
    assert took < 5
    del survivors
