"""``-k gunicorn_memguard.workers.AsgiWorker``: gunicorn's own asyncio ASGI worker (``-k asgi``,
gunicorn >= 24), guarded.

Under the hook module ``-k asgi`` is already checked after every HTTP request (that worker calls
``post_request``) and retired gracefully (``gunicorn_memguard.worker.retire.AsgiDrain``: it stops
accepting at once, serves the connections it accepted, ends keep-alive after the current response,
heartbeats while it drains, exits 0). Over that, this class adds:

- a check when a WebSocket session ends (gunicorn calls ``post_request`` for HTTP requests only):
  a dispatch in front of the app wraps each session, and passes HTTP requests straight through;
- no config file needed, and surviving a HUP reload, as for every memguard class.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import gunicorn

NEEDS = (24,)

if gunicorn.version_info < NEEDS:
    raise ImportError(
        "gunicorn_memguard.workers.AsgiWorker needs gunicorn >= 24, the first with an asgi worker "
        f"(this is gunicorn {gunicorn.__version__}): pip install 'gunicorn>=24'"
    )

from gunicorn.workers.gasgi import ASGIWorker as _StockASGIWorker  # noqa: E402 - after the version check

from .. import hooks  # noqa: E402
from .base import MemguardWorker  # noqa: E402

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def checked_after_each_websocket_session(app: ASGIApp, worker: Any) -> ASGIApp:
    """Check memory when a WebSocket session ends; HTTP requests (and lifespan) go straight to the
    app's own call, gunicorn's own ``post_request`` call checks after those. A plain function, not a
    coroutine function: a coroutine of memguard's around every request's app call cost a
    hello-world worker ~1 % more CPU per request (``python -m bench.overhead``). gunicorn only
    awaits what the app returns."""

    async def session(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        finally:
            hooks.post_request(worker, None, None, None)  # memguard's own; never raises

    def app_with_memguard(scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        if scope["type"] == "websocket":
            return session(scope, receive, send)
        return app(scope, receive, send)

    return app_with_memguard


class AsgiWorker(MemguardWorker, _StockASGIWorker):
    asgi: Any  # set by gunicorn's ASGIWorker.load_wsgi

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.asgi = checked_after_each_websocket_session(self.asgi, self)
