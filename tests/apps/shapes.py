"""A WSGI app whose memory takes a shape chosen by environment variables, for the policy tests.

SHAPE_LEAK_KIB_PER_S=N   a thread leaks N KiB/s, in 10 steps a second, for as long as it runs
SHAPE_CACHE_MIB=N        a thread fills a bounded cache of N MiB within a second, then it stays flat
SHAPE_BALLAST_MIB=N      N MiB allocated (and written) at import, before the worker serves

GET /            -> "ok"
GET /pid         -> this worker's pid
GET /churn?mib=N -> allocates N MiB in 1-2 KiB objects and frees them, keeping 1 in 500 until the
                    next /churn: the freed glibc heap stays resident until malloc_trim(0)
"""

import os
import threading
import time
from urllib.parse import parse_qs

LEAKED = []
CACHE = []
SURVIVORS = []
BALLAST = b"\x01" * (int(os.environ.get("SHAPE_BALLAST_MIB", "0")) * 2**20)


def _leak(kib_per_s: int) -> None:
    while True:
        LEAKED.append(b"\x01" * (kib_per_s * 1024 // 10))
        time.sleep(0.1)


def _fill(mib: int) -> None:
    for _ in range(mib):
        CACHE.append(b"\x01" * 2**20)
        time.sleep(1 / mib)


if int(os.environ.get("SHAPE_LEAK_KIB_PER_S", "0")):
    threading.Thread(target=_leak, args=(int(os.environ["SHAPE_LEAK_KIB_PER_S"]),), daemon=True).start()
if int(os.environ.get("SHAPE_CACHE_MIB", "0")):
    threading.Thread(target=_fill, args=(int(os.environ["SHAPE_CACHE_MIB"]),), daemon=True).start()


def churn(mib: int) -> None:
    global SURVIVORS
    blocks = [b"x" * (1024 + i % 1024) for i in range(mib * 2**20 // 1536)]
    SURVIVORS = blocks[::500]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/churn":
        churn(int(parse_qs(environ.get("QUERY_STRING", "")).get("mib", ["80"])[0]))
    body = str(os.getpid()).encode() if path == "/pid" else b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
