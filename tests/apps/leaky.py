"""A small WSGI app whose memory does what a test asks, over plain HTTP.

GET /            -> "ok"
GET /leak?kib=N  -> keeps N KiB forever (written, so it is resident), answers "ok";
                    with &s=S it then sleeps S seconds before answering
GET /slow?s=S    -> sleeps S seconds, then answers "ok"
GET /pid         -> this worker's pid
GET /gc          -> runs a full garbage collection, answers "ok"
"""

import gc
import os
import time
from urllib.parse import parse_qs

LEAKED = []


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/leak":
        LEAKED.append(b"\x01" * (int(query.get("kib", ["100"])[0]) * 1024))
        time.sleep(float(query.get("s", ["0"])[0]))
    elif path == "/gc":
        gc.collect()
    elif path == "/slow":
        time.sleep(float(query.get("s", ["1"])[0]))
    body = str(os.getpid()).encode() if path == "/pid" else b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
