"""Worker classes for gevent and uvicorn: what importing them needs, and the pieces that need no
server. (Their behaviour under real gunicorn is in tests/integration/test_async.py.)"""

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from gunicorn_memguard.worker import native


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_importing_memguard_imports_neither_gevent_nor_uvicorn():
    out = run_python(
        "import sys, gunicorn_memguard, gunicorn_memguard.conf, gunicorn_memguard.workers, "
        "gunicorn_memguard.worker.retire, gunicorn_memguard.worker.guard\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gevent', 'uvicorn', 'uvicorn_worker')))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "blocked", "extra"),
    [
        ("GeventWorker", "gevent", "gevent"),
        ("UvicornWorker", "uvicorn", "uvicorn"),
        ("UvicornH11Worker", "uvicorn", "uvicorn"),
    ],
)
def test_a_missing_extra_names_the_extra_to_install(name, blocked, extra):
    out = run_python(
        f"import sys; sys.modules[{blocked!r}] = None\n"  # as if it were not installed
        f"from gunicorn_memguard import workers\n"
        f"workers.{name}"
    )
    assert out.returncode != 0
    assert f"pip install 'gunicorn-memguard[{extra}]'" in out.stderr, out.stderr


def test_stop_flag_wakes_a_waiting_os_thread_at_once():
    flag = native.StopFlag()
    assert flag.wait(0.01) is False
    woke: list[float] = []
    started = time.monotonic()
    native.start_thread(lambda: woke.append(flag.wait(30) and time.monotonic() - started))
    time.sleep(0.05)
    flag.set()
    flag.set()  # setting twice is harmless
    deadline = time.monotonic() + 5
    while not woke and time.monotonic() < deadline:
        time.sleep(0.01)
    assert woke and woke[0] < 5
    assert flag.wait(0) is True  # stays set


def test_native_thread_is_a_real_thread_outside_gevent():
    assert not native.is_monkey_patched()
    seen: list[int] = []
    done = threading.Event()
    native.start_thread(lambda: (seen.append(threading.get_ident()), done.set()))
    assert done.wait(5) and seen[0] != threading.get_ident()


def test_asgi_wrapper_counts_http_and_websocket_but_not_lifespan():
    pytest.importorskip("uvicorn")
    from gunicorn_memguard.workers.uvicorn import checked_after_each_request

    class Worker:
        nr = 0

    calls: list[str] = []

    async def app(scope, receive, send):
        calls.append(scope["type"])
        if scope["type"] == "websocket":
            raise RuntimeError("the app's own error still propagates")

    worker = Worker()
    wrapped = checked_after_each_request(app, worker)
    asyncio.run(wrapped({"type": "lifespan"}, None, None))
    asyncio.run(wrapped({"type": "http"}, None, None))
    with pytest.raises(RuntimeError):
        asyncio.run(wrapped({"type": "websocket"}, None, None))
    assert calls == ["lifespan", "http", "websocket"]
    assert worker.nr == 2
