"""How the master explains a worker's end (``master/exits.py``, ``report/lines.py``): its
scoreboard slot, how the kernel says it died (peeked, left for gunicorn to reap), and whether the
cgroup's oom_kill counter rose — the counter read from cgroup fixture trees."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gunicorn_memguard.master.exits import OOM_CREDIT_SECONDS, OomWatch, peek_deaths
from gunicorn_memguard.probes.cgroup import find_memory_cgroup
from gunicorn_memguard.report.lines import Death, exit_report
from gunicorn_memguard.shared.scoreboard import SlotView, State

from .conftest import PROC_MOUNT, V1_MEMORY_MOUNT, V2_MOUNT, MiB, make_tree

KILLED = Death(signal.SIGKILL, None)


def slot(state: State = State.RUNNING, retire_started: float = 0.0, reason: str = "") -> SlotView:
    return SlotView(
        pid=42,
        state=state,
        born=100.0,
        updated=110.0,
        value=300 * MiB,
        rss=310 * MiB,
        limit=256 * MiB,
        requests=7,
        retire_started=retire_started,
        reason=reason,
        would_retire=0,
        exact=0,
        exact_at=0.0,
        growth=float("nan"),
        reclaimed=0,
        due=0.0,
        spawned=99.0,
        allowance=0,
    )


V2_EVENTS = "/sys/fs/cgroup/app/memory.events"
V1_OOM_CONTROL = "/sys/fs/cgroup/memory/app/memory.oom_control"
TREES = {
    "v2": (
        {
            "/proc/self/cgroup": "0::/app\n",
            "/proc/self/mountinfo": PROC_MOUNT + V2_MOUNT,
            "/sys/fs/cgroup/app/memory.max": "1073741824\n",
        },
        V2_EVENTS,
        "low 0\nhigh 0\nmax 9\noom 1\noom_kill {n}\noom_group_kill 0\n",
    ),
    "v1": (
        {
            "/proc/self/cgroup": "9:memory:/app\n",
            "/proc/self/mountinfo": PROC_MOUNT + V1_MEMORY_MOUNT,
            "/sys/fs/cgroup/memory/app/memory.limit_in_bytes": "1073741824\n",
        },
        V1_OOM_CONTROL,
        "oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n",
    ),
}


@pytest.mark.parametrize("version", TREES)
def test_sigkill_with_a_rising_oom_kill_count_is_the_oom_killer(version: str, tmp_path: Path) -> None:
    files, counter, template = TREES[version]
    root = make_tree(tmp_path, {**files, counter: template.format(n=2)})
    watch = OomWatch(find_memory_cgroup(root))
    assert watch.cgroup is not None and watch.cgroup.version == version and watch.count == 2

    assert watch.rose() is False  # nothing happened yet: a SIGKILL now has an unknown cause
    report = exit_report(42, slot(), 120.0, KILLED, watch.rose())
    assert report.outcome == "sigkill"
    assert "was killed by SIGKILL (cause unknown: its cgroup's oom_kill count did not rise)" in report.message

    make_tree(tmp_path, {counter: template.format(n=3)})  # the kernel OOM-killed someone in our cgroup
    report = exit_report(42, slot(), 120.0, KILLED, watch.rose())
    assert (report.level, report.outcome) == ("error", "oom_killed")
    assert "was killed by the kernel OOM killer" in report.message
    assert "no retirement in progress; last 300.0 MiB (rss 310.0 MiB)" in report.message
    assert watch.count == 3 and watch.rose() is False  # each rise explains one death


def test_no_cgroup_counter_means_cause_unknown(tmp_path: Path) -> None:
    files, _, _ = TREES["v1"]  # an old v1 kernel: memory.oom_control has no oom_kill line
    root = make_tree(tmp_path, {**files, V1_OOM_CONTROL: "oom_kill_disable 0\nunder_oom 0\n"})
    watch = OomWatch(find_memory_cgroup(root))
    assert watch.rose() is None
    report = exit_report(42, slot(), 120.0, KILLED, watch.rose())
    assert report.outcome == "sigkill" and "no cgroup oom_kill count to check" in report.message
    assert OomWatch(None).rose() is None


def test_other_ends() -> None:
    assert exit_report(42, slot(), 120.0, Death(signal.SIGSEGV, None)).outcome == "signal"
    assert "was killed by SIGSEGV" in exit_report(42, slot(), 120.0, Death(signal.SIGSEGV, None)).message
    # no status peeked (e.g. a gunicorn that reaps elsewhere): the older, hedged wording
    unknown = exit_report(42, slot(), 120.0, None)
    assert unknown.outcome == "died" and "likely cause" in unknown.message
    assert exit_report(42, slot(State.EXITED), 120.0, Death(None, 0)).outcome == "exited"
    assert exit_report(7, slot(), 120.0, KILLED).outcome == "unknown"  # slot of another pid


def test_ends_during_a_retirement() -> None:
    graceful = exit_report(42, slot(State.EXITED, 118.0, "soft_limit"), 120.0, Death(None, 0))
    assert graceful.outcome == "graceful" and "drain=2.0s" in graceful.message
    overran = exit_report(42, slot(State.OVERRAN, 110.0, "soft_limit"), 120.0, Death(None, 1))
    assert overran.outcome == "overran"
    killed = exit_report(42, slot(State.RETIRING, 118.0, "hard_limit"), 120.0, KILLED, True)
    assert killed.outcome == "killed_while_retiring"
    assert "was killed by the kernel OOM killer" in killed.message
    assert "2.0s into its retirement (reason=hard_limit)" in killed.message


def _child(body: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(3)
    return pid


def test_deaths_are_peeked_and_left_for_gunicorn_to_reap() -> None:
    killed = _child(signal.pause)
    exited = _child(lambda: None)  # exits with status 3
    running = _child(lambda: time.sleep(30))
    os.kill(killed, signal.SIGKILL)
    deaths: dict[int, Death] = {}
    try:
        deadline = time.monotonic() + 10
        while len(deaths) < 2 and time.monotonic() < deadline:
            peek_deaths([killed, exited, running], deaths)
            time.sleep(0.01)
        assert deaths == {killed: Death(signal.SIGKILL, None), exited: Death(None, 3)}
        # WNOWAIT: both are still there for gunicorn's own waitpid
        assert os.waitstatus_to_exitcode(os.waitpid(killed, 0)[1]) == -signal.SIGKILL
        assert os.waitstatus_to_exitcode(os.waitpid(exited, 0)[1]) == 3
    finally:
        os.kill(running, signal.SIGKILL)
        os.waitpid(running, 0)


@pytest.mark.parametrize("version", TREES)
def test_workers_oom_killed_together_are_each_attributed(version: str, tmp_path: Path) -> None:
    """The counter says how many, not whom: two kills counted at once explain two SIGKILLs; a
    third SIGKILL has an unknown cause, and so has one long after the kills were counted."""
    files, counter, template = TREES[version]
    root = make_tree(tmp_path, {**files, counter: template.format(n=0)})
    watch = OomWatch(find_memory_cgroup(root))
    make_tree(tmp_path, {counter: template.format(n=2)})
    assert [watch.rose(100.0), watch.rose(100.1), watch.rose(100.2)] == [True, True, False]
    make_tree(tmp_path, {counter: template.format(n=3)})
    assert watch.rose(200.0) is True
    make_tree(tmp_path, {counter: template.format(n=4)})
    assert watch.rose(300.0) is True  # counted now, explains this one
    make_tree(tmp_path, {counter: template.format(n=5)})
    watch.rose(400.0)  # counted, and used by this report
    make_tree(tmp_path, {counter: template.format(n=6)})
    assert watch.rose(400.0 + 0.5) is True
    assert watch.rose(400.0 + OOM_CREDIT_SECONDS + 60) is False


def test_a_retiree_killed_while_exiting_is_not_graceful() -> None:
    """Its slot says EXITED (worker_exit ran), the kernel says SIGKILL: killed on its way out."""
    report = exit_report(42, slot(State.EXITED, 118.0, "total_memory"), 120.0, KILLED, True)
    assert (report.level, report.outcome) == ("warning", "killed_while_retiring")
    assert "was killed by the kernel OOM killer (its cgroup's oom_kill count rose) while exiting" in report.message
    assert "2.0s after its retirement (reason=total_memory)" in report.message
    unretired = exit_report(42, slot(State.EXITED), 120.0, KILLED, False)
    assert unretired.outcome == "sigkill" and "no retirement in progress" in unretired.message


def test_a_signal_from_gunicorns_master_is_said_to_be_its():
    """gunicorn SIGKILLs a worker still running graceful_timeout after a stop (a stock uvicorn
    worker ignores its quick stop), and SIGABRTs one without a heartbeat within --timeout."""
    killed = exit_report(42, slot(), 120.0, Death(signal.SIGKILL, None, sent=signal.SIGKILL), None)
    assert (killed.level, killed.outcome) == ("warning", "sigkill")
    assert "was killed by SIGKILL from gunicorn's master (it was still running graceful_timeout" in killed.message
    aborted = exit_report(42, slot(), 120.0, Death(signal.SIGABRT, None, sent=signal.SIGABRT), None)
    assert "was killed by SIGABRT from gunicorn's master (no heartbeat within --timeout)" in aborted.message
    retiring = exit_report(
        42, slot(State.RETIRING, 110.0, "soft_limit"), 120.0, Death(signal.SIGKILL, None, signal.SIGKILL)
    )
    assert "from gunicorn's master" in retiring.message and retiring.outcome == "killed_while_retiring"


def test_a_retiree_that_exited_0_is_graceful_whatever_its_slot_says() -> None:
    """The master granted a turn just as the worker retired on its own (its share of the budget):
    the slot says GRANTED, the kernel says status 0 — a clean exit after a retirement."""
    report = exit_report(42, slot(State.GRANTED, 118.0, "soft_limit"), 120.0, Death(None, 0))
    assert (report.level, report.outcome) == ("info", "graceful")


def test_a_grant_leaves_a_worker_already_retiring_as_it_is() -> None:
    from gunicorn_memguard.shared.scoreboard import Scoreboard

    board = Scoreboard(slots=2)
    index = board.claim(1.0)
    board.start(index, 42, 2.0, 100)
    board.retiring(index, 3.0, "total_memory")
    board.grant(index, "soft_limit")
    view = board.read(index)
    assert (view.state, view.reason) == (State.RETIRING, "total_memory")
    other = board.claim(1.0)
    board.start(other, 43, 2.0, 100)
    board.waiting(other, 120, "soft_limit")
    board.grant(other, "soft_limit")
    assert board.state(other) is State.GRANTED


def test_a_death_whose_status_was_not_seen_is_the_oom_killers_if_the_counter_rose() -> None:
    """It died between memguard's peek and gunicorn's reaping: no status, but a kill counted."""
    report = exit_report(42, slot(), 120.0, None, True)
    assert report.outcome == "oom_killed" and "was killed by the kernel OOM killer" in report.message
    assert exit_report(42, slot(), 120.0, None, False).outcome == "died"
