"""The seed report's FastAPI service: a sync (``def``) endpoint, run in the thread pool, builds
large lists and keeps part of what it builds.

GET /report?rows=N -> builds N rows of 100 ints, caches them, answers how many rows are cached
GET /              -> "ok"
GET /gc            -> runs a full garbage collection, answers "ok"
"""

import gc

from fastapi import FastAPI

app = FastAPI()
CACHE: list[list[list[int]]] = []


@app.get("/")
def index() -> str:
    return "ok"


@app.get("/gc")
def collect() -> str:
    gc.collect()
    return "ok"


@app.get("/report")
def report(rows: int = 1000) -> dict[str, int]:
    CACHE.append([list(range(100)) for _ in range(rows)])
    return {"cached_rows": sum(len(block) for block in CACHE)}
