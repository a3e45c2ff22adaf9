"""Every metric name that conf_examples/prometheus/memguard-rules.yml and
conf_examples/grafana/memguard-dashboard.json use is one that memguard really exports: a real
gunicorn under memguard serves its Prometheus endpoint, and the names come from one scrape."""

from __future__ import annotations

import http.client

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import Gunicorn, free_port, poll

from ..examples import dashboard_exprs, metric_names, rules

HOOKS = ["-c", "python:gunicorn_memguard.conf"]


def exposition(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, body
        return body
    finally:
        conn.close()


def names_in(text: str) -> set[str]:
    """The metric names of a scrape: each family's samples, and each family the endpoint declares
    (``# TYPE``) even with no sample yet, such as the growth rate before a full window."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
    names.update(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE "))
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    port = free_port()
    env = {
        "MEMGUARD_MAX_MEMORY": "80%",  # as in conf_examples/kubernetes/deployment.yaml
        "MEMGUARD_HARD_MAX_MEMORY": "90%",
        "MEMGUARD_MAX_GROWTH": "50MiB/h",
        "MEMGUARD_PROMETHEUS_PORT": str(port),
        "MEMGUARD_REPORT_INTERVAL": "200ms",
    }
    log = tmp_path_factory.mktemp("conf_examples") / "gunicorn.log"
    with Gunicorn([*HOOKS, "apps.leaky:app"], env, log) as server:
        server.wait_ready()
        server.get("/")
        # once each worker has read its metric exactly, every per-worker family has samples
        text = poll(
            lambda: (t := exposition(port)) and t.count("memguard_worker_memory_bytes{") == 2 and t,
            timeout=15,
            interval=0.2,
            what="both workers' memory in the scrape",
        )
    names = names_in(text)
    assert {"memguard_worker_memory_bytes", "memguard_retirements_total", "memguard_breaker_open"} <= names
    return names


def test_alerting_rules_use_only_exported_metrics(exported):
    used = {rule["alert"]: metric_names(rule["expr"]) for rule in rules()}
    assert all(used.values()), used
    unknown = {alert: sorted(names - exported) for alert, names in used.items() if names - exported}
    assert not unknown, f"not exported by memguard: {unknown}; exported: {sorted(exported)}"


def test_dashboard_uses_only_exported_metrics(exported):
    used = {title: set().union(*map(metric_names, exprs)) for title, exprs in dashboard_exprs().items()}
    assert all(used.values()), used
    unknown = {title: sorted(names - exported) for title, names in used.items() if names - exported}
    assert not unknown, f"not exported by memguard: {unknown}; exported: {sorted(exported)}"
