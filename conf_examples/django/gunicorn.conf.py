# gunicorn's config for the Django project beside it. gunicorn reads ./gunicorn.conf.py by itself,
# so from this directory:
#   gunicorn                      (serves wsgi_app below)
#   gunicorn -c gunicorn.conf.py mysite.wsgi
# Environment variables MEMGUARD_* override the memguard_* values below (e.g. per deployment).
import os

from gunicorn_memguard.conf import *  # noqa: F401,F403  memguard's server hooks

wsgi_app = "mysite.wsgi"
bind = os.environ.get("BIND", "127.0.0.1:8000")

# -- memguard ------------------------------------------------------------------------------
# The soft limit per worker, over which it is retired gracefully (and replaced): an idle worker's
# USS (memguard_dry_run with memguard_event_log logs each worker's samples) plus room for your
# largest request. `memguard check -c gunicorn.conf.py` prints the settings in effect.
memguard_max_memory = "512MiB"
# memguard_hard_max_memory = "768MiB"  # a ceiling above the soft limit: past it, stop accepting at once
# USS: the memory only this worker holds. With preload_app, the pages shared with the master are
# not counted, so a limit in USS is about what the worker grew by itself.
memguard_metric = "uss"
memguard_spawn_first = True  # the replacement is up before the retiree stops accepting
memguard_max_concurrent_retirements = 1  # never more than one worker down at a time
memguard_dry_run = False  # True first, on real traffic, to see what would be retired

# -- gunicorn for Django ---------------------------------------------------------------------
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))  # roughly 2-4 per core for sync workers
# preload_app: import Django (settings, apps, models, URLconf) once in the master, then fork.
# Workers share those pages copy-on-write, so each is smaller (and its USS starts low), and a
# replacement boots in milliseconds instead of re-importing the project: cheap recycling, which is
# what memguard does. When not to: if importing the project opens connections, starts threads or
# reads files per process (do that lazily, or in post_fork), or if you rely on HUP to reload new
# code (with preload only a full restart does). Django opens database connections lazily, per
# request, so it is safe with preload.
preload_app = True
# How long a retiring worker may take to finish its in-flight requests (memguard bounds each
# retirement's drain by it). Longer than your slowest request.
graceful_timeout = 30
timeout = 30
# max_requests stays 0: memguard retires the workers that need it, when they need it.
max_requests = 0
