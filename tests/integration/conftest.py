import pytest

from bench.harness import Gunicorn

MiB = 2**20


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def baseline_uss() -> int:
    """USS of an idle worker of the leaky app, measured once on this machine, this gunicorn."""
    import psutil

    with Gunicorn(["apps.leaky:app"], workers=1) as server:
        server.wait_ready()
        for _ in range(20):
            server.get("/")
        (pid,) = server.worker_pids()
        return psutil.Process(pid).memory_full_info().uss
