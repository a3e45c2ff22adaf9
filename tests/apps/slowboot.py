"""The leaky app behind a slow import (``SLOWBOOT_SECONDS``, default 2), like a large Django
project: a new worker serves only once this has loaded. Prints ``app ready pid=N`` to stderr
when loaded, so a watcher outside can tell a booting worker from a serving one."""

import os
import sys
import time

time.sleep(float(os.environ.get("SLOWBOOT_SECONDS", "2")))

from apps.leaky import app  # noqa: E402

print(f"app ready pid={os.getpid()}", file=sys.stderr, flush=True)

__all__ = ["app"]
