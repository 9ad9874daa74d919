"""Prometheus metrics: controller-runtime's names (existing dashboards work) and ``mlinfra_*`` figures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

RECONCILE = Counter(
    "controller_runtime_reconcile", "Reconciliations per controller and result.", ["controller", "result"]
)
RECONCILE_ERRORS = Counter("controller_runtime_reconcile_errors", "Reconciliations that failed.", ["controller"])
RECONCILE_TIME = Histogram("controller_runtime_reconcile_time_seconds", "Time per reconciliation.", ["controller"])

DATASTORE_UP = Gauge("mlinfra_datastore_up", "1 when the store answers, else 0.", ["namespace", "name", "engine"])
DATASTORE_READY_REPLICAS = Gauge("mlinfra_datastore_ready_replicas", "Members ready.", ["namespace", "name"])
DATASTORE_LAG_BYTES = Gauge(
    "mlinfra_datastore_replication_lag_bytes", "Replication lag of a member, bytes.", ["namespace", "name", "member"]
)
DATASTORE_LAG_SECONDS = Gauge(
    "mlinfra_datastore_replication_lag_seconds",
    "Replication lag of a member, seconds.",
    ["namespace", "name", "member"],
)


FEATUREVIEW_FRESHNESS_LAG = Gauge(
    "mlinfra_featureview_freshness_lag_seconds",
    "Newest offline event time minus the newest event time materialized online (0 when caught up).",
    ["namespace", "name"],
)
# The objectives as gauges, so one alert rule compares each object's lag with its own spec: `lag > max_lag`
# matches the two series on namespace and name.
FEATUREVIEW_FRESHNESS_MAX_LAG = Gauge(
    "mlinfra_featureview_freshness_max_lag_seconds",
    "spec.freshness.maxLag: the freshness objective (no series when the view has none).",
    ["namespace", "name"],
)


REGISTRY_PENDING_EVENTS = Gauge(
    "mlinfra_modelregistry_lineage_pending_events", "Outbox events not yet in the lineage graph.", ["namespace", "name"]
)
REGISTRY_LINEAGE_LAG = Gauge(
    "mlinfra_modelregistry_lineage_lag_seconds",
    "Age of the oldest outbox event not yet in the lineage graph (0 when none).",
    ["namespace", "name"],
)
REGISTRY_LINEAGE_MAX_LAG = Gauge(
    "mlinfra_modelregistry_lineage_max_lag_seconds",
    "spec.lineageSync.maxLag: the lineage objective.",
    ["namespace", "name"],
)


BACKUP_LAST_SUCCESS = Gauge(
    "mlinfra_backup_last_success_timestamp_seconds",
    "Completion time (Unix seconds) of the newest complete backup of the store, as its manifest says.",
    ["namespace", "datastore"],
)
# The schedule as a gauge, so one alert rule compares each store's newest backup with its own schedule.
BACKUP_SCHEDULE_INTERVAL = Gauge(
    "mlinfra_backup_schedule_interval_seconds",
    "spec.backup.schedule's interval around now: the longer of the gaps before and after its latest fire (no "
    "series when unscheduled or suspended).",
    ["namespace", "datastore"],
)
VECTORINDEX_POINTS = Gauge(
    "mlinfra_vectorindex_points", "Points in the collection the alias points at.", ["namespace", "name"]
)
VECTORINDEX_SYNC_LAG = Gauge(
    "mlinfra_vectorindex_sync_lag_seconds",
    "Newest source change time minus the newest one indexed (0 when caught up).",
    ["namespace", "name"],
)
VECTORINDEX_ROWS_BEHIND = Gauge(
    "mlinfra_vectorindex_rows_behind", "Source rows changed since the last sync.", ["namespace", "name"]
)
VECTORINDEX_SYNC_MAX_LAG = Gauge(
    "mlinfra_vectorindex_sync_max_lag_seconds",
    "spec.sync.maxLag: the sync objective (no series when the index has none).",
    ["namespace", "name"],
)


@contextmanager
def reconciling(controller: str) -> Iterator[None]:
    """Count and time one reconciliation; an exception counts as an error (and is re-raised)."""
    start = time.monotonic()
    # The error series exist at 0 from the first reconciliation on: rate() needs a sample before the first
    # error, or an alert on it would miss that error.
    errors, failed = RECONCILE_ERRORS.labels(controller), RECONCILE.labels(controller, "error")
    try:
        yield
    except Exception:
        failed.inc()
        errors.inc()
        raise
    else:
        RECONCILE.labels(controller, "success").inc()
    finally:
        RECONCILE_TIME.labels(controller).observe(time.monotonic() - start)


def record_datastore(namespace: str, name: str, engine: str, status: dict[str, Any]) -> None:
    reachable = any(c.get("type") == "Reachable" and c.get("status") == "True" for c in status.get("conditions") or [])
    DATASTORE_UP.labels(namespace, name, engine).set(1 if reachable else 0)
    replication = status.get("replication")
    if isinstance(replication, dict):
        DATASTORE_READY_REPLICAS.labels(namespace, name).set(float(replication.get("readyReplicas") or 0))
    for member in status.get("members") or []:
        if member.get("role") != "replica":
            continue
        if member.get("lagBytes") is not None:
            DATASTORE_LAG_BYTES.labels(namespace, name, member["name"]).set(member["lagBytes"])
        if member.get("lagSeconds") is not None:
            DATASTORE_LAG_SECONDS.labels(namespace, name, member["name"]).set(member["lagSeconds"])


def forget_datastore(namespace: str, name: str) -> None:
    """Drop the series of a deleted store (stale series would alert forever)."""
    gauges = (
        DATASTORE_UP,
        DATASTORE_READY_REPLICAS,
        DATASTORE_LAG_BYTES,
        DATASTORE_LAG_SECONDS,
        BACKUP_LAST_SUCCESS,
        BACKUP_SCHEDULE_INTERVAL,
    )
    for gauge in gauges:
        for labels in list(gauge._metrics):
            if labels[0] == namespace and labels[1] == name:
                gauge.remove(*labels)


def backup_completed(namespace: str, datastore: str, completed: float) -> None:
    """A complete backup of the store was seen: the gauge keeps the newest completion time of any of them."""
    child = BACKUP_LAST_SUCCESS.labels(namespace, datastore)
    if completed > child._value.get():
        child.set(completed)


def set_backup_interval(namespace: str, datastore: str, seconds: float | None) -> None:
    """The store's schedule interval; None (no schedule, or suspended) removes the series: no alert."""
    set_objective(BACKUP_SCHEDULE_INTERVAL, namespace, datastore, seconds)


def forget_backup(namespace: str, name: str) -> None:
    """Nothing per Backup: the series is per store (its newest complete backup), dropped with the store."""


def forget_featureview(namespace: str, name: str) -> None:
    for gauge in (FEATUREVIEW_FRESHNESS_LAG, FEATUREVIEW_FRESHNESS_MAX_LAG):
        for labels in list(gauge._metrics):
            if labels == (namespace, name):
                gauge.remove(*labels)


def set_objective(gauge: Gauge, namespace: str, name: str, seconds: float | None) -> None:
    """Export an object's lag objective; None (no objective in its spec) removes the series, so an alert
    never compares against an objective that was deleted."""
    if seconds is not None:
        gauge.labels(namespace, name).set(seconds)
    elif (namespace, name) in gauge._metrics:
        gauge.remove(namespace, name)


def forget_registry(namespace: str, name: str) -> None:
    for gauge in (REGISTRY_PENDING_EVENTS, REGISTRY_LINEAGE_LAG, REGISTRY_LINEAGE_MAX_LAG):
        for labels in list(gauge._metrics):
            if labels == (namespace, name):
                gauge.remove(*labels)


def forget_vectorindex(namespace: str, name: str) -> None:
    for gauge in (VECTORINDEX_POINTS, VECTORINDEX_SYNC_LAG, VECTORINDEX_ROWS_BEHIND, VECTORINDEX_SYNC_MAX_LAG):
        for labels in list(gauge._metrics):
            if labels == (namespace, name):
                gauge.remove(*labels)
