"""Issue: conf_examples/ that people copy: the Django, Flask, FastAPI and gevent + server-sent-events
example projects, each served from its own directory under memguard by real gunicorn on 127.0.0.1,
as its README says, with a leaking endpoint under load: workers are retired and replaced, each
retiree exits gracefully, no request fails, and an SSE stream in flight when its worker retires is
finished whole.

Only the limit comes from the test (an idle worker of the example, measured here, plus a few tens
of MiB); every other setting is the example's own.
"""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gunicorn
import psutil
import pytest

from bench.harness import ROOT, Gunicorn, load, poll

from .conftest import MiB

EXAMPLES = ROOT / "conf_examples"
HEADROOM = 30 * MiB  # the soft limit over an idle worker
LEAK_KIB = 256
REQUESTS = 400  # 100 MiB leaked over 2 workers of 30 MiB headroom each: a few retirements
CLIENTS = 8
ASGI = gunicorn.version_info >= (24,)


@dataclass(frozen=True)
class Example:
    directory: str
    args: list[str]  # as its README runs it, after `gunicorn`
    needs: list[str] = field(default_factory=list)  # modules it imports


EXAMPLE_RUNS = {
    "django": Example("django", ["-c", "gunicorn.conf.py"], ["django"]),
    "flask": Example("flask", ["-k", "gunicorn_memguard.workers.ThreadWorker", "--threads", "4", "app:app"], ["flask"]),
    "fastapi-uvicorn": Example(
        "fastapi", ["-k", "gunicorn_memguard.workers.UvicornWorker", "app:app"], ["fastapi", "uvicorn_worker"]
    ),
    "fastapi-asgi": Example("fastapi", ["-c", "python:gunicorn_memguard.conf", "-k", "asgi", "app:app"], ["fastapi"]),
}
SSE = Example("gevent-sse", ["-k", "gunicorn_memguard.workers.GeventWorker", "app:app"], ["flask", "gevent"])


def runs() -> list:
    params = []
    for name, example in EXAMPLE_RUNS.items():
        marks = []
        if name == "fastapi-asgi":
            reason = f"gunicorn {gunicorn.__version__} has no asgi worker: -k asgi needs gunicorn >= 24"
            marks.append(pytest.mark.skipif(not ASGI, reason=reason))
        params.append(pytest.param(example, id=name, marks=marks))
    return params


def idle_uss(example: Example, tmp_path: Path) -> int:
    """USS of one idle worker of the example (after a few requests), as conftest.measure_idle does."""
    for module in example.needs:
        pytest.importorskip(module)
    with Gunicorn(example.args, workers=1, cwd=EXAMPLES / example.directory, log_path=tmp_path / "idle.log") as server:
        server.wait_ready()
        for _ in range(20):
            assert server.get("/")[0] == 200
        (pid,) = server.worker_pids()
        return int(psutil.Process(pid).memory_full_info().uss)


def start(example: Example, tmp_path: Path, workers: int = 2) -> tuple[Gunicorn, int]:
    limit = idle_uss(example, tmp_path) + HEADROOM
    server = Gunicorn(
        example.args,
        {"MEMGUARD_MAX_MEMORY": f"{limit}B"},
        tmp_path / "gunicorn.log",
        workers=workers,
        cwd=EXAMPLES / example.directory,
    )
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server, limit


def retired_pids(server: Gunicorn) -> list[int]:
    return [int(re.search(r"retiring worker pid=(\d+)", line)[1]) for line in server.log_lines("retiring worker")]


def exited_gracefully(server: Gunicorn, pids: list[int]) -> None:
    """Each of ``pids`` has exited after its drain, and the workers serving are back to full strength."""
    poll(lambda: not set(pids) & server.worker_pids(), 20, what=f"workers {pids} to exit")
    server.wait_ready()
    for pid in pids:
        poll(
            lambda pid=pid: server.log_lines(f"worker pid={pid} exited gracefully after retirement"),
            timeout=5,
            what=f"graceful exit of {pid}",
        )


@pytest.mark.parametrize("example", runs())
def test_the_example_retires_leaking_workers_with_no_failed_request(example, tmp_path):
    server, limit = start(example, tmp_path)
    with server:
        first = server.worker_pids()
        result = load(server, f"/leak?kib={LEAK_KIB}", requests=REQUESTS, concurrency=CLIENTS)
        assert result.failed == [], f"failed requests: {result.failed[:10]}\n{server.log()[-3000:]}"
        retired = retired_pids(server)
        assert retired, f"no worker retired:\n{server.log()[-3000:]}"
        exited_gracefully(server, retired)
        assert server.worker_pids() - first, "no worker was replaced"
        print(
            f"{example.directory} {' '.join(example.args)}: {REQUESTS} x {LEAK_KIB} KiB, "
            f"{len(retired)} retirements, 0 failed, limit {limit / MiB:.1f} MiB"
        )


def read_stream(server: Gunicorn, path: str, out: list[object]) -> None:
    """Read a server-sent-events response; record its status, each chunk, the whole body or the error."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Accept": "text/event-stream"})
        resp = conn.getresponse()
        out.append(resp.status)
        body = b""
        while chunk := resp.read1(65536):
            body += chunk
            out.append(("chunk", len(body)))
        out.append(("body", body))
    except (OSError, http.client.HTTPException) as exc:
        out.append(("error", repr(exc)))
    finally:
        conn.close()


def test_an_sse_stream_in_flight_when_its_gevent_worker_retires_is_finished(tmp_path):
    server, limit = start(SSE, tmp_path, workers=1)
    with server:
        (pid,) = server.worker_pids()
        out: list[object] = []
        events = 12
        reader = threading.Thread(target=read_stream, args=(server, f"/events?n={events}&gap=0.5", out))
        reader.start()
        poll(lambda: len(out) >= 2, timeout=5, what="the first event")
        # one request that leaks more than the headroom: the stream's worker is over its limit
        assert server.get(f"/leak?kib={(HEADROOM + 10 * MiB) // 1024}")[0] == 200
        poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=5, what="the retirement")
        assert reader.is_alive(), "the stream should still be in flight when its worker retires"
        # meanwhile the replacement serves, and retires in turn as the leak goes on
        result = load(server, f"/leak?kib={LEAK_KIB}", requests=REQUESTS // 2, concurrency=CLIENTS)
        assert result.failed == [], f"failed requests: {result.failed[:10]}\n{server.log()[-3000:]}"
        reader.join(30)
        ended = dict(o for o in out if isinstance(o, tuple) and o[0] in ("body", "error"))
        assert "error" not in ended, ended["error"]
        assert out[0] == 200
        received = [event for event in ended["body"].decode().split("\n\n") if event]
        assert received == [f"data: {i}" for i in range(events)] + ["data: end"]
        retired = retired_pids(server)
        exited_gracefully(server, retired)
        print(
            f"gevent-sse: stream of {events + 1} events whole across the retirement of its worker; "
            f"{len(retired)} retirements, 0 failed of {len(result.statuses)}, limit {limit / MiB:.1f} MiB"
        )
