"""How the guard records a retired worker's exit: within graceful_timeout it is graceful; past it
(a worker class that cut its own drain off, as gevent's does) it is an overrun, logged and left
in the scoreboard for the master's exit line."""

import types

import pytest

from gunicorn_memguard.settings import Settings
from gunicorn_memguard.shared.scoreboard import Scoreboard, State
from gunicorn_memguard.worker.guard import Guard


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def warning(self, msg: str, *args: object) -> None:
        self.lines.append(("warning", msg % args))

    def error(self, msg: str, *args: object) -> None:
        self.lines.append(("error", msg % args))


@pytest.mark.parametrize(("graceful_timeout", "state"), [(60.0, State.EXITED), (0.0, State.OVERRAN)])
def test_exit_after_retirement_is_an_overrun_only_past_graceful_timeout(graceful_timeout, state):
    worker = types.SimpleNamespace(cfg=types.SimpleNamespace(graceful_timeout=graceful_timeout), nr=1)
    board, log, retired = Scoreboard(slots=1), Log(), []
    slot = board.claim()
    # a 1 MiB hard limit: this test process is over it, so the first check retires
    guard = Guard(
        worker,
        Settings(hard_max_memory=2**20),
        lambda: retired.append(True),
        log,
        board,
        slot,
        start_thread=lambda target: None,
    )
    guard.after_request()
    assert retired == [True]
    guard.worker_exited()
    assert board.read(slot).state is state
    overran = [line for level, line in log.lines if level == "error" and "did not finish draining" in line]
    assert bool(overran) is (state is State.OVERRAN)
