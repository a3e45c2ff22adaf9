"""A FastAPI app with a normal endpoint and one that leaks on purpose, as a module-level cache that
never evicts would.

GET /            -> {"ok": true, "pid": ...}
GET /leak?kib=N  -> keeps N KiB (default 256) for as long as the worker lives

Serve it, from this directory, with memguard's uvicorn worker:
    MEMGUARD_MAX_MEMORY=256MiB gunicorn -k gunicorn_memguard.workers.UvicornWorker -w 2 app:app
or with gunicorn's own asyncio worker (gunicorn >= 24) and memguard's hook module:
    MEMGUARD_MAX_MEMORY=256MiB gunicorn -c python:gunicorn_memguard.conf -k asgi -w 2 app:app
"""

import os

from fastapi import FastAPI

app = FastAPI()
LEAKED: list[bytes] = []


@app.get("/")
async def index() -> dict[str, object]:
    return {"ok": True, "pid": os.getpid()}


@app.get("/leak")
async def leak(kib: int = 256) -> dict[str, object]:
    LEAKED.append(b"\x01" * (kib * 1024))
    return {"kept_kib": kib, "blocks": len(LEAKED), "pid": os.getpid()}
