"""How many workers may trace their allocations at once (``MEMGUARD_TRACE_WORKERS``).

Slot i is byte i of a memory-backed file (``memfd_create``: no file system is touched) made in the
master before the first fork; a worker holds a slot with a POSIX record lock on that byte. The
kernel drops a process's record locks when it ends, however it ends (SIGKILL, the OOM killer, an
``os._exit``), so a worker that dies while tracing never keeps its slot, and nothing has to be
cleaned up by the master. Record locks belong to a process, not to a descriptor: a forked worker
does not inherit the master's (the master never takes one) and only this one descriptor refers to
the file, so no other close can drop a worker's lock.
"""

from __future__ import annotations

import errno
import fcntl
import os


class TraceSlots:
    def __init__(self, count: int) -> None:
        """Raises OSError when the kernel cannot make the file (no ``memfd_create``)."""
        self.count = count
        self.fd = os.memfd_create("memguard-tracing", os.MFD_CLOEXEC)

    def claim(self) -> int | None:
        """Take a free slot for this process, or None when ``count`` other processes hold them all."""
        for slot in range(self.count):
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    continue  # another worker traces in this one
                raise
            return slot
        return None

    def release(self, slot: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, slot)
