"""The JSON event log (``MEMGUARD_EVENT_LOG``): one JSON object per line per event.

The master opens the file once with ``O_APPEND`` and every worker inherits the descriptor. Each
event is one ``write()`` of one whole line, and Linux appends such a write to a regular file
in one piece, so lines from several processes and threads never interleave: no locks, nothing
held across ``fork()``. Rotate the file with copytruncate (``O_APPEND`` follows the truncation).

Schema (version 1, the ``v`` field; fields are only ever added within a version):

- every event: ``v``, ``ts`` (Unix time, seconds), ``event``, ``pid``
- ``sample`` (each worker, every ``MEMGUARD_REPORT_INTERVAL``): ``worker``, ``age``, ``requests``,
  ``metric``, ``value`` (bytes, read exactly), ``rss``, ``limit`` (null if none), ``growth`` (the
  memory floor's rate in bytes/s with ``MEMGUARD_MAX_GROWTH``, or null)
- ``reclaim`` (the worker, each reclaim before retiring): ``worker``, ``before``, ``after``,
  ``freed`` (bytes), ``took`` (seconds), ``how``
- ``breaker_trip`` (the process that tripped the crash-loop breaker): ``why`` (``baseline`` or
  ``rate``), ``detail``
- ``retire`` and ``would_retire`` (dry run, once per worker per reason): ``worker``, ``age``,
  ``requests``, ``metric``, ``value``, ``limit``, ``reason``, ``detail``
- ``exit`` (the master, once per worker it reaps): ``worker``, ``outcome``, ``reason`` (of the
  retirement, or null), ``drain`` (seconds, or null), ``age``, ``requests``, ``value``, ``rss``
  (last known), ``signal`` (name of the signal that ended it, or null), ``code`` (its exit
  status, or null), ``oom_kills`` (the
  cgroup's ``oom_kill`` counter when it was checked, or null)
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

SCHEMA_VERSION = 1


class EventLog:
    def __init__(self, path: str) -> None:
        """Open for appending; raises OSError with the reason when the file cannot be opened."""
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.failed: str | None = None

    def write(self, event: str, pid: int, **fields: Any) -> None:
        """Append one event; after a failed write (disk full, file gone) stop writing and keep
        the reason in ``failed`` for the caller to log once."""
        if self.failed is not None:
            return
        record = {"v": SCHEMA_VERSION, "ts": round(time.time(), 3), "event": event, "pid": pid, **fields}
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        try:
            written = os.write(self.fd, line)
        except OSError as exc:
            self.failed = str(exc)
            return
        if written != len(line):  # a second write could interleave with another process's line
            self.failed = f"short write ({written} of {len(line)} bytes)"
