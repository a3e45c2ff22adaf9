"""A Flask app with a server-sent-events endpoint, for gevent workers: each open stream is a
greenlet, so one worker holds many.

GET /            -> "ok"
GET /events?n=N&gap=S -> N events "data: i", one every S seconds (default 10 and 1.0), then "data: end"
GET /leak?kib=N  -> keeps N KiB (default 256) for as long as the worker lives

Serve it, from this directory:
    MEMGUARD_MAX_MEMORY=256MiB gunicorn -k gunicorn_memguard.workers.GeventWorker --worker-connections 1000 -w 2 app:app
"""

import os
import time

from flask import Flask, Response, request, stream_with_context

app = Flask(__name__)
LEAKED: list[bytes] = []


@app.get("/")
def index() -> str:
    return f"ok from worker {os.getpid()}\n"


@app.get("/events")
def events() -> Response:
    count = request.args.get("n", 10, type=int)
    gap = request.args.get("gap", 1.0, type=float)

    def stream():
        for i in range(count):
            yield f"data: {i}\n\n"
            time.sleep(gap)  # gevent's worker patches time.sleep: other greenlets run meanwhile
        yield "data: end\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no buffering in a proxy (nginx)
    return Response(stream_with_context(stream()), mimetype="text/event-stream", headers=headers)


@app.get("/leak")
def leak() -> str:
    kib = request.args.get("kib", 256, type=int)
    LEAKED.append(b"\x01" * (kib * 1024))
    return f"kept {kib} KiB, {len(LEAKED)} blocks in worker {os.getpid()}\n"
