"""An example WSGI app that leaks like real ones do: a little per request, heavy-tailed.

GET /      -> leaks 20-2000 KiB (most requests little, a few a lot) into a module-level cache
GET /ping  -> leaks nothing
"""

import random

CACHE = []


def app(environ, start_response):
    if environ.get("PATH_INFO") != "/ping":
        kib = min(2000, int(random.paretovariate(1.2) * 20))
        CACHE.append(b"\x01" * (kib * 1024))
    body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
