"""deploy/monitoring: the Grafana dashboard and the Prometheus alert rules name only series
the service exports (service.metrics, with the _total/_bucket/_sum/_count suffixes that the
exposition format adds), and each file parses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3] / "deploy" / "monitoring"
NOT_METRICS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "Inf", "NaN",
}  # fmt: skip
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
    "gauge": ("",),
    "info": ("_info",),
}


def exported_series() -> set[str]:
    """Every series name a scrape of the service can carry."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, label names
    or Grafana variables)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and other strings
    s = re.sub(r"\$\{?\w+\}?", "", s)  # Grafana variables ($__rate_interval, $job)
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range and subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    s = re.sub(r"(?<![\w.])\d[\w.]*", "", s)  # numbers (1.5e9) and durations (offset 5m)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("("):
            continue  # a function (sum, rate, histogram_quantile, ...)
        if m.group(0) not in NOT_METRICS:
            names.add(m.group(0))
    return names


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    board = json.loads((ROOT / "grafana-dashboard.json").read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for var in board["templating"]["list"]:
        query = var.get("query")
        if var.get("type") == "query":
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert m, query
            yield f"variable {var['name']!r}", m.group(1)


def alert_expressions() -> Iterator[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            yield f"alert {rule['alert']}", rule["expr"]


def test_the_parser_finds_metric_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route="/x", le!="1"}'
        "[5m]))) > 1.5e9 and on (instance) b_total offset 5m / ignoring (x) group_left c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    # a misspelt or unexported name is caught
    bogus = metric_names("sum(rate(edgesam_request_total[5m])) / edgesam_redis_up")
    assert bogus - exported_series() == {"edgesam_request_total"}
    assert metric_names('edgesam_ready{job=~"$job"}') == {"edgesam_ready"}


def test_the_exported_names_include_the_suffixes() -> None:
    names = exported_series()
    assert "edgesam_request_duration_seconds_bucket" in names
    assert "edgesam_cache_hits_total" in names and "edgesam_redis_up" in names
    assert "edgesam_request_duration_seconds" not in names  # a histogram has no bare series
    assert "edgesam_cache_hits" not in names


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_expression_names_exported_metrics(source: str) -> None:
    exported = exported_series()
    found = list(dashboard_expressions() if source == "dashboard" else alert_expressions())
    assert len(found) >= 8
    for where, expr in found:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{where} names {sorted(unknown)}, which the service never exports"


def test_the_issue_s_signals_are_covered() -> None:
    """Rate, p99, queue depth, cache hit ratio, Redis degraded and 503s each have a panel and
    (except the plain rate) an alert."""
    dashboard = " ".join(expr for _, expr in dashboard_expressions())
    alerts = " ".join(expr for _, expr in alert_expressions())
    for needle in (
        "edgesam_request_duration_seconds_count",
        "histogram_quantile(0.99",
        "edgesam_queue_depth",
        "edgesam_cache_misses_total",
        "edgesam_redis_up",
        "503",
    ):
        assert needle in dashboard, needle
    for needle in ("histogram_quantile(0.99", "edgesam_rejected_total", "edgesam_redis_up", "503"):
        assert needle in alerts, needle
