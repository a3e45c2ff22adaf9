# A gunicorn config file with memguard: copy it next to your project and run
#   gunicorn -c memguard.conf.py myproject.wsgi
# Environment variables MEMGUARD_* override the memguard_* values below.

from gunicorn_memguard.conf import *  # noqa: F401,F403  memguard's server hooks

# -- memguard ------------------------------------------------------------------------------
# Each setting's default, accepted form and meaning: the README's settings table, or
#   memguard check -c memguard.conf.py
memguard_max_memory = "512MiB"
memguard_hard_max_memory = "768MiB"
memguard_metric = "uss"
memguard_jitter = "10%"
memguard_min_lifetime = "0s"  # more only delays soft-limit retirements; the hard limit never waits
memguard_check_interval = "1s"
# observability
memguard_dry_run = False  # True first, to tune the limits on real traffic
# memguard_event_log = "/var/log/memguard.jsonl"
# memguard_prometheus_port = 9300  # metrics at http://127.0.0.1:9300/metrics (extra "prometheus")
# memguard_trace_allocations = "80%"  # past 80% of its limit a worker traces, and names its leak at retirement
# coordination in the master
memguard_max_concurrent_retirements = 1
memguard_spawn_first = True
# memguard_max_total_memory = "80%"

# -- gunicorn, as usual ----------------------------------------------------------------------
workers = 4
graceful_timeout = 30  # memguard bounds each retiring worker's drain by this


# Your own hooks keep working: memguard composes them with its own (yours run first).
def post_worker_init(worker):
    worker.log.info("worker %s ready", worker.pid)
