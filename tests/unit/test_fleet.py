"""The master's retirement order, turns, room for a replacement and server-wide budget (``policy/fleet.py``)."""

from gunicorn_memguard.policy.fleet import (
    Candidate,
    allowances,
    free_turns,
    fresh_share,
    has_room,
    largest_over_budget,
    retirement_order,
)

MiB = 2**20


def test_the_furthest_over_its_own_limit_goes_first():
    # 10% over a low jittered limit beats 5% over a higher one, though it uses fewer bytes
    low = Candidate(pid=3, value=110 * MiB, limit=100 * MiB)
    high = Candidate(pid=2, value=115 * MiB, limit=110 * MiB)
    tie = Candidate(pid=1, value=105 * MiB, limit=100 * MiB)
    same = Candidate(pid=4, value=105 * MiB, limit=100 * MiB)
    assert [c.pid for c in retirement_order([high, same, low, tie])] == [3, 1, 4, 2]


def test_a_candidate_without_a_limit_goes_last():
    assert retirement_order([Candidate(1, 10 * MiB, 0), Candidate(2, 11, 10)])[0].pid == 2


def test_free_turns_never_negative():
    assert free_turns(1, 0) == 1
    assert free_turns(2, 1) == 1
    assert free_turns(1, 3) == 0


def test_room_for_a_replacement():
    assert has_room(100 * MiB, 50 * MiB)
    assert not has_room(40 * MiB, 50 * MiB)
    assert not has_room(-5, 1)
    assert has_room(None, 50 * MiB)


def test_largest_over_budget():
    sizes = {10: 30 * MiB, 11: 50 * MiB, 12: 50 * MiB}
    assert largest_over_budget(sizes, 200 * MiB) is None
    assert largest_over_budget(sizes, 130 * MiB) is None  # at the budget is not over it
    assert largest_over_budget(sizes, 100 * MiB) == 11  # a tie goes to the older (lower) pid
    assert largest_over_budget({}, 0) is None


MiB = 2**20


def test_the_shares_of_a_budget_never_add_up_past_it():
    values = {1: 90 * MiB, 2: 40 * MiB, 3: 20 * MiB}
    total, budget = sum(values.values()) + 30 * MiB, 360 * MiB  # + the master
    shares = allowances(values, budget - total)
    assert shares == {1: 150 * MiB, 2: 100 * MiB, 3: 80 * MiB}  # each: its own + 60 MiB
    assert sum(shares.values()) + 30 * MiB <= budget


def test_over_the_budget_nobody_may_grow():
    values = {1: 200 * MiB, 2: 100 * MiB}
    assert allowances(values, -50 * MiB) == values


def test_no_workers_no_shares():
    assert allowances({}, 100 * MiB) == {}


def test_a_fresh_worker_starts_with_an_equal_part_of_the_budget_less_the_master():
    assert fresh_share(360 * MiB, 30 * MiB, 3, others=0) == 110 * MiB
    assert fresh_share(360 * MiB, 30 * MiB, 3, others=220 * MiB) == 110 * MiB  # the third at start-up
    assert fresh_share(100 * MiB, 0, 0, others=0) == 100 * MiB


def test_a_fresh_share_never_takes_what_the_others_hold():
    """A replacement forked while the others' shares still hold the room its predecessor left:
    it gets only what is left, so the shares never add up past the budget."""
    assert fresh_share(360 * MiB, 30 * MiB, 3, others=300 * MiB) == 30 * MiB
    assert fresh_share(360 * MiB, 30 * MiB, 3, others=330 * MiB) == 1  # none left: it retires at once
    assert fresh_share(20 * MiB, 30 * MiB, 3, others=0) == 1  # a budget below the master's own size
