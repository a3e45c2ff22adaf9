"""The master's status socket, which ``memguard top`` reads (``MEMGUARD_STATUS_SOCKET``).

A unix socket, so the endpoint is local by construction, mode 0600, in a directory only its
owner can enter (``auto``), and every connection's peer is checked with ``SO_PEERCRED``: the
master's own uid or root, else a one-line refusal. Connecting is the request; the answer is one
JSON document (``report/status.py``), then the master closes.

Served from the arbiter's main thread, never a thread of its own (a thread holding a lock when
the master forks would leave it locked in the worker): the listening socket is non-blocking and
polled once per arbiter pass (gunicorn's master wakes at least every second), at most
``ACCEPTS_PER_PASS`` connections are taken per pass and ``MAX_CONNECTIONS`` kept, every send is
non-blocking and a connection not answered ``ANSWER_TIMEOUT`` after it was taken is dropped. So
the master never waits on a client; a client waits up to one pass for its answer.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import gunicorn

from .. import __version__
from ..probes.cgroup import read_working_set
from ..report import snapshot
from ..report.status import document
from ..shared.scoreboard import SLOT_ATTR

if TYPE_CHECKING:
    from .runtime import Runtime

ACCEPTS_PER_PASS = 8
MAX_CONNECTIONS = 16
ANSWER_TIMEOUT = 2.0  # seconds from taking a connection to having sent its answer
AUTO_DIRECTORY = "memguard"  # under $XDG_RUNTIME_DIR; else memguard-<uid> under the temp directory
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def auto_directories(env: Mapping[str, str] | None = None, uid: int | None = None) -> list[str]:
    """Where ``auto`` puts the socket, in the master's order of preference; ``memguard top``
    looks in each."""
    env = os.environ if env is None else env
    uid = os.geteuid() if uid is None else uid
    found = []
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        found.append(os.path.join(runtime, AUTO_DIRECTORY))
    found.append(os.path.join(tempfile.gettempdir(), f"memguard-{uid}"))
    return found


def socket_name(pid: int) -> str:
    return f"{pid}.sock"


def private_problem(directory: str) -> str | None:
    """Why ``directory`` is not private to this user (None: it is): it must be a real directory,
    owned by this user, that no one else may enter or write — anyone who could would be able to
    put a socket of their own in its place."""
    try:
        info = os.lstat(directory)
    except OSError as exc:
        return f"{directory}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if info.st_uid != os.geteuid():
        return f"{directory} is owned by uid {info.st_uid}, not this user (uid {os.geteuid()})"
    if info.st_mode & 0o077:
        return f"{directory} has mode {stat.S_IMODE(info.st_mode):o}; only its owner may enter it (700)"
    return None


def auto_path(pid: int) -> tuple[str | None, list[str]]:
    """The socket path ``auto`` gives the master ``pid``, making its directory (0700) if need be;
    or None, and why each place was refused."""
    problems = []
    for directory in auto_directories():
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            problems.append(f"{directory}: {exc.strerror}")
            continue
        problem = private_problem(directory)
        if problem is None:
            return os.path.join(directory, socket_name(pid)), problems
        problems.append(problem)
    return None, problems


def peer_uid(conn: socket.socket) -> int:
    return int(_PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[1])


def may_read(uid: int) -> bool:
    """The master's own user, or root."""
    return uid in (os.geteuid(), 0)


class _Answer:
    __slots__ = ("conn", "outbox", "deadline")

    def __init__(self, conn: socket.socket, payload: bytes, deadline: float) -> None:
        self.conn = conn
        self.outbox = memoryview(payload)
        self.deadline = deadline


class StatusEndpoint:
    """The listening socket and the answers being sent, served by `poll` once per arbiter pass."""

    def __init__(self, path: str, render: Callable[[], bytes], log: Any) -> None:
        self.path = path
        self.render = render
        self.log = log
        self.answers: list[_Answer] = []
        self._refused: set[int] = set()  # the uids refused, each said once
        self.master_pid = os.getpid()
        # close-on-exec (a USR2 re-exec does not inherit it) and non-blocking
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            _remove_stale(path)
            sock.bind(path)
            # The bind made the file with the process umask; until this chmod, SO_PEERCRED alone
            # keeps other users out (the auto directory already does).
            os.chmod(path, 0o600)
            self.inode = os.stat(path).st_ino
            sock.listen(MAX_CONNECTIONS)
        except BaseException:
            sock.close()
            raise
        self.sock: socket.socket | None = sock
        os.register_at_fork(after_in_child=self._close_in_child)
        atexit.register(self.close)

    # -- one pass --------------------------------------------------------------------------
    def poll(self) -> None:
        """Take new connections, send what can be sent now; never raises, never waits: a fault
        is logged once and the endpoint closed, and the server runs on without it."""
        if self.sock is None:
            return
        try:
            self._poll(time.monotonic())
        except Exception:  # noqa: BLE001 - memguard top's endpoint must not stop the arbiter
            self.log.exception("memguard: error in the status socket %s; closing it (memguard top)", self.path)
            self.close()

    def _poll(self, now: float) -> None:
        assert self.sock is not None
        payload: bytes | None = None  # rendered once per pass, for every client of the pass
        for _ in range(ACCEPTS_PER_PASS):
            if len(self.answers) >= MAX_CONNECTIONS:
                break
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            conn.setblocking(False)
            uid = peer_uid(conn)
            if may_read(uid):
                payload = payload if payload is not None else self.render()
                self.answers.append(_Answer(conn, payload, now + ANSWER_TIMEOUT))
            else:
                self._refuse(conn, uid, now)
        self.answers = [answer for answer in self.answers if not self._send(answer, now)]

    def _refuse(self, conn: socket.socket, uid: int, now: float) -> None:
        if uid not in self._refused:
            self._refused.add(uid)
            self.log.warning("memguard: refused uid %s on the status socket %s (only its user or root)", uid, self.path)
        message = f"uid {uid} may not read this server's status (only uid {os.geteuid()}, its user, or root)"
        self.answers.append(_Answer(conn, json.dumps({"error": message}).encode(), now + ANSWER_TIMEOUT))

    def _send(self, answer: _Answer, now: float) -> bool:
        """Send what the socket takes now; True once the answer is done with (sent, or dropped)."""
        try:
            sent = answer.conn.send(answer.outbox)
            answer.outbox = answer.outbox[sent:]
            done = not answer.outbox
        except (BlockingIOError, InterruptedError):
            done = False
        except OSError:  # the client went away
            done = True
        if done or now > answer.deadline:
            answer.conn.close()
            return True
        return False

    # -- end ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close every socket and remove the path, in the master only, and only if the file is still
        the one it made (with an explicit path, a USR2 upgrade's new master may have taken it)."""
        if self.sock is None or os.getpid() != self.master_pid:
            return
        for answer in self.answers:
            answer.conn.close()
        self.answers.clear()
        self.sock.close()
        self.sock = None
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass

    def _close_in_child(self) -> None:
        """In a process forked from the master (a worker, or a USR2 upgrade before its exec): drop
        its copies. A worker holding the listening socket could take a client's connection and
        never answer it, and one holding an answer's connection would keep that client waiting for
        the end of the answer after the master closed it."""
        if self.sock is None or os.getpid() == self.master_pid:
            return
        for answer in self.answers:
            answer.conn.close()
        self.answers.clear()
        self.sock.close()
        self.sock = None


def _remove_stale(path: str) -> None:
    """A socket file left at ``path`` (a master that was SIGKILLed, a pid reused) is removed;
    anything else there is not memguard's to remove."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    os.unlink(path)


# -- the master's side --------------------------------------------------------------------------
def serve(runtime: Runtime, server: Any) -> StatusEndpoint | None:
    """Open the status socket (from `Runtime.coordinate`, before the first fork). A place that
    cannot be used is one log line, and the server runs on without the endpoint."""
    wanted = runtime.settings.status_socket
    if wanted == "off":
        return None
    path, problems = (wanted, []) if wanted != "auto" else auto_path(os.getpid())
    if path is not None:
        try:
            endpoint = StatusEndpoint(path, lambda: render(runtime, server), server.log)
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
        else:
            server.log.info("memguard: status socket at %s (memguard top)", path)
            return endpoint
    server.log.warning(
        "memguard: no status socket for memguard top (MEMGUARD_STATUS_SOCKET=%s): %s; carrying on without it",
        wanted,
        "; ".join(problems),
    )
    return None


def render(runtime: Runtime, server: Any) -> bytes:
    """The status document, as JSON."""
    assert runtime.scoreboard is not None
    now = time.time()
    taken = snapshot.take(runtime.scoreboard, runtime.tally, runtime.settings, runtime.shared, now)
    slots = ((getattr(worker, SLOT_ATTR, None), pid) for pid, worker in list(server.WORKERS.items()))
    starting = {slot: pid for slot, pid in slots if slot is not None}
    cgroup = runtime.oom.cgroup if runtime.oom is not None else None
    info = {
        "pid": os.getpid(),
        "name": server.proc_name,
        "bind": list(server.cfg.bind),
        # the worker count asked for, without spawn-first's raise for a replacement
        "workers": runtime.coordinator.wanted() if runtime.coordinator is not None else server.num_workers,
        "metric": runtime.settings.metric,
        "dry_run": runtime.settings.dry_run,
        "gunicorn": gunicorn.__version__,
        "memguard": __version__,
    }
    working_set = read_working_set(cgroup) if cgroup is not None else None
    taken_exits = list(runtime.exits)  # one C-level copy: a SIGCHLD handler (22/23) may append meanwhile
    return json.dumps(document(taken, info, starting, working_set, taken_exits, now)).encode()
