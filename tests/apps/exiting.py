"""A WSGI app whose atexit callback appends "atexit <pid>" to ``$EXIT_MARKS``, for the exit tests.

GET / -> "ok"
"""

import atexit
import os


def _mark(what: str) -> None:
    path = os.environ.get("EXIT_MARKS")
    if path:
        with open(path, "a") as marks:
            marks.write(f"{what} {os.getpid()}\n")


atexit.register(_mark, "atexit")


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
