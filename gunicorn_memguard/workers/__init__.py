"""memguard's worker classes, one small module per concurrency model.

Classes load lazily so that importing this package never imports gevent or uvicorn
(or gunicorn's asgi worker).
"""

from __future__ import annotations

import importlib
from typing import Any

_CLASSES = {
    "SyncWorker": "sync",
    "ThreadWorker": "gthread",
    "GeventWorker": "gevent",
    "UvicornWorker": "uvicorn",
    "UvicornH11Worker": "uvicorn",
    "AsgiWorker": "asgi",  # gunicorn >= 24
}

__all__ = list(_CLASSES)


def __getattr__(name: str) -> Any:
    module = _CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
