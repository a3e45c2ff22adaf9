"""The master's side: the runtime built once from gunicorn's config, hooks composed into it, and
the arbiter patches (``master/runtime.py``, ``master/arbiter.py``, ``hooks.install``). A small
stand-in plays gunicorn's arbiter; its methods are what the patches wrap."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from gunicorn.config import Config

from gunicorn_memguard import hooks
from gunicorn_memguard.master import arbiter, runtime
from gunicorn_memguard.master.coordinator import Coordinator
from gunicorn_memguard.master.spares import Retirement
from gunicorn_memguard.policy import Reason
from gunicorn_memguard.report.lines import Death
from gunicorn_memguard.settings import Settings
from gunicorn_memguard.shared.scoreboard import Scoreboard

from .conftest import Lines


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No runtime yet in this process, and no MEMGUARD_* variable but the test's own."""
    monkeypatch.setattr(runtime, "_runtime", None)
    for name in [k for k in os.environ if k.startswith("MEMGUARD_")]:
        monkeypatch.delenv(name)


def test_the_runtime_is_built_once_and_hooks_are_composed_every_time(fresh, monkeypatch):
    monkeypatch.setenv("MEMGUARD_MAX_MEMORY", "1GiB")
    cfg, log = Config(), Lines()
    calls: list[Any] = []

    def post_worker_init(worker: Any) -> None:
        calls.append(worker)

    cfg.set("post_worker_init", post_worker_init)
    first = hooks.install(cfg, log)
    assert first.settings.max_memory == 2**30 and first.scoreboard is not None and first.shared is not None
    assert "composed your post_worker_init hook with memguard's" in log.text("info")
    assert "memguard: guarding workers: metric=uss limit=1.0 GiB" in log.text("info")
    cfg.settings["post_worker_init"].get()(None)  # gunicorn calls the composed hook: the user's runs
    assert calls == [None]

    cfg.set("post_worker_init", post_worker_init)  # a HUP reload brings the user's hook back alone
    assert hooks.install(cfg, log) is first is runtime.current()
    assert log.text().count("composed your post_worker_init hook") == 2
    assert log.text().count("guarding workers") == 1


def test_bad_settings_stop_the_master_with_every_problem(fresh, monkeypatch):
    monkeypatch.setenv("MEMGUARD_MAX_MEMORY", "-5MiB")
    monkeypatch.setenv("MEMGUARD_EVENT_LOG", "-")
    log = Lines()
    with pytest.raises(SystemExit) as exited:
        hooks.install(Config(), log)
    assert exited.value.code == 1 and runtime.current() is None
    errors = log.text("error")
    assert "MEMGUARD_MAX_MEMORY='-5MiB' is invalid: a size cannot be negative" in errors
    assert "MEMGUARD_EVENT_LOG='-' is invalid" in errors and "run 'memguard check'" in errors


def test_an_event_log_that_cannot_be_opened_is_a_bad_setting(fresh, monkeypatch, tmp_path):
    monkeypatch.setenv("MEMGUARD_EVENT_LOG", str(tmp_path / "no" / "such" / "dir" / "events.jsonl"))
    log = Lines()
    with pytest.raises(SystemExit):
        hooks.install(Config(), log)
    assert "cannot be opened for appending" in log.text("error")


def test_disabled_builds_nothing_and_composes_nothing(fresh, monkeypatch):
    monkeypatch.setenv("MEMGUARD_ENABLED", "no")
    cfg, log = Config(), Lines()
    built = hooks.install(cfg, log)
    assert not built.settings.enabled and built.scoreboard is None and built.shared is None and built.rate is None
    assert log.lines == [] and not getattr(cfg.settings["pre_fork"].get(), hooks.MARK, False)


class Arbiter:
    """What memguard's patches touch of gunicorn's arbiter."""

    def __init__(self) -> None:
        self.WORKERS: dict[int, object] = {}
        self.num_workers = 2
        self.timeout = 30
        self.calls: list[str] = []

    def reap_workers(self) -> None:
        self.calls.append("reap")
        for pid in list(self.WORKERS):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                del self.WORKERS[pid]

    def manage_workers(self) -> None:
        self.calls.append("manage")

    def reload(self) -> None:
        self.calls.append("reload")
        self.manage_workers()  # gunicorn's reload spawns the new workers itself


def test_deaths_are_peeked_before_gunicorn_reaps_and_the_patch_is_applied_once():
    server = Arbiter()
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    server.WORKERS[pid] = object()
    deaths: dict[int, Death] = {}
    arbiter.watch_deaths(server, deaths)
    arbiter.watch_deaths(server, deaths)  # idempotent: one wrapper
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.WORKERS and time.monotonic() < deadline:
        server.reap_workers()
        time.sleep(0.01)
    assert not server.WORKERS, "gunicorn's own reaping still ran"
    assert deaths == {pid: Death(signal.SIGKILL, None)}


def test_the_coordinator_ticks_before_manage_workers_and_pauses_across_a_reload():
    server, log = Arbiter(), Lines()
    coordinator = Coordinator(server, Settings(), Scoreboard(slots=4), log)
    ticks: list[bool] = []
    tick = coordinator.tick

    def recorded_tick() -> None:  # the coordinator's own tick, noting whether it was paused
        ticks.append(coordinator._paused)
        tick()

    coordinator.tick = recorded_tick  # type: ignore[method-assign]
    arbiter.attach_coordinator(server, coordinator, lambda: None)
    arbiter.attach_coordinator(server, coordinator, lambda: None)  # idempotent: one wrapper
    server.manage_workers()
    assert server.calls == ["manage"] and ticks == [False]
    coordinator.retirements[42] = object()  # type: ignore[assignment]
    server.reload()
    assert server.calls == ["manage", "reload", "manage"] and ticks == [False, True]
    assert coordinator.retirements == {} and not coordinator._paused


def test_the_raise_for_a_replacement_goes_when_gunicorn_reaps_its_worker_not_a_tick_later():
    """gunicorn 22/23 reap in the SIGCHLD handler, between the coordinator's tick and
    ``manage_workers``: were the raise still on then, gunicorn would fork a worker too many."""
    server = Arbiter()
    coordinator = Coordinator(server, Settings(), Scoreboard(slots=4), Lines())
    server.WORKERS = {7: object(), 8: object(), 9: object()}  # 9: the replacement started for 7
    coordinator.retirements[7] = Retirement(7, Reason.SOFT_LIMIT, 0.0, raised=True, granted=True)
    server.num_workers = 3
    assert coordinator.wanted() == 2
    del server.WORKERS[7]  # gunicorn's reap, then its child_exit hook
    coordinator.worker_left(7)
    assert server.num_workers == len(server.WORKERS) == 2 and coordinator.wanted() == 2
    coordinator.worker_left(8)  # not retiring: nothing to undo
    coordinator.tick()  # the next pass forgets the retirement without lowering the count again
    assert server.num_workers == 2 and coordinator.retirements == {}
