"""A Flask app with a normal view and one that leaks on purpose, as a module-level cache that never
evicts would.

GET /            -> "ok"
GET /leak?kib=N  -> keeps N KiB (default 256) for as long as the worker lives

Serve it, from this directory, with memguard's threaded worker (no config file needed):
    MEMGUARD_MAX_MEMORY=256MiB gunicorn -k gunicorn_memguard.workers.ThreadWorker --threads 4 -w 2 app:app
"""

import os

from flask import Flask, request

app = Flask(__name__)
LEAKED: list[bytes] = []


@app.get("/")
def index() -> str:
    return f"ok from worker {os.getpid()}\n"


@app.get("/leak")
def leak() -> str:
    kib = request.args.get("kib", 256, type=int)
    LEAKED.append(b"\x01" * (kib * 1024))
    return f"kept {kib} KiB, {len(LEAKED)} blocks in worker {os.getpid()}\n"
