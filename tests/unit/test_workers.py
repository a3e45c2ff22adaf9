"""Worker classes for gevent, uvicorn and gunicorn's asgi worker: what importing them needs, and
the pieces that need no server. (Their behaviour under real gunicorn is in
tests/integration/test_async.py and test_asgi.py.)"""

import asyncio
import os
import socket
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
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gevent', 'uvicorn', 'uvicorn_worker') "
        "or m == 'gunicorn.workers.gasgi'))"
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


def test_uvicorn_request_tasks_check_once_per_task_let_go():
    """uvicorn discards each request's task from its set when the task ends (a done callback):
    memguard's set checks then, once per task, whether the app returned or raised; a discard of a
    task it does not hold (again, or never added) is no request."""
    pytest.importorskip("uvicorn")
    from gunicorn_memguard.workers.uvicorn import RequestTasks

    checks: list[int] = []
    tasks = RequestTasks(lambda: checks.append(len(tasks)))

    async def ok() -> None:
        await asyncio.sleep(0)

    async def fails() -> None:
        raise RuntimeError("the app's own error")

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for coro in (ok(), fails()):
            task = loop.create_task(coro)
            task.add_done_callback(tasks.discard)  # as uvicorn's HTTP protocols do
            tasks.add(task)
        assert len(tasks) == 2
        ended = list(tasks)
        await asyncio.gather(*ended, return_exceptions=True)
        await asyncio.sleep(0)  # the done callbacks run
        tasks.discard(ended[0])  # again: already let go
        tasks.discard(loop.create_task(ok()))  # never added

    asyncio.run(serve())
    assert not tasks
    assert checks == [1, 0]  # each check after its task had left the set


class _Served:
    """A uvicorn server's request path in miniature, on a real loop: uvicorn's own ServerState,
    memguard's real gate, task set and request clock; the guard's check counts and regates as the
    guard does, with the nearest limit ``headroom`` bytes away."""

    def __init__(self, headroom: int, step: float = 0.0) -> None:
        from uvicorn.server import ServerState

        from gunicorn_memguard.worker.clock import RequestClock
        from gunicorn_memguard.worker.gate import RequestGate
        from gunicorn_memguard.workers.uvicorn import RequestTasks

        self.checks: list[int] = []
        self.errors: list[str] = []
        self.headroom = headroom
        self.gate = RequestGate(self._check, self)
        self.gate.step = step
        self.state = ServerState()
        self.tasks = self.state.tasks = RequestTasks(self.gate.request_ended)
        loop = asyncio.get_running_loop()
        self.clock = RequestClock(self.gate, loop.call_later, self.tasks.each, self, busy=self.tasks.__len__)
        self.gate.reopen(time.monotonic(), 0, 0, 0, headroom)  # the guard's first check

    @property
    def nr(self) -> int:
        """The requests served, as memguard's uvicorn worker reads them: uvicorn's own count."""
        return self.state.total_requests

    def _check(self) -> None:
        self.checks.append(self.state.total_requests)
        self.gate.reopen(time.monotonic(), 0, 0, self.state.total_requests, self.headroom)

    def error(self, *args: object) -> None:
        self.errors.append(args[0] % args[1:])  # type: ignore[operator]

    async def requests(self, count: int) -> None:
        """``count`` requests one after another, each as uvicorn's HTTP protocols run one."""
        loop = asyncio.get_running_loop()
        for _ in range(count):
            task = loop.create_task(asyncio.sleep(0))
            task.add_done_callback(self.tasks.discard)  # looked up as the task starts, as uvicorn does
            self.tasks.add(task)
            await task
            await asyncio.sleep(0)  # its done callback runs
            self.state.total_requests += 1  # uvicorn counts a request as its response completes

    @property
    def each_checked(self) -> bool:
        from gunicorn_memguard.workers.uvicorn import RequestTasks, UncheckedTasks

        assert isinstance(self.tasks, (RequestTasks, UncheckedTasks))
        return type(self.tasks).discard is RequestTasks.discard


def test_uvicorn_requests_far_from_the_limits_end_unchecked_and_the_request_clock_checks_at_the_deadline():
    """Far from the limits (1 GiB): after the clock's first tick uvicorn lets requests go with the
    set's own discard, so 50 requests run no memguard code; at the gate's deadline the clock checks
    once, because requests ended; at the next deadline, with none ended and no task running (an
    idle worker), it does not."""
    pytest.importorskip("uvicorn")

    async def serve() -> None:
        served = _Served(headroom=2**30)
        await served.requests(3)  # before the first tick: through the gate, which lets them pass
        delay = served.clock._tick()
        assert not served.each_checked and delay is not None and 0 < delay <= 0.1
        await served.requests(50)
        assert served.checks == []
        await asyncio.sleep(delay)
        served.clock._tick()
        assert served.checks == [53]
        await asyncio.sleep(0.1)  # the next deadline (the gap is at most 0.1 s)
        served.clock._tick()
        assert served.checks == [53] and served.errors == []

    asyncio.run(serve())


def test_uvicorn_requests_near_a_limit_are_each_checked():
    """1 MiB from the limit the gate's deadline is 0.24 ms away (at 4 GiB/s), too near for a timer:
    every request goes through the gate. 64 KiB away (less than twice the smallest growth per
    request it assumes), the gate lets none pass: each one is checked."""
    pytest.importorskip("uvicorn")

    async def serve() -> None:
        served = _Served(headroom=2**20)
        served.clock._tick()
        assert served.each_checked

        near = _Served(headroom=64 * 2**10)
        near.clock._tick()
        assert near.each_checked and near.gate.left == 0
        await near.requests(3)
        assert near.checks == [0, 1, 2]

    asyncio.run(serve())


def test_uvicorn_requests_come_through_the_gate_while_they_could_use_up_its_count_before_the_timer():
    """A worker that grew 8 MiB per request, 800 MiB from its limit: the gate lets 50 requests
    (800 MiB ÷ 2 × 8 MiB) end unchecked within 0.1 s. 300 requests served between two ticks (within
    1.2 s, so faster than 250/s: twice that rate would use up the 50 in 0.1 s) turn per-request
    checking back on at the next tick."""
    pytest.importorskip("uvicorn")

    async def serve() -> None:
        served = _Served(headroom=800 * 2**20, step=8 * 2**20)
        assert served.gate.left == 50
        served.clock._tick()
        assert not served.each_checked  # no rate seen yet
        started = time.monotonic()
        await served.requests(300)
        await asyncio.sleep(served.clock.MIN_GAP)  # the clock measures the rate over at least this
        served.clock._tick()
        assert time.monotonic() - started < 1.2, "too slow to show the rate"
        assert served.each_checked

    asyncio.run(serve())


def test_uvicorn_request_clock_stops_when_the_guard_no_longer_checks_and_survives_its_own_fault():
    """A retiring worker (the gate never opens again) needs no clock; a fault inside the clock is
    one log line, and requests go through the gate from then on."""
    pytest.importorskip("uvicorn")

    async def serve() -> None:
        served = _Served(headroom=2**30)
        served.clock._tick()
        assert not served.each_checked
        served.gate.never()
        assert served.clock._tick() is None and served.each_checked

        broken = _Served(headroom=2**30)
        broken.clock._tick()
        broken.gate.worker = None  # reading the worker's request count fails
        broken.clock.tick()
        assert broken.each_checked and len(broken.errors) == 1 and "request clock failed" in broken.errors[0]

    asyncio.run(serve())


def test_a_retiring_gevent_worker_makes_each_request_that_ends_its_connections_last():
    """A retirement makes post_request (the user's hook composed, or memguard's alone) end with
    ``req.force_close()``, which gunicorn's parser reads before waiting for the next request on
    the connection: nothing runs per request before. Installed again from the loop's callback, so a
    switch of the hook by the request clock as the retirement began is undone."""
    pytest.importorskip("gevent")
    from types import SimpleNamespace

    from gunicorn.config import Config

    from gunicorn_memguard.worker.retire import GeventDrain

    calls: list[str] = []

    class Request:  # the part of gunicorn's request (http.message.Message) that the hook uses
        def force_close(self) -> None:
            calls.append("force_close")

    def users(worker: object, req: object, environ: object, resp: object) -> None:
        calls.append("user's hook")

    cfg = Config()
    cfg.set("post_request", users)
    worker = SimpleNamespace(alive=True, cfg=cfg, server_class=type("Server", (), {}))
    drain = GeventDrain(worker)
    assert cfg.settings["post_request"].get() is users  # nothing changed before a retirement
    drain._close_after_each_response()  # as __call__ does, without the loop's callback
    cfg.post_request(worker, Request(), {}, None)
    assert calls == ["user's hook", "force_close"]
    cfg.settings["post_request"].value = cfg.settings["post_request"].default  # a clock's switch meanwhile
    drain._stop_accepting()  # the loop's callback
    calls.clear()
    cfg.post_request(worker, Request(), {}, None)
    cfg.post_request(worker, object(), {}, None)  # no force_close (an HTTP/2 stream): only the hook
    assert calls == ["force_close"]


def test_asgi_worker_on_gunicorn_before_24_names_the_gunicorn_needed():
    out = run_python(
        "import gunicorn; gunicorn.version_info = (23, 0, 0); gunicorn.__version__ = '23.0.0'\n"
        "from gunicorn_memguard import workers\n"
        "workers.AsgiWorker"
    )
    assert out.returncode != 0
    assert "ImportError: gunicorn_memguard.workers.AsgiWorker needs gunicorn >= 24" in out.stderr, out.stderr
    assert "this is gunicorn 23.0.0" in out.stderr


def test_asgi_worker_wrapper_checks_after_websocket_sessions_only(monkeypatch):
    pytest.importorskip("gunicorn.workers.gasgi")
    from gunicorn_memguard import hooks
    from gunicorn_memguard.workers.asgi import checked_after_each_websocket_session

    checks: list[object] = []
    monkeypatch.setattr(hooks, "post_request", lambda worker, *rest: checks.append(worker))
    calls: list[str] = []

    async def app(scope, receive, send):
        calls.append(scope["type"])
        if scope["type"] == "websocket":
            raise RuntimeError("the app's own error still propagates")

    worker = object()
    wrapped = checked_after_each_websocket_session(app, worker)
    asyncio.run(wrapped({"type": "lifespan"}, None, None))
    asyncio.run(wrapped({"type": "http"}, None, None))  # gunicorn's own post_request call checks those
    with pytest.raises(RuntimeError):
        asyncio.run(wrapped({"type": "websocket"}, None, None))
    assert calls == ["lifespan", "http", "websocket"]
    assert checks == [worker]


def test_asgi_drain_started_from_another_thread_stops_accepting_on_the_loop_and_heartbeats():
    from gunicorn_memguard.worker.retire import AsgiDrain

    class Worker:
        alive = True
        notified = 0

        def notify(self):
            self.notified += 1

    worker = Worker()

    async def main():
        loop = asyncio.get_running_loop()
        worker.loop = loop
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        worker.servers = [server]
        port = server.sockets[0].getsockname()[1]
        drain = AsgiDrain(worker)
        threading.Thread(target=drain).start()  # as the guard's OS thread does
        deadline = loop.time() + 5
        while worker.alive and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert worker.alive is False and worker.notified >= 1
        # the listener is open but no longer polled: a connection stays in its backlog, though the
        # loop has run passes in which it would have accepted it
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            for _ in range(3):
                await asyncio.sleep(0)
            listener = socket.socket(fileno=os.dup(server.sockets[0].fileno()))
            with listener:
                listener.setblocking(False)
                conn, _ = listener.accept()  # BlockingIOError had the loop accepted it
                conn.close()
        drain()  # a second call changes nothing
        server.close()

    asyncio.run(main())


def test_asgi_connections_closed_by_the_server_are_counted_out_once(monkeypatch):
    """gunicorn 25 to 26.1 (benoitc/gunicorn#3661) never counted out a connection it had closed."""
    pytest.importorskip("gunicorn.asgi.protocol")
    from gunicorn.asgi.protocol import ASGIProtocol

    from gunicorn_memguard.worker.retire import count_server_closes

    def buggy_connection_lost(self, exc):
        if self._closed:  # set by the server's own close first: returned before counting out
            return
        self._closed = True
        self.worker.nr_conns -= 1

    monkeypatch.setattr(ASGIProtocol, "connection_lost", buggy_connection_lost)
    count_server_closes()
    count_server_closes()  # wraps once

    class Worker:
        nr_conns = 3

    def protocol(closed_by_server):
        p = ASGIProtocol.__new__(ASGIProtocol)
        p.worker, p._closed = worker, closed_by_server
        return p

    worker = Worker()
    by_server, by_client, again = protocol(True), protocol(False), protocol(True)
    by_server.connection_lost(None)
    by_server.connection_lost(None)  # a second call counts nothing
    by_client.connection_lost(None)
    assert worker.nr_conns == 1
    again.connection_lost(None)
    assert worker.nr_conns == 0
