"""Issue: gunicorn's own asyncio worker (``-k asgi``, gunicorn >= 24), guarded under the hook module
and as ``gunicorn_memguard.workers.AsgiWorker``, with a graceful retirement that loses no request.

Real gunicorn on 127.0.0.1, real HTTP, observed from outside (PIDs, psutil memory, logs).
"""

from __future__ import annotations

import base64
import functools
import http.client
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from bench.harness import Gunicorn, MemoryWatch, load, poll

from .conftest import INTERNALS, Idle, KiB, MiB, measure_exit_unshare, measure_idle

try:
    import gunicorn_memguard.workers.asgi  # noqa: F401 - the ImportError names the gunicorn needed
except ImportError as exc:
    pytest.skip(str(exc), allow_module_level=True)

HOOKS = ["-c", "python:gunicorn_memguard.conf"]
# label -> gunicorn args; both serve the plain ASGI app
MODES = {
    "hooks": [*HOOKS, "-k", "asgi"],
    "class": ["-k", "gunicorn_memguard.workers.AsgiWorker"],
}
APP = "apps.asgi:app"
LEAK_KIB = 128
CLIENTS = 20  # concurrent clients of the load, each with one request at a time


def guard_env(limit: int) -> dict[str, str]:
    # as test_async.guard_env: each worker's own bound, retiring at once
    return {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_MIN_LIFETIME": "0s",
        "MEMGUARD_CHECK_INTERVAL": "200ms",
        "MEMGUARD_SPAWN_FIRST": "no",
        "MEMGUARD_MAX_CONCURRENT_RETIREMENTS": "8",
    }


def ceiling_env(limit: int) -> dict[str, str]:
    """As test_async.ceiling_env: the limit is also the hard limit, no reclaim."""
    return {
        **guard_env(limit),
        "MEMGUARD_HARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_JITTER": "10%",
        "MEMGUARD_RECLAIM": "no",
    }


def overshoot_bound(clients: int, per_request: int) -> int:
    """As test_async.overshoot_bound: gunicorn's asgi worker checks after every request (its
    ``post_request``, once the app has returned, so after the client has its answer) and stops
    accepting in the same loop pass as the check that decides; what it can take past a passing
    check is at most one unchecked request per client plus one accepted-just-before per client."""
    return 2 * clients * per_request


@functools.cache
def idle(mode: str) -> Idle:
    """An idle worker of this mode, measured once on this machine, this gunicorn."""
    return measure_idle(MODES[mode], APP)


@functools.cache
def exit_unshare(mode: str) -> int:
    """What a retiring worker of this mode turns private as it drains and exits, measured once on
    this machine, this gunicorn (``conftest.measure_exit_unshare``)."""
    return measure_exit_unshare(MODES[mode], APP, idle(mode).uss + 8 * MiB)


def start(mode: str, limit_over_idle: int, tmp_path: Path, workers: int = 2, extra=(), env=guard_env):
    limit = idle(mode).uss + limit_over_idle
    server = Gunicorn([*MODES[mode], *extra, APP], env(limit), tmp_path / "g.log", workers=workers)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server, limit


def retired_pids(server: Gunicorn) -> list[int]:
    return [int(re.search(r"retiring worker pid=(\d+)", line)[1]) for line in server.log_lines("retiring worker")]


def wait_gone(server: Gunicorn, pids: set[int], timeout: float = 20) -> None:
    poll(lambda: not pids & server.worker_pids(), timeout, what=f"workers {pids} to exit")
    server.wait_ready()


def graceful_exit(server: Gunicorn, pid: int) -> list[str]:
    return poll(
        lambda: server.log_lines(f"worker pid={pid} exited gracefully after retirement"),
        timeout=5,
        what=f"graceful exit of {pid}",
    )


@pytest.mark.parametrize("mode", [pytest.param(m, marks=INTERNALS) for m in MODES])
def test_leaking_asgi_workers_are_retired_gracefully_under_concurrent_load(mode, tmp_path):
    server, limit = start(mode, 30 * MiB, tmp_path, env=ceiling_env)
    with server:
        first = server.worker_pids()
        watch = MemoryWatch(server, metric="uss")
        result = load(server, f"/leak?kib={LEAK_KIB}", requests=1200, concurrency=CLIENTS)
        watch.stop()

        assert result.failed == [], f"failed requests: {result.failed[:10]}"
        assert set(watch.peak) - first, "no worker was replaced"
        peak = max(watch.peak.values())
        # + the pages a worker turns private without allocating: at its first full collection
        # (conftest.Idle) and as it retires (conftest.measure_exit_unshare)
        requests = overshoot_bound(CLIENTS, LEAK_KIB * KiB)
        unshared = idle(mode).gc_unshare + exit_unshare(mode)
        bound = limit + requests + unshared
        assert peak <= bound, (
            f"peak {peak / MiB:.1f} MiB > limit {limit / MiB:.1f} + {requests / MiB:.1f} MiB of requests "
            f"+ {unshared / MiB:.2f} MiB unshared"
        )
        retired = retired_pids(server)
        # 1200 x 128 KiB = 150 MiB leaked over 2 workers with under 30 MiB headroom each
        assert len(retired) >= 3
        assert len(set(retired)) == len(retired), "one log line per retirement"
        wait_gone(server, set(retired))
        for pid in retired:
            graceful_exit(server, pid)
        assert not server.log_lines("was sent SIG"), "a retiree was signalled by the master"
        print(
            f"asgi {mode}: {len(retired)} retirements, 0 of {len(result.statuses)} failed, peak uss "
            f"{peak / MiB:.1f} MiB, limit {limit / MiB:.1f} MiB ({(peak - limit) / MiB:+.1f}, bound "
            f"+{(bound - limit) / MiB:.1f}), {watch.samples} samples"
        )


def stream_then_check_closed(server: Gunicorn, path: str, out: list[object]) -> None:
    """As test_async.stream_then_check_closed: read a streamed response on a keep-alive connection,
    record its events, how it ended and whether the server closed the connection right after it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        out.append(resp.status)
        body = b""
        while chunk := resp.read1(65536):
            body += chunk
            out.append(("chunk", len(body)))
        out.append(("body", body))
        if resp.will_close:
            out.append(("closed", "Connection: close"))
        else:
            conn.sock.settimeout(1.5)  # keepalive is 5 s in these tests
            out.append(("closed", "EOF" if conn.sock.recv(1) == b"" else "data"))
    except (OSError, http.client.HTTPException) as exc:
        out.append(("error", repr(exc)))
    finally:
        conn.close()


@pytest.mark.parametrize("mode", list(MODES))
def test_a_stream_in_flight_when_its_asgi_worker_retires_completes_intact(mode, tmp_path):
    # --timeout 3: the drain (the 4 s stream's last 3.5 s) outlasts the master's heartbeat
    # timeout, which a draining worker must therefore keep feeding (gunicorn's shutdown does not)
    server, limit = start(mode, 40 * MiB, tmp_path, workers=1, extra=("--keep-alive", "5", "--timeout", "3"))
    with server:
        (pid,) = server.worker_pids()
        out: list[object] = []
        reader = threading.Thread(target=stream_then_check_closed, args=(server, "/stream?n=8&gap=0.5", out))
        reader.start()
        poll(lambda: len(out) >= 2, timeout=5, what="first event")
        assert server.get("/leak?kib=81920")[0] == 200  # another request pushes the worker over
        poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=5, what="retirement")
        assert reader.is_alive(), "the stream should still be running when the retirement starts"
        # a new request meanwhile is not taken by the retiring worker: it waits for the replacement
        status, body = server.get("/pid")
        assert status == 200 and int(body) != pid
        reader.join(30)
        body = dict(o for o in out if isinstance(o, tuple) and o[0] in ("body", "closed", "error"))
        assert "error" not in body, body["error"]
        events = [line for line in body["body"].decode().split("\n\n") if line]
        assert events == [f"data: {i}" for i in range(8)] + ["data: end"]
        assert body["closed"] in ("Connection: close", "EOF"), "keep-alive should end with the response"
        wait_gone(server, {pid})
        exited = graceful_exit(server, pid)
        assert len(server.log_lines("retiring worker")) == 1
        assert not server.log_lines(f"Worker (pid:{pid}) was sent"), "the master killed the draining worker"
        print(f"asgi {mode}: stream of 9 events intact; {exited[0]}")


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked as RFC 6455 requires of a client (payloads < 64 KiB)."""
    mask = os.urandom(4)
    size = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return bytes([0x80 | opcode]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_read(sock: socket.socket) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the server closed the WebSocket connection mid-frame")
            data += chunk
        return data

    first, second = exactly(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(exactly(2), "big")
    elif size == 127:
        size = int.from_bytes(exactly(8), "big")
    return first & 0x0F, exactly(size)


def websocket_session(port: int, messages: list[str]) -> list[str]:
    """Open /ws, send each text message, read each answer, close with the closing handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"no handshake answer: {head!r}"
            head += chunk
        assert head.split(b"\r\n", 1)[0].split()[1] == b"101", head
        answers = []
        for text in messages:
            sock.sendall(ws_frame(0x1, text.encode()))
            opcode, payload = ws_read(sock)
            assert opcode == 0x1, (opcode, payload)
            answers.append(payload.decode())
        sock.sendall(ws_frame(0x8, (1000).to_bytes(2, "big")))
        assert ws_read(sock)[0] == 0x8, "the server should answer the close"
        return answers


def test_a_websocket_session_that_leaked_is_checked_when_it_ends(tmp_path):
    """gunicorn calls post_request for HTTP requests only; memguard's class checks after each
    WebSocket session too."""
    # a 60 s timer and no HTTP request after the session: only the check at the session's end can
    # see the leak within this test
    server, limit = start(
        "class", 40 * MiB, tmp_path, workers=1, env=lambda limit: {**guard_env(limit), "MEMGUARD_CHECK_INTERVAL": "60s"}
    )
    with server:
        (pid,) = server.worker_pids()
        assert websocket_session(server.port, ["40960", "40960"]) == ["ok", "ok"]  # 80 MiB > 40 MiB
        line = poll(lambda: server.log_lines(f"retiring worker pid={pid}"), timeout=5, what="retirement")
        wait_gone(server, {pid})
        graceful_exit(server, pid)
        print(f"asgi class: after a WebSocket session: {line[0]}")
