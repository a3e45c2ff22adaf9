"""WSGI app for async workers: the leaky app plus a server-sent-events stream and a CPU-bound
request.

GET /stream?n=N&gap=S   -> N events "data: i", one every S seconds, then "data: end"
GET /cpu?kib=N&s=S      -> keeps N KiB forever, then computes for S seconds without yielding
anything else           -> as in apps.leaky
"""

import time
from urllib.parse import parse_qs

from apps import leaky


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/stream":
        count, gap = int(query.get("n", ["10"])[0]), float(query.get("gap", ["0.5"])[0])
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events():
            for i in range(count):
                yield f"data: {i}\n\n".encode()
                time.sleep(gap)
            yield b"data: end\n\n"

        return events()
    if path == "/cpu":
        leaky.LEAKED.append(b"\x01" * (int(query.get("kib", ["100"])[0]) * 1024))
        end = time.perf_counter() + float(query.get("s", ["1"])[0])
        while time.perf_counter() < end:  # no I/O, no sleep: gevent cannot switch greenlets
            sum(range(1000))
        body = b"ok"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [body]
    return leaky.app(environ, start_response)
