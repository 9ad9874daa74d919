"""What the ModelRegistry status reports, read from the registry database and the graph.

Small functions over open connections, no writes; ``registry.reconcile.observe`` turns the results into
status (and decides from the outbox whether an in-process lineage sync pass is due).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import neo4j
import psycopg

from mlinfra.registry import migrate


@dataclasses.dataclass(frozen=True)
class Outbox:
    pending_events: int
    oldest_pending_age_seconds: float | None
    last_sync_time: datetime | None
    # By the database's clock, like the ages above: how long ago ``last_sync_time`` was (None: never).
    seconds_since_sync: float | None = None
    # True when every sync pass is recorded (``lineage_sync_state``), even one that found nothing to do;
    # before migration 3 only passes that processed events leave a trace (``processed_at``).
    records_passes: bool = False


@dataclasses.dataclass(frozen=True)
class Counts:
    registered_models: int
    model_versions: int
    datasets: int
    deployments: int


@dataclasses.dataclass(frozen=True)
class Graph:
    nodes: int
    relationships: int


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The applied migration, 0 before the first."""
    return migrate.applied_version(conn)


def outbox(conn: psycopg.Connection[Any]) -> Outbox:
    """Pending events, the age of the oldest (None with none pending) and the end of the last sync pass
    (``lineage_sync_state`` from migration 3, else the newest ``processed_at``) with its age."""
    row = conn.execute(
        "SELECT count(*), extract(epoch FROM clock_timestamp() - min(created_at)) "
        "FROM registry.outbox WHERE processed_at IS NULL"
    ).fetchone()
    pending, age = (int(row[0]), float(row[1]) if row[1] is not None else None) if row else (0, None)
    records = conn.execute("SELECT to_regclass('registry.lineage_sync_state') IS NOT NULL").fetchone() == (True,)
    column, table = ("last_sync_at", "lineage_sync_state") if records else ("processed_at", "outbox")
    last = conn.execute(
        f"SELECT max({column}), extract(epoch FROM clock_timestamp() - max({column})) "  # noqa: S608 - constants
        f"FROM registry.{table}"
    ).fetchone()
    since = float(last[1]) if last and last[1] is not None else None
    return Outbox(
        pending,
        max(age, 0.0) if age is not None else None,
        last[0] if last else None,
        max(since, 0.0) if since is not None else None,
        records,
    )


def counts(conn: psycopg.Connection[Any]) -> Counts:
    """Rows of the main tables (exact counts: registries are small)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM registry.registered_models), (SELECT count(*) FROM registry.model_versions), "
        "(SELECT count(*) FROM registry.datasets), (SELECT count(*) FROM registry.deployments)"
    ).fetchone()
    assert row is not None
    return Counts(*(int(v) for v in row))


# The registry's nodes, label by label through the (registry, key) constraints' indexes, and its edges: every
# edge of the lineage graph has exactly one ModelVersion end (HAS_VERSION, TRAINED_ON, EVALUATED_ON,
# USES_FEATURE, DEPLOYS), so the degrees of the registry's versions (from the degree store) count them once.
_GRAPH_COUNTS = """CALL {
  MATCH (n:Model) WHERE n.registry = $registry AND n.id IS NOT NULL RETURN count(n) AS nodes, 0 AS rels
  UNION ALL
  MATCH (n:ModelVersion) WHERE n.registry = $registry AND n.id IS NOT NULL
  RETURN count(n) AS nodes, sum(COUNT { (n)--() }) AS rels
  UNION ALL
  MATCH (n:Dataset) WHERE n.registry = $registry AND n.id IS NOT NULL RETURN count(n) AS nodes, 0 AS rels
  UNION ALL
  MATCH (n:Deployment) WHERE n.registry = $registry AND n.id IS NOT NULL RETURN count(n) AS nodes, 0 AS rels
  UNION ALL
  MATCH (n:FeatureView) WHERE n.registry = $registry AND n.key IS NOT NULL RETURN count(n) AS nodes, 0 AS rels
}
RETURN sum(nodes) AS nodes, sum(rels) AS rels"""


def graph(driver: neo4j.Driver, registry: str, database: str | None = None) -> Graph:
    """Node and relationship counts of the lineage graph of ``registry`` (``<namespace>/<name>``), not of
    the other registries (or the previous version's unscoped nodes) in the same database: index seeks and
    degrees, in time linear in this registry's versions."""
    records, _, _ = driver.execute_query(
        _GRAPH_COUNTS, {"registry": registry}, database_=database, routing_=neo4j.RoutingControl.READ
    )
    return Graph(int(records[0]["nodes"]), int(records[0]["rels"]))
