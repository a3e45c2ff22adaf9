import pytest

from bench.harness import Gunicorn

MiB = 2**20


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _idle_worker(metric: str) -> int:
    """``metric`` of an idle worker of the leaky app, on this machine and this gunicorn."""
    import psutil

    with Gunicorn(["apps.leaky:app"], workers=1) as server:
        server.wait_ready()
        for _ in range(20):
            server.get("/")
        (pid,) = server.worker_pids()
        return int(getattr(psutil.Process(pid).memory_full_info(), metric))


@pytest.fixture(scope="session")
def baseline_uss() -> int:
    return _idle_worker("uss")


@pytest.fixture(scope="session")
def baseline_rss() -> int:
    return _idle_worker("rss")
