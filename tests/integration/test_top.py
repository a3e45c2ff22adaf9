"""Issue 13: ``memguard top`` against a live server whose workers retire under load.

Real gunicorn on 127.0.0.1 under the hook module, a leaking app, real HTTP load; ``memguard top``
run as the command a user types (``--json``, ``--once``, and the live view in a real terminal:
tmux), its rows checked against the worker pids psutil sees and the retirements in the log.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from bench.harness import Gunicorn, load, poll
from gunicorn_memguard.cli import main

from .conftest import INTERNALS, MiB

HOOKS = ["-c", "python:gunicorn_memguard.conf"]
NOBODY = 65534
T = TypeVar("T")


def settings(limit: int, xdg: Path, **extra: str) -> dict[str, str]:
    """A hard limit far above the soft one, so every retirement here is a soft-limit one; the
    status socket in a directory of this test's own (``auto`` under ``XDG_RUNTIME_DIR``)."""
    return {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_HARD_MAX_MEMORY": f"{limit + 200 * MiB}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
        "MEMGUARD_REPORT_INTERVAL": "200ms",
        "XDG_RUNTIME_DIR": str(xdg),
        **extra,
    }


def top(xdg: Path, *args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    # TMPDIR too: top also looks in <tmp>/memguard-<uid>, where every other server on this machine
    # (another test suite's) has its socket; this test's server is under its own XDG_RUNTIME_DIR
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMGUARD_")} | {
        "XDG_RUNTIME_DIR": str(xdg),
        "TMPDIR": str(xdg),
    }
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn_memguard", "top", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        **kwargs,  # type: ignore[call-overload]
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def retirements(server: Gunicorn) -> dict[int, str]:
    """Each retired worker's pid and reason, from the log. Most are soft-limit retirements; a spare
    started ahead of one (predictive spawn-first) retires with reason ``spare`` when the load stops
    before its worker reaches the limit, as the load here does between steps."""
    lines = server.log_lines("memguard: retiring worker")
    return {int(m[1]): m[2] for m in (re.search(r"pid=(\d+) .* reason=(\w+)", line) for line in lines) if m}


def retired_pids(server: Gunicorn) -> set[int]:
    return set(retirements(server))


def leak_until_retired(server: Gunicorn, count: int) -> set[int]:
    """Leak 1 MiB per request until ``count`` workers more than before have retired and been
    replaced; each worker has ~30 MiB of headroom, so 80 requests over two workers retire some."""
    before = retired_pids(server)
    for _ in range(10):
        assert load(server, "/leak?kib=1024", requests=80, concurrency=4).failed == []
        if len(retired_pids(server) - before) >= count:
            break
    gone = retired_pids(server) - before
    assert len(gone) >= count, server.log()
    poll(lambda: not gone & server.worker_pids() and len(server.worker_pids()) == 2, 30, what="replacements")
    return gone


@pytest.fixture(scope="module")
def served(baseline_uss, tmp_path_factory):
    """One server for the module, with workers retired under load already."""
    xdg = tmp_path_factory.mktemp("xdg")
    limit = baseline_uss + 30 * MiB
    with Gunicorn([*HOOKS, "apps.leaky:app"], settings(limit, xdg), xdg / "g.log") as server:
        server.wait_ready()
        leak_until_retired(server, 1)
        yield server, xdg, limit


@INTERNALS  # served from the arbiter's loop, whose passes and reaping changed across gunicorn's majors
def test_json_and_once_show_the_live_workers_and_the_last_retirements(served):
    server, xdg, limit = served
    master = server.proc.pid

    def settled() -> tuple[dict, dict[int, str]] | None:
        retired = retirements(server)  # read first: a retirement logged after it is in neither
        doc = json.loads(top(xdg, "--json", "--pid", str(master)).stdout)
        rows = doc["workers"]
        return (
            {row["pid"] for row in rows} == server.worker_pids()
            and all(row["state"] == "serving" and row["memory"] for row in rows)  # each read exactly once
            and retired.keys() <= {gone["pid"] for gone in doc["exits"]}
            and (doc, retired)
        )

    doc, retired = poll(settled, timeout=20, interval=0.2, what="memguard top --json to show the live workers")
    assert doc["server"]["pid"] == master
    assert doc["server"]["bind"] == [f"127.0.0.1:{server.port}"] and doc["server"]["workers"] == 2
    assert doc["limits"]["soft"] == limit and doc["limits"]["hard"] == limit + 200 * MiB
    for row in doc["workers"]:
        assert limit * 0.9 - 1 <= row["limit"] <= limit, row  # MEMGUARD_JITTER's default 10% below the limit
        assert row["ceiling"] == limit + 200 * MiB
        assert 0 < row["memory"] <= row["rss"], row  # USS, exact: never above RSS
        assert 0 <= row["age"] < 120, row
    # a replacement started ahead of a retirement (spawn-first) is a third worker for a moment
    assert doc["totals"]["workers"] == len(doc["workers"]) in (2, 3), doc
    for why, count in Counter(retired.values()).items():
        assert doc["totals"]["retirements"][why] >= count, doc
    reasons = retirements(server)  # read after the document: every exit in it was logged before
    for gone in doc["exits"]:  # every exit of this server is a retirement it logged, ended gracefully
        assert gone["pid"] in reasons and not psutil.pid_exists(gone["pid"]), gone
        assert (gone["outcome"], gone["reason"]) == ("graceful", reasons[gone["pid"]]), gone
        assert gone["reason"] in ("soft_limit", "spare"), gone
        if gone["reason"] == "soft_limit":
            assert gone["memory"] >= limit * 0.9 - 1, gone  # it retired past its jittered limit

    # --once: the same rows as a plain table; and with one server of this user, no --pid is needed
    def once_settled() -> str | None:  # a spare that leaves between the snapshot and psutil's look: again
        once = top(xdg, "--once").stdout
        rows = [line.split() for line in once.splitlines() if line[:1].isdigit() and "pid" not in line]
        return {int(cells[1]) for cells in rows} == server.worker_pids() and once

    once = poll(once_settled, timeout=20, interval=0.2, what="memguard top --once to show the live workers")
    assert f"master pid {master}," in once.splitlines()[0]
    assert any(f"pid {pid}  graceful  reason {why}" in once for pid, why in retired.items()), once

    # the socket: owner-only, held by the master, not by any worker (they close their copies)
    path = xdg / "memguard" / f"{master}.sock"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert str(path) in {c.laddr for c in server.master.net_connections("unix")}
    for pid in server.worker_pids():
        assert str(path) not in {c.laddr for c in psutil.Process(pid).net_connections("unix")}


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/test.sh installs it as root)")
def test_the_live_view_refreshes_in_place_in_a_real_terminal(served):
    server, xdg, _ = served
    tmux = ["tmux", "-L", f"memguard-top-{os.getpid()}"]  # a tmux server of this test's own
    # the pane's size is the terminal's (160x40), not the COLUMNS=80 pytest sets while it captures output
    command = shlex.join(
        [
            "env", "-u", "COLUMNS", "-u", "LINES", f"XDG_RUNTIME_DIR={xdg}",
            f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}", sys.executable,
            "-m", "gunicorn_memguard", "top", "--pid", str(server.proc.pid), "--interval", "300ms",
        ]
    )  # fmt: skip
    # bash says how it ended (bash, unlike dash, outlives a Ctrl-C its foreground child handled)
    command = shlex.join(["bash", "-c", f'{command}; echo "memguard top exited with status $?"'])

    def pane() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True).stdout

    def showing(pids: set[int], gone: dict[int, str]) -> str | None:
        text = pane()
        rows = {int(m.group(1)) for m in re.finditer(r"^\s*\d+\s+(\d+)\s+serving\b", text, re.M)}
        return rows == pids and all(f"pid {pid}  graceful  reason {why}" in text for pid, why in gone.items()) and text

    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "160", "-y", "40", "-s", "top", command, ";", "set", "remain-on-exit", "on"],
        check=True,
    )
    try:
        first = _or_show(
            pane,
            lambda: poll(
                lambda: showing(server.worker_pids(), retirements(server)),
                20,
                0.2,
                what="the pane to show the workers",
            ),
        )
        # more retirements: the same screen follows the replacements, redrawn in place, not scrolled
        gone = leak_until_retired(server, 1)
        later = _or_show(
            pane,
            lambda: poll(
                lambda: showing(server.worker_pids(), {pid: retirements(server)[pid] for pid in gone}),
                20,
                0.2,
                what="the pane to show the replacements",
            ),
        )
        assert later.count("gunicorn apps.leaky:app on") == 1, later
        assert first != later
        subprocess.run([*tmux, "send-keys", "-t", "top", "C-c"], check=True)  # the key, as a user presses it

        _or_show(
            pane,
            lambda: poll(
                lambda: "memguard top exited with status 0" in pane(), 10, what="memguard top to exit 0 on Ctrl-C"
            ),
        )
        print(later)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def _or_show(pane: Callable[[], str], wait: Callable[[], T]) -> T:
    """``wait()``, or its failure with what the terminal showed."""
    try:
        return wait()
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the pane showed:\n{pane()}") from None


@pytest.fixture
def open_dir():
    """A directory any user may enter (pytest's own are 0700), removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="memguard-top-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def top_as_nobody(*args: str) -> tuple[int, str]:
    """``memguard top ARGS`` run as uid 65534 in a forked child (the interpreter may sit where that
    user cannot reach it): its exit status and what it printed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 99
        try:
            sys.stdout = sys.stderr = open(write, "w", closefd=False)  # flushed below, then _exit
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = main(["top", *args])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as output:
        printed = output.read().decode()
    _, waited = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(waited), printed


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run memguard top as another user")
def test_another_user_is_refused_and_the_socket_goes_with_the_master(baseline_uss, open_dir, tmp_path):
    path = open_dir / "status.sock"
    env = settings(baseline_uss + 30 * MiB, tmp_path, MEMGUARD_STATUS_SOCKET=str(path))
    with Gunicorn([*HOOKS, "apps.leaky:app"], env, tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        poll(path.exists, 10, what="the status socket")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        code, printed = top_as_nobody("--socket", str(path), "--json")
        assert (
            code == 1
            and printed == f"memguard top: permission denied on {path}: only the server's user (or root) may read it\n"
        )
        # past the file's mode, the master's SO_PEERCRED check refuses the peer
        path.chmod(0o666)
        code, printed = top_as_nobody("--socket", str(path), "--json")
        assert code == 1 and f"uid {NOBODY} may not read this server's status" in printed, printed
        assert server.log_lines(f"memguard: refused uid {NOBODY} on the status socket")
        assert json.loads(top(tmp_path, "--socket", str(path), "--json").stdout)["server"]["pid"] == server.proc.pid
    assert not path.exists(), "the master removes its socket when it exits"
    gone = top(tmp_path, "--socket", str(path), "--once", check=False)
    assert gone.returncode == 1 and gone.stderr == f"memguard top: no status socket at {path}\n"
