"""A worker leaving gracefully does not grow on its way out, and still runs the app's atexit
callbacks (worker/leave.py).

The interpreter's teardown writes to every object a worker inherited from the master, turning the
shared heap private just as the worker leaves; with ``MEMGUARD_FAST_EXIT`` (the default) a worker
exiting with status 0 runs its atexit callbacks and skips the teardown. Each test stops one worker
with SIGTERM, gunicorn's graceful stop, and watches it from outside until it is gone.
"""

import os
import signal
from pathlib import Path

import psutil
import pytest

from bench.harness import Gunicorn, poll

from .conftest import INTERNALS, MiB

HOOKS = ["-c", "python:gunicorn_memguard.conf"]
CLASSES = {
    "hooks-sync": [*HOOKS, "-k", "sync"],
    "class-gthread": ["-k", "gunicorn_memguard.workers.ThreadWorker", "--threads", "4"],
    "class-gevent": ["-k", "gunicorn_memguard.workers.GeventWorker"],
}
# What the exit path itself may allocate: gunicorn's "Worker exiting" line, memguard's exit state
# in its slot, one atexit callback appending a line to a file. The teardown unshares several
# times that even for this small app (measured: +6.7 to +9 MiB).
EXIT_PATH = 1 * MiB


def start(args: list[str], tmp_path: Path, **env: str) -> tuple[Gunicorn, Path]:
    marks = tmp_path / "marks"
    settings = {"MEMGUARD_MAX_MEMORY": "1GiB", "EXIT_MARKS": str(marks), **env}
    server = Gunicorn([*args, "--preload", "apps.exiting:app"], settings, tmp_path / "g.log", workers=1)
    server.wait_ready()
    for _ in range(20):
        server.get("/")
    return server, marks


def stop_one(server: Gunicorn) -> tuple[int, int, int]:
    """SIGTERM the worker; its pid, its USS just before, and the most USS seen until it was gone."""
    (pid,) = server.worker_pids()
    proc = psutil.Process(pid)
    before = peak = proc.memory_full_info().uss
    os.kill(pid, signal.SIGTERM)
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                break
            peak = max(peak, proc.memory_full_info().uss)
        except psutil.Error:
            break
    poll(lambda: server.log_lines(f"Worker exiting (pid: {pid})"), timeout=10, what="the exit line")
    return pid, before, peak


def marks_of(marks: Path, pid: int) -> list[str]:
    lines = marks.read_text().splitlines() if marks.exists() else []
    return [line.split()[0] for line in lines if line.endswith(f" {pid}")]


@INTERNALS  # gunicorn's exit path (spawn_worker's finally, where worker_exit runs) on every major
@pytest.mark.parametrize("mode", list(CLASSES))
def test_a_worker_leaves_without_growing_and_runs_atexit(mode, tmp_path):
    server, marks = start(CLASSES[mode], tmp_path)
    with server:
        pid, before, peak = stop_one(server)
        # its replacement comes up: the master saw an ordinary exit
        poll(lambda: server.worker_pids() - {pid}, timeout=30, what="a replacement")
        assert not server.log_lines(f"Worker (pid:{pid}) exited with code"), "exit status not 0"
        assert marks_of(marks, pid) == ["atexit"], "atexit ran, the teardown did not"
        print(f"{mode}: uss {before / MiB:.1f} MiB before SIGTERM, at most {peak / MiB:.1f} MiB until gone")
        assert peak - before <= EXIT_PATH, f"grew {(peak - before) / MiB:.1f} MiB on its way out"


def test_with_fast_exit_off_a_worker_grows_on_its_way_out(tmp_path):
    server, marks = start(CLASSES["hooks-sync"], tmp_path, MEMGUARD_FAST_EXIT="no")
    with server:
        pid, before, peak = stop_one(server)
        assert marks_of(marks, pid) == ["atexit"]
        print(f"fast exit off: uss {before / MiB:.1f} MiB before SIGTERM, at most {peak / MiB:.1f} MiB until gone")
        # the teardown takes tens of milliseconds, many reads of this loop (measured: +8 to +9 MiB)
        assert peak - before > 2 * EXIT_PATH, "the teardown this setting keeps was not seen"
