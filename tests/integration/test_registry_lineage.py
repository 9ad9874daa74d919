"""registry.lineage and registry.observe on real PostgreSQL + Neo4j: a scripted history becomes exactly the
expected graph of its registry; replays and a crash between the graph commit and the outbox mark change
nothing; a lost graph is rebuilt from the outbox; a graph of the same registry name built from another
registry database is refused and left alone. (Two registries on one Neo4j database, and graphs of the
previous version: tests/integration/test_shared_servers.py.)"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import neo4j
import psycopg
import pytest

from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.registry import lineage, migrate, observe

Conn = psycopg.Connection[tuple[Any, ...]]
REGISTRY = "ml/registry"


@pytest.fixture(scope="module")
def database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    name = f"registry_lineage_{secrets.token_hex(4)}"
    with postgres_cluster.primary.connect() as admin:
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    yield name
    with postgres_cluster.primary.connect() as admin:
        admin.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


@pytest.fixture
def pg(postgres_cluster: PostgresCluster, database: str) -> Iterator[Conn]:
    with postgres_cluster.primary.connect(database) as conn:
        migrate.apply(conn)
        conn.execute("TRUNCATE registry.registered_models, registry.datasets, registry.outbox CASCADE")
        yield conn


@pytest.fixture
def driver(neo4j_server: Neo4jServer) -> Iterator[neo4j.Driver]:
    with neo4j_server.driver() as drv:
        drv.execute_query("MATCH (n) DETACH DELETE n")
        lineage.ensure_schema(drv)
        yield drv


def script(conn: Conn) -> None:
    """A history with updates, relinks and deletes."""
    x = conn.execute
    x("INSERT INTO registry.registered_models (name) VALUES ('churn'), ('fraud'), ('scratch')")
    x("""INSERT INTO registry.model_versions (model_id, version)
         SELECT id, v FROM registry.registered_models, generate_series(1, 2) v WHERE name IN ('churn', 'fraud')""")
    x(
        "INSERT INTO registry.datasets (name, version, uri) VALUES ('events', '2024-01', 's3://e/1'), "
        "('events', '2024-02', 's3://e/2'), ('labels', '', 's3://l'), ('tmp', '', 's3://t')"
    )
    x("""INSERT INTO registry.model_version_datasets (model_version_id, dataset_id, relation)
         SELECT mv.id, d.id, 'TRAINED_ON' FROM registry.model_versions mv JOIN registry.registered_models m
           ON m.id = mv.model_id, registry.datasets d
         WHERE m.name = 'churn' AND d.name = 'events' AND d.version = '2024-0' || mv.version""")
    x("""INSERT INTO registry.model_version_datasets (model_version_id, dataset_id, relation)
         SELECT mv.id, d.id, 'EVALUATED_ON' FROM registry.model_versions mv, registry.datasets d
         WHERE d.name IN ('labels', 'tmp')""")
    x("""INSERT INTO registry.model_version_features (model_version_id, feature_view_namespace, feature_view_name)
         SELECT mv.id, 'ml', f FROM registry.model_versions mv JOIN registry.registered_models m
           ON m.id = mv.model_id, unnest(ARRAY['user_stats', 'old_view']) f WHERE m.name = 'churn'""")
    x("DELETE FROM registry.model_version_features WHERE feature_view_name = 'old_view'")
    # A relink: TRAINED_ON becomes EVALUATED_ON for churn v1 on events 2024-01.
    x("""UPDATE registry.model_version_datasets SET relation = 'EVALUATED_ON'
         WHERE relation = 'TRAINED_ON' AND dataset_id = (SELECT id FROM registry.datasets WHERE version = '2024-01')""")
    x("DELETE FROM registry.datasets WHERE name = 'tmp'")
    x("UPDATE registry.model_versions SET stage = 'production' WHERE version = 2")
    x("""INSERT INTO registry.deployments (model_version_id, environment)
         SELECT mv.id, 'prod' FROM registry.model_versions mv WHERE mv.stage = 'production'""")
    x("DELETE FROM registry.registered_models WHERE name = 'scratch'")
    x("UPDATE registry.registered_models SET description = 'churn model' WHERE name = 'churn'")


# An edge end outside the registry (another registry's node, or one without a registry) names its registry.
_FOREIGN = "CASE {0}.registry WHEN $registry THEN '' ELSE ' of ' + coalesce({0}.registry, 'none') END"


def graph_state(driver: neo4j.Driver, registry: str = REGISTRY) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The nodes and edges of ``registry``'s graph; an edge reaching a node of another registry (or of
    none) shows it, so such an edge cannot hide."""
    nodes, _, _ = driver.execute_query(
        "MATCH (n) WHERE n.registry = $registry AND NOT n:LineageRegistry "
        "RETURN labels(n)[0] AS label, coalesce(n.name, '') + '|' + coalesce(toString(n.version), '') "
        "+ '|' + coalesce(n.stage, '') + '|' + coalesce(n.key, '') + '|' + coalesce(n.environment, '') "
        "+ '|' + coalesce(n.description, '') AS what",
        registry=registry,
    )
    rels, _, _ = driver.execute_query(
        "MATCH (a)-[r]->(b) WHERE a.registry = $registry OR b.registry = $registry "
        "RETURN type(r) AS t, coalesce(a.name, a.environment, toString(a.model_id) + 'v' + toString(a.version)) "
        f"+ {_FOREIGN.format('a')} AS a, "
        "coalesce(b.key, b.name + '@' + b.version, toString(b.model_id) + 'v' + toString(b.version)) "
        f"+ {_FOREIGN.format('b')} AS b",
        registry=registry,
    )
    return ({(r["label"], r["what"]) for r in nodes}, {(r["t"], r["a"], r["b"]) for r in rels})


def expected(conn: Conn) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    ids = dict(conn.execute("SELECT name, id::text FROM registry.registered_models").fetchall())
    churn, fraud = ids["churn"], ids["fraud"]
    nodes = {
        ("Model", "churn|||||churn model"),
        ("Model", "fraud|||||"),
        ("ModelVersion", "|1|none|||"),
        ("ModelVersion", "|2|production|||"),
        ("Dataset", "events|2024-01||||"),
        ("Dataset", "events|2024-02||||"),
        ("Dataset", "labels|||||"),
        ("FeatureView", "user_stats|||ml/user_stats||"),
        ("Deployment", "||||prod|"),
    }
    rels = {
        ("HAS_VERSION", "churn", f"{churn}v1"),
        ("HAS_VERSION", "churn", f"{churn}v2"),
        ("HAS_VERSION", "fraud", f"{fraud}v1"),
        ("HAS_VERSION", "fraud", f"{fraud}v2"),
        ("EVALUATED_ON", f"{churn}v1", "events@2024-01"),
        ("TRAINED_ON", f"{churn}v2", "events@2024-02"),
        *{("EVALUATED_ON", f"{m}v{v}", "labels@") for m in (churn, fraud) for v in (1, 2)},
        ("USES_FEATURE", f"{churn}v1", "ml/user_stats"),
        ("USES_FEATURE", f"{churn}v2", "ml/user_stats"),
        ("DEPLOYS", "prod", f"{churn}v2"),
        ("DEPLOYS", "prod", f"{fraud}v2"),
    }
    return nodes, rels


def test_scripted_history_gives_exactly_the_expected_graph(pg: Conn, driver: neo4j.Driver) -> None:
    script(pg)
    pending = observe.outbox(pg)
    assert pending.pending_events > 0
    assert pending.oldest_pending_age_seconds is not None
    result = lineage.sync(pg, driver, batch_size=7, registry=REGISTRY)
    assert result.events == pending.pending_events
    assert result.batches == -(-result.events // 7)
    nodes, rels = graph_state(driver)
    want_nodes, want_rels = expected(pg)
    assert nodes == want_nodes  # as a set: churn and fraud each have a v1 and a v2, both deployed to prod
    assert rels == want_rels
    g = observe.graph(driver, REGISTRY)
    assert g.nodes == 2 + 4 + 3 + 1 + 2  # 2 models, 4 versions, 3 datasets, 1 view, 2 deployments
    assert g.relationships == 4 + 2 + 4 + 2 + 2
    after = observe.outbox(pg)
    assert after.pending_events == 0 and after.oldest_pending_age_seconds is None
    assert after.last_sync_time is not None
    assert observe.counts(pg) == observe.Counts(2, 4, 3, 2)
    assert observe.schema_version(pg) == migrate.latest_version()


def _all_events(conn: Conn) -> list[lineage.Event]:
    rows = conn.execute("SELECT id, event_type, payload, old_payload FROM registry.outbox ORDER BY id").fetchall()
    return [lineage.Event.from_row(*row) for row in rows]


def test_replaying_the_outbox_twice_changes_nothing(pg: Conn, driver: neo4j.Driver) -> None:
    script(pg)
    lineage.sync(pg, driver, registry=REGISTRY)
    before = graph_state(driver), observe.graph(driver, REGISTRY)
    for _ in range(2):
        pg.execute("UPDATE registry.outbox SET processed_at = NULL")
        assert lineage.sync(pg, driver, batch_size=5, registry=REGISTRY).events == len(_all_events(pg))
        assert (graph_state(driver), observe.graph(driver, REGISTRY)) == before


def test_crash_between_graph_commit_and_outbox_mark_is_harmless(pg: Conn, driver: neo4j.Driver) -> None:
    script(pg)
    events = _all_events(pg)
    half = len(events) // 2
    lineage.sync(pg, driver, batch_size=half // 2 or 1, max_batches=1, registry=REGISTRY)
    # The "crash": the next batch reached the graph, the mark never happened.
    pending = [
        e
        for e in events
        if e.id in {r[0] for r in pg.execute("SELECT id FROM registry.outbox WHERE processed_at IS NULL").fetchall()}
    ]
    lineage.write_events(driver, pending[:half], registry=REGISTRY)
    assert observe.outbox(pg).pending_events == len(pending)
    lineage.sync(pg, driver, batch_size=4, registry=REGISTRY)
    assert graph_state(driver) == lineage_reference(pg, driver)


def lineage_reference(pg: Conn, driver: neo4j.Driver) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The graph a clean sync of the whole outbox makes."""
    driver.execute_query("MATCH (n) DETACH DELETE n")
    pg.execute("UPDATE registry.outbox SET processed_at = NULL")
    lineage.sync(pg, driver, registry=REGISTRY)
    return graph_state(driver)


def test_lineage_queries(pg: Conn, driver: neo4j.Driver) -> None:
    script(pg)
    lineage.sync(pg, driver, registry=REGISTRY)
    upstream, _, _ = driver.execute_query(
        "MATCH (:Model {name: 'churn'})-[:HAS_VERSION]->(v:ModelVersion {version: 2})-[r]->(x) "
        "RETURN type(r) AS t, coalesce(x.key, x.name + '@' + x.version) AS what"
    )
    assert {(r["t"], r["what"]) for r in upstream} == {
        ("TRAINED_ON", "events@2024-02"),
        ("EVALUATED_ON", "labels@"),
        ("USES_FEATURE", "ml/user_stats"),
    }
    impact, _, _ = driver.execute_query(
        "MATCH (:Dataset {name: 'events', version: '2024-02'})<-[:TRAINED_ON|EVALUATED_ON]-(v:ModelVersion)"
        "<-[:HAS_VERSION]-(m:Model) OPTIONAL MATCH (d:Deployment)-[:DEPLOYS]->(v) "
        "RETURN m.name AS model, v.version AS version, collect(d.environment) AS envs"
    )
    assert [(r["model"], r["version"], r["envs"]) for r in impact] == [("churn", 2, ["prod"])]
    views, _, _ = driver.execute_query(
        "MATCH (:FeatureView {key: 'ml/user_stats'})<-[:USES_FEATURE]-(v)<-[:HAS_VERSION]-(m) "
        "RETURN m.name AS m, v.version AS v ORDER BY v"
    )
    assert [(r["m"], r["v"]) for r in views] == [("churn", 1), ("churn", 2)]


def test_sync_with_nothing_pending_records_the_pass(pg: Conn, driver: neo4j.Driver) -> None:
    lineage.sync(pg, driver, registry=REGISTRY)  # the first pass (re)builds the graph
    result = lineage.sync(pg, driver, registry=REGISTRY)
    assert (result.events, result.batches, result.rebuilt) == (0, 0, False)
    assert observe.outbox(pg).last_sync_time == result.finished_at


def test_constraints_are_registry_scoped(driver: neo4j.Driver) -> None:
    lineage.ensure_schema(driver)  # idempotent
    rows, _, _ = driver.execute_query("SHOW CONSTRAINTS YIELD type, labelsOrTypes, properties RETURN *")
    got = {(r["type"], r["labelsOrTypes"][0], tuple(r["properties"])) for r in rows}
    assert got >= {
        ("UNIQUENESS", "Model", ("registry", "id")),
        ("UNIQUENESS", "ModelVersion", ("registry", "id")),
        ("UNIQUENESS", "Dataset", ("registry", "id")),
        ("UNIQUENESS", "FeatureView", ("registry", "key")),
        ("UNIQUENESS", "Deployment", ("registry", "id")),
        ("UNIQUENESS", "LineageRegistry", ("registry",)),
    }
    assert not {c for c in got if c[2] in (("id",), ("key",))}  # nothing keyed by id alone
    # The real server refuses a second node with the same (registry, id), and takes one of another registry.
    driver.execute_query("CREATE (:Model {registry: 'a/x', id: 1}), (:Model {registry: 'b/x', id: 1})")
    with pytest.raises(neo4j.exceptions.ConstraintError):
        driver.execute_query("CREATE (:Model {registry: 'a/x', id: 1})")


def test_a_lost_graph_is_rebuilt_from_the_outbox(pg: Conn, driver: neo4j.Driver) -> None:
    script(pg)
    first = lineage.sync(pg, driver, batch_size=6, registry=REGISTRY)
    assert first.rebuilt
    want = graph_state(driver)
    assert want == expected(pg)
    assert lineage.sync(pg, driver, registry=REGISTRY).rebuilt is False
    # The Neo4j database lost everything (replaced, restored from an empty backup...): every event of the
    # outbox, long processed, is replayed.
    driver.execute_query("MATCH (n) DETACH DELETE n")
    assert observe.outbox(pg).pending_events == 0
    again = lineage.sync(pg, driver, batch_size=6, registry=REGISTRY)
    assert again.rebuilt and again.events == len(_all_events(pg))
    assert graph_state(driver) == want
    # A stray node of ours that the history does not have (the graph of a crashed rebuild) goes with it.
    driver.execute_query("MATCH (m:LineageRegistry) DETACH DELETE m")
    driver.execute_query("CREATE (:Model {registry: $registry, id: -1, name: 'stray'})", registry=REGISTRY)
    assert lineage.sync(pg, driver, registry=REGISTRY).rebuilt
    assert graph_state(driver) == want


def test_a_graph_built_from_another_registry_database_is_refused_and_left_alone(pg: Conn, driver: neo4j.Driver) -> None:
    """The same namespace/name, another registry database (another cluster on this Neo4j, or this registry
    before its database was created again): reported, never rebuilt over."""
    script(pg)
    lineage.sync(pg, driver, registry=REGISTRY)
    theirs = "2001-01-01T00:00:00.000000Z"
    driver.execute_query("MATCH (m:LineageRegistry {registry: $r}) SET m.history = $h", r=REGISTRY, h=theirs)
    before = graph_state(driver)
    pg.execute("INSERT INTO registry.registered_models (name) VALUES ('late')")
    with pytest.raises(lineage.GraphInUse) as refused:
        lineage.sync(pg, driver, registry=REGISTRY)
    assert refused.value.held == theirs and refused.value.ours == lineage.history(pg)
    assert REGISTRY in str(refused.value) and theirs in str(refused.value)
    assert graph_state(driver) == before  # nothing deleted, nothing written
    assert observe.outbox(pg).pending_events == 1  # nothing marked, nothing made pending again


def test_sync_cli_from_mounted_dirs(
    pg: Conn,
    driver: neo4j.Driver,
    database: str,
    tmp_path: Any,
    postgres_cluster: PostgresCluster,
    neo4j_server: Neo4jServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from mlinfra.engines import connection
    from mlinfra.registry import sync_cli

    script(pg)
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
        for k, v in info.to_secret_data().items():
            (tmp_path / key / k).write_text(v)
    monkeypatch.setenv(sync_cli.METADATA_DIR_ENV, str(tmp_path / "pg"))
    monkeypatch.setenv(sync_cli.LINEAGE_DIR_ENV, str(tmp_path / "neo"))
    monkeypatch.setenv(
        sync_cli.SPEC_ENV,
        json.dumps({"metadataStoreRef": {"name": "pg"}, "lineageStoreRef": {"name": "neo"}, "database": database}),
    )
    assert sync_cli.run("ml/registry", batch_size=3) == sync_cli.EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["outcome"] == "Synced" and summary["events"] > 0 and summary["rebuilt"] is True
    assert observe.outbox(pg).pending_events == 0
    assert graph_state(driver, "ml/registry") == expected(pg)  # the target names the registry of the nodes
    assert sync_cli.run("no-slash") == sync_cli.EXIT_UNUSABLE
    capsys.readouterr()
    driver.execute_query("MATCH (m:LineageRegistry {registry: 'ml/registry'}) SET m.history = 'elsewhere'")
    assert sync_cli.run("ml/registry") == sync_cli.EXIT_UNUSABLE
    refused = json.loads(capsys.readouterr().out)
    assert refused["outcome"] == "GraphInUse" and "ModelRegistry ml/registry" in refused["error"]
