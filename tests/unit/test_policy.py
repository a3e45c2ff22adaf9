"""The pure policy on synthetic traces: no gunicorn, no clock, no /proc."""

import random

from gunicorn_memguard.policy import Action, Sample, build_policy, draw_limit

MiB = 2**20


def policy(soft=100 * MiB, hard=200 * MiB, jitter=0.0, min_lifetime=0.0, seed=1):
    """By default a hard limit far above the soft one, so the soft limit's own rules show."""
    return build_policy(
        metric="uss", soft=soft, hard=hard, jitter=jitter, min_lifetime=min_lifetime, born=0.0, rng=random.Random(seed)
    )


def run(pol, trace, step=1.0, exact=True):
    """Feed (time, MiB) samples; return the first (index, verdict) that retires, else None."""
    for i, mib in enumerate(trace):
        verdict = pol.judge(Sample(i * step + 100, int(mib * MiB), exact))
        if verdict.retires:
            return i, verdict
    return None


def test_below_the_limit_is_kept_forever():
    pol, _ = policy()
    assert run(pol, [50 + (i % 7) for i in range(10_000)]) is None


def test_a_worker_above_the_limit_is_retired_with_figures():
    pol, _ = policy()
    index, verdict = run(pol, [90, 95, 99, 101, 102, 103])
    assert index == 4  # two consecutive samples over the limit
    assert verdict.action is Action.RETIRE and verdict.reason == "soft_limit"
    assert verdict.value == 102 * MiB and verdict.limit == 100 * MiB
    assert "uss 102.0 MiB > limit 100.0 MiB" in verdict.detail


def test_a_lone_spike_at_the_boundary_is_ignored():
    pol, _ = policy()
    assert run(pol, [99, 100, 101, 99, 100, 140, 98, 100] * 50) is None


def test_the_exact_limit_is_not_over_it():
    pol, _ = policy()
    assert run(pol, [100] * 100) is None


def test_hard_limit_retires_at_once_even_when_young():
    pol, _ = policy(hard=150 * MiB, min_lifetime=3600)
    index, verdict = run(pol, [90, 120, 130, 151])
    assert index == 3 and verdict.action is Action.RETIRE_NOW and verdict.reason == "hard_limit"


def test_min_lifetime_defers_the_soft_limit_only():
    pol, _ = policy(min_lifetime=60)
    # samples at t=100.. with born=0 are all older than 60 s: make a young policy instead
    young, _ = build_policy(
        metric="rss", soft=100 * MiB, hard=200 * MiB, jitter=0.0, min_lifetime=60, born=100.0, rng=random.Random(1)
    )
    index, verdict = run(young, [150] * 120)
    assert index == 60 and verdict.reason == "soft_limit"  # first sample at age >= 60 s
    assert run(pol, [150, 150])[0] == 1


def test_upper_bounds_below_the_limit_reset_the_strikes():
    pol, _ = policy()
    assert not pol.judge(Sample(0, 101 * MiB)).retires
    assert not pol.judge(Sample(1, 50 * MiB, exact=False)).retires
    assert not pol.judge(Sample(2, 101 * MiB)).retires
    assert pol.judge(Sample(3, 101 * MiB)).retires


def test_clears_is_the_lowest_limit():
    pol, effective = policy(soft=100 * MiB, hard=120 * MiB)
    assert pol.clears(100 * MiB) and not pol.clears(100 * MiB + 1)
    pol, _ = build_policy(metric="rss", soft=None, hard=None, jitter=0.1, min_lifetime=0, born=0, rng=random.Random(1))
    assert pol.clears(10**15) and not pol.judge(Sample(1, 10**15)).retires


def test_jitter_spreads_limits_below_the_configured_one():
    rng = random.Random(42)
    draws = [draw_limit(1000 * MiB, 0.10, rng) for _ in range(10_000)]
    assert max(draws) <= 1000 * MiB and min(draws) >= 900 * MiB
    # spread over the whole band, roughly uniformly: every 10 MiB bucket gets a share
    buckets = {int((1000 * MiB - d) // (10 * MiB)) for d in draws}
    assert buckets == set(range(10))
    mean = sum(draws) / len(draws)
    assert abs(mean - 950 * MiB) < 2 * MiB


def test_identically_leaking_workers_retire_at_different_times():
    trace = [50 + i * 0.5 for i in range(200)]  # +0.5 MiB per second
    times = set()
    for seed in range(8):
        pol, _ = policy(jitter=0.10, seed=seed)
        times.add(run(pol, trace)[0])
    assert len(times) >= 6


# -- the ceiling -----------------------------------------------------------------------------
def test_without_a_hard_limit_the_configured_limit_is_a_ceiling_above_the_jittered_one():
    pol, effective = policy(hard=None, jitter=0.10, seed=3)
    assert 90 * MiB <= effective < 100 * MiB and pol.ceiling == 100 * MiB
    between = (effective + 100 * MiB) // 2
    assert pol.judge(Sample(0, between)).action is Action.KEEP  # first strike
    assert pol.judge(Sample(1, between)).action is Action.RETIRE  # in the band: graceful, may wait its turn
    verdict = pol.judge(Sample(2, 100 * MiB + 1))
    assert verdict.action is Action.RETIRE_NOW and verdict.reason == "ceiling"
    assert "> ceiling 100.0 MiB" in verdict.detail


def test_the_ceiling_holds_at_any_age_and_while_paused():
    young, _ = build_policy(
        metric="rss", soft=100 * MiB, hard=None, jitter=0.1, min_lifetime=3600, born=0.0, rng=random.Random(1)
    )
    young.paused = True
    verdict = young.judge(Sample(0.01, 101 * MiB))
    assert verdict.action is Action.RETIRE_NOW and verdict.reason == "ceiling"


def test_a_hard_limit_is_the_ceiling_when_set():
    pol, _ = policy(soft=100 * MiB, hard=120 * MiB)
    assert pol.ceiling == 120 * MiB
    assert pol.judge(Sample(0, 110 * MiB)).action is Action.KEEP
    assert pol.judge(Sample(1, 121 * MiB)).reason == "hard_limit"


def test_policy_retarget_and_pause():
    policy, _ = build_policy(
        metric="uss", soft=100 * MiB, hard=200 * MiB, jitter=0.0, min_lifetime=0, born=0, rng=random.Random(0)
    )
    policy.retarget(50 * MiB, 150 * MiB)
    assert policy.floor == 50 * MiB
    assert [policy.judge(Sample(t, 60 * MiB)).reason for t in (1, 2)] == ["", "soft_limit"]
    policy.paused = True
    assert not policy.judge(Sample(3, 60 * MiB)).retires
    assert policy.judge(Sample(4, 160 * MiB)).reason == "hard_limit", "the hard limit still applies"


def test_a_share_of_the_server_wide_budget_retires_at_once_once_set():
    policy, _ = build_policy(
        metric="uss", soft=500 * MiB, hard=None, jitter=0.0, min_lifetime=0.0, born=0.0, rng=random.Random(1),
        budget=True,
    )  # fmt: skip
    assert policy.judge(Sample(1.0, 300 * MiB)).action is Action.KEEP  # no share set yet: the limits only
    policy.allow(200 * MiB)
    assert policy.floor == 200 * MiB  # the cheap RSS path now looks closer at 200 MiB
    verdict = policy.judge(Sample(2.0, 201 * MiB))
    assert verdict.action is Action.RETIRE_NOW
    assert verdict.reason == "total_memory"
    assert "share of max_total_memory" in verdict.detail
    assert policy.judge(Sample(3.0, 600 * MiB)).reason == "ceiling"  # the ceiling is still asked first


def test_without_a_budget_a_share_changes_nothing():
    policy, _ = build_policy(
        metric="uss", soft=500 * MiB, hard=None, jitter=0.0, min_lifetime=0.0, born=0.0, rng=random.Random(1)
    )
    policy.allow(100 * MiB)
    assert policy.judge(Sample(1.0, 300 * MiB)).action is Action.KEEP
