"""``memguard top``'s pieces on their own: the status document from a real scoreboard, its plain
and rich forms, the master's status socket served over a real unix socket, the command's errors."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from gunicorn_memguard.cli.top import TopError, find_socket, servers
from gunicorn_memguard.master import status
from gunicorn_memguard.master.status import StatusEndpoint, auto_directories, private_problem
from gunicorn_memguard.report import snapshot, view
from gunicorn_memguard.report.status import document
from gunicorn_memguard.report.tally import Tally
from gunicorn_memguard.settings import Settings, SettingsError, load_settings
from gunicorn_memguard.shared.limits import SharedLimits
from gunicorn_memguard.shared.scoreboard import Scoreboard

from .conftest import Lines, MiB

SERVER = {
    "pid": 100, "name": "app:app", "bind": ["127.0.0.1:8000"], "workers": 3, "metric": "uss", "dry_run": False,
    "gunicorn": "27.0.1", "memguard": "0.1.0",
}  # fmt: skip


def a_document() -> dict:
    """Three workers (serving, waiting, draining) and one still booting, one worker reaped."""
    board, tally, shared = Scoreboard(slots=8), Tally(), SharedLimits()
    shared.set_limits(300 * MiB, None)
    shared.set_memory(2048 * MiB, None)
    serving, waiting, draining, booting, reaped = (board.claim(1000.0) for _ in range(5))
    for slot, pid in ((serving, 201), (waiting, 202), (draining, 203), (reaped, 205)):
        board.start(slot, pid, born=1000.0, limit=(290 - slot) * MiB)
        board.sample(slot, 1050.0, (100 + slot) * MiB, (150 + slot) * MiB, requests=10 + slot)
        board.exact(slot, 1050.0, (90 + slot) * MiB)
    board.set_growth(serving, 1024.0)
    board.waiting(waiting, 310 * MiB, "soft_limit")
    board.retiring(draining, 1055.0, "growth_rate")
    board.retiring(reaped, 1040.0, "soft_limit")
    with tally.lock:  # as report_exit does
        tally.fold(board.read(reaped), "graceful")
        board.release(reaped)
    taken = snapshot.take(board, tally, Settings(max_memory=300 * MiB), shared, 1060.0)
    gone = {"pid": 205, "slot": reaped, "time": 1041.0, "outcome": "graceful", "reason": "soft_limit", "age": 41.0,
            "requests": 14, "memory": 320 * MiB, "rss": 350 * MiB}  # fmt: skip
    older = gone | {"pid": 199, "time": 900.0}
    return document(taken, SERVER, {booting: 204}, 1500 * MiB, [older, gone], 1060.0)


def test_the_document_has_a_row_per_worker_its_limits_and_the_last_exits_newest_first():
    doc = a_document()
    assert json.loads(json.dumps(doc)) == doc  # plain JSON
    rows = {row["pid"]: row for row in doc["workers"]}
    assert {pid: row["state"] for pid, row in rows.items()} == {
        201: "serving", 202: "waiting", 203: "draining", 204: "starting"
    }  # fmt: skip
    assert rows[201]["memory"] == 90 * MiB and rows[201]["memory_bound"] == 100 * MiB  # exact, and the bound
    assert rows[201]["rss"] == 150 * MiB and rows[201]["age"] == 60.0 and rows[201]["requests"] == 10
    assert rows[201]["limit"] == 290 * MiB and rows[201]["ceiling"] == 300 * MiB  # no hard limit: the soft one
    assert rows[201]["growth"] == 1024.0 and rows[202]["growth"] is None  # NaN until a full window: null
    assert (rows[202]["reason"], rows[203]["reason"]) == ("soft_limit", "growth_rate")
    assert doc["limits"] == {"soft": 300 * MiB, "hard": None, "total_budget": None}
    assert doc["container"] == {"limit": 2048 * MiB, "working_set": 1500 * MiB}
    totals = doc["totals"]
    assert totals["workers"] == 4 and totals["memory"] == (90 + 91 + 92) * MiB
    assert totals["retirements"] == {"soft_limit": 1, "growth_rate": 1}  # the reaped one, and the draining one
    assert totals["exits"] == {"graceful": 1}
    assert [gone["pid"] for gone in doc["exits"]] == [205, 199]


def test_once_prints_an_aligned_table_and_the_exits():
    text = view.plain(a_document())
    lines = text.splitlines()
    assert lines[0].startswith("gunicorn app:app on 127.0.0.1:8000: master pid 100, 3 workers wanted")
    assert "container: limit 2.0 GiB, working set 1.5 GiB" in text
    table = lines[lines.index("") + 1 : lines.index("", lines.index("") + 1)]
    assert table[0].split() == ["SLOT", "PID", "STATE", "AGE", "REQS", "USS", "RSS", "LIMIT", "CEILING", "GROWTH",
                                "REASON"]  # fmt: skip
    for column in ("STATE", "REQS", "LIMIT", "REASON"):  # aligned: each column starts where its heading does
        at = table[0].index(column)
        assert all(line[at - 1] == " " and line[at] != " " for line in table[1:4]), (column, table)
    assert table[1].split() == ["0", "201", "serving", "1m00s", "10", "90.0", "MiB", "150.0", "MiB", "290.0", "MiB",
                                "300.0", "MiB", "3.5", "MiB/h", "-"]  # fmt: skip
    assert table[2].split()[2] == "waiting" and table[2].split()[-1] == "soft_limit"
    assert table[4].split() == ["3", "204", "starting", *["-"] * 8]
    assert "pid 205  graceful  reason soft_limit  age 41s  14 requests  USS 320.0 MiB" in lines[-2]


def test_the_live_view_renders_the_same_rows_with_rich():
    pytest.importorskip("rich")
    from rich.console import Console

    console = Console(width=160, record=True, color_system=None)
    console.print(view.live(a_document(), "no answer on /x within 5s", 1.0))
    text = console.export_text()
    assert "201" in text and "waiting" in text and "growth_rate" in text
    assert "memguard top: no answer on /x within 5s" in text and "refreshing every 1s" in text


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0.4, "0s"), (59, "59s"), (65, "1m05s"), (7260, "2h01m"), (90000, "1d01h")]
)
def test_ages_read_like_ps(seconds, shown):
    assert view.age(seconds) == shown


# -- the master's socket ----------------------------------------------------------------------
def read(path: Path) -> dict:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(str(path))
        endpoint_pass()  # the master's next arbiter pass answers
        return json.loads(b"".join(iter(lambda: client.recv(65536), b"")))


def endpoint_pass() -> None:
    for endpoint in _endpoints:
        endpoint.poll()


_endpoints: list[StatusEndpoint] = []


@pytest.fixture
def endpoint(tmp_path):
    served = StatusEndpoint(str(tmp_path / "s.sock"), lambda: json.dumps({"served": True}).encode(), Lines())
    _endpoints.append(served)
    yield served
    _endpoints.remove(served)
    served.close()


def test_the_endpoint_answers_a_connection_on_its_next_pass_and_is_owner_only(endpoint, tmp_path):
    path = tmp_path / "s.sock"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert endpoint.sock is not None and not endpoint.sock.get_inheritable() and not endpoint.sock.getblocking()
    assert read(path) == {"served": True}
    started = time.monotonic()
    endpoint.poll()  # nobody waiting: returns at once
    assert time.monotonic() - started < 0.05
    endpoint.close()
    assert not path.exists()


def test_a_client_that_never_reads_is_dropped_and_the_pass_never_waits(tmp_path):
    big = b"x" * (8 * MiB)  # more than a unix socket's buffer: the rest waits for the client
    served = StatusEndpoint(str(tmp_path / "s.sock"), lambda: big, Lines())
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(tmp_path / "s.sock"))
        started = time.monotonic()
        served.poll()
        assert time.monotonic() - started < 0.5 and len(served.answers) == 1  # sent what fit, kept the rest
        served.answers[0].deadline = time.monotonic() - 1  # as ANSWER_TIMEOUT later
        served.poll()
        assert served.answers == []
    served.close()


def test_a_forked_worker_closes_its_copies_and_never_removes_the_socket(endpoint, tmp_path):
    pid = os.fork()
    if pid == 0:  # the child: its copy is gone, and its exit leaves the master's socket alone
        code = 0 if endpoint.sock is None else 1
        endpoint.close()
        os._exit(code if (tmp_path / "s.sock").exists() else 2)
    _, waited = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(waited) == 0
    assert read(tmp_path / "s.sock") == {"served": True}


def test_a_stale_socket_is_replaced_and_anything_else_is_left_alone(tmp_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "s.sock"))
    stale.close()  # a master killed by SIGKILL leaves its file
    StatusEndpoint(str(tmp_path / "s.sock"), lambda: b"{}", Lines()).close()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OSError, match="exists and is not a socket"):
        StatusEndpoint(str(tmp_path / "file"), lambda: b"{}", Lines())
    assert (tmp_path / "file").read_text() == "mine"


def test_a_fault_while_answering_is_one_line_and_the_endpoint_closes(tmp_path):
    log = Lines()

    def broken() -> bytes:
        raise RuntimeError("boom")

    served = StatusEndpoint(str(tmp_path / "s.sock"), broken, log)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(tmp_path / "s.sock"))
        served.poll()
        served.poll()
    assert [level for level, _ in log.lines] == ["exception"] and "closing it" in log.text()
    assert served.sock is None and not (tmp_path / "s.sock").exists()


def test_auto_uses_a_private_directory_and_refuses_one_others_can_enter(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path, problems = status.auto_path(4321)
    assert path == str(tmp_path / "memguard" / "4321.sock") and problems == []
    assert stat.S_IMODE((tmp_path / "memguard").stat().st_mode) == 0o700
    (tmp_path / "memguard").chmod(0o755)
    assert private_problem(str(tmp_path / "memguard")) == (
        f"{tmp_path / 'memguard'} has mode 755; only its owner may enter it (700)"
    )
    path, problems = status.auto_path(4321)
    assert path == os.path.join(auto_directories()[1], "4321.sock")  # the per-user one under the temp dir
    assert "has mode 755" in problems[0]


# -- the command ------------------------------------------------------------------------------
def memguard_top(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEMGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "gunicorn_memguard", "top", *args], env=clean | env, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--interval", "0s"], "argument --interval: '0s' is out of range; expected a duration from 100ms to 1h"),
        (["--interval", "fast"], "argument --interval: 'fast': expected a duration from 100ms to 1h"),
        (["--pid", "abc"], "argument --pid: expected a process id (a whole number above 0), got 'abc'"),
        (["--pid", "1", "--socket", "/x"], "argument --socket: not allowed with argument --pid"),
    ],
)
def test_bad_arguments_are_named_with_the_accepted_form(args, said, tmp_path):
    done = memguard_top(*args, env={"XDG_RUNTIME_DIR": str(tmp_path), "TMPDIR": str(tmp_path)})
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_no_server_found_is_said_with_where_it_looked(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "TMPDIR": str(tmp_path)}
    done = memguard_top("--once", env=env)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("memguard top: no gunicorn server under memguard of this user found (looked in ")
    assert str(tmp_path / "run" / "memguard") in done.stderr
    done = memguard_top("--json", "--pid", "4321", env=env)
    assert done.returncode == 1 and "no status socket of master pid 4321" in done.stderr


def test_several_servers_are_listed_and_a_dead_masters_socket_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    # the temporary directory's servers too: only this test's, not other suites' on the machine
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "memguard").mkdir(mode=0o700)
    here = tmp_path / "memguard" / f"{os.getpid()}.sock"
    mine = StatusEndpoint(str(here), lambda: json.dumps({"server": SERVER}).encode(), Lines())
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "memguard" / f"{dead.pid}.sock").touch()  # its master is gone
    parent: StatusEndpoint | None = None
    stop = threading.Event()

    def arbiter() -> None:  # the masters' passes, while memguard top waits for their answers
        while not stop.wait(0.01):
            for endpoint in (mine, parent):
                if endpoint is not None:
                    endpoint.poll()

    passes = threading.Thread(target=arbiter)
    passes.start()
    try:
        assert servers() == {os.getpid(): str(here)}
        assert find_socket(None) == find_socket(os.getpid()) == str(here)
        parent = StatusEndpoint(str(tmp_path / "memguard" / f"{os.getppid()}.sock"), lambda: b"[]", Lines())
        with pytest.raises(TopError) as found:
            find_socket(None)
        assert str(found.value).splitlines() == [
            "2 servers found; say which with --pid:",
            *sorted(
                [
                    f"  --pid {os.getpid()}  app:app on 127.0.0.1:8000",
                    f"  --pid {os.getppid()}  ({tmp_path / 'memguard' / f'{os.getppid()}.sock'} did not answer with "
                    "a memguard status document)",
                ],
                key=lambda line: int(line.split()[1]),
            ),
        ]
    finally:
        stop.set()
        passes.join()
        mine.close()
        if parent is not None:
            parent.close()


def test_the_live_view_without_rich_names_the_extra(monkeypatch):
    from gunicorn_memguard.cli import top

    monkeypatch.setitem(sys.modules, "rich.live", None)  # as if the top extra were not installed
    with pytest.raises(top.TopError, match=r"pip install 'gunicorn-memguard\[top\]' \(--once and --json work"):
        top._live("/nowhere", 1.0)


@pytest.mark.parametrize("value", ["relative.sock", "/run/dir/", "x" * 3, "/" + "x" * 120])
def test_a_bad_status_socket_setting_is_named(value):
    with pytest.raises(SettingsError, match=f"MEMGUARD_STATUS_SOCKET={value!r} is invalid"):
        load_settings({"MEMGUARD_STATUS_SOCKET": value}, {})


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), (" OFF ", "off"), ("/run/a.sock", "/run/a.sock")])
def test_the_status_socket_setting(value, parsed):
    assert load_settings({"MEMGUARD_STATUS_SOCKET": value}, {}).status_socket == parsed
