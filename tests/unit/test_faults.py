"""Faults memguard must not make worse: file descriptors it does not own, a full disk under the
event log, a stalled metrics scraper. Real fds, real files, real sockets; nothing under test is
mocked."""

from __future__ import annotations

import os

import psutil
import pytest

from gunicorn_memguard.probes.memory import STATM, MemoryProbe

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
