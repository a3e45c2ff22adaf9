from dataclasses import dataclass

import psutil
import pytest

from bench.harness import Gunicorn

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
