"""The sample Grafana dashboard reads only metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_config
from gateway.engine import Engine
from gateway.observability.metrics import MetricsEndpoint

DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\bgateway_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in expressions(value)]
    return []


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {family(m) for expr in expressions(dashboard) for m in METRIC.findall(expr)}
    assert len(queried) >= 10
    endpoint = MetricsEndpoint(Engine(load_config({"ledger": {"enabled": False}})))
    exported = {f.name for f in text_string_to_metric_families(endpoint.render().decode())}
    assert queried <= exported, queried - exported
