"""The config-hook module: ``gunicorn -c python:gunicorn_memguard.conf ...``.

Settings come from ``MEMGUARD_*`` environment variables. To keep a config file of your own,
``from gunicorn_memguard.conf import *`` at its top and set ``memguard_*`` variables in it; hooks
you define there are composed with memguard's (yours first) — see
``gunicorn_memguard.hooks.chain``.
"""

from .hooks import child_exit, on_starting, post_request, post_worker_init, pre_fork, when_ready, worker_exit

__all__ = [
    "child_exit",
    "on_starting",
    "post_request",
    "post_worker_init",
    "pre_fork",
    "when_ready",
    "worker_exit",
]
