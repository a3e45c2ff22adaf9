"""A WSGI app that misbehaves the way real apps do, for the fault tests.

GET /            -> "ok"
GET /pid         -> this worker's pid
GET /leak?kib=N  -> keeps N KiB forever, answers "ok"
GET /close-statm -> closes every fd of this process open on its statm file (fds the app does not
                    own); with ?then_open=1 it then opens a file of its own, which gets the lowest
                    free number. Answers JSON {"closed": [...], "app_fd": n or null}
GET /app-fd      -> what the app reads from the file it opened: its content, or "EBADF"
"""

import json
import os
import tempfile
from urllib.parse import parse_qs

LEAKED = []
APP_FILE = {"fd": None}
CONTENT = b"the app's own data\n"


def _statm_fds():
    target = f"/proc/{os.getpid()}/statm"
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                found.append(int(name))
        except OSError:
            continue
    return found


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    body = b"ok"
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/leak":
        LEAKED.append(b"\x01" * (int(query.get("kib", ["100"])[0]) * 1024))
    elif path == "/close-statm":
        closed = _statm_fds()
        for fd in closed:
            os.close(fd)
        if query.get("then_open"):
            handle, name = tempfile.mkstemp()
            os.write(handle, CONTENT)
            os.close(handle)
            APP_FILE["fd"] = os.open(name, os.O_RDONLY)
            os.unlink(name)
        body = json.dumps({"closed": closed, "app_fd": APP_FILE["fd"]}).encode()
    elif path == "/app-fd":
        try:
            body = os.pread(APP_FILE["fd"], 100, 0)
        except OSError:
            body = b"EBADF"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
