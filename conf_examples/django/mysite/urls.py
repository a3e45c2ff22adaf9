"""Two views: a normal one, and one that leaks on purpose, as a module-level cache that never
evicts would.

GET /            -> "ok"
GET /leak?kib=N  -> keeps N KiB (default 256) for as long as the worker lives
"""

import os

from django.http import HttpRequest, HttpResponse
from django.urls import path

LEAKED: list[bytes] = []


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"ok from worker {os.getpid()}\n", content_type="text/plain")


def leak(request: HttpRequest) -> HttpResponse:
    kib = int(request.GET.get("kib", "256"))
    LEAKED.append(b"\x01" * (kib * 1024))
    return HttpResponse(f"kept {kib} KiB, {len(LEAKED)} blocks in worker {os.getpid()}\n", content_type="text/plain")


urlpatterns = [
    path("", index),
    path("leak", leak),
]
