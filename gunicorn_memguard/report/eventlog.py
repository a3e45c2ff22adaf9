"""The JSON event log (``MEMGUARD_EVENT_LOG``): one JSON object per line per event.

The master opens the file once with ``O_APPEND`` and every worker inherits the descriptor. Each
event is one ``write()`` of one whole line, and Linux appends such a write to a regular file
in one piece, so lines from several processes and threads never interleave: no lock on the
write path, nothing held across ``fork()``. A failing write is reported once per fault, and the
recovery once (see ``EventLog``). Rotate the file with copytruncate (``O_APPEND`` follows the truncation).

Schema (version 1, the ``v`` field; fields are only ever added within a version):

- every event: ``v``, ``ts`` (Unix time, seconds), ``event``, ``pid``
- ``config`` (the master, once at start): ``settings`` (each ``MEMGUARD_*`` setting that was given,
  by env name, as written: ``memguard replay`` parses them again), ``version`` (memguard's)
- ``limits`` (the master, before the first fork and each time it resolves the per-worker limits
  again): ``soft``, ``hard`` (bytes per worker, before jitter, or null), ``workers``,
  ``available`` (the container's memory, bytes), ``master`` (the master's RSS, bytes)
- ``sample`` (each worker, every ``MEMGUARD_REPORT_INTERVAL``; ``ts`` minus ``age`` dates its
  boot): ``worker``, ``age``, ``requests``,
  ``metric``, ``value`` (bytes, read exactly), ``rss``, ``limit`` (null if none), ``growth`` (the
  memory floor's rate in bytes/s with ``MEMGUARD_MAX_GROWTH``, or null)
- ``reclaim`` (the worker, each reclaim before retiring): ``worker``, ``before``, ``after``,
  ``freed`` (bytes), ``took`` (seconds), ``how``
- ``breaker_trip`` (the process that tripped the crash-loop breaker): ``why`` (``baseline`` or
  ``rate``), ``detail``
- ``retire`` and ``would_retire`` (dry run, once per worker per reason): ``worker``, ``age``,
  ``requests``, ``metric``, ``value``, ``limit``, ``reason``, ``detail``
- ``allocations`` (a worker traced by ``MEMGUARD_TRACE_ALLOCATIONS``, once, when it retires):
  ``worker``, ``share`` (the threshold, a fraction of ``limit``), ``limit`` (its soft limit, or its
  ceiling), ``start`` (the reading when tracing began), ``since`` (seconds traced), ``traced`` and
  ``blocks`` (bytes and blocks allocated since then and still held), ``overhead`` (tracemalloc's own
  bytes), ``took`` (seconds, the report), ``frames``, ``sites`` (largest first: ``file``, ``line``
  of the app's innermost frame, ``size``, ``count``, ``origin``: ``"file:line"`` of the allocation
  when it is in a library below the app's line, else null)
- ``exit`` (the master, once per worker it reaps): ``worker``, ``outcome``, ``reason`` (of the
  retirement, or null), ``drain`` (seconds, or null), ``age``, ``requests``, ``value``, ``rss``
  (last known), ``signal`` (name of the signal that ended it, or null), ``code`` (its exit
  status, or null), ``oom_kills`` (the
  cgroup's ``oom_kill`` counter when it was checked, or null)
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import struct
import time
from typing import Any, NamedTuple

SCHEMA_VERSION = 1

# Shared by the master and every worker (an anonymous shared mapping made before the first fork):
# failing (0/1), torn (0/1: a short write left a partial line), failing since (Unix time), events
# lost while failing (counted without a lock: a floor).
_SHARED = struct.Struct("=BBxxxxxxdQ")


class Transition(NamedTuple):
    """The event log's health changed, and this process is the one to say so."""

    failed: bool  # True: writes started failing; False: they succeed again
    message: str


class EventLog:
    """Append-only JSON lines, safe to share across fork.

    A fault (disk full, quota, file system gone read-only) is one fault for the whole server, not
    one per process and per event: the first process to see a write fail flips a flag shared by
    all of them and is the only one to report it; the others go on trying each event's write (one
    failing system call) and count what is lost. The first write to succeed again flips it back
    and reports, once, how many events were lost. Which process reports a transition is decided
    under a non-blocking ``lockf`` on the log file, held for a few instructions and never across
    a write, so no process ever waits on another. A short write (the disk filled mid-line) leaves a
    partial line; the next successful write starts with a newline, so every other line still
    parses (two processes doing so at once leave an empty line).
    """

    def __init__(self, path: str) -> None:
        """Open for appending; raises OSError with the reason when the file cannot be opened."""
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._shared = mmap.mmap(-1, _SHARED.size)  # MAP_SHARED | MAP_ANONYMOUS: survives fork, shared
        self.failed: str | None = None  # the last failure this process saw, while the log is failing

    # -- the shared state ---------------------------------------------------------------------
    def _state(self) -> tuple[int, int, float, int]:
        return _SHARED.unpack_from(self._shared, 0)

    def _set(self, failing: int, torn: int, since: float, lost: int) -> None:
        _SHARED.pack_into(self._shared, 0, failing, torn, since, lost)

    def _turn(self) -> bool:
        """May this process report a transition? (Another process holding the lock is reporting it.)"""
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            # no POSIX locks on this file system: at worst two processes report one transition
            return exc.errno not in (errno.EACCES, errno.EAGAIN)
        return True

    def _end_turn(self) -> None:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        except OSError:
            pass

    @property
    def failing(self) -> bool:
        """Writes are failing, as far as any process sharing this log knows."""
        return bool(self._state()[0])

    # -- writing --------------------------------------------------------------------------------
    def write(self, event: str, pid: int, **fields: Any) -> Transition | None:
        """Append one event. Returns a Transition when the log's health changed and this process
        is the one to report it (to the error log, once), else None."""
        record = {"v": SCHEMA_VERSION, "ts": round(time.time(), 3), "event": event, "pid": pid, **fields}
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        failing, torn, _, _ = self._state()
        if torn:
            line = b"\n" + line  # end the partial line a short write left
        try:
            written = os.write(self.fd, line)
        except OSError as exc:
            return self._failed(exc.strerror or str(exc), torn=False)
        if written != len(line):
            return self._failed(f"short write ({written} of {len(line)} bytes)", torn=True)
        self.failed = None
        if failing or torn:
            return self._recovered()
        return None

    def _failed(self, why: str, torn: bool) -> Transition | None:
        self.failed = why
        failing, was_torn, since, lost = self._state()
        if failing:
            self._set(1, was_torn | torn, since, lost + 1)
            return None
        if not self._turn():
            return None
        try:
            failing, was_torn, since, lost = self._state()
            if failing:  # another process reported it meanwhile
                self._set(1, was_torn | torn, since, lost + 1)
                return None
            self._set(1, was_torn | torn, time.time(), 1)
        finally:
            self._end_turn()
        return Transition(
            True,
            f"memguard: cannot write the event log {self.path} ({why}); events are lost until a write "
            f"succeeds again, which will be logged once",
        )

    def _recovered(self) -> Transition | None:
        if not self._turn():
            return None
        try:
            failing, _, since, lost = self._state()
            self._set(0, 0, 0.0, 0)
        finally:
            self._end_turn()
        if not failing:
            return None  # only a torn line ended, or another process reported the recovery
        return Transition(
            False,
            f"memguard: the event log {self.path} is written again; at least {lost} event(s) were lost "
            f"over {time.time() - since:.1f}s",
        )
