"""Issue 16: no fault gets worse because memguard is there.

Real gunicorn on 127.0.0.1, observed from outside: worker PIDs, HTTP answers, the error log,
sockets, the event log file.
"""

from __future__ import annotations

import json

import pytest

from bench.harness import Gunicorn, poll

from .conftest import MiB

HOOKS = ["-c", "python:gunicorn_memguard.conf"]


def env(limit: int, **extra: str) -> dict[str, str]:
    return {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
        "MEMGUARD_REPORT_INTERVAL": "200ms",
        **extra,
    }


# -- 2. file descriptors memguard does not own -------------------------------------------------
@pytest.mark.parametrize("then_open", [False, True], ids=["app-closes-it", "app-closes-it-and-reuses-the-number"])
def test_an_app_closing_memguards_fd_keeps_its_guard_and_its_own_fds(then_open, baseline_uss, tmp_path):
    with Gunicorn([*HOOKS, "apps.faults:app"], env(baseline_uss + 40 * MiB), tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        answer = json.loads(server.get(f"/close-statm{'?then_open=1' if then_open else ''}")[1])
        assert answer["closed"], "memguard's probe had an fd open on statm"
        if then_open:
            assert answer["app_fd"] in answer["closed"], "the app's file took memguard's old fd number"
        for _ in range(50):  # each request ends with memguard's RSS read
            server.get("/")
        assert not server.log_lines("without a memory guard"), server.log()
        if then_open:
            assert server.get("/app-fd")[1] == b"the app's own data\n", "memguard closed or disturbed the app's fd"
        assert server.worker_pids() == {pid}
        # and the guard still works: a leak past the limit retires this worker
        for _ in range(60):
            server.get("/leak?kib=1024")
            if server.log_lines(f"retiring worker pid={pid}"):
                break
        poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=10, what="the retirement")
