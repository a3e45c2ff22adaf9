"""Leak forensics on a real tracemalloc: sites grouped by the app's line (through a library too), the
report of a traced worker, a tracemalloc someone else started left alone, faults kept inside, and
the bound on tracing workers held across real processes, a SIGKILLed holder's slot freed."""

from __future__ import annotations

import json
import os
import signal
import sys
import tracemalloc
from pathlib import Path

import pytest

from gunicorn_memguard.settings import Settings, SettingsError, load_settings
from gunicorn_memguard.shared.tracing import TraceSlots
from gunicorn_memguard.worker.forensics import (
    SNAPSHOT_FACTOR,
    Forensics,
    Places,
    Report,
    Site,
    header_line,
    site_line,
    top_sites,
)
from gunicorn_memguard.worker.publish import Publisher

from .conftest import Lines

HERE = Path(__file__).resolve()
BYTES_HEADER = sys.getsizeof(b"")  # what a bytes object takes beyond its contents
KEPT: list[object] = []


@pytest.fixture(autouse=True)
def untraced():
    assert not tracemalloc.is_tracing()
    yield
    KEPT.clear()
    if tracemalloc.is_tracing():
        tracemalloc.stop()


def places() -> Places:
    here = Places.here()
    return Places(str(HERE.parent), here.not_the_app, sys.path)


def line_of(marker: str) -> int:
    return next(i for i, text in enumerate(HERE.read_text().splitlines(), 1) if text.endswith(marker))


def leak_directly(n: int, size: int) -> None:
    for _ in range(n):
        KEPT.append(b"\x01" * size)  # direct


def leak_through_json(n: int) -> None:
    text = json.dumps([{"key": i} for i in range(n)])
    KEPT.append(json.loads(text))  # through json


def test_sites_are_the_apps_lines_largest_first_with_the_library_line_beside():
    tracemalloc.start(10)
    leak_directly(40, 50_000)
    leak_through_json(2_000)  # ~0.5 MiB of dicts, below the 2 MB of the direct leak
    stats = tracemalloc.take_snapshot().statistics("traceback")
    tracemalloc.stop()

    sites = top_sites(stats, places())

    direct = next(s for s in sites if s.line == line_of("# direct"))
    assert sites[0] == direct and direct.file == HERE.name and direct.origin is None
    # 40 bytes objects of 50,000 bytes, and the list that holds them grows on this line too
    assert direct.size >= 40 * (50_000 + BYTES_HEADER) and direct.count >= 40
    via = next(s for s in sites if s.line == line_of("# through json"))
    assert via.file == HERE.name and via.origin is not None and via.origin.startswith("json/")
    assert [s.size for s in sites] == sorted((s.size for s in sites), reverse=True)


def test_a_traceback_of_library_frames_only_is_named_by_its_innermost_frame():
    # this folder counts as a library here: every frame is a library's
    lib = Places(str(HERE.parent), [*Places.here().not_the_app, str(HERE.parent)], sys.path)
    tracemalloc.start(3)
    leak_directly(5, 100_000)
    stats = tracemalloc.take_snapshot().statistics("traceback")
    tracemalloc.stop()
    site = top_sites(stats, lib)[0]
    assert site.file == HERE.name
    assert site.line == line_of("# direct") and site.origin is None


def test_lines_name_the_site_its_bytes_and_blocks():
    site = Site("apps/culprit.py", 17, 15 * 2**20, 61, origin="json/decoder.py:353")
    assert site_line(42, 1, site) == (
        "memguard: worker pid=42 allocation site 1: apps/culprit.py:17 +15.0 MiB in 61 blocks "
        "(allocated in json/decoder.py:353)"
    )
    report = Report(0.8, 100 * 2**20, 81 * 2**20, 12.34, 16 * 2**20, 300, 40_000, 0.006, 10, [site])
    assert header_line(42, report) == (
        "memguard: worker pid=42 allocations since it passed 80% of its limit 100.0 MiB (at 81.0 MiB, 12.3s "
        "ago): 16.0 MiB in 300 blocks still held; top sites below (tracemalloc used 39.1 KiB, 10 frames; the "
        "report took 6 ms)"
    )


def forensics(log: Lines, slots: TraceSlots | None, share: float = 0.5) -> Forensics:
    settings = Settings(trace_allocations=share, trace_frames=5)
    return Forensics(settings, slots, log, Publisher(None, None, None, log, "uss"))


def test_a_worker_traced_past_its_threshold_reports_at_retirement_and_stops_tracing():
    log, slots = Lines(), TraceSlots(1)
    guard = forensics(log, slots)
    guard.observe(49, 100)  # below 50 % of the limit: nothing
    assert not tracemalloc.is_tracing()
    guard.observe(50, 100)
    assert tracemalloc.is_tracing() and guard.tracing
    leak_directly(30, 50_000)

    guard.retiring(room=None)
    guard.finish()

    assert not tracemalloc.is_tracing() and not guard.tracing
    sites = [line for level, line in log.lines if level == "warning" and "allocation site" in line]
    assert f"{HERE.name}:{line_of('# direct')} +" in sites[0]
    assert "passed 50% of its limit" in log.text("info")
    guard.observe(90, 100)  # once reported, never again
    assert not tracemalloc.is_tracing()
    assert not holds_slot_elsewhere(slots)  # the slot was given back


def test_no_report_that_would_take_the_worker_past_its_ceiling():
    """The snapshot needs up to SNAPSHOT_FACTOR × tracemalloc's own memory while it runs: with less
    room than that below the ceiling, the worker stops tracing and says why instead."""
    log, slots = Lines(), TraceSlots(1)
    guard = forensics(log, slots)
    guard.observe(50, 100)
    leak_directly(30, 50_000)
    need = SNAPSHOT_FACTOR * tracemalloc.get_tracemalloc_memory()

    guard.retiring(room=need // 2)
    guard.finish()

    assert not tracemalloc.is_tracing() and not holds_slot_elsewhere(slots)
    assert "no allocation report: its snapshot would need" in log.text("warning")
    assert "allocation site 1" not in log.text()


def test_tracemalloc_started_by_someone_else_is_left_alone():
    tracemalloc.start(1)
    log = Lines()
    guard = forensics(log, TraceSlots(1))
    guard.observe(90, 100)
    guard.retiring(room=None)
    guard.finish()
    assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 1
    assert "tracemalloc is already tracing" in log.text("warning") and "allocation site 1" not in log.text()


def test_a_fault_is_one_line_and_forensics_off_never_an_exception():
    slots = TraceSlots(1)
    os.close(slots.fd)  # claim() now fails with EBADF
    log = Lines()
    guard = forensics(log, slots)
    guard.observe(90, 100)
    guard.observe(95, 100)
    assert not tracemalloc.is_tracing()
    errors = log.text("error").splitlines()
    assert len(errors) == 1 and "without leak forensics" in errors[0]


def holds_slot_elsewhere(slots: TraceSlots) -> bool:
    """Whether another process could not take a slot now (a forked child tries)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0 if slots.claim() is not None else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) != 0


def test_at_most_n_processes_trace_and_a_killed_holders_slot_is_freed():
    slots = TraceSlots(2)
    read, write = os.pipe()
    holders = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            os.write(write, b"1" if slots.claim() is not None else b"0")
            signal.pause()  # holds its slot until killed
            os._exit(0)
        holders.append(pid)
    assert os.read(read, 1) + os.read(read, 1) == b"11"
    assert slots.claim() is None  # both slots are held by other processes

    os.kill(holders[0], signal.SIGKILL)
    os.waitpid(holders[0], 0)
    assert slots.claim() is not None  # the kernel dropped the dead holder's lock
    os.kill(holders[1], signal.SIGKILL)
    os.waitpid(holders[1], 0)


@pytest.mark.parametrize("value", ["0%", "100%", "eighty", "80", "-5%"])
def test_a_bad_threshold_names_the_setting_the_value_and_the_form(value):
    with pytest.raises(SettingsError) as err:
        load_settings({"MEMGUARD_TRACE_ALLOCATIONS": value}, {})
    assert str(err.value) == (
        f"env MEMGUARD_TRACE_ALLOCATIONS={value!r} is invalid: expected `off`, or a percentage of the "
        "worker's limit above 0% and below 100% (e.g. 80%)"
    )


def test_thresholds_and_bounds_parse():
    assert Settings().trace_allocations is None
    settings = load_settings(
        {"MEMGUARD_TRACE_ALLOCATIONS": "80%", "MEMGUARD_TRACE_WORKERS": "2", "MEMGUARD_TRACE_FRAMES": "3"}, {}
    )
    assert (settings.trace_allocations, settings.trace_workers, settings.trace_frames) == (0.8, 2, 3)
    assert load_settings({"MEMGUARD_TRACE_ALLOCATIONS": "off"}, {}).trace_allocations is None
    with pytest.raises(SettingsError, match="MEMGUARD_TRACE_FRAMES='0' is invalid: expected a whole number"):
        load_settings({"MEMGUARD_TRACE_FRAMES": "0"}, {})
