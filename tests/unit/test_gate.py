"""The request gate: which requests end without a memory check, and what that can cost the bound.

The guard runs on this test process's real memory (a real statm probe); only the count of reads
is observed, by wrapping the probe's ``rss``."""

from __future__ import annotations

import time
import types

import pytest

from gunicorn_memguard.probes.memory import MemoryProbe
from gunicorn_memguard.settings import Settings
from gunicorn_memguard.worker.gate import GAP, MARGIN, MIN_STEP, UNLIMITED, RequestGate
from gunicorn_memguard.worker.guard import Guard

MiB = 2**20


def test_far_from_a_limit_the_gate_lets_headroom_over_twice_the_step_through():
    gate = RequestGate()
    gate.reopen(10.0, rss=100 * MiB, estimate=100 * MiB, requests=0, floor=200 * MiB)
    assert gate.left == 100 * MiB // (MARGIN * MIN_STEP)  # no growth seen yet: MIN_STEP assumed
    assert gate.until == 10.0 + GAP
    gate.reopen(10.1, rss=110 * MiB, estimate=110 * MiB, requests=10, floor=200 * MiB)  # 1 MiB a request
    assert gate.step == MiB
    assert gate.left == 90 * MiB // (MARGIN * MiB) == 45


def test_the_step_is_the_largest_seen_and_shrinking_never_lowers_it():
    gate = RequestGate()
    gate.reopen(0.0, rss=100 * MiB, estimate=100 * MiB, requests=0, floor=200 * MiB)
    gate.reopen(0.1, rss=104 * MiB, estimate=104 * MiB, requests=2, floor=200 * MiB)
    gate.reopen(0.2, rss=90 * MiB, estimate=90 * MiB, requests=3, floor=200 * MiB)
    assert gate.step == 2 * MiB


@pytest.mark.parametrize("estimate", [200 * MiB - MARGIN * MIN_STEP + 1, 200 * MiB, 300 * MiB])
def test_near_or_over_a_limit_every_request_is_checked(estimate):
    gate = RequestGate()
    gate.reopen(0.0, rss=estimate, estimate=estimate, requests=0, floor=200 * MiB)
    assert gate.left == 0


def test_without_an_absolute_limit_only_the_clock_gates():
    gate = RequestGate()
    gate.reopen(5.0, rss=MiB, estimate=MiB, requests=0, floor=None)
    assert (gate.left, gate.until) == (UNLIMITED, 5.0 + GAP)


def _guard(settings: Settings) -> tuple[Guard, types.SimpleNamespace, list[int]]:
    worker = types.SimpleNamespace(nr=0, cfg=types.SimpleNamespace(graceful_timeout=30))
    log = types.SimpleNamespace(info=lambda *a: None, warning=lambda *a: None, error=lambda *a: None)
    guard = Guard(worker, settings, lambda: None, log, None, None, start_thread=lambda target: None)
    reads: list[int] = []
    probe: MemoryProbe = guard.reader.probe
    real_rss = probe.rss

    def counted() -> int:
        value = real_rss()
        reads.append(value)
        return value

    probe.rss = counted  # type: ignore[method-assign]
    return guard, worker, reads


def test_far_from_the_limits_a_request_reads_memory_at_most_once_per_gap():
    guard, worker, reads = _guard(Settings(max_memory=64 * 2**30, metric="rss"))
    started = time.monotonic()
    for _ in range(20_000):
        worker.nr += 1
        guard.after_request()
    elapsed = time.monotonic() - started
    # one read for the first request, then one each time GAP has passed (64 GiB of headroom: the
    # count never gates here)
    assert 1 <= len(reads) <= 1 + elapsed / GAP + 1, (len(reads), elapsed)


def test_near_the_limit_every_request_reads_memory():
    rss = MemoryProbe().rss()
    # within 2 × MIN_STEP of the limit (and no growth is enough to leave it): nothing passes unchecked
    guard, worker, reads = _guard(Settings(max_memory=rss + MIN_STEP, jitter=0.0, metric="rss"))
    for _ in range(200):
        worker.nr += 1
        guard.after_request()
        if guard.retiring is not None:
            break
    assert len(reads) == worker.nr


def test_a_sudden_leak_is_caught_within_one_gap_of_its_start():
    """A worker that has not grown yet meets requests that each keep 1 MiB: the gate assumes
    MIN_STEP, so requests pass unchecked, but none more than GAP after the last check. So the
    overshoot past the limit is at most the requests that end within one GAP of the last check,
    plus the one that is checked."""
    rss = MemoryProbe().rss()
    limit = rss + 64 * MiB
    guard, worker, reads = _guard(Settings(max_memory=limit, jitter=0.0, hard_max_memory=2**40, metric="rss"))
    guard.after_request()  # the first check: far from the limit
    first = time.monotonic()
    kept, ended = [], []
    while guard.retiring is None and len(kept) < 200:
        chunk = bytearray(MiB)
        for page in range(0, MiB, 4096):
            chunk[page] = 1  # touched: resident
        kept.append(chunk)
        worker.nr += 1
        seen = len(reads)
        guard.after_request()
        ended.append((time.monotonic(), len(reads) > seen))
    assert guard.retiring is not None, "never retired"  # without the clock, 512 requests could pass unchecked
    last_check = first
    for at, checked in ended:
        assert checked or at - last_check <= GAP, f"a request ended unchecked {at - last_check:.4f}s after a check"
        last_check = at if checked else last_check
    *_, (previous, _), (final, _) = [(at, c) for at, c in ended if c] or [(first, True), (first, True)]
    since_previous = sum(1 for at, _ in ended if previous < at <= final)
    overshoot = guard.retiring.value - limit
    # The previous check saw the worker under its limit; since, each request kept 1 MiB (and a page
    # of bytearray header), plus up to one 1 MiB arena of Python's allocator for this loop's own lists.
    assert overshoot <= since_previous * (MiB + 4096) + MiB, overshoot / MiB
