"""A ModelRegistry's lineage graph needs no Neo4j backup: it is derived from the registry's PostgreSQL, whose
outbox holds the whole history, and the lineage sync rebuilds it from there (registry.lineage: a registry
whose ``LineageRegistry`` node is missing gets its nodes deleted, every outbox event made pending again and
replayed). Real PostgreSQL + the session's Neo4j, the sync as its CronJob runs it (``mlinfra sync
modelregistry``):

- a Neo4j that lost everything (nodes, constraints, indexes) gets back exactly the graph it had, every node
  and relationship with every property, for each registry sharing it;
- a Neo4j restored from a logical export (mlinfra.backup.neo4j) that is older than the registry holds a
  stale graph which the sync cannot see (the restored ``LineageRegistry`` node says the graph was built from
  this registry); deleting that node is what makes the sync rebuild it, and then it is exact again. So the
  runbook for a lineage store is "rebuild", not "restore".
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neo4j
import psycopg
import pytest

from mlinfra.backup import neo4j as backup_neo4j
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.engines import connection
from mlinfra.registry import lineage, migrate, observe, sync_cli

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[tuple[Any, ...]]
REGISTRIES = ("ml/registry", "team-b/models")


@pytest.fixture(scope="module")
def databases(postgres_cluster: PostgresCluster) -> Iterator[dict[str, str]]:
    names = {registry: f"lineage_rebuild_{secrets.token_hex(4)}" for registry in REGISTRIES}
    with postgres_cluster.primary.connect() as admin:
        for name in names.values():
            admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    yield names
    with postgres_cluster.primary.connect() as admin:
        for name in names.values():
            admin.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


@pytest.fixture
def pgs(postgres_cluster: PostgresCluster, databases: dict[str, str]) -> Iterator[dict[str, Conn]]:
    conns: dict[str, Conn] = {}
    try:
        for registry, name in databases.items():
            conn = postgres_cluster.primary.connect(name)
            conns[registry] = conn
            migrate.apply(conn)
            conn.execute("TRUNCATE registry.registered_models, registry.datasets, registry.outbox CASCADE")
        yield conns
    finally:
        for conn in conns.values():
            conn.close()


def wipe(driver: neo4j.Driver) -> None:
    """What a new, empty Neo4j database holds: no node, no constraint, only the token lookup indexes."""
    driver.execute_query("MATCH (n) DETACH DELETE n")
    for record in driver.execute_query("SHOW CONSTRAINTS YIELD name").records:
        driver.execute_query(f"DROP CONSTRAINT {backup_neo4j.quote(record['name'])}")
    for record in driver.execute_query("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP'").records:
        driver.execute_query(f"DROP INDEX {backup_neo4j.quote(record['name'])}")


@pytest.fixture
def driver(neo4j_server: Neo4jServer) -> Iterator[neo4j.Driver]:
    with neo4j_server.driver() as drv:
        wipe(drv)
        yield drv


@pytest.fixture
def sync(
    tmp_path: Path,
    databases: dict[str, str],
    postgres_cluster: PostgresCluster,
    neo4j_server: Neo4jServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Any:
    """``mlinfra sync modelregistry <registry>`` with the connection Secrets mounted as directories (as the
    CronJob's pod has them); returns its JSON summary."""
    infos = {
        "pg": connection.ConnectionInfo.for_engine(
            "postgres", "127.0.0.1", postgres_cluster.password, port=postgres_cluster.primary.port
        ),
        "neo": connection.ConnectionInfo.for_engine(
            "neo4j", "127.0.0.1", neo4j_server.password, port=neo4j_server.port
        ),
    }
    for key, info in infos.items():
        (tmp_path / key).mkdir()
        for name, value in info.to_secret_data().items():
            (tmp_path / key / name).write_text(value)
    monkeypatch.setenv(sync_cli.METADATA_DIR_ENV, str(tmp_path / "pg"))
    monkeypatch.setenv(sync_cli.LINEAGE_DIR_ENV, str(tmp_path / "neo"))

    def run(registry: str) -> dict[str, Any]:
        spec = {"metadataStoreRef": {"name": "pg"}, "lineageStoreRef": {"name": "neo"}, "database": databases[registry]}
        monkeypatch.setenv(sync_cli.SPEC_ENV, json.dumps(spec))
        capsys.readouterr()
        code = sync_cli.run(registry, batch_size=4)
        summary: dict[str, Any] = json.loads(capsys.readouterr().out)
        assert code == sync_cli.EXIT_OK, summary
        return summary

    return run


def history(conn: Conn, flavour: str) -> None:
    """Every kind of node and edge, with updates, relinks and deletes along the way."""
    x = conn.execute
    x(
        "INSERT INTO registry.registered_models (name, description) "
        "VALUES (%s, 'first'), ('fraud', ''), ('scratch', '')",
        (f"churn-{flavour}",),
    )
    x("""INSERT INTO registry.model_versions (model_id, version, run_id)
         SELECT id, v, 'run-' || v FROM registry.registered_models, generate_series(1, 3) v WHERE name <> 'scratch'""")
    x(
        "INSERT INTO registry.datasets (name, version, uri, checksum) VALUES ('events', '2024-01', 's3://e/1', "
        "'sha256:aa'), ('events', '2024-02', 's3://e/2', NULL), ('labels', '', 's3://l', NULL), ('tmp', '', '', NULL)"
    )
    x("""INSERT INTO registry.model_version_datasets (model_version_id, dataset_id, relation)
         SELECT mv.id, d.id, CASE WHEN d.name = 'events' THEN 'TRAINED_ON' ELSE 'EVALUATED_ON' END
         FROM registry.model_versions mv, registry.datasets d WHERE mv.version <= 2""")
    x("""INSERT INTO registry.model_version_features (model_version_id, feature_view_namespace, feature_view_name)
         SELECT mv.id, 'ml', f FROM registry.model_versions mv, unnest(ARRAY['user_stats', 'old_view']) f""")
    x("DELETE FROM registry.model_version_features WHERE feature_view_name = 'old_view'")
    x(
        "UPDATE registry.model_version_datasets SET relation = 'EVALUATED_ON' WHERE relation = 'TRAINED_ON' "
        "AND dataset_id = (SELECT id FROM registry.datasets WHERE version = '2024-01')"
    )
    x("DELETE FROM registry.datasets WHERE name = 'tmp'")
    x("UPDATE registry.model_versions SET stage = 'production' WHERE version = 2")
    x("""INSERT INTO registry.deployments (model_version_id, environment, deployed_at)
         SELECT mv.id, 'prod', timestamptz '2024-05-01 10:00:00.123456+02' + mv.id * interval '1 hour'
         FROM registry.model_versions mv WHERE mv.stage = 'production'""")
    x("DELETE FROM registry.registered_models WHERE name = 'scratch'")
    x("UPDATE registry.registered_models SET description = 'churn model' WHERE name LIKE 'churn-%'")


def more_history(conn: Conn) -> None:
    conn.execute("INSERT INTO registry.registered_models (name) VALUES ('late')")
    conn.execute("UPDATE registry.model_versions SET stage = 'archived' WHERE version = 1")
    conn.execute("DELETE FROM registry.model_version_datasets WHERE relation = 'EVALUATED_ON'")


# --- the whole graph, comparably ---------------------------------------------------------------------------


def describe(value: Any) -> Any:
    if isinstance(value, list):
        return ("list", tuple(describe(item) for item in value))
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(value))
    return (type(value).__name__, repr(value))


def node_key(labels: list[str], props: dict[str, Any]) -> tuple[Any, ...]:
    # built_at: when the graph was (re)built, the one property a rebuild changes by design.
    kept = {k: v for k, v in props.items() if not ("LineageRegistry" in labels and k == "built_at")}
    return (tuple(sorted(labels)), tuple(sorted((k, describe(v)) for k, v in kept.items())))


def whole_graph(driver: neo4j.Driver) -> tuple[set[Any], list[Any], set[Any]]:
    """Every node (labels and every property), every relationship (type, end nodes, properties) and the
    schema of the whole database."""
    nodes = {
        r["id"]: node_key(r["labels"], r["props"])
        for r in driver.execute_query(
            "MATCH (n) RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS props"
        ).records
    }
    assert len(set(nodes.values())) == len(nodes)  # each node told apart by its content (registry + key)
    rels = sorted(
        (r["type"], nodes[r["a"]], nodes[r["b"]], tuple(sorted((k, describe(v)) for k, v in r["props"].items())))
        for r in driver.execute_query(
            "MATCH (a)-[r]->(b) RETURN type(r) AS type, elementId(a) AS a, elementId(b) AS b, properties(r) AS props"
        ).records
    )
    schema = {
        (r["name"], r["type"], tuple(r["labelsOrTypes"] or ()), tuple(r["properties"] or ()))
        for r in driver.execute_query(
            "SHOW INDEXES YIELD name, type, labelsOrTypes, properties WHERE type <> 'LOOKUP'"
        ).records
    }
    return set(nodes.values()), rels, schema


def count_events(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM registry.outbox").fetchone()
    assert row is not None
    return int(row[0])


# --- tests -------------------------------------------------------------------------------------------------


def test_a_neo4j_that_lost_everything_gets_every_registry_graph_back(
    pgs: dict[str, Conn], driver: neo4j.Driver, sync: Any
) -> None:
    for flavour, (registry, conn) in enumerate(pgs.items()):
        history(conn, str(flavour))
        assert sync(registry)["rebuilt"] is True
    want = whole_graph(driver)
    nodes, rels, schema = want
    labels = {key[0] for key in nodes}
    assert labels == {
        ("Model",),
        ("ModelVersion",),
        ("Dataset",),
        ("FeatureView",),
        ("Deployment",),
        ("LineageRegistry",),
    }
    assert {rel[0] for rel in rels} == {"HAS_VERSION", "TRAINED_ON", "EVALUATED_ON", "USES_FEATURE", "DEPLOYS"}
    assert len(schema) == len(lineage.SCHEMA_STATEMENTS)

    wipe(driver)  # the Neo4j database is gone: replaced by a new, empty one
    assert whole_graph(driver) == (set(), [], set())
    for registry, conn in pgs.items():
        assert observe.outbox(conn).pending_events == 0  # nothing pending: the outbox says all was written
        summary = sync(registry)
        assert summary["outcome"] == "Synced" and summary["rebuilt"] is True
        assert summary["events"] == count_events(conn)  # the whole history replayed
    assert whole_graph(driver) == want
    # And the next pass is an ordinary one.
    for registry in pgs:
        assert sync(registry) | {"seconds": 0, "finishedAt": ""} == {
            "outcome": "Synced",
            "events": 0,
            "batches": 0,
            "lastEventId": None,
            "rebuilt": False,
            "seconds": 0,
            "finishedAt": "",
        }


def test_a_restored_old_export_is_stale_until_its_registry_node_goes(
    pgs: dict[str, Conn], driver: neo4j.Driver, sync: Any, neo4j_server: Neo4jServer, tmp_path: Path
) -> None:
    registry, conn = next(iter(pgs.items()))
    history(conn, "x")
    sync(registry)
    info = connection.ConnectionInfo.for_engine("neo4j", "127.0.0.1", neo4j_server.password, port=neo4j_server.port)
    backup_neo4j.take(info, tmp_path / "export", timeout=60)
    more_history(conn)
    sync(registry)
    want = whole_graph(driver)

    wipe(driver)
    backup_neo4j.restore(tmp_path / "export", info, timeout=60)
    # The restored graph says it was built from this registry's history, so the sync has nothing to do,
    # and the changes made after the export stay missing: a restore alone is not enough.
    assert sync(registry)["events"] == 0
    assert whole_graph(driver) != want
    # The runbook: delete the registry's LineageRegistry node; the next sync rebuilds the graph exactly.
    driver.execute_query("MATCH (m:LineageRegistry {registry: $r}) DETACH DELETE m", r=registry)
    summary = sync(registry)
    assert summary["rebuilt"] is True and summary["events"] == count_events(conn)
    assert whole_graph(driver) == want
