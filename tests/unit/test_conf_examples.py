"""conf_examples/ that people copy: the Kubernetes manifests against the Kubernetes schema (and the
ServiceMonitor against its CRD's), the alerting rules through promtool, the Grafana dashboard's
structure. That every metric they use is one memguard exports: tests/integration/test_conf_examples.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from gunicorn.config import Config

from gunicorn_memguard.cli import check

from ..examples import (
    DASHBOARD,
    KUBERNETES,
    RULES,
    RULES_TESTS,
    dashboard,
    dashboard_exprs,
    metric_names,
    panels,
    promtool,
    rules,
)

SERVICEMONITOR_SCHEMA = Path(__file__).resolve().parent.parent / "data" / "servicemonitor-v1.schema.json"
# the oldest and the newest Kubernetes whose schemas kubernetes-validate ships
KUBERNETES_VERSIONS = sorted({kubernetes_validate.utils.all_versions()[0], kubernetes_validate.latest_version()})


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, resource) for every document of every manifest."""
    found = [
        (path.name, doc)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert found, f"no manifests in {KUBERNETES}"
    return found


def resource(kind: str) -> dict[str, Any]:
    (found,) = [doc for _, doc in manifests() if doc["kind"] == kind]
    return found


def container() -> dict[str, Any]:
    (app,) = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    return app


def env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in container()["env"]}


def gunicorn_args() -> Any:
    """The container's gunicorn command line, as gunicorn's own parser reads it."""
    command = container()["command"]
    assert command[0] == "gunicorn", "gunicorn is process 1, with no shell that would swallow SIGTERM"
    return Config().parser().parse_args(command[1:])


# -- Kubernetes --------------------------------------------------------------------------------
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_manifests_validate_against_the_kubernetes_schema(version):
    """Strict: a field the schema does not know (a typo, a wrong level) fails too."""
    validated = []
    for name, doc in manifests():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: not in the core schema, see the next test
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{name}: {doc['kind']} against Kubernetes {version}: {path}: {exc.message}")
        validated.append(doc["kind"])
    assert sorted(validated) == ["Deployment", "Service"]


def _strict(schema: Any) -> Any:
    """The CRD's schema, refusing unknown fields where it lists the known ones (the API server
    would prune them silently; kubectl's strict field validation refuses them)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: (value if key == "enum" else _strict(value)) for key, value in schema.items()}
    if "properties" in schema:
        strict["properties"] = {key: _strict(value) for key, value in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            strict["additionalProperties"] = False
    return strict


def test_servicemonitor_validates_against_its_crd_schema():
    """The ServiceMonitor against the openAPIV3Schema of prometheus-operator's CRD, kept in
    tests/data (offline), with unknown fields refused."""
    schema = _strict(json.loads(SERVICEMONITOR_SCHEMA.read_text()))
    jsonschema.Draft202012Validator.check_schema(schema)
    monitor = resource("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(monitor), key=lambda e: list(e.path))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]
    # and the check does refuse what it should: a misspelt field, a wrong type
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["endpoints"][0]["intervall"] = "15s"
    broken["spec"]["selector"]["matchLabels"] = ["app"]
    assert len(list(jsonschema.Draft202012Validator(schema).iter_errors(broken))) == 2


def test_the_manifests_fit_together():
    deployment, service, monitor = resource("Deployment"), resource("Service"), resource("ServiceMonitor")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()

    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    metrics_port = int(env()["MEMGUARD_PROMETHEUS_PORT"])
    assert ports["metrics"] == metrics_port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert env()["MEMGUARD_PROMETHEUS_ADDRESS"] == "0.0.0.0", "scraped from outside the pod"
    service_ports = {port["name"]: port["targetPort"] for port in service["spec"]["ports"]}
    assert service_ports["metrics"] in ("metrics", metrics_port)
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["metrics"]

    args = gunicorn_args()
    assert args.bind == [f"0.0.0.0:{ports['http']}"]
    assert args.config == "python:gunicorn_memguard.conf"
    # probes ask the app, through the master's socket, never the metrics port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container()[probe]["httpGet"]["port"] in ("http", ports["http"]), probe
    liveness = container()["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > args.timeout, "gunicorn replaces a hung worker"

    # the grace period outlasts the preStop sleep plus gunicorn's graceful_timeout
    (seconds,) = container()["lifecycle"]["preStop"]["exec"]["command"][1:]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(seconds) + args.graceful_timeout, (grace, seconds, args.graceful_timeout)

    limits = container()["resources"]["limits"]
    assert limits["memory"] == container()["resources"]["requests"]["memory"]
    assert env()["MEMGUARD_MAX_MEMORY"].endswith("%"), "a share of the container's limit"


def test_memguard_accepts_the_deployments_settings(capsys):
    """memguard check, as the container would run it, with the Deployment's environment."""
    assert check(gunicorn_args().config, env()) == 0
    out = capsys.readouterr().out
    assert "MEMGUARD_MAX_MEMORY" in out and "80%" in out
    assert f"with {env()['WEB_CONCURRENCY']} workers (WEB_CONCURRENCY)" in out


# -- Prometheus rules --------------------------------------------------------------------------
def test_alerting_rules_cover_what_the_issue_asks():
    by_name = {rule["alert"]: rule for rule in rules()}
    assert set(by_name) == {
        "MemguardCrashLoopBreakerOpen",
        "MemguardWorkerKilled",
        "MemguardWorkerOOMKilled",
        "MemguardHighRetirementRate",
        "MemguardWorkerOverLimit",
    }
    for name, rule in by_name.items():
        assert metric_names(rule["expr"]), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert "memguard_breaker_open" in metric_names(by_name["MemguardCrashLoopBreakerOpen"]["expr"])
    assert 'outcome="oom_killed"' in by_name["MemguardWorkerOOMKilled"]["expr"]
    assert {"memguard_worker_memory_bytes", "memguard_worker_limit_bytes"} <= metric_names(
        by_name["MemguardWorkerOverLimit"]["expr"]
    )


def test_metric_names_are_parsed_loosely_but_not_from_strings():
    expr = 'sum without (reason) (rate(memguard_retirements_total{reason!="memguard_x"}[5m])) / memguard_worker_pid'
    assert metric_names(expr) == {"memguard_retirements_total", "memguard_worker_pid"}


def test_promtool_checks_the_rules():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_fire_each_alert():
    """memguard-rules.test.yml: each alert fires on the series it should, and not on the others."""
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert tested == {rule["alert"] for rule in rules()}, "every alert has a test in which it fires"
    result = subprocess.run(
        [promtool(), "test", "rules", RULES_TESTS.name], cwd=RULES_TESTS.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# -- Grafana -----------------------------------------------------------------------------------
def test_dashboard_is_a_grafana_dashboard_of_memguards_metrics():
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(board):
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert metric_names(target["expr"]), (panel["title"], target["expr"])
    used = set().union(*(metric_names(expr) for exprs in dashboard_exprs().values() for expr in exprs))
    # what the issue asks to see: memory vs limit, retirements, exits, the breaker, reclaimed bytes
    assert {
        "memguard_worker_memory_bytes",
        "memguard_worker_limit_bytes",
        "memguard_retirements_total",
        "memguard_worker_exits_total",
        "memguard_breaker_open",
        "memguard_reclaimed_bytes_total",
    } <= used


def test_promtool_parses_the_dashboards_queries(tmp_path):
    """Each target's PromQL, Grafana's variables filled in, as a recording rule promtool checks."""
    fill = {"$__rate_interval": "1m", "$__range": "6h", "$job": ".*", "$instance": ".*"}
    records = []
    for number, expr in enumerate(expr for exprs in dashboard_exprs().values() for expr in exprs):
        for variable, value in fill.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        records.append({"record": f"dashboard:query_{number}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"{DASHBOARD}\n{result.stdout}{result.stderr}"
