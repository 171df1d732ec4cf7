"""The Grafana dashboard and the Prometheus alert rules name only metrics the code exports.

Every metric name in the dashboard's PromQL and in the rules' expressions must be a
sample name a ``WorkerMetrics`` or ``GatewayMetrics`` registry really exposes (built
here, read through ``collect()``, with the suffixes each metric type adds: ``_total``,
``_bucket``, ``_sum``, ``_count``, ``_created``). Renaming a metric in the code without
the dashboard or the rules, or the other way round, fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.registry import CollectorRegistry

from pipeline.worker.metrics import WorkerMetrics
from producers.gateway.telemetry import GatewayMetrics

ROOT = Path(__file__).resolve().parents[1].parent
DASHBOARD = ROOT / "deploy" / "grafana" / "event-pipeline.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"

# The sample names each metric type exposes (prometheus_client's exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_STRING = re.compile(r""""(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`""")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBER = re.compile(r"(?<![\w:.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def exposed(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def exported() -> set[str]:
    return exposed(WorkerMetrics().registry) | exposed(GatewayMetrics().registry)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels left out)."""
    e = _STRING.sub('""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries, $__rate_interval included
    e = _LABEL_LIST.sub(" ", e)  # by (...), on (...), group_left (...)
    e = re.sub(r"\boffset\s+-?\w+", " ", e)
    e = _NUMBER.sub(" ", e)
    names: set[str] = set()
    for match in _IDENT.finditer(e):
        if e[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() not in KEYWORDS:
            names.add(match.group(0))
    return names


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _exprs(value)


def dashboard_exprs() -> list[str]:
    return list(_exprs(json.loads(DASHBOARD.read_text())))


def rule_exprs() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def test_the_extraction_finds_metric_names_and_nothing_else() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) ("
        'rate(gateway_request_duration_seconds_bucket{status=~"5.."}[$__rate_interval])))'
        " / on (instance) group_left (job)"
        " max without (partition) (pipeline_partition_lag offset 15m)"
        " > 1e3 and time() - up"
    )
    assert metric_names(expr) == {
        "gateway_request_duration_seconds_bucket",
        "pipeline_partition_lag",
        "up",
    }


def test_a_name_the_code_does_not_export_is_caught() -> None:
    names = exported()
    assert {"pipeline_sink_seconds_bucket", "gateway_requests_total"} <= names
    assert "pipeline_sink_seconds_total" not in names  # a histogram has no _total
    bogus = metric_names("sum(rate(pipeline_events_storred_total[5m])) > 0")
    assert bogus - names == {"pipeline_events_storred_total"}


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_every_dashboard_query_names_exported_metrics(expr: str) -> None:
    names = metric_names(expr)
    assert names, f"no metric found in {expr!r}"
    unknown = names - exported()
    assert not unknown, f"the dashboard queries {sorted(unknown)}, which the code does not export"


@pytest.mark.parametrize(("alert", "expr"), sorted(rule_exprs().items()))
def test_every_alert_names_exported_metrics(alert: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{alert}: no metric found in {expr!r}"
    unknown = names - exported()
    assert not unknown, f"{alert} uses {sorted(unknown)}, which the code does not export"


def test_the_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert {
        "pipeline_events_in_total",
        "pipeline_events_stored_total",
        "pipeline_partition_lag",
        "pipeline_dead_lettered_total",
        "pipeline_partition_watermark_seconds",
        "pipeline_sink_seconds_bucket",
        "pipeline_partition_stuck",
        "pipeline_completeness_grace_seconds",
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
    } <= used
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:  # every query goes to the datasource the user picks
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
    (variable,) = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"


def test_the_rules_cover_the_operators_alerts() -> None:
    rules = yaml.safe_load(RULES.read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {
        "PipelineLagGrowing",
        "PipelinePartitionStuck",
        "PipelineDeadLetterSpike",
        "PipelineNoProgress",
        "PipelinePostgresUnreachable",
    } <= set(by_name)
    for name, rule in by_name.items():
        assert rule.get("for"), f"{name} has no for: duration"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80
