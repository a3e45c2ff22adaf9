import threading
import time
from dataclasses import dataclass

import psutil
import pytest

from bench.harness import Gunicorn, poll
from gunicorn_memguard.probes.memory import process_rollup

MiB = 2**20
KiB = 2**10
# The tests that exercise what memguard does inside gunicorn and that changed across its majors:
# the arbiter's worker count and loop, reaping and exit attribution, gthread's drain before 24, the
# gevent, uvicorn and asgi workers. scripts/test.sh runs them on every supported gunicorn.
INTERNALS = pytest.mark.gunicorn_internals


def marking(values, internal):
    """Parametrize ``values``, those in ``internal`` marked as exercising gunicorn's internals."""
    return [pytest.param(v, marks=INTERNALS) if v in internal else v for v in values]


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True)
class Idle:
    """An idle worker of one app and worker class, measured on this machine, this gunicorn."""

    uss: int
    # How much its USS grows at a full garbage collection: the first one writes to every object
    # inherited from the master and so turns those pages private, without RSS growing. The guard's
    # cheap estimate between exact reads (last USS + RSS growth since) cannot see that: it is the
    # most a worker can be over a limit before its guard notices, beyond what it allocated itself.
    gc_unshare: int


def measure_idle(args: list[str], app: str, gc_path: str = "/gc") -> Idle:
    with Gunicorn([*args, app], workers=1) as server:
        server.wait_ready()
        for _ in range(20):
            server.get("/")
        (pid,) = server.worker_pids()
        proc = psutil.Process(pid)
        before = proc.memory_full_info().uss
        assert server.get(gc_path)[0] == 200
        after = proc.memory_full_info().uss
        return Idle(before, max(0, after - before))


def private_beyond_rss(pid: int) -> int | None:
    """USS − RSS of ``pid`` (minus the shared pages it has resident), None once it is gone."""
    rollup = process_rollup(pid)
    return None if rollup is None else rollup["uss"] - rollup["rss"]


def measure_exit_unshare(args: list[str], app: str, limit: int, retirements: int = 3) -> int:
    """How much a worker's USS grows while it retires and exits, beyond what it allocates: its drain
    and shutdown run code it never ran while serving (memguard's drain, the server's shutdown,
    asyncio's teardown), running code writes to the inherited objects it touches (refcounts; the
    counters and specialised bytecode of Python 3.11+), and the master writes to pages they share
    as it reaps and forks; each turns a shared page private without RSS growing. The guard cannot
    see it: its decision came before. 0.1–0.4 MiB on the test apps, varying from one retirement to
    the next, so the largest of ``retirements``: workers retired at ``limit`` in turn by one request
    to ``/leak`` past it, each after a full collection (``Idle.gc_unshare``) and warm-up requests,
    sampled from outside as often as the kernel answers until it is gone: the largest rise of
    USS − RSS (a page once private stays so; a page the worker allocates raises both)."""
    env = {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_SPAWN_FIRST": "no",
        "MEMGUARD_JITTER": "0%",
        "MEMGUARD_RECLAIM": "no",
    }
    worst = 0
    with Gunicorn([*args, app], env, workers=1) as server:
        for _ in range(retirements):
            server.wait_ready()
            assert server.get("/gc")[0] == 200
            for _ in range(20):
                assert server.get("/leak?kib=1")[0] == 200
            (pid,) = server.worker_pids()
            before = private_beyond_rss(pid)
            assert before is not None
            leak = threading.Thread(target=server.get, args=(f"/leak?kib={(limit >> 10) + 1024}",))
            leak.start()
            deadline = time.monotonic() + 30
            while (now := private_beyond_rss(pid)) is not None:
                assert time.monotonic() < deadline, f"worker {pid} did not retire and exit:\n{server.log()}"
                worst = max(worst, now - before)
            leak.join(30)
            assert server.log_lines(f"retiring worker pid={pid}"), server.log()
        poll(lambda: pid not in server.worker_pids(), 10, what=f"worker {pid} to be reaped")
        server.wait_ready()  # a replacement still booting would miss the stop and hold it up
    return worst


@pytest.fixture(scope="session")
def idle_leaky() -> Idle:
    """An idle sync worker of the leaky app."""
    return measure_idle([], "apps.leaky:app")


@pytest.fixture(scope="session")
def baseline_uss(idle_leaky) -> int:
    """USS of an idle worker of the leaky app, measured once on this machine, this gunicorn."""
    return idle_leaky.uss


@pytest.fixture(scope="session")
def master_pss() -> int:
    """PSS of an idle master under the hook module with one worker (what a server-wide budget
    counts), measured once on this machine, this gunicorn."""
    with Gunicorn(["-c", "python:gunicorn_memguard.conf", "apps.leaky:app"], workers=1) as server:
        server.wait_ready()
        return int(server.master.memory_full_info().pss)


@pytest.fixture(scope="session")
def baseline_rss() -> int:
    """RSS of an idle worker of the leaky app, measured once on this machine, this gunicorn."""
    with Gunicorn(["apps.leaky:app"], workers=1) as server:
        server.wait_ready()
        for _ in range(20):
            server.get("/")
        (pid,) = server.worker_pids()
        return int(psutil.Process(pid).memory_info().rss)
