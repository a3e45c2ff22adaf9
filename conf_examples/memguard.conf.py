# A gunicorn config file with memguard: copy it next to your project and run
#   gunicorn -c memguard.conf.py myproject.wsgi
# Environment variables MEMGUARD_* override the memguard_* values below.

from gunicorn_memguard.conf import *  # noqa: F401,F403  memguard's server hooks

# -- memguard ------------------------------------------------------------------------------
memguard_max_memory = "512MiB"  # soft limit per worker: retire gracefully above it
memguard_hard_max_memory = "768MiB"  # hard limit: retire at once, no waiting
memguard_metric = "uss"  # rss, uss or pss: what the limits apply to
memguard_jitter = "10%"  # each worker's limit is drawn once in [90%, 100%] of max_memory
memguard_min_lifetime = "30s"  # no soft-limit retirement of a younger worker
memguard_check_interval = "1s"  # timer sampling, on top of a check after every request
# observability
memguard_dry_run = False  # True: judge and report "would retire", retire nothing (tune limits first)
# memguard_event_log = "/var/log/memguard.jsonl"  # one JSON object per event
# memguard_prometheus_port = 9300  # metrics at http://127.0.0.1:9300/metrics (extra "prometheus")
# coordination in the master
memguard_max_concurrent_retirements = 1  # workers retired/replaced at once, furthest over first
memguard_spawn_first = True  # a soft retiree's replacement loads its app before it stops accepting
# memguard_max_total_memory = "80%"  # server-wide PSS budget (a size or % of the container)

# -- gunicorn, as usual ----------------------------------------------------------------------
workers = 4
graceful_timeout = 30  # memguard bounds each retiring worker's drain by this


# Your own hooks keep working: memguard composes them with its own (yours run first).
def post_worker_init(worker):
    worker.log.info("worker %s ready", worker.pid)
