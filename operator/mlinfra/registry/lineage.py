"""The lineage graph in Neo4j, fed from the registry's outbox.

Graph (ids are the registry's primary keys; one registry per Neo4j database)::

    (:Model {id, name, description})-[:HAS_VERSION]->(:ModelVersion {id, model_id, version, stage, run_id})
    (:ModelVersion)-[:TRAINED_ON|EVALUATED_ON]->(:Dataset {id, name, version, uri, checksum})
    (:ModelVersion)-[:USES_FEATURE]->(:FeatureView {key: "namespace/name", namespace, name})
    (:Deployment {id, environment, deployed_at, retired_at})-[:DEPLOYS]->(:ModelVersion)

``sync`` drains unprocessed outbox events in id order, ``batch_size`` at a time. Per batch: take the sync's
advisory lock in a PostgreSQL transaction (one syncer at a time), read the pending events, write them in
one Neo4j transaction (consecutive events of the same kind go through one ``UNWIND $events AS e ... MERGE``),
and only after that committed mark them processed. A crash in between leaves them pending: they are
written again, which is harmless because every statement sets a node or edge to the state in the event
(MERGE + SET) or removes it, so replaying a suffix of the history in order gives the same graph.

Called by the ModelRegistry reconcile (in-process sync), ``mlinfra sync modelregistry`` and the benchmark.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import neo4j
import psycopg
from psycopg import pq

SYNC_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mlinfra.registry.lineage").digest()[:8], "big", signed=True)

# Seconds the server gives one graph transaction (a batch of events) before it ends it: a write stuck on a
# lock or a runaway query ends instead of holding the sync (and the outbox transaction around it).
TX_TIMEOUT = 60.0

SCHEMA_STATEMENTS = (
    "CREATE CONSTRAINT model_id IF NOT EXISTS FOR (n:Model) REQUIRE n.id IS UNIQUE",
    "CREATE CONSTRAINT model_version_id IF NOT EXISTS FOR (n:ModelVersion) REQUIRE n.id IS UNIQUE",
    "CREATE CONSTRAINT dataset_id IF NOT EXISTS FOR (n:Dataset) REQUIRE n.id IS UNIQUE",
    "CREATE CONSTRAINT feature_view_key IF NOT EXISTS FOR (n:FeatureView) REQUIRE n.key IS UNIQUE",
    "CREATE CONSTRAINT deployment_id IF NOT EXISTS FOR (n:Deployment) REQUIRE n.id IS UNIQUE",
    "CREATE INDEX model_name IF NOT EXISTS FOR (n:Model) ON (n.name)",
    "CREATE INDEX model_version_number IF NOT EXISTS FOR (n:ModelVersion) ON (n.model_id, n.version)",
    "CREATE INDEX dataset_name IF NOT EXISTS FOR (n:Dataset) ON (n.name, n.version)",
    "CREATE INDEX feature_view_name IF NOT EXISTS FOR (n:FeatureView) ON (n.namespace, n.name)",
    "CREATE INDEX deployment_environment IF NOT EXISTS FOR (n:Deployment) ON (n.environment)",
)

_UPSERT_MODEL = """UNWIND $events AS e
MERGE (m:Model {id: e.new.id})
SET m.name = e.new.name, m.description = e.new.description"""

_UPSERT_VERSION = """UNWIND $events AS e
MERGE (v:ModelVersion {id: e.new.id})
SET v.model_id = e.new.model_id, v.version = e.new.version, v.stage = e.new.stage, v.run_id = e.new.run_id
WITH v, e
OPTIONAL MATCH (old:Model)-[r:HAS_VERSION]->(v) WHERE old.id <> e.new.model_id
DELETE r
WITH v, e
MERGE (m:Model {id: e.new.model_id})
MERGE (m)-[:HAS_VERSION]->(v)"""

_UPSERT_DATASET = """UNWIND $events AS e
MERGE (d:Dataset {id: e.new.id})
SET d.name = e.new.name, d.version = e.new.version, d.uri = e.new.uri, d.checksum = e.new.checksum"""

_UPSERT_DEPLOYMENT = """UNWIND $events AS e
MERGE (d:Deployment {id: e.new.id})
SET d.environment = e.new.environment, d.deployed_at = datetime(e.new.deployed_at),
    d.retired_at = datetime(e.new.retired_at), d.model_version_id = e.new.model_version_id
WITH d, e
OPTIONAL MATCH (d)-[r:DEPLOYS]->(old:ModelVersion) WHERE old.id <> e.new.model_version_id
DELETE r
WITH d, e
MERGE (v:ModelVersion {id: e.new.model_version_id})
MERGE (d)-[:DEPLOYS]->(v)"""


def _delete_node(label: str) -> str:
    return f"UNWIND $events AS e MATCH (n:{label} {{id: e.old.id}}) DETACH DELETE n"


def _link_dataset(relation: str) -> str:
    return f"""UNWIND $events AS e
MERGE (v:ModelVersion {{id: e.new.model_version_id}})
MERGE (d:Dataset {{id: e.new.dataset_id}})
MERGE (v)-[:{relation}]->(d)"""


def _unlink_dataset(relation: str) -> str:
    return f"""UNWIND $events AS e
MATCH (:ModelVersion {{id: e.old.model_version_id}})-[r:{relation}]->(:Dataset {{id: e.old.dataset_id}})
DELETE r"""


_LINK_FEATURE = """UNWIND $events AS e
MERGE (v:ModelVersion {id: e.new.model_version_id})
MERGE (f:FeatureView {key: e.new.feature_view_namespace + '/' + e.new.feature_view_name})
SET f.namespace = e.new.feature_view_namespace, f.name = e.new.feature_view_name
MERGE (v)-[:USES_FEATURE]->(f)"""

# A FeatureView node exists while some version uses it (it has no row of its own in the registry).
_UNLINK_FEATURE = """UNWIND $events AS e
MATCH (:ModelVersion {id: e.old.model_version_id})-[r:USES_FEATURE]->
      (f:FeatureView {key: e.old.feature_view_namespace + '/' + e.old.feature_view_name})
DELETE r
WITH DISTINCT f
WHERE NOT (f)--()
DELETE f"""

RELATIONS = ("TRAINED_ON", "EVALUATED_ON")

_UPSERTS = {
    "registered_models": _UPSERT_MODEL,
    "model_versions": _UPSERT_VERSION,
    "datasets": _UPSERT_DATASET,
    "deployments": _UPSERT_DEPLOYMENT,
}
_NODE_LABELS = {
    "registered_models": "Model",
    "model_versions": "ModelVersion",
    "datasets": "Dataset",
    "deployments": "Deployment",
}


@dataclasses.dataclass(frozen=True)
class Event:
    """One outbox row. ``new`` is the row after the change (None for deletes), ``old`` before it (None for
    inserts; for updates only from migration 0003 on)."""

    id: int
    event_type: str
    new: Mapping[str, Any] | None
    old: Mapping[str, Any] | None

    @classmethod
    def from_row(
        cls, id_: int, event_type: str, payload: Mapping[str, Any], old_payload: Mapping[str, Any] | None
    ) -> Event:
        if event_type.endswith(".delete"):
            return cls(id_, event_type, None, payload)
        return cls(id_, event_type, payload, old_payload)


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """What one ``sync`` call did."""

    events: int
    batches: int
    ignored: int
    last_event_id: int | None
    seconds: float
    finished_at: datetime


def ensure_schema(driver: neo4j.Driver, database: str | None = None, tx_timeout: float | None = TX_TIMEOUT) -> None:
    """Uniqueness constraints and indexes of the graph; idempotent."""
    with driver.session(database=database) as session:
        for statement in SCHEMA_STATEMENTS:
            session.run(neo4j.Query(statement, timeout=tx_timeout)).consume()


def statements(event: Event) -> list[tuple[str, dict[str, Any]]]:
    """The Cypher statements (each an ``UNWIND $events AS e`` over ``e.new`` / ``e.old``) that apply one
    event, with the event's parameters; [] for events the graph does not show. Pure."""
    table, _, op = event.event_type.partition(".")
    params = {
        "new": dict(event.new) if event.new is not None else None,
        "old": dict(event.old) if event.old is not None else None,
    }
    if table in _UPSERTS:
        if op == "delete":
            return [(_delete_node(_NODE_LABELS[table]), params)]
        return [(_UPSERTS[table], params)]
    if table == "model_version_datasets":
        out = []
        if op in ("update", "delete") and event.old is not None and event.old.get("relation") in RELATIONS:
            out.append((_unlink_dataset(event.old["relation"]), params))
        if op in ("insert", "update") and event.new is not None and event.new.get("relation") in RELATIONS:
            out.append((_link_dataset(event.new["relation"]), params))
        return out
    if table == "model_version_features":
        out = []
        if op in ("update", "delete") and event.old is not None:
            out.append((_UNLINK_FEATURE, params))
        if op in ("insert", "update"):
            out.append((_LINK_FEATURE, params))
        return out
    return []


def plan(events: Iterable[Event]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Group the statements of ``events``, in order, into runs of the same statement: one UNWIND each.
    Returns (cypher, parameter list) pairs. Pure."""
    steps = [step for event in events for step in statements(event)]
    return [(query, [params for _, params in run]) for query, run in itertools.groupby(steps, key=lambda step: step[0])]


def write_events(
    driver: neo4j.Driver, events: Sequence[Event], database: str | None = None, tx_timeout: float | None = TX_TIMEOUT
) -> None:
    """Apply ``events`` to the graph in one Neo4j transaction (retried on transient errors: replays are
    harmless)."""
    runs = plan(events)
    if not runs:
        return

    @neo4j.unit_of_work(timeout=tx_timeout)
    def work(tx: neo4j.ManagedTransaction) -> None:
        for query, params in runs:
            tx.run(query, events=params).consume()

    with driver.session(database=database) as session:
        session.execute_write(work)


def write_events_one_by_one(
    driver: neo4j.Driver, events: Sequence[Event], database: str | None = None, tx_timeout: float | None = TX_TIMEOUT
) -> None:
    """The same graph as ``write_events``, one Neo4j transaction per event: the benchmark's baseline."""

    @neo4j.unit_of_work(timeout=tx_timeout)
    def work(tx: neo4j.ManagedTransaction, runs: list[tuple[str, list[dict[str, Any]]]]) -> None:
        for query, params in runs:
            tx.run(query, events=params).consume()

    with driver.session(database=database) as session:
        for event in events:
            runs = plan([event])
            if runs:
                session.execute_write(work, runs)


def sync(
    pg_conn: psycopg.Connection[Any],
    driver: neo4j.Driver,
    batch_size: int = 500,
    database: str | None = None,
    max_batches: int | None = None,
    lock_timeout_seconds: float = 60.0,
    one_by_one: bool = False,
    tx_timeout: float | None = TX_TIMEOUT,
) -> SyncResult:
    """Drain pending outbox events into the graph; returns when none are left (or after ``max_batches``).

    ``pg_conn`` (the operator's connection to the registry database) must be outside a transaction.
    ``one_by_one`` writes each event in its own Neo4j transaction (for the benchmark). ``tx_timeout``: the
    server ends a graph transaction that runs longer (seconds; None: the server's default).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if pg_conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("sync() needs a connection outside a transaction")
    started = time.monotonic()
    has_old = _has_column(pg_conn, "outbox", "old_payload")
    has_state = _has_table(pg_conn, "lineage_sync_state")
    columns = "id, event_type, payload, old_payload" if has_old else "id, event_type, payload, NULL"
    query = (
        f"SELECT {columns} FROM registry.outbox WHERE processed_at IS NULL "  # noqa: S608 - constants
        "ORDER BY id LIMIT %s"
    ).encode()
    total = batches = ignored = 0
    last_id: int | None = None
    finished: tuple[Any, ...] | None = None
    while max_batches is None or batches < max_batches:
        with pg_conn.transaction():
            pg_conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_seconds * 1000)}ms",))
            pg_conn.execute("SELECT pg_advisory_xact_lock(%s)", (SYNC_LOCK_KEY,))
            rows = pg_conn.execute(query, (batch_size,)).fetchall()
            events = [Event.from_row(int(r[0]), str(r[1]), r[2], r[3]) for r in rows]
            if events:
                if one_by_one:
                    write_events_one_by_one(driver, events, database, tx_timeout)
                else:
                    write_events(driver, events, database, tx_timeout)
                # Only now, after the graph committed: mark them done.
                ids = [e.id for e in events]
                pg_conn.execute(
                    "UPDATE registry.outbox SET processed_at = clock_timestamp() WHERE id = ANY(%s)", (ids,)
                )
                total += len(events)
                ignored += sum(1 for e in events if not statements(e))
                last_id = ids[-1]
                batches += 1
            if has_state:
                finished = pg_conn.execute(
                    "INSERT INTO registry.lineage_sync_state (singleton, last_sync_at, last_event_id) "
                    "VALUES (true, clock_timestamp(), %s) ON CONFLICT (singleton) DO UPDATE "
                    "SET last_sync_at = excluded.last_sync_at, "
                    "last_event_id = coalesce(excluded.last_event_id, lineage_sync_state.last_event_id) "
                    "RETURNING last_sync_at",
                    (last_id,),
                ).fetchone()
            else:
                finished = pg_conn.execute("SELECT clock_timestamp()").fetchone()
        if len(events) < batch_size:
            break
    return SyncResult(
        total,
        batches,
        ignored,
        last_id,
        time.monotonic() - started,
        finished[0] if finished else datetime.now().astimezone(),
    )


def _has_table(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"registry.{table}",)).fetchone()
    return bool(row and row[0])


def _has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = 'registry' AND table_name = %s "
        "AND column_name = %s",
        (table, column),
    ).fetchone()
    return row is not None
