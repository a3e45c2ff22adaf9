"""The request gate: which requests end without a memory check, and what that can cost the bound.

The guard runs on this test process's real memory (a real statm probe); only the count of reads
is observed, by wrapping the probe's ``rss``."""

from __future__ import annotations

import time
import types

import pytest

from gunicorn_memguard.probes.memory import MemoryProbe
from gunicorn_memguard.settings import Settings
from gunicorn_memguard.worker.gate import MARGIN, MAX_GAP, MAX_RATE, MIN_STEP, UNLIMITED, RequestGate
from gunicorn_memguard.worker.guard import Guard

MiB = 2**20


def test_far_from_a_limit_the_gate_lets_headroom_over_twice_the_step_through():
    gate = RequestGate(lambda: None, types.SimpleNamespace(nr=0))
    gate.reopen(10.0, rss=100 * MiB, estimate=100 * MiB, requests=0, floor=200 * MiB)
    assert gate.left == 100 * MiB // (MARGIN * MIN_STEP)  # no growth seen yet: MIN_STEP assumed
    assert gate.until == 10.0 + 100 * MiB / MAX_RATE  # the time to grow 100 MiB at MAX_RATE (24 ms)
    gate.reopen(10.1, rss=110 * MiB, estimate=110 * MiB, requests=10, floor=200 * MiB)  # 1 MiB a request
    assert gate.step == MiB
    assert gate.left == 90 * MiB // (MARGIN * MiB) == 45
    assert gate.stop_at == 10 + 45


def test_requests_pass_until_the_workers_own_count_reaches_the_gates_stop():
    """The count condition reads the worker's request count (gunicorn's ``nr``, incremented as each
    request starts): after a check at 10 requests with room for 45, requests 11–54 pass and the
    55th is checked (the clock is set far off here, so only the count gates)."""
    worker = types.SimpleNamespace(nr=10)
    checks: list[int] = []
    gate = RequestGate(lambda: checks.append(worker.nr), worker)
    gate.step = MiB
    gate.reopen(time.monotonic(), rss=110 * MiB, estimate=110 * MiB, requests=10, floor=200 * MiB)
    gate.until = time.monotonic() + 3600
    for count in range(11, 56):
        worker.nr = count
        gate.request_ended(worker, None, None, None)
    assert checks == [55]


def test_the_step_is_the_largest_seen_and_shrinking_never_lowers_it():
    gate = RequestGate(lambda: None, types.SimpleNamespace(nr=0))
    gate.reopen(0.0, rss=100 * MiB, estimate=100 * MiB, requests=0, floor=200 * MiB)
    gate.reopen(0.1, rss=104 * MiB, estimate=104 * MiB, requests=2, floor=200 * MiB)
    gate.reopen(0.2, rss=90 * MiB, estimate=90 * MiB, requests=3, floor=200 * MiB)
    assert gate.step == 2 * MiB


@pytest.mark.parametrize("estimate", [200 * MiB - MARGIN * MIN_STEP + 1, 200 * MiB, 300 * MiB])
def test_near_or_over_a_limit_every_request_is_checked(estimate):
    gate = RequestGate(lambda: None, types.SimpleNamespace(nr=0))
    gate.reopen(0.0, rss=estimate, estimate=estimate, requests=0, floor=200 * MiB)
    assert gate.left == 0


def test_without_an_absolute_limit_only_the_clock_gates():
    gate = RequestGate(lambda: None, types.SimpleNamespace(nr=0))
    gate.reopen(5.0, rss=MiB, estimate=MiB, requests=0, floor=None)
    assert (gate.left, gate.until) == (UNLIMITED, 5.0 + MAX_GAP)


def test_far_away_the_clock_waits_at_most_max_gap():
    gate = RequestGate(lambda: None, types.SimpleNamespace(nr=0))
    gate.reopen(5.0, rss=MiB, estimate=MiB, requests=0, floor=64 * 2**30)
    assert gate.until == 5.0 + MAX_GAP


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


def test_far_from_the_limits_a_request_reads_memory_at_most_once_per_max_gap():
    guard, worker, reads = _guard(Settings(max_memory=64 * 2**30, metric="rss"))
    started = time.monotonic()
    for _ in range(20_000):
        worker.nr += 1
        guard.after_request()
    elapsed = time.monotonic() - started
    # one read for the first request, then one each time MAX_GAP has passed (64 GiB of headroom:
    # the count never gates here)
    assert 1 <= len(reads) <= 1 + elapsed / MAX_GAP + 1, (len(reads), elapsed)


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


def test_a_sudden_leak_is_checked_before_it_can_reach_the_limit():
    """A worker that has not grown yet meets requests that each keep 1 MiB (allocated and touched:
    ~1 GiB/s here, below MAX_RATE). The gate first assumes MIN_STEP per request, so requests pass
    unchecked, but never longer than the worker needs to reach its limit at MAX_RATE: it is checked
    before it gets there, learns the step, and near the limit checks each request. So it goes past
    its limit by at most the one request after its last check under it — the bound of a check after
    every request."""
    rss = MemoryProbe().rss()
    limit = rss + 64 * MiB
    guard, worker, reads = _guard(Settings(max_memory=limit, jitter=0.0, hard_max_memory=2**40, metric="rss"))
    guard.after_request()  # the first check: far from the limit
    kept: list[bytearray] = []
    unchecked = 0
    while guard.retiring is None and len(kept) < 200:
        chunk = bytearray(MiB)
        for page in range(0, MiB, 4096):
            chunk[page] = 1  # touched: resident
        kept.append(chunk)
        worker.nr += 1
        seen = len(reads)
        guard.after_request()
        unchecked += len(reads) == seen
    assert guard.retiring is not None, "never retired"  # 200 MiB kept against 64 MiB of headroom
    assert unchecked > 0  # the gate did let requests through while the limit was far
    overshoot = guard.retiring.value - limit
    # one request (1 MiB and a page of bytearray header) past the last check under the limit, plus up
    # to one 1 MiB arena of Python's allocator for this loop's own list
    assert overshoot <= (MiB + 4096) + MiB, overshoot / MiB
