"""What the tests of conf_examples/ share: where the files are, the PromQL expressions in the
alerting rules and the Grafana dashboard, the metric names those use, and promtool."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "conf_examples"
KUBERNETES = EXAMPLES / "kubernetes"
RULES = EXAMPLES / "prometheus" / "memguard-rules.yml"
RULES_TESTS = EXAMPLES / "prometheus" / "memguard-rules.test.yml"
DASHBOARD = EXAMPLES / "grafana" / "memguard-dashboard.json"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MEMGUARD_NAME = re.compile(r"(?<![A-Za-z0-9_:])memguard_[A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The identifiers starting with ``memguard_`` in a PromQL expression, parsed loosely: string
    literals (label values, regexes) are dropped first, so ``{outcome="..."}`` never counts."""
    return set(_MEMGUARD_NAME.findall(_STRING.sub('""', expr)))


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those inside (collapsed) rows too."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_exprs() -> dict[str, list[str]]:
    """Panel title -> the PromQL of its targets."""
    return {
        panel["title"]: [target["expr"] for target in panel.get("targets", [])]
        for panel in panels(dashboard())
        if panel["type"] != "row"
    }


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool is not installed (Debian's package prometheus has it; scripts/test.sh installs it "
            "where apt-get is there and it runs as root)"
        )
    return path
