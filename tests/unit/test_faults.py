"""Faults memguard must not make worse: file descriptors it does not own, a full disk under the
event log, a stalled metrics scraper. Real fds, real files, real sockets; nothing under test is
mocked."""

from __future__ import annotations

import dataclasses
import os
import signal

import psutil
import pytest

from gunicorn_memguard.probes.memory import STATM, MemoryProbe
from gunicorn_memguard.report.eventlog import EventLog
from gunicorn_memguard.report.lines import Death, exit_report
from gunicorn_memguard.shared.scoreboard import Scoreboard

MiB = 2**20


def _app_opens(tmp_path, content: bytes, want_fd: int) -> int:
    """Open a file of the app's own, expecting the lowest free number (the one just closed)."""
    path = tmp_path / "app-file"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    assert fd == want_fd, "the kernel hands out the lowest free number"
    return fd


def _rss_is_plausible(value: int) -> bool:
    return abs(value - psutil.Process().memory_info().rss) < 16 * MiB


@pytest.mark.skipif(not os.path.exists(STATM), reason="needs /proc")
def test_probe_survives_the_app_closing_its_fd():
    probe = MemoryProbe()
    fd = probe._statm
    os.close(fd)  # what an app's "close every fd above 2" does
    assert _rss_is_plausible(probe.rss())
    assert probe._statm is not None and probe.reopens == 1
    probe.close()


@pytest.mark.skipif(not os.path.exists(STATM), reason="needs /proc")
@pytest.mark.parametrize("content", [b"not statm at all\n", b"", b"1 2 3 4 0 6 0\n"])
def test_probe_never_reads_or_closes_an_app_fd_that_took_its_number(tmp_path, content):
    probe = MemoryProbe()
    fd = probe._statm
    os.close(fd)
    app_fd = _app_opens(tmp_path, content, fd)
    try:
        # a file that looks like statm can pass the shape check until the next identity check
        values = [probe.rss() for _ in range(MemoryProbe.VERIFY_EVERY)]
        assert _rss_is_plausible(values[-1])
        assert probe._statm not in (None, app_fd)
        assert os.pread(app_fd, 100, 0) == content, "the app's fd is still open and untouched"
        probe.close()
        assert os.pread(app_fd, 100, 0) == content, "closing the probe leaves the app's fd alone"
    finally:
        os.close(app_fd)


@pytest.mark.skipif(not os.path.exists(STATM), reason="needs /proc")
def test_probe_falls_back_to_psutil_after_repeated_losses():
    probe = MemoryProbe()
    for _ in range(MemoryProbe.MAX_REOPENS + 1):
        if probe._statm is not None:
            os.close(probe._statm)
        assert _rss_is_plausible(probe.rss())
    assert probe._statm is None, "after MAX_REOPENS it stops reopening and reads through psutil"
    assert _rss_is_plausible(probe.rss())


# -- the exit report: a stop is not a fault ------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT, signal.SIGINT])
def test_a_worker_stopped_by_a_stop_signal_is_not_an_error(sig):
    board = Scoreboard()
    view = dataclasses.replace(board.read(board.claim()), pid=42, rss=10 * MiB, retire_started=0.0)
    report = exit_report(42, view, 120.0, Death(sig, None))
    assert report.level == "info" and f"was stopped by {signal.Signals(sig).name}" in report.message


def test_a_worker_killed_by_another_signal_is_still_an_error():
    board = Scoreboard()
    view = dataclasses.replace(board.read(board.claim()), pid=42, rss=10 * MiB, retire_started=0.0)
    assert exit_report(42, view, 120.0, Death(signal.SIGSEGV, None)).level == "error"


# -- the event log: one fault, one line, across processes ----------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failing_event_log_is_reported_by_one_process_only():
    events = EventLog("/dev/full")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker: the first to fail reports it
        transition = events.write("sample", os.getpid())
        os.write(write, b"1" if transition is not None and transition.failed else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1", "the first process to fail reports the fault"
    assert events.failing, "the fault is known to every process sharing the log"
    assert events.write("exit", os.getpid()) is None, "the master does not report it again"
    os.close(read)
    os.close(write)
