"""The lineage graph in Neo4j, fed from the registry's outbox.

Graph (ids are the registry's primary keys; ``registry`` is ``<namespace>/<name>`` of the ModelRegistry)::

    (:Model {registry, id, name, description})-[:HAS_VERSION]->(:ModelVersion {registry, id, model_id, version, ...})
    (:ModelVersion)-[:TRAINED_ON|EVALUATED_ON]->(:Dataset {registry, id, name, version, uri, checksum})
    (:ModelVersion)-[:USES_FEATURE]->(:FeatureView {registry, key: "namespace/name", namespace, name})
    (:Deployment {registry, id, environment, deployed_at, retired_at})-[:DEPLOYS]->(:ModelVersion)
    (:LineageRegistry {registry, history, built_at})    one per registry: whose history its nodes were built from

Several registries share one Neo4j database (users do, and so does the test platform), and each has its own
PostgreSQL database, so their ids overlap (both have model 1). Every node is therefore keyed by
``(registry, id)`` (FeatureView: ``(registry, key)``; composite uniqueness constraints, which Neo4j 5
Community has; NODE KEY would need Enterprise), and every statement matches and merges within its registry
only: ``<namespace>/<name>`` is injective (neither part can hold a ``/``), so two registries never merge nodes,
and one registry's sync never changes or deletes another's.

``sync`` drains unprocessed outbox events in id order, ``batch_size`` at a time. Per batch: take the sync's
advisory lock in a PostgreSQL transaction (one syncer at a time), read the pending events, write them in
one Neo4j transaction (consecutive events of the same kind go through one ``UNWIND $events AS e ... MERGE``),
and only after that committed mark them processed. A crash in between leaves them pending: they are
written again, which is harmless because every statement sets a node or edge to the state in the event
(MERGE + SET) or removes it, so replaying a suffix of the history in order gives the same graph.

Before draining, ``sync`` checks the registry's ``LineageRegistry`` node. Its ``history`` names the registry
database the nodes were built from (when that database's registry schema was created). Missing — a graph
written by the previous version (nodes without ``registry``), an empty or replaced Neo4j database, a
registry's first sync — the registry's graph is rebuilt: its own scoped nodes are deleted, every outbox event
is marked pending again (the outbox is append-only: it holds the whole history), and the drain replays the
history from the first event; only then is the ``LineageRegistry`` node written (a crash before that simply
rebuilds again). Held by another history — a registry of the same namespace/name built this graph from
another database (another cluster on the same Neo4j, or this registry before its database was re-created) —
the sync raises ``GraphInUse`` and changes nothing: it is reported, never taken over.

Nodes without ``registry`` (written by the previous version, which keyed nodes by id only) are never
adopted, changed or deleted: an old graph may already mix two registries' nodes, which cannot be told apart,
and each registry's graph can be rebuilt exactly from its own history instead. Those nodes are inert (every
query here, in ``registry.observe`` and in ``mlinfra.client.lineage`` filters by registry); the old id-only
constraints are dropped by ``ensure_schema`` (they would refuse a second registry's model 1), and
docs/modelregistry.md says how to remove the old nodes once every registry on the database has rebuilt.

Called by the ModelRegistry reconcile (in-process sync), ``mlinfra sync modelregistry`` and the benchmark.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, LiteralString

import neo4j
import psycopg
from psycopg import pq

SYNC_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mlinfra.registry.lineage").digest()[:8], "big", signed=True)

# Seconds the server gives one graph transaction (a batch of events) before it ends it: a write stuck on a
# lock or a runaway query ends instead of holding the sync (and the outbox transaction around it).
TX_TIMEOUT = 60.0

# The labels of a registry's nodes and the property that, with ``registry``, keys each.
NODE_KEYS: dict[str, str] = {
    "Model": "id",
    "ModelVersion": "id",
    "Dataset": "id",
    "Deployment": "id",
    "FeatureView": "key",
}
REGISTRY_LABEL = "LineageRegistry"
REGISTRY_PATTERN = re.compile(r"[^/\s]+/[^/\s]+")

SCHEMA_STATEMENTS = (
    "CREATE CONSTRAINT lineage_model IF NOT EXISTS FOR (n:Model) REQUIRE (n.registry, n.id) IS UNIQUE",
    "CREATE CONSTRAINT lineage_model_version IF NOT EXISTS FOR (n:ModelVersion) REQUIRE (n.registry, n.id) IS UNIQUE",
    "CREATE CONSTRAINT lineage_dataset IF NOT EXISTS FOR (n:Dataset) REQUIRE (n.registry, n.id) IS UNIQUE",
    "CREATE CONSTRAINT lineage_feature_view IF NOT EXISTS FOR (n:FeatureView) REQUIRE (n.registry, n.key) IS UNIQUE",
    "CREATE CONSTRAINT lineage_deployment IF NOT EXISTS FOR (n:Deployment) REQUIRE (n.registry, n.id) IS UNIQUE",
    "CREATE CONSTRAINT lineage_registry IF NOT EXISTS FOR (n:LineageRegistry) REQUIRE n.registry IS UNIQUE",
    "CREATE INDEX lineage_model_name IF NOT EXISTS FOR (n:Model) ON (n.registry, n.name)",
    "CREATE INDEX lineage_model_version_number IF NOT EXISTS FOR (n:ModelVersion) "
    "ON (n.registry, n.model_id, n.version)",
    "CREATE INDEX lineage_dataset_name IF NOT EXISTS FOR (n:Dataset) ON (n.registry, n.name)",
    "CREATE INDEX lineage_feature_view_name IF NOT EXISTS FOR (n:FeatureView) ON (n.registry, n.namespace, n.name)",
    "CREATE INDEX lineage_deployment_environment IF NOT EXISTS FOR (n:Deployment) ON (n.registry, n.environment)",
)

# What the previous version created (name -> label, properties), keyed by id alone: its constraints would
# refuse a second registry's model 1. Dropped only when name and definition both match, so a user's own
# index that happens to share a name stays.
LEGACY_CONSTRAINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "model_id": ("Model", ("id",)),
    "model_version_id": ("ModelVersion", ("id",)),
    "dataset_id": ("Dataset", ("id",)),
    "feature_view_key": ("FeatureView", ("key",)),
    "deployment_id": ("Deployment", ("id",)),
}
LEGACY_INDEXES: dict[str, tuple[str, tuple[str, ...]]] = {
    "model_name": ("Model", ("name",)),
    "model_version_number": ("ModelVersion", ("model_id", "version")),
    "dataset_name": ("Dataset", ("name", "version")),
    "feature_view_name": ("FeatureView", ("namespace", "name")),
    "deployment_environment": ("Deployment", ("environment",)),
}

# Every node pattern below carries ``registry: $registry`` (tests/unit/registry/test_registry_plan.py checks
# that none lacks it): an event of one registry can only reach that registry's nodes.

_UPSERT_MODEL = """UNWIND $events AS e
MERGE (m:Model {registry: $registry, id: e.new.id})
SET m.name = e.new.name, m.description = e.new.description"""

_UPSERT_VERSION = """UNWIND $events AS e
MERGE (v:ModelVersion {registry: $registry, id: e.new.id})
SET v.model_id = e.new.model_id, v.version = e.new.version, v.stage = e.new.stage, v.run_id = e.new.run_id
WITH v, e
OPTIONAL MATCH (old:Model {registry: $registry})-[r:HAS_VERSION]->(v) WHERE old.id <> e.new.model_id
DELETE r
WITH v, e
MERGE (m:Model {registry: $registry, id: e.new.model_id})
MERGE (m)-[:HAS_VERSION]->(v)"""

_UPSERT_DATASET = """UNWIND $events AS e
MERGE (d:Dataset {registry: $registry, id: e.new.id})
SET d.name = e.new.name, d.version = e.new.version, d.uri = e.new.uri, d.checksum = e.new.checksum"""

_UPSERT_DEPLOYMENT = """UNWIND $events AS e
MERGE (d:Deployment {registry: $registry, id: e.new.id})
SET d.environment = e.new.environment, d.deployed_at = datetime(e.new.deployed_at),
    d.retired_at = datetime(e.new.retired_at), d.model_version_id = e.new.model_version_id
WITH d, e
OPTIONAL MATCH (d)-[r:DEPLOYS]->(old:ModelVersion {registry: $registry}) WHERE old.id <> e.new.model_version_id
DELETE r
WITH d, e
MERGE (v:ModelVersion {registry: $registry, id: e.new.model_version_id})
MERGE (d)-[:DEPLOYS]->(v)"""


def _delete_node(label: str) -> str:
    return f"UNWIND $events AS e MATCH (n:{label} {{registry: $registry, id: e.old.id}}) DETACH DELETE n"


def _link_dataset(relation: str) -> str:
    return f"""UNWIND $events AS e
MERGE (v:ModelVersion {{registry: $registry, id: e.new.model_version_id}})
MERGE (d:Dataset {{registry: $registry, id: e.new.dataset_id}})
MERGE (v)-[:{relation}]->(d)"""


def _unlink_dataset(relation: str) -> str:
    return f"""UNWIND $events AS e
MATCH (:ModelVersion {{registry: $registry, id: e.old.model_version_id}})-[r:{relation}]->
      (:Dataset {{registry: $registry, id: e.old.dataset_id}})
DELETE r"""


_LINK_FEATURE = """UNWIND $events AS e
MERGE (v:ModelVersion {registry: $registry, id: e.new.model_version_id})
MERGE (f:FeatureView {registry: $registry, key: e.new.feature_view_namespace + '/' + e.new.feature_view_name})
SET f.namespace = e.new.feature_view_namespace, f.name = e.new.feature_view_name
MERGE (v)-[:USES_FEATURE]->(f)"""

# A FeatureView node exists while some version of the registry uses it (it has no row of its own there).
_UNLINK_FEATURE = """UNWIND $events AS e
MATCH (:ModelVersion {registry: $registry, id: e.old.model_version_id})-[r:USES_FEATURE]->
      (f:FeatureView {registry: $registry, key: e.old.feature_view_namespace + '/' + e.old.feature_view_name})
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
    """What one ``sync`` call did. ``rebuilt``: the registry's graph was rebuilt first (every event of the
    outbox made pending again, see the module docstring)."""

    events: int
    batches: int
    ignored: int
    last_event_id: int | None
    seconds: float
    finished_at: datetime
    rebuilt: bool = False


class GraphInUse(Exception):
    """The Neo4j database holds a graph of a registry with this namespace/name built from another registry
    database; nothing was changed."""

    def __init__(self, registry: str, database: str | None, held: str, ours: str) -> None:
        where = f"Neo4j database {database!r}" if database else "the Neo4j database"
        super().__init__(
            f"{where} holds a lineage graph of ModelRegistry {registry} built from another registry database "
            f"(whose schema was created {held}; this registry's was created {ours})"
        )
        self.registry, self.database, self.held, self.ours = registry, database, held, ours


def check_registry(registry: str) -> str:
    """``registry`` when it is ``<namespace>/<name>``; ValueError otherwise. Pure."""
    if not REGISTRY_PATTERN.fullmatch(registry):
        raise ValueError(f"registry must be '<namespace>/<name>', got {registry!r}")
    return registry


def ensure_schema(driver: neo4j.Driver, database: str | None = None, tx_timeout: float | None = TX_TIMEOUT) -> None:
    """The registry-scoped constraints and indexes, after dropping the previous version's id-only ones;
    idempotent."""
    with driver.session(database=database) as session:
        for statement in legacy_drops(session, tx_timeout):
            session.run(neo4j.Query(statement, timeout=tx_timeout)).consume()
        for statement in SCHEMA_STATEMENTS:
            session.run(neo4j.Query(statement, timeout=tx_timeout)).consume()


def legacy_drops(session: neo4j.Session, tx_timeout: float | None = TX_TIMEOUT) -> list[LiteralString]:
    """The DROP statements for the previous version's constraints and indexes that are still there."""
    out: list[LiteralString] = []
    for kind, legacy in (("CONSTRAINT", LEGACY_CONSTRAINTS), ("INDEX", LEGACY_INDEXES)):
        show: LiteralString = "SHOW CONSTRAINTS" if kind == "CONSTRAINT" else "SHOW INDEXES"
        rows = session.run(neo4j.Query(f"{show} YIELD name, labelsOrTypes, properties", timeout=tx_timeout)).data()
        for row in rows:
            for name, (label, props) in legacy.items():
                if row["name"] == name and (row["labelsOrTypes"], tuple(row["properties"] or ())) == ([label], props):
                    # The name is one of the constants above, never text from the server.
                    out.append(f"DROP {kind} {name} IF EXISTS")
    return out


def statements(event: Event) -> list[tuple[str, dict[str, Any]]]:
    """The Cypher statements (each an ``UNWIND $events AS e`` over ``e.new`` / ``e.old``, within
    ``$registry``) that apply one event, with the event's parameters; [] for events the graph does not show.
    Pure."""
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
    driver: neo4j.Driver,
    events: Sequence[Event],
    database: str | None = None,
    tx_timeout: float | None = TX_TIMEOUT,
    *,
    registry: str,
) -> None:
    """Apply ``events`` of ``registry`` (``<namespace>/<name>``) to its nodes in one Neo4j transaction
    (retried on transient errors: replays are harmless)."""
    check_registry(registry)
    runs = plan(events)
    if not runs:
        return

    @neo4j.unit_of_work(timeout=tx_timeout)
    def work(tx: neo4j.ManagedTransaction) -> None:
        for query, params in runs:
            tx.run(query, events=params, registry=registry).consume()

    with driver.session(database=database) as session:
        session.execute_write(work)


def write_events_one_by_one(
    driver: neo4j.Driver,
    events: Sequence[Event],
    database: str | None = None,
    tx_timeout: float | None = TX_TIMEOUT,
    *,
    registry: str,
) -> None:
    """The same graph as ``write_events``, one Neo4j transaction per event: the benchmark's baseline."""
    check_registry(registry)

    @neo4j.unit_of_work(timeout=tx_timeout)
    def work(tx: neo4j.ManagedTransaction, runs: list[tuple[str, list[dict[str, Any]]]]) -> None:
        for query, params in runs:
            tx.run(query, events=params, registry=registry).consume()

    with driver.session(database=database) as session:
        for event in events:
            runs = plan([event])
            if runs:
                session.execute_write(work, runs)


def history(pg_conn: psycopg.Connection[Any]) -> str:
    """Which registry database this is: when its registry schema was created (migration 1), in UTC to the
    microsecond. Survives restarts, upgrades and a registry re-created on the same database; differs for a
    database created again, or another database."""
    row = pg_conn.execute(
        "SELECT to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
        "FROM registry.schema_migrations WHERE version = 1"
    ).fetchone()
    if row is None:
        raise ValueError("the registry database has no registry schema (migration 1 is not applied)")
    return str(row[0])


def graph_history(driver: neo4j.Driver, registry: str, database: str | None = None) -> str | None:
    """The history the graph of ``registry`` was built from (None: not built by this version yet)."""
    # properties(m), not m.history: on a database where no sync ever wrote one, the server would warn (in
    # the operator's log) that the property key does not exist.
    records, _, _ = driver.execute_query(
        "MATCH (m:LineageRegistry {registry: $registry}) RETURN properties(m) AS m",
        {"registry": registry},
        database_=database,
        routing_=neo4j.RoutingControl.READ,
    )
    return str(records[0]["m"].get("history")) if records else None


def delete_registry_nodes(
    driver: neo4j.Driver, registry: str, database: str | None = None, tx_timeout: float | None = TX_TIMEOUT
) -> int:
    """Delete the nodes (and their edges) of ``registry``, nothing else, in bounded transactions; the
    number deleted."""
    check_registry(registry)

    def batch(tx: neo4j.ManagedTransaction, query: LiteralString) -> int:
        return int(tx.run(query, registry=registry).single(strict=True)[0])

    deleted = 0
    with driver.session(database=database) as session:
        for label, key in NODE_KEYS.items():
            # registry = ... AND <key> IS NOT NULL: the (registry, key) constraint's index serves it.
            query: LiteralString = (
                f"MATCH (n:{label}) WHERE n.registry = $registry AND n.{key} IS NOT NULL "
                "WITH n LIMIT 10000 DETACH DELETE n RETURN count(*) AS deleted"
            )
            while done := session.execute_write(neo4j.unit_of_work(timeout=tx_timeout)(batch), query):
                deleted += done
    return deleted


def _lock(pg_conn: psycopg.Connection[Any], lock_timeout_seconds: float) -> None:
    """The sync's advisory lock, for the current transaction (one syncer of a registry at a time)."""
    pg_conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_seconds * 1000)}ms",))
    pg_conn.execute("SELECT pg_advisory_xact_lock(%s)", (SYNC_LOCK_KEY,))


def prepare(
    pg_conn: psycopg.Connection[Any],
    driver: neo4j.Driver,
    registry: str,
    database: str | None = None,
    lock_timeout_seconds: float = 60.0,
    tx_timeout: float | None = TX_TIMEOUT,
) -> bool:
    """Make the graph of ``registry`` one that the drain can continue: True when it had to be rebuilt
    (its nodes deleted and every outbox event pending again); GraphInUse when the graph of that name was
    built from another registry database. See the module docstring."""
    check_registry(registry)
    with pg_conn.transaction():
        _lock(pg_conn, lock_timeout_seconds)
        ours = history(pg_conn)
        held = graph_history(driver, registry, database)
        if held == ours:
            return False
        if held is not None:
            raise GraphInUse(registry, database, held, ours)
        delete_registry_nodes(driver, registry, database, tx_timeout)
        pg_conn.execute("UPDATE registry.outbox SET processed_at = NULL WHERE processed_at IS NOT NULL")
    # Only once the outbox is pending again (committed above) may the graph say it was built from it: a crash
    # in between finds no LineageRegistry node and rebuilds again.
    with pg_conn.transaction():
        _lock(pg_conn, lock_timeout_seconds)
        records, _, _ = driver.execute_query(
            "MERGE (m:LineageRegistry {registry: $registry}) "
            "ON CREATE SET m.history = $history, m.built_at = datetime() RETURN m.history AS history",
            {"registry": registry, "history": ours},
            database_=database,
        )
        held = str(records[0]["history"])
        if held != ours:  # another registry of this name got there first
            raise GraphInUse(registry, database, held, ours)
    return True


def sync(
    pg_conn: psycopg.Connection[Any],
    driver: neo4j.Driver,
    batch_size: int = 500,
    database: str | None = None,
    max_batches: int | None = None,
    lock_timeout_seconds: float = 60.0,
    one_by_one: bool = False,
    tx_timeout: float | None = TX_TIMEOUT,
    *,
    registry: str,
) -> SyncResult:
    """Drain pending outbox events into the graph of ``registry`` (``<namespace>/<name>`` of the
    ModelRegistry); returns when none are left (or after ``max_batches``). Rebuilds that graph first when it
    was not built from this registry database yet; raises GraphInUse when another registry of that name's is.

    ``pg_conn`` (the operator's connection to the registry database) must be outside a transaction.
    ``one_by_one`` writes each event in its own Neo4j transaction (for the benchmark). ``tx_timeout``: the
    server ends a graph transaction that runs longer (seconds; None: the server's default).
    """
    check_registry(registry)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if pg_conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("sync() needs a connection outside a transaction")
    started = time.monotonic()
    rebuilt = prepare(pg_conn, driver, registry, database, lock_timeout_seconds, tx_timeout)
    has_old = _has_column(pg_conn, "outbox", "old_payload")
    has_state = _has_table(pg_conn, "lineage_sync_state")
    columns = "id, event_type, payload, old_payload" if has_old else "id, event_type, payload, NULL"
    query = (
        f"SELECT {columns} FROM registry.outbox WHERE processed_at IS NULL "  # noqa: S608 - constants
        "ORDER BY id LIMIT %s"
    ).encode()
    write = write_events_one_by_one if one_by_one else write_events
    total = batches = ignored = 0
    last_id: int | None = None
    finished: tuple[Any, ...] | None = None
    while max_batches is None or batches < max_batches:
        with pg_conn.transaction():
            _lock(pg_conn, lock_timeout_seconds)
            rows = pg_conn.execute(query, (batch_size,)).fetchall()
            events = [Event.from_row(int(r[0]), str(r[1]), r[2], r[3]) for r in rows]
            if events:
                write(driver, events, database, tx_timeout, registry=registry)
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
        rebuilt,
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
