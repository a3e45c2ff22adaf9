"""Drive a real gunicorn on 127.0.0.1 and watch it from outside: worker PIDs, memory, logs.

Shared by the integration tests, the demo and the benchmarks."""

from __future__ import annotations

import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


def _control_socket_off() -> list[str]:
    """gunicorn 27 opens a control socket at one fixed path per user; parallel servers would share it."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


T = TypeVar("T")


def poll(check: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Return check()'s first truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """One gunicorn master, started with ``args`` from ``cwd`` (by default the tests folder, so
    ``apps.x:app`` loads), with every ``MEMGUARD_*`` variable of this process removed."""

    def __init__(
        self,
        args: Iterable[str],
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        workers: int = 2,
        cwd: Path = TESTS,
        container: Container | None = None,
        control_socket: Path | None = None,
        cpus: str | None = None,
    ) -> None:
        self.port = free_port()
        self.nworkers = workers
        self.log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"gunicorn-{self.port}.log"
        self.cwd = cwd
        self.env = dict(env or {})
        self.unset = sorted(k for k in os.environ if k.startswith("MEMGUARD_") and k not in self.env)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MEMGUARD_")}
        full_env.update(self.env)
        full_env["PYTHONPATH"] = str(cwd) + os.pathsep + full_env.get("PYTHONPATH", "")
        self.args = [
            sys.executable,
            "-m",
            "gunicorn",
            "-b",
            f"127.0.0.1:{self.port}",
            "-w",
            str(workers),
            "--log-level",
            "info",
            "--graceful-timeout",
            "10",
            *(["--control-socket", str(control_socket)] if control_socket else _control_socket_off()),
            *args,
        ]
        if cpus is not None:  # pinned (taskset execs gunicorn: same pid)
            self.args = ["taskset", "-c", cpus, *self.args]
        if container is not None:
            self.args = container.wrap(self.args)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, cwd=cwd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def command(self) -> str:
        """What this server runs, as a shell command to paste in ``cwd``: the MEMGUARD_* variables
        it unsets and the ones it sets, then every argument. PYTHONPATH is left out: ``python -m``
        puts the working directory first on ``sys.path`` already."""
        executable = Path(self.args[0])
        if executable.is_relative_to(self.cwd):
            executable = executable.relative_to(self.cwd)
        unset = ["env", *(arg for name in self.unset for arg in ("-u", name))] if self.unset else []
        assignments = [f"{name}={value}" for name, value in self.env.items()]
        return shlex.join([*unset, *assignments, str(executable), *self.args[1:]])

    # -- observing ----------------------------------------------------------------------
    @property
    def master(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def worker_pids(self) -> set[int]:
        """Live workers; one that exits while they are listed is left out, not the whole set."""
        try:
            children = self.master.children()
        except psutil.Error:
            return set()
        pids = set()
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.add(child.pid)
            except psutil.Error:
                continue
        return pids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self, needle: str) -> list[str]:
        return [line for line in self.log().splitlines() if needle in line]

    def get(self, path: str = "/", timeout: float = 30.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.get("/", timeout=2)[0] == 200 and len(self.worker_pids()) >= self.nworkers
            except OSError:
                return False

        poll(ready, timeout, what="gunicorn to serve")

    # -- stopping -----------------------------------------------------------------------
    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for child in self.master.children(recursive=True):
                    child.kill()
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Gunicorn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Container:
    """A real memory cgroup (v1) of ``limit`` bytes to start gunicorn in, as a container would.

    It is made inside the memory cgroup this process runs in, never beside it, so whatever limits
    the host sets still apply; the kernel's OOM killer acts in it at ``limit`` (no swap is counted:
    ``memory.memsw`` is left alone, and these machines have none). ``unavailable()`` says why one
    cannot be made here: not root, or no writable v1 memory controller (cgroup v2-only hosts)."""

    V1 = Path("/sys/fs/cgroup/memory")

    def __init__(self, limit: int, name: str | None = None) -> None:
        why = self.unavailable()
        if why:
            raise RuntimeError(why)
        self.path = self._parent() / (name or f"memguard-test-{os.getpid()}-{free_port()}")
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit))
        self.limit = limit

    @classmethod
    def _parent(cls) -> Path:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                return cls.V1 / path.lstrip("/")
        raise RuntimeError("no v1 memory cgroup in /proc/self/cgroup")

    @classmethod
    def unavailable(cls) -> str | None:
        if os.geteuid() != 0:
            return "making a memory cgroup needs root"
        try:
            parent = cls._parent()
        except (OSError, RuntimeError) as exc:
            return f"no cgroup v1 memory controller here ({exc})"
        if not os.access(parent / "memory.limit_in_bytes", os.W_OK) or not os.access(parent, os.W_OK):
            return f"the memory cgroup {parent} is not writable"
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this cgroup: the shell moves itself in, then execs (same pid)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this cgroup."""
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def peak(self) -> int:
        """The most memory this cgroup has been charged (what the kernel compares to the limit)."""
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def close(self) -> None:
        """Remove it once its processes are gone."""
        poll(lambda: not (self.path / "cgroup.procs").read_text().strip(), 30, what=f"{self.path} to empty")
        self.path.rmdir()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXITING = re.compile(rb"Worker exiting \(pid: (\d+)\)")


@dataclass
class MemoryWatch:
    """Sample every worker's memory from outside, every ``interval`` seconds, in a thread.

    A worker stops being counted once gunicorn logs "Worker exiting" for it: that is after its
    drain, when only its exit is left (which, with ``MEMGUARD_FAST_EXIT=no`` or memguard off, runs
    the interpreter's teardown: it briefly turns memory shared with the master private, USS +6 MiB
    on the test app, RSS unchanged) without serving anything. The log
    is read again after each round of samples and a sample is kept only if its worker had not
    logged that line by then, so a sample taken in teardown is never kept, however long this
    thread waits for the CPU between reading the log and reading memory.
    """

    server: Gunicorn
    metric: str = "rss"
    interval: float = 0.02
    peak: dict[int, int] = field(default_factory=dict)
    exiting: set[int] = field(default_factory=set)
    min_workers: int = 10**9
    samples: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._log_offset = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read_exits(self) -> None:
        with open(self.server.log_path, "rb") as fh:
            fh.seek(self._log_offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1
        self._log_offset += end
        self.exiting.update(int(m) for m in EXITING.findall(chunk[:end]))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read_exits()
            pids = self.server.worker_pids() - self.exiting
            self.min_workers = min(self.min_workers, len(pids))
            values = {}
            for pid in pids:
                try:
                    proc = psutil.Process(pid)
                    info = proc.memory_full_info() if self.metric != "rss" else proc.memory_info()
                    values[pid] = getattr(info, self.metric)
                except psutil.Error:
                    continue
            self._read_exits()
            for pid, value in values.items():
                if pid not in self.exiting:
                    self.peak[pid] = max(self.peak.get(pid, 0), value)
            self.samples += 1

    def stop(self) -> MemoryWatch:
        self._stop.set()
        self._thread.join(5)
        return self


@dataclass
class LoadResult:
    statuses: list[int | str]

    @property
    def failed(self) -> list[int | str]:
        return [s for s in self.statuses if s != 200]


def load(
    server: Gunicorn, path: str, requests: int, concurrency: int, timeout: float = 120.0, pace: float | None = None
) -> LoadResult:
    """Send ``requests`` GETs with ``concurrency`` keep-alive-less clients; bounded in count and
    time. With ``pace``, the clients together send about that many requests per second."""
    start = time.monotonic()
    deadline = start + timeout
    gap = concurrency / pace if pace else 0.0
    statuses: list[int | str] = []
    lock = threading.Lock()
    per_client = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]

    def client(count: int) -> None:
        for i in range(count):
            if gap:
                time.sleep(max(0.0, start + i * gap - time.monotonic()))
            if time.monotonic() > deadline:
                result: int | str = "deadline"
            else:
                try:
                    result = server.get(path)[0]
                except (OSError, http.client.HTTPException) as exc:  # e.g. a worker killed mid-response
                    result = type(exc).__name__
            with lock:
                statuses.append(result)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, per_client))
    return LoadResult(statuses)


def scrape(port: int, timeout: float = 5.0) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET a Prometheus endpoint on 127.0.0.1 and parse it: sample name -> sorted labels -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise AssertionError(f"scrape answered {resp.status}: {body}")
    finally:
        conn.close()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


class StatsdListener:
    """A UDP statsd server on 127.0.0.1 that keeps every datagram it receives, in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(65536).decode(errors="replace"))
            except TimeoutError:
                continue

    def matching(self, prefix: str) -> list[str]:
        return [d for d in list(self.datagrams) if d.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
