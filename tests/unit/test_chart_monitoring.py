"""The chart's optional monitoring objects: the PrometheusRule and the Grafana dashboard ConfigMap.

Rendered with the pinned helm (``make tools``), offline. Every alert and dashboard expression is parsed by a
real PromQL parser (``promql-parser``, a port of Prometheus' own), so no promtool and no Prometheus are
needed. That every metric they name is really exported is checked against a live scrape by
e2e/test_metrics_catalog.py; here the names are checked against the operator's metric definitions.
"""

from __future__ import annotations

import json
import re
from typing import Any

import chart_support
import prometheus_client
import promql_parser
import pytest

from mlinfra import metrics

pytestmark = pytest.mark.unit

CHART, RELEASE, NAMESPACE = chart_support.CHART, chart_support.RELEASE, chart_support.NAMESPACE
DASHBOARD = CHART / "dashboards" / "mlinfra.json"
_helm, _render = chart_support.helm, chart_support.render
# What Prometheus accepts as a duration in `for:` and in range selectors.
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
# The names e2e/test_metrics_catalog.py extracts with a regex; here cross-checked against the parser.
NAME = re.compile(r"\b(?:mlinfra|controller_runtime)_[A-Za-z0-9_]*[A-Za-z0-9]\b")
# Grafana's variables are not PromQL: replaced by what Grafana would put there before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*"}


def _rule_doc(*sets: str) -> dict[str, Any]:
    found = [d for d in _render("prometheusRule.enabled=true", *sets) if d["kind"] == "PrometheusRule"]
    assert len(found) == 1
    return found[0]


def _rules(*sets: str) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in _rule_doc(*sets)["spec"]["groups"] for r in g["rules"]}


def selectors(expr: str) -> set[str]:
    """Metric names of the vector selectors in ``expr``, as Prometheus' parser sees them (raises if invalid)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def exported_names() -> set[str]:
    """Every series name the operator's metric definitions can produce (counters with _total, histograms with
    _bucket/_sum/_count), from the same registry /metrics serves."""
    names = set()
    for family in prometheus_client.REGISTRY.collect():
        if not family.name.startswith(("mlinfra_", "controller_runtime_")):
            continue
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr.replace("label_values(", "group by (namespace) (").replace(", namespace)", ")")


# --- off by default --------------------------------------------------------------------------------------------


def test_both_are_off_by_default() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in _render()}
    assert not [k for k in kinds if k[0] == "PrometheusRule"]
    assert ("ConfigMap", f"{RELEASE}-dashboard") not in kinds


def test_helm_lint_strict_with_both_on() -> None:
    out = _helm(
        "lint", "--strict", str(CHART), "--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true"
    ).stdout
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out


# --- the PrometheusRule ----------------------------------------------------------------------------------------


# alert -> (group, the metrics its expression compares, severity by default)
ALERTS = {
    "MlinfraFeatureViewFreshnessSLOBreached": (
        "mlinfra.objectives",
        {"mlinfra_featureview_freshness_lag_seconds", "mlinfra_featureview_freshness_max_lag_seconds"},
        "warning",
    ),
    "MlinfraModelRegistryLineageLagging": (
        "mlinfra.objectives",
        {"mlinfra_modelregistry_lineage_lag_seconds", "mlinfra_modelregistry_lineage_max_lag_seconds"},
        "warning",
    ),
    "MlinfraVectorIndexSyncLagging": (
        "mlinfra.objectives",
        {"mlinfra_vectorindex_sync_lag_seconds", "mlinfra_vectorindex_sync_max_lag_seconds"},
        "warning",
    ),
    "MlinfraDataStoreReplicationLagHigh": (
        "mlinfra.objectives",
        {"mlinfra_datastore_replication_lag_seconds"},
        "warning",
    ),
    "MlinfraBackupTooOld": (
        "mlinfra.objectives",
        {"mlinfra_backup_last_success_timestamp_seconds", "mlinfra_backup_schedule_interval_seconds"},
        "warning",
    ),
    "MlinfraDataStoreUnreachable": ("mlinfra.health", {"mlinfra_datastore_up"}, "critical"),
    "MlinfraReconcileErrors": ("mlinfra.health", {"controller_runtime_reconcile_errors_total"}, "warning"),
}


def test_rule_object() -> None:
    doc = _rule_doc("prometheusRule.labels.release=prom")
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["namespace"] == NAMESPACE
    assert doc["metadata"]["labels"]["release"] == "prom"
    assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert [g["name"] for g in doc["spec"]["groups"]] == ["mlinfra.objectives", "mlinfra.health"]
    assert all("interval" not in g for g in doc["spec"]["groups"])
    assert {g["interval"] for g in _rule_doc("prometheusRule.interval=30s")["spec"]["groups"]} == {"30s"}


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert(alert: str) -> None:
    group, names, severity = ALERTS[alert]
    doc = _rule_doc()
    [rule] = [r for g in doc["spec"]["groups"] if g["name"] == group for r in g["rules"] if r["alert"] == alert]
    assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
    assert selectors(rule["expr"]) == names  # parses, and names exactly these metrics
    assert set(NAME.findall(rule["expr"])) == names  # the e2e test's regex finds the same names
    assert DURATION.match(rule["for"])
    assert rule["labels"] == {"severity": severity}
    assert set(rule["annotations"]) == {"summary", "description"}
    # Prometheus' templating survived Helm's: the alert names its object.
    assert "{{ $labels." in rule["annotations"]["summary"]


def test_every_rule_metric_is_exported() -> None:
    used = set().union(*(selectors(r["expr"]) for r in _rules().values()))
    assert used == set().union(*(names for _, names, _ in ALERTS.values()))
    assert used <= exported_names(), used - exported_names()


def test_lag_alerts_compare_each_object_with_its_own_objective() -> None:
    """`lag > max_lag` with no aggregation: one-to-one on all labels, so each object meets its own spec."""
    for alert in (
        "MlinfraFeatureViewFreshnessSLOBreached",
        "MlinfraModelRegistryLineageLagging",
        "MlinfraVectorIndexSyncLagging",
    ):
        expr = promql_parser.parse(_rules()[alert]["expr"])
        assert isinstance(expr, promql_parser.BinaryExpr)
        assert isinstance(expr.lhs, promql_parser.VectorSelector) and expr.lhs.name.endswith("_lag_seconds")
        assert isinstance(expr.rhs, promql_parser.VectorSelector) and expr.rhs.name.endswith("_max_lag_seconds")
        assert expr.modifier is None


@pytest.mark.parametrize(
    ("sets", "alert", "expected"),
    [
        ([], "MlinfraDataStoreReplicationLagHigh", "mlinfra_datastore_replication_lag_seconds > 30"),
        (
            ["json:prometheusRule.dataStoreReplicationLag.thresholdSeconds=2.5"],
            "MlinfraDataStoreReplicationLagHigh",
            "mlinfra_datastore_replication_lag_seconds > 2.5",
        ),
        ([], "MlinfraReconcileErrors", "sum by (controller) (rate(controller_runtime_reconcile_errors_total[5m])) > 0"),
        (
            ["prometheusRule.backupTooOld.graceSeconds=600"],
            "MlinfraBackupTooOld",
            "(time() - mlinfra_backup_last_success_timestamp_seconds) > on(namespace, datastore) "
            "(2 * mlinfra_backup_schedule_interval_seconds + 600)",
        ),
        (
            ["prometheusRule.reconcileErrors.window=10m", "json:prometheusRule.reconcileErrors.thresholdPerSecond=0.1"],
            "MlinfraReconcileErrors",
            "sum by (controller) (rate(controller_runtime_reconcile_errors_total[10m])) > 0.1",
        ),
    ],
)
def test_thresholds_are_values(sets: list[str], alert: str, expected: str) -> None:
    assert _rules(*sets)[alert]["expr"] == expected


@pytest.mark.parametrize(
    ("sets", "alert", "field", "expected"),
    [
        (["prometheusRule.featureViewFreshness.for=30m"], "MlinfraFeatureViewFreshnessSLOBreached", "for", "30m"),
        (["prometheusRule.dataStoreDown.severity=page"], "MlinfraDataStoreUnreachable", "labels", {"severity": "page"}),
        (
            ['json:prometheusRule.alertLabels={"team":"ml"}'],
            "MlinfraVectorIndexSyncLagging",
            "labels",
            {"severity": "warning", "team": "ml"},
        ),
    ],
)
def test_alert_settings(sets: list[str], alert: str, field: str, expected: Any) -> None:
    assert _rules(*sets)[alert][field] == expected


def test_alerts_can_be_switched_off_and_empty_groups_go() -> None:
    rules = _rules("prometheusRule.featureViewFreshness.enabled=false")
    assert set(rules) == set(ALERTS) - {"MlinfraFeatureViewFreshnessSLOBreached"}
    health_off = _rule_doc("prometheusRule.dataStoreDown.enabled=false", "prometheusRule.reconcileErrors.enabled=false")
    assert [g["name"] for g in health_off["spec"]["groups"]] == ["mlinfra.objectives"]


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_dashboard_config_map() -> None:
    [cm] = [d for d in _render("grafanaDashboard.enabled=true") if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == f"{RELEASE}-dashboard"
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in cm["metadata"]
    assert json.loads(cm["data"]["mlinfra.json"]) == _dashboard()


def test_dashboard_config_map_placement() -> None:
    [cm] = [
        d
        for d in _render(
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.namespace=monitoring",
            'json:grafanaDashboard.labels={"dashboards":"mlinfra"}',
            "grafanaDashboard.annotations.grafana_folder=ML",
        )
        if d["kind"] == "ConfigMap"
    ]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["dashboards"] == "mlinfra"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "ML"}


def test_dashboard_shape() -> None:
    d = _dashboard()
    assert d["uid"] == "mlinfra-operator"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for panel in d["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["description"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # No two panels overlap.
    cells = [
        (x, y)
        for p in d["panels"]
        for g in [p["gridPos"]]
        for x in range(g["x"], g["x"] + g["w"])
        for y in range(g["y"], g["y"] + g["h"])
    ]
    assert len(set(cells)) == len(cells)
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "namespace"}


def test_dashboard_queries_parse_and_use_only_exported_metrics() -> None:
    exprs = dashboard_exprs(_dashboard())
    used: set[str] = set()
    for expr in exprs:
        names = selectors(promql(expr))
        assert names, expr
        assert set(NAME.findall(expr)) == names, expr
        used |= names
    assert used <= exported_names(), used - exported_names()


def test_dashboard_covers_every_alerted_metric() -> None:
    """What can page someone can also be looked at."""
    alerted = set().union(*(selectors(r["expr"]) for r in _rules().values()))
    shown = set().union(*(selectors(promql(e)) for e in dashboard_exprs(_dashboard())))
    assert alerted <= shown, alerted - shown


def test_every_domain_metric_is_on_the_dashboard() -> None:
    shown = set().union(*(selectors(promql(e)) for e in dashboard_exprs(_dashboard())))
    gauges = {n for n in exported_names() if n.startswith("mlinfra_")}
    assert gauges <= shown, gauges - shown
    assert metrics.RECONCILE_TIME._name + "_bucket" in shown
