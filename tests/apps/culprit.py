"""An app with one leaking line, for leak forensics: ``app`` (WSGI) and ``asgi`` (ASGI) serve the same.

GET /leak?kib=N -> ``remember`` keeps N KiB forever: the line marked ``# the leak``
GET /           -> "ok"; every request also allocates a scratch buffer it drops (no leak) and keeps
                   a short string (a small leak: a site far below the big one)
GET /json?n=N   -> builds N small dicts, answers them as JSON (allocation-heavy work, nothing kept)
GET /pid        -> this worker's pid
"""

import json
import os
from urllib.parse import parse_qs

CACHE = []
SEEN = []


def remember(kib):
    chunk = b"\x01" * (kib * 1024)  # the leak
    CACHE.append(chunk)  # (the list's own growth is this line's)


def handle(path, query):
    scratch = b"\x02" * 65536  # dropped when the request ends
    SEEN.append(f"{path}?{query}")
    if path == "/leak":
        remember(int(parse_qs(query).get("kib", ["100"])[0]))
    del scratch
    if path == "/json":
        rows = [{"id": i, "name": f"row {i}", "tags": ["a", "b"]} for i in range(int(parse_qs(query)["n"][0]))]
        return json.dumps(rows).encode()
    return str(os.getpid()).encode() if path == "/pid" else b"ok"


def app(environ, start_response):
    body = handle(environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = handle(scope["path"], scope["query_string"].decode())
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
