"""Issue 16: no fault gets worse because memguard is there.

Real gunicorn on 127.0.0.1, observed from outside: worker PIDs, HTTP answers, the error log,
sockets, the event log file.
"""

from __future__ import annotations

import errno
import http.client
import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from bench.harness import Gunicorn, free_port, poll, scrape

from .conftest import INTERNALS, MiB

HOOKS = ["-c", "python:gunicorn_memguard.conf"]


def env(limit: int, **extra: str) -> dict[str, str]:
    return {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
        "MEMGUARD_REPORT_INTERVAL": "200ms",
        **extra,
    }


# -- 2. file descriptors memguard does not own -------------------------------------------------
@pytest.mark.parametrize("then_open", [False, True], ids=["app-closes-it", "app-closes-it-and-reuses-the-number"])
def test_an_app_closing_memguards_fd_keeps_its_guard_and_its_own_fds(then_open, baseline_uss, tmp_path):
    with Gunicorn([*HOOKS, "apps.faults:app"], env(baseline_uss + 40 * MiB), tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        answer = json.loads(server.get(f"/close-statm{'?then_open=1' if then_open else ''}")[1])
        assert answer["closed"], "memguard's probe had an fd open on statm"
        if then_open:
            assert answer["app_fd"] in answer["closed"], "the app's file took memguard's old fd number"
        for _ in range(50):  # each request ends with memguard's RSS read
            server.get("/")
        assert not server.log_lines("without a memory guard"), server.log()
        if then_open:
            assert server.get("/app-fd")[1] == b"the app's own data\n", "memguard closed or disturbed the app's fd"
        assert server.worker_pids() == {pid}
        # and the guard still works: a leak past the limit retires this worker
        for _ in range(60):
            server.get("/leak?kib=1024")
            if server.log_lines(f"retiring worker pid={pid}"):
                break
        poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=10, what="the retirement")


# -- 3. a full disk under MEMGUARD_EVENT_LOG -----------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a disk that can be filled up and emptied again."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def parsed(path: Path) -> tuple[list[dict], list[str]]:
    events, broken = [], []
    for line in path.read_text(errors="replace").splitlines():
        if not line:
            continue  # two processes ending the same partial line leave an empty one
        try:
            events.append(json.loads(line))
        except ValueError:
            broken.append(line)
    return events, broken


def test_a_full_disk_is_one_error_line_and_the_event_log_recovers(baseline_uss, small_disk, tmp_path):
    events = small_disk / "events.jsonl"
    extra = {"MEMGUARD_EVENT_LOG": str(events)}
    with Gunicorn([*HOOKS, "apps.faults:app"], env(baseline_uss + 30 * MiB, **extra), tmp_path / "g.log") as server:
        server.wait_ready()
        poll(
            lambda: {e["pid"] for e in parsed(events)[0] if e["event"] == "sample"} >= server.worker_pids(),
            timeout=10,
            what="samples from both workers",
        )
        filler = fill(small_disk)
        poll(lambda: server.log_lines("cannot write the event log"), timeout=10, what="the error line")
        # while the disk is full: every worker samples, one retires (the master writes its exit),
        # its replacement samples too; all of these writes fail
        first = server.worker_pids()
        for _ in range(80):
            if server.log_lines("retiring worker"):
                break
            server.get("/leak?kib=1024")
        poll(lambda: (now := server.worker_pids()) and len(now) == 2 and now != first, timeout=20, what="a replacement")
        fresh = min(server.worker_pids() - first)
        poll(lambda: time.time() - psutil.Process(fresh).create_time() > 1.5, timeout=5, what="replacement sampling")
        assert len(server.log_lines("cannot write the event log")) == 1, server.log()

        filler.unlink()  # space again: the log must recover by itself, and say so once
        poll(lambda: server.log_lines("is written again"), timeout=10, what="the recovery line")
        poll(
            lambda: {e["pid"] for e in parsed(events)[0] if e["event"] == "sample" and e["pid"] == fresh},
            timeout=10,
            what="the replacement's samples in the event log",
        )
        start = events.stat().st_size
        poll(lambda: events.stat().st_size > start + 2000, timeout=10, what="more events")
        assert len(server.log_lines("cannot write the event log")) == 1, server.log()
        recovered = server.log_lines("is written again")
        assert len(recovered) == 1, server.log()
        assert re.search(r"at least [1-9]\d* event\(s\) were lost", recovered[0])
        _, broken = parsed(events)
        assert len(broken) <= 1, f"at most the one line the disk filled up in: {broken}"


# -- 1. the metrics endpoint must not stall the master ---------------------------------------------
def _idle_connections(port: int, count: int) -> list[socket.socket]:
    idle = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a request that never ends
        idle.append(sock)
    return idle


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_scrape_connections_do_not_delay_forks(tmp_path):
    metrics_port = free_port()
    extra = {"MEMGUARD_PROMETHEUS_PORT": str(metrics_port)}
    with Gunicorn([*HOOKS, "apps.faults:app"], env(2**40, **extra), tmp_path / "g.log") as server:
        server.wait_ready()
        poll(lambda: scrape(metrics_port), timeout=10, what="a first scrape")
        idle = _idle_connections(metrics_port, 16)
        try:
            before = server.worker_pids()
            started = time.monotonic()
            server.master.send_signal(signal.SIGTTIN)  # the master forks one more worker
            poll(lambda: len(server.worker_pids()) == 3, timeout=10, interval=0.01, what="the new worker")
            forked_after = time.monotonic() - started
            assert forked_after < 1.0, f"a fork waited {forked_after:.2f}s behind idle scrape connections"
            (fresh,) = server.worker_pids() - before
            assert all(
                c.laddr.port != metrics_port and (not c.raddr or c.raddr.port != metrics_port)
                for c in psutil.Process(fresh).net_connections("tcp")
            ), "the worker holds scrape sockets"

            started = time.monotonic()
            metrics = scrape(metrics_port)  # a real scrape gets through while the idle ones hold on
            took = time.monotonic() - started
            assert fresh in {int(v) for v in metrics["memguard_worker_pid"].values()}
            assert took < 1.0, f"a scrape took {took:.2f}s behind idle connections"
            for sock in idle:  # every idle connection is cut off (evicted, or after the timeout)
                sock.settimeout(5)
                assert _closed_by_server(sock)
        finally:
            for sock in idle:
                sock.close()
        assert not server.log_lines("Traceback"), server.log()


def test_after_a_usr2_upgrade_the_new_master_serves_metrics(tmp_path):
    metrics_port = free_port()
    # gunicorn re-executes its own command line; run as ``python -m gunicorn`` that puts the gunicorn
    # package's folder first on sys.path, where its ``http`` package shadows the standard library's
    extra = {"MEMGUARD_PROMETHEUS_PORT": str(metrics_port), "PYTHONSAFEPATH": "1"}
    server = Gunicorn([*HOOKS, "apps.faults:app"], env(2**40, **extra), tmp_path / "g.log")
    new_master = None
    try:
        server.wait_ready()
        poll(lambda: scrape(metrics_port), timeout=10, what="a first scrape")
        old_workers = server.worker_pids()
        server.master.send_signal(signal.SIGUSR2)

        def upgraded() -> psutil.Process | None:
            for child in server.master.children():
                if child.pid not in old_workers and len(child.children()) == 2:
                    return child
            return None

        new_master = poll(upgraded, timeout=30, what="the new master and its workers")
        new_workers = {c.pid for c in new_master.children()}
        # its workers are forked after when_ready, where it found the port still taken by the old master
        server.stop()  # the old master exits, as after a successful upgrade
        metrics = poll(
            lambda: (
                (m := _try_scrape(metrics_port))
                and {int(v) for v in m["memguard_worker_pid"].values()} == new_workers
                and m
            ),
            timeout=10,
            what="the new master's metrics",
        )
        assert metrics
        assert server.log_lines("is in use") and server.log_lines("for its port)"), server.log()
    finally:
        server.stop()
        if new_master is not None and new_master.is_running():
            new_master.terminate()
            new_master.wait(30)


def _try_scrape(port: int):
    try:
        return scrape(port, timeout=2)
    except OSError:
        return None


# -- 4. uvicorn workers: a normal stop is no error; keep-alive ends with the retirement -------------
UVICORN_CLASS = ["-k", "gunicorn_memguard.workers.UvicornWorker"]
STOCK_UVICORN = [*HOOKS, "-k", "uvicorn_worker.UvicornWorker"]


@pytest.mark.parametrize(
    ("args", "how"),
    [(UVICORN_CLASS, "SIGTERM"), (UVICORN_CLASS, "SIGINT"), (STOCK_UVICORN, "SIGTERM")],
    ids=["memguard-class-TERM", "memguard-class-INT", "stock-with-hooks-TERM"],
)
def test_stopping_gunicorn_with_uvicorn_workers_logs_no_error(args, how, tmp_path):
    # (A stock uvicorn worker ignores the SIGQUIT that SIGINT to the master sends it, and is
    # SIGKILLed after graceful_timeout: the next test.)
    pytest.importorskip("uvicorn_worker")
    server = Gunicorn([*args, "apps.asgi:app"], {"MEMGUARD_MAX_MEMORY": "1TiB"}, tmp_path / "g.log")
    try:
        server.wait_ready()
        workers = server.worker_pids()
        # both serving (uvicorn's signal handlers are in place from this line on), not still booting
        poll(lambda: all(server.log_lines(f"Started server process [{pid}]") for pid in workers), 10, what="uvicorn")
        server.proc.send_signal(getattr(signal, how))
        server.proc.wait(30)
    finally:
        server.stop()
    log = server.log()
    assert "[ERROR]" not in log, log
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in log or f"pid={pid} was stopped by" in log, log
    if args is UVICORN_CLASS:  # memguard's class exits 0, like gunicorn's own workers
        assert "was sent SIGTERM" not in log, log


@INTERNALS
def test_a_worker_gunicorn_sigkills_at_a_quick_stop_is_reported_as_gunicorns(tmp_path):
    """A stock uvicorn worker ignores gunicorn's quick stop (SIGINT to the master sends it SIGQUIT),
    so gunicorn SIGKILLs it after graceful_timeout: memguard says the master did, not "cause
    unknown". (memguard's own UvicornWorker stops at once.)"""
    pytest.importorskip("uvicorn_worker")
    args = [*STOCK_UVICORN, "--graceful-timeout", "2"]
    server = Gunicorn([*args, "apps.asgi:app"], {"MEMGUARD_MAX_MEMORY": "1GiB"}, tmp_path / "g.log", workers=1)
    with server:
        server.wait_ready()
        (pid,) = server.worker_pids()
        poll(lambda: server.log_lines(f"Started server process [{pid}]"), 10, what="uvicorn's signal handlers")
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(30)
    assert server.log_lines(f"Worker (pid:{pid}) was sent SIGKILL"), "gunicorn did not have to kill it"
    assert server.log_lines(f"worker pid={pid} was killed by SIGKILL from gunicorn's master")
    assert not server.log_lines("cause unknown")


def test_a_retiring_uvicorn_worker_closes_keep_alive_connections_after_their_response(tmp_path):
    pytest.importorskip("uvicorn")
    with Gunicorn([*UVICORN_CLASS, "apps.asgi:app"], {}, tmp_path / "idle.log", workers=1) as probe:
        probe.wait_ready()
        for _ in range(20):
            probe.get("/")
        idle = psutil.Process(min(probe.worker_pids())).memory_full_info().uss
    limit = idle + 30 * MiB
    clients = 4
    with Gunicorn([*UVICORN_CLASS, "apps.asgi:app"], env(limit), tmp_path / "g.log", workers=1) as server:
        server.wait_ready()
        stop = threading.Event()
        served: list[tuple[int, int]] = []  # (client, pid) per response, in order

        def client(number: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            while not stop.is_set():
                try:
                    conn.request("GET", "/leak?kib=256")
                    resp = conn.getresponse()
                    resp.read()
                    served.append((number, int(resp.getheader("x-pid", "0") or 0)))
                except (OSError, http.client.HTTPException):
                    conn.close()  # closed by the server: connect again, to whichever worker
                    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        try:
            line = poll(lambda: server.log_lines("exited gracefully after retirement"), timeout=60, what="a retirement")
        finally:
            stop.set()
            for thread in threads:
                thread.join(15)
        retired = server.log_lines("retiring worker")[0]
        at_retirement = int(re.search(r"requests=(\d+)", retired)[1])
        at_exit = int(re.search(r"requests=(\d+)", line[0])[1])
        # Once the retirement begins, each client gets at most its current response on its keep-alive
        # connection, and one on a connection the worker accepted before its accept loop paused (a
        # just-accepted connection is served, as README says): 2 per client, where it used to be
        # hundreds (212 with 4 clients).
        after = at_exit - at_retirement
        assert after <= 2 * clients, f"{after} requests served after the retirement"
