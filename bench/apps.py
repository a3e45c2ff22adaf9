"""The benchmark's workloads, as one WSGI app (``bench.apps:wsgi``) and the same as ASGI
(``bench.apps:asgi``, for uvicorn workers). Each endpoint is one workload:

GET /              -> "ok", allocates nothing (the overhead runs)
GET /leak?xm=&cap= -> keeps a Pareto-sized block forever: most requests leak little, a few leak a
                      lot (shape 1.5, scale ``xm`` KiB, capped at ``cap`` KiB), so a request count
                      is a poor proxy for memory
GET /cache         -> a bounded cache: random keys of 64 KiB values, at most CACHE_ENTRIES of
                      them; fills in the first seconds, then stays flat (nothing to retire for)
GET /spike         -> one request in SPIKE_EVERY holds SPIKE_MIB for SPIKE_HOLD seconds, then
                      frees it (glibc returns large blocks at once); the rest allocate nothing
GET /stream        -> STREAM_CHUNKS chunks of CHUNK bytes, STREAM_GAP apart, leaking like
                      /leak (xm=, cap=) before the first: retirements land mid-stream

Every worker keeps the bytes it leaked in ``$BENCH_LEAK_DIR/<pid>`` (one ``pwrite`` per leaking
request), so the runner knows the total leaked — the floor for the number of recycles — whatever
the server.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

KiB = 1024
MiB = 1024 * KiB
PARETO_SHAPE = 1.5
CACHE_ENTRIES = 640  # x 64 KiB = 40 MiB per worker at most
CACHE_VALUE = 64 * KiB
SPIKE_EVERY = 200
SPIKE_MIB = 64
SPIKE_HOLD = 0.1
STREAM_CHUNKS = 10
STREAM_GAP = 0.01
CHUNK = 4 * KiB
STREAM_LENGTH = STREAM_CHUNKS * CHUNK

_kept: list[bytes] = []
_cache: dict[int, bytes] = {}
_ledger: dict[str, int] = {"pid": 0, "fd": -1, "bytes": 0}


def _record(nbytes: int) -> None:
    """Add to this worker's leak ledger file; reopened after a fork (pid changed)."""
    pid = os.getpid()
    if _ledger["pid"] != pid:
        folder = os.environ.get("BENCH_LEAK_DIR")
        _ledger.update(
            pid=pid,
            bytes=0,
            fd=os.open(os.path.join(folder, str(pid)), os.O_WRONLY | os.O_CREAT, 0o644) if folder else -1,
        )
    _ledger["bytes"] += nbytes
    if _ledger["fd"] >= 0:
        os.pwrite(_ledger["fd"], b"%20d" % _ledger["bytes"], 0)


def _leak(query: dict[str, list[str]]) -> None:
    xm = float(query.get("xm", ["4"])[0])
    cap = float(query.get("cap", ["2048"])[0])
    nbytes = int(min(cap, random.paretovariate(PARETO_SHAPE) * xm) * KiB)
    _kept.append(b"\x01" * nbytes)  # written, so resident
    _record(nbytes)


def _fill_cache() -> None:
    key = random.randrange(CACHE_ENTRIES)
    if key not in _cache:
        _cache[key] = b"\x02" * CACHE_VALUE


def _spike_now() -> bytearray | None:
    if random.randrange(SPIKE_EVERY):
        return None
    block = bytearray(SPIKE_MIB * MiB)
    block[::4096] = b"\x03" * len(block[::4096])  # touch every page
    return block


def _respond(path: str, query: dict[str, list[str]]) -> None:
    if path in ("/leak", "/stream"):
        _leak(query)
    elif path == "/cache":
        _fill_cache()


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes] | list[bytes]:
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    _respond(path, query)
    if path == "/spike":
        block = _spike_now()
        if block is not None:
            time.sleep(SPIKE_HOLD)
            del block
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(STREAM_LENGTH))])
        return _chunks()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _chunks() -> Iterator[bytes]:
    for i in range(STREAM_CHUNKS):
        if i:
            time.sleep(STREAM_GAP)
        yield b"s" * CHUNK


async def asgi(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "lifespan":
        await receive()  # startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    query = parse_qs(scope.get("query_string", b"").decode())
    _respond(path, query)
    if path == "/spike":
        block = _spike_now()
        if block is not None:
            await asyncio.sleep(SPIKE_HOLD)
            del block
    stream = path == "/stream"
    length = STREAM_LENGTH if stream else 2
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(length).encode())],
        }
    )
    if not stream:
        await send({"type": "http.response.body", "body": b"ok"})
        return
    for i in range(STREAM_CHUNKS):
        if i:
            await asyncio.sleep(STREAM_GAP)
        await send({"type": "http.response.body", "body": b"s" * CHUNK, "more_body": i < STREAM_CHUNKS - 1})
