"""The leaky app behind a slow import (``SLOWBOOT_SECONDS``, default 2), like a large Django
project: a new worker serves only once this has loaded. Prints ``app ready pid=N`` to stderr
when loaded, and tags each response with ``X-Pid``, so a watcher outside can tell a booting
worker from a serving one."""

import os
import sys
import time

time.sleep(float(os.environ.get("SLOWBOOT_SECONDS", "2")))

from apps.leaky import app as leaky  # noqa: E402


def app(environ, start_response):
    """The leaky app, answering with an ``X-Pid`` header so a test can tell which worker served."""

    def start(status, headers, *exc_info):
        return start_response(status, [*headers, ("X-Pid", str(os.getpid()))], *exc_info)

    return leaky(environ, start)


print(f"app ready pid={os.getpid()}", file=sys.stderr, flush=True)

__all__ = ["app"]
