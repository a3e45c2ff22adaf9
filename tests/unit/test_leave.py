"""Which exits skip the interpreter's teardown (worker/leave.py): only gunicorn's normal exit path
of a worker ending with status 0, seen from a hook running in the arbiter's ``finally``."""

import sys

import pytest

from gunicorn_memguard.worker.leave import leaving_gracefully


def seen_from_finally(exc: BaseException) -> bool:
    seen = []
    with pytest.raises(type(exc)):
        try:
            raise exc
        finally:
            seen.append(leaving_gracefully())
    return seen[0]


@pytest.mark.parametrize("exc", [SystemExit(0), SystemExit(None), SystemExit()])
def test_a_worker_ending_with_status_0_leaves_quickly(exc):
    assert seen_from_finally(exc)


@pytest.mark.parametrize("exc", [SystemExit(1), SystemExit(3), SystemExit(-1), SystemExit("boom"), RuntimeError()])
def test_a_worker_ending_with_an_error_keeps_the_normal_exit(exc):
    assert not seen_from_finally(exc)


def test_outside_an_exit_nothing_is_skipped():
    assert sys.exc_info()[1] is None
    assert not leaving_gracefully()
