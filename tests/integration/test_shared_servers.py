"""Tenants sharing one server stay apart (real PostgreSQL and Neo4j): registry roles carry their registry's
mark and are never altered for another registry; a database holds one registry; an offline table holds one
FeatureView; two registries with overlapping ids on one Neo4j database each see and change only their own
lineage graph, a graph of the previous version (nodes keyed by id alone, possibly of both) is left alone while
each registry rebuilds its own, and a registry of the same name from another database is refused.
(Qdrant aliases: tests/integration/test_vectors_collection.py.)"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import neo4j
import psycopg
import pytest
from psycopg import sql

from mlinfra.client import lineage as lineage_client
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.engines import claims
from mlinfra.features import claim as feature_claim
from mlinfra.features import schema
from mlinfra.registry import claim, lineage, migrate, observe, roles
from mlinfra.registry.reconcile import role_name

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    name = f"tenancy_{secrets.token_hex(4)}"
    with postgres_cluster.primary.connect() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with postgres_cluster.primary.connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def made_roles(postgres_cluster: PostgresCluster) -> Iterator[Callable[[str], str]]:
    """Role names to use, dropped (with what they own) afterwards."""
    names: list[str] = []

    def make(name: str) -> str:
        names.append(name)
        return name

    yield make
    with postgres_cluster.primary.connect() as admin:
        for name in names:
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                for (db,) in admin.execute("SELECT datname FROM pg_database WHERE datallowconn").fetchall():
                    with postgres_cluster.primary.connect(db) as conn:
                        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def login(cluster: PostgresCluster, db: str, user: str, password: str) -> Conn:
    return psycopg.connect(cluster.primary.dsn(db, user=user, password=password), autocommit=True)


def test_look_alike_registries_get_distinct_roles_and_neither_resets_the_other(
    postgres_cluster: PostgresCluster, database: str, made_roles: Callable[[str], str]
) -> None:
    suffix = secrets.token_hex(3)
    a = (f"team-x{suffix}", "models")  # what used to map to one role name with b
    b = (f"team{suffix}", "x-models")
    with postgres_cluster.primary.connect(database) as conn:
        migrate.apply(conn)
        creds = {}
        for ns, name in (a, b):
            w, r = made_roles(role_name(ns, name, "writer")), made_roles(role_name(ns, name, "reader"))
            creds[(ns, name)] = (w, secrets.token_urlsafe(16), r, secrets.token_urlsafe(16))
        assert creds[a][0] != creds[b][0] and creds[a][2] != creds[b][2]
        roles.ensure_roles(conn, database, *creds[a], owner=f"{a[0]}/{a[1]}")
        # Registry b, told by a hostile Secret or a hash collision to use a's role names, changes nothing.
        with pytest.raises(roles.RoleConflict) as refused:
            roles.ensure_roles(conn, database, creds[a][0], "stolen-pw", creds[a][2], "stolen-pw", owner="b/x")
        assert refused.value.holder == f"{a[0]}/{a[1]}"
    with login(postgres_cluster, database, creds[a][0], creds[a][1]) as w:  # a's password still works
        assert w.execute("SELECT current_user").fetchone() == (creds[a][0],)
    with pytest.raises(psycopg.OperationalError):
        login(postgres_cluster, database, creds[a][0], "stolen-pw").close()


def test_a_role_made_outside_the_operator_is_never_altered(
    postgres_cluster: PostgresCluster, database: str, made_roles: Callable[[str], str]
) -> None:
    theirs = made_roles(f"someone_{secrets.token_hex(3)}")
    ours = made_roles(f"r_{secrets.token_hex(3)}")
    with postgres_cluster.primary.connect(database) as conn:
        migrate.apply(conn)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'theirs' CREATEDB").format(sql.Identifier(theirs)))
        with pytest.raises(roles.RoleConflict) as refused:
            roles.ensure_roles(conn, database, theirs, "new-pw", ours, "new-pw", owner="ns/reg")
        assert refused.value.holder is None
        attrs = conn.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s", (theirs,)).fetchone()
        assert attrs == (True,)  # untouched: not demoted, password not reset
    with login(postgres_cluster, database, theirs, "theirs") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_a_database_holds_one_registry(postgres_cluster: PostgresCluster, database: str) -> None:
    with postgres_cluster.primary.connect(database) as conn:
        claim.claim(conn, database, "team/models")
        claim.claim(conn, database, "team/models")  # idempotent: the same registry, e.g. re-created
        with pytest.raises(claim.DatabaseInUse) as refused:
            claim.claim(conn, database, "other/models")
        assert refused.value.holder == "team/models"
        table = sql.Identifier(*claim.TABLE)
        assert conn.execute(sql.SQL("SELECT holder FROM {}").format(table)).fetchall() == [("team/models",)]


def test_an_offline_table_holds_one_featureview(postgres_cluster: PostgresCluster, database: str) -> None:
    with postgres_cluster.primary.connect(database) as conn:
        schema.ensure_bookkeeping(conn)
        feature_claim.claim(conn, "public", "clicks", "team-a/clicks")
        feature_claim.claim(conn, "public", "clicks", "team-a/clicks")  # idempotent
        feature_claim.claim(conn, "public", "clicks_b", "team-b/clicks")  # another table: fine
        with pytest.raises(feature_claim.TableInUse) as refused:
            feature_claim.claim(conn, "public", "clicks", "team-b/clicks")
        assert (refused.value.table, refused.value.holder) == ("public.clicks", "team-a/clicks")


def test_a_users_own_table_is_not_taken_over_and_a_prepared_one_is(
    postgres_cluster: PostgresCluster, database: str
) -> None:
    with postgres_cluster.primary.connect(database) as conn:
        schema.ensure_bookkeeping(conn)
        conn.execute("CREATE TABLE public.accounts (user_id bigint PRIMARY KEY, note text)")
        with pytest.raises(feature_claim.NotAnOfflineTable) as refused:
            feature_claim.claim(conn, "public", "accounts", "team-a/accounts")
        assert "has no event_timestamp column" in str(refused.value)
        assert claims.holder(conn, feature_claim.TABLE, {"schema_name": "public", "table_name": "accounts"}) is None
        # A table prepared for the view (its event time column is there) is adopted.
        conn.execute("CREATE TABLE public.prepared (user_id bigint NOT NULL, event_timestamp timestamptz NOT NULL)")
        feature_claim.claim(conn, "public", "prepared", "team-a/prepared")
        # And a table the view holds stays its own even if a column was dropped by hand.
        conn.execute("ALTER TABLE public.prepared DROP COLUMN event_timestamp")
        feature_claim.claim(conn, "public", "prepared", "team-a/prepared")
        with pytest.raises(feature_claim.TableInUse):
            feature_claim.claim(conn, "public", "prepared", "team-b/prepared")


# --- Neo4j: two registries, one lineage database --------------------------------------------------------

A, B = "team-a/models", "team-b/models"


def history_a(conn: Conn) -> None:
    """Models churn (id 1) and fraud (id 2); datasets events (1) and labels (2); churn v2 deployed."""
    x = conn.execute
    x("INSERT INTO registry.registered_models (name) VALUES ('churn'), ('fraud')")
    x("INSERT INTO registry.model_versions (model_id, version) VALUES (1, 1), (1, 2), (2, 1)")
    x(
        "INSERT INTO registry.datasets (name, version, uri) VALUES ('events', '2024', 's3://a/e'), ('labels', '', 's3://a/l')"
    )
    x("""INSERT INTO registry.model_version_datasets (model_version_id, dataset_id, relation)
         VALUES (1, 1, 'TRAINED_ON'), (2, 1, 'TRAINED_ON'), (3, 2, 'TRAINED_ON')""")
    x("""INSERT INTO registry.model_version_features (model_version_id, feature_view_namespace, feature_view_name)
         VALUES (1, 'ml', 'user-stats')""")
    x("INSERT INTO registry.deployments (model_version_id, environment) VALUES (2, 'prod')")


def history_b(conn: Conn) -> None:
    """Models ranker (id 1) and search (id 2); dataset clicks (1); the same FeatureView name as A's."""
    x = conn.execute
    x("INSERT INTO registry.registered_models (name) VALUES ('ranker'), ('search')")
    x("INSERT INTO registry.model_versions (model_id, version) VALUES (1, 1), (2, 1)")
    x("INSERT INTO registry.datasets (name, version, uri) VALUES ('clicks', '', 's3://b/c')")
    x("""INSERT INTO registry.model_version_datasets (model_version_id, dataset_id, relation)
         VALUES (1, 1, 'TRAINED_ON'), (2, 1, 'EVALUATED_ON')""")
    x("""INSERT INTO registry.model_version_features (model_version_id, feature_view_namespace, feature_view_name)
         VALUES (1, 'ml', 'user-stats')""")
    x("INSERT INTO registry.deployments (model_version_id, environment) VALUES (1, 'prod')")


@pytest.fixture
def registries(postgres_cluster: PostgresCluster) -> Iterator[dict[str, str]]:
    """Two registry databases (migrations applied, histories written): registry -> database."""
    names = {A: f"lineage_a_{secrets.token_hex(4)}", B: f"lineage_b_{secrets.token_hex(4)}"}
    with postgres_cluster.primary.connect() as admin:
        for db in names.values():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    for registry, write in ((A, history_a), (B, history_b)):
        with postgres_cluster.primary.connect(names[registry]) as conn:
            migrate.apply(conn)
            write(conn)
    yield names
    with postgres_cluster.primary.connect() as admin:
        for db in names.values():
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))


@pytest.fixture
def graph(neo4j_server: Neo4jServer) -> Iterator[neo4j.Driver]:
    """The one Neo4j database, emptied (nodes, constraints, indexes) before and after."""
    with neo4j_server.driver() as driver:
        _empty(driver)
        yield driver
        _empty(driver)
        lineage.ensure_schema(driver)  # as the other tests of the session expect it


def _empty(driver: neo4j.Driver) -> None:
    driver.execute_query("MATCH (n) DETACH DELETE n")
    with driver.session() as session:
        for record in session.run("SHOW CONSTRAINTS YIELD name").data():
            session.run(f"DROP CONSTRAINT `{record['name']}`").consume()  # type: ignore[arg-type]
        for record in session.run("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP'").data():
            session.run(f"DROP INDEX `{record['name']}`").consume()  # type: ignore[arg-type]


def sync(cluster: PostgresCluster, driver: neo4j.Driver, database: str, registry: str) -> lineage.SyncResult:
    with cluster.primary.connect(database) as conn:
        lineage.ensure_schema(driver)
        return lineage.sync(conn, driver, batch_size=4, registry=registry)


def client(driver: neo4j.Driver, registry: str) -> lineage_client.Lineage:
    return lineage_client.Lineage(driver, registry=registry)


def answers(driver: neo4j.Driver, registry: str) -> dict[str, Any]:
    """What a registry's client sees, asked about every model, dataset and FeatureView of both histories."""
    with client(driver, registry) as lin:
        out: dict[str, Any] = {}
        for model, version in (("churn", 1), ("churn", 2), ("fraud", 1), ("ranker", 1), ("search", 1)):
            try:
                out[f"{model}:{version}"] = lin.upstream(model, version)
            except LookupError:
                out[f"{model}:{version}"] = None
        for dataset in ("events", "labels", "clicks"):
            out[dataset] = lin.downstream_of_dataset(dataset)
        out["user-stats"] = lin.downstream_of_feature_view("ml", "user-stats")
    return out


DL, FV, VL = lineage_client.DatasetLink, lineage_client.FeatureViewRef, lineage_client.VersionLink
NONE = lineage_client.Downstream(frozenset(), frozenset())


def expected_a() -> dict[str, Any]:
    events = frozenset({DL("events", "2024", "TRAINED_ON")})
    return {
        "churn:1": lineage_client.Upstream(events, frozenset({FV("ml", "user-stats")})),
        "churn:2": lineage_client.Upstream(events, frozenset()),
        "fraud:1": lineage_client.Upstream(frozenset({DL("labels", "", "TRAINED_ON")}), frozenset()),
        "ranker:1": None,
        "search:1": None,
        "events": lineage_client.Downstream(
            frozenset({VL("churn", 1, "TRAINED_ON"), VL("churn", 2, "TRAINED_ON")}),
            frozenset({lineage_client.DeploymentRef(1, "churn", 2, "prod")}),
        ),
        "labels": lineage_client.Downstream(frozenset({VL("fraud", 1, "TRAINED_ON")}), frozenset()),
        "clicks": NONE,
        "user-stats": lineage_client.Downstream(frozenset({VL("churn", 1, "USES_FEATURE")}), frozenset()),
    }


def expected_b() -> dict[str, Any]:
    ranker_deployed = frozenset({lineage_client.DeploymentRef(1, "ranker", 1, "prod")})
    return {
        "churn:1": None,
        "churn:2": None,
        "fraud:1": None,
        "ranker:1": lineage_client.Upstream(
            frozenset({DL("clicks", "", "TRAINED_ON")}), frozenset({FV("ml", "user-stats")})
        ),
        "search:1": lineage_client.Upstream(frozenset({DL("clicks", "", "EVALUATED_ON")}), frozenset()),
        "events": NONE,
        "labels": NONE,
        "clicks": lineage_client.Downstream(
            frozenset({VL("ranker", 1, "TRAINED_ON"), VL("search", 1, "EVALUATED_ON")}), ranker_deployed
        ),
        "user-stats": lineage_client.Downstream(frozenset({VL("ranker", 1, "USES_FEATURE")}), ranker_deployed),
    }


def test_two_registries_with_overlapping_ids_on_one_neo4j_database_each_see_and_change_only_their_own(
    postgres_cluster: PostgresCluster, registries: dict[str, str], graph: neo4j.Driver
) -> None:
    for registry in (A, B):
        assert sync(postgres_cluster, graph, registries[registry], registry).rebuilt
    # The ids overlap (each registry database counts from 1), the nodes do not.
    rows, _, _ = graph.execute_query("MATCH (m:Model {id: 1}) RETURN m.registry AS r, m.name AS name")
    assert {(r["r"], r["name"]) for r in rows} == {(A, "churn"), (B, "ranker")}
    rows, _, _ = graph.execute_query("MATCH (f:FeatureView {key: 'ml/user-stats'}) RETURN f.registry AS r")
    assert sorted(r["r"] for r in rows) == [A, B]
    assert answers(graph, A) == expected_a()
    assert answers(graph, B) == expected_b()
    assert observe.graph(graph, A) == observe.Graph(nodes=2 + 3 + 2 + 1 + 1, relationships=3 + 3 + 1 + 1)
    assert observe.graph(graph, B) == observe.Graph(nodes=2 + 2 + 1 + 1 + 1, relationships=2 + 2 + 1 + 1)

    # A deletes model 2, its dataset 1 and retires its deployment 1: B's model 2, dataset 1 and deployment 1
    # (the same ids) stay as they were.
    with postgres_cluster.primary.connect(registries[A]) as conn:
        conn.execute("DELETE FROM registry.registered_models WHERE id = 2")
        conn.execute("DELETE FROM registry.datasets WHERE id = 1")
        conn.execute("UPDATE registry.deployments SET retired_at = now() WHERE id = 1")
    result = sync(postgres_cluster, graph, registries[A], A)
    assert result.events > 0 and not result.rebuilt
    a = answers(graph, A)
    assert a["fraud:1"] is None and a["events"] == NONE and a["churn:1"].datasets == frozenset()
    assert observe.graph(graph, A) == observe.Graph(nodes=1 + 2 + 1 + 1 + 1, relationships=2 + 1 + 1)
    assert answers(graph, B) == expected_b()
    assert observe.graph(graph, B) == observe.Graph(nodes=7, relationships=6)
    # A retired deployment is A's own: B's deployment 1 is not retired.
    with client(graph, B) as lin:
        assert {d.retired for d in lin.downstream_of_dataset("clicks").deployments} == {False}


# The previous version's schema (keyed by id alone), as it created it.
PREVIOUS_SCHEMA = (
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


def sync_like_the_previous_version(cluster: PostgresCluster, driver: neo4j.Driver, database: str) -> None:
    """What the previous version's sync did: the same statements keyed by id alone (this version's with the
    registry taken out, which is exactly what they were), then every event marked processed."""
    with cluster.primary.connect(database) as conn:
        rows = conn.execute("SELECT id, event_type, payload, old_payload FROM registry.outbox ORDER BY id").fetchall()
        for query, params in lineage.plan([lineage.Event.from_row(*row) for row in rows]):
            old = query.replace("registry: $registry, ", "").replace(" {registry: $registry}", "")
            assert "registry" not in old
            driver.execute_query(old, events=params)  # type: ignore[arg-type]
        conn.execute("UPDATE registry.outbox SET processed_at = now()")


def unscoped(driver: neo4j.Driver) -> tuple[list[dict[str, Any]], int]:
    """The nodes without a registry (labels and every property, sorted) and the edges from them."""
    nodes, _, _ = driver.execute_query(
        "MATCH (n) WHERE n.registry IS NULL RETURN labels(n) AS labels, properties(n) AS props"
    )
    rels, _, _ = driver.execute_query("MATCH (a)-[r]->() WHERE a.registry IS NULL RETURN count(r) AS n")
    return sorted((r.data() for r in nodes), key=repr), int(rels[0]["n"])


def test_the_previous_versions_graph_is_left_alone_and_each_registry_rebuilds_its_own(
    postgres_cluster: PostgresCluster, registries: dict[str, str], graph: neo4j.Driver
) -> None:
    for statement in PREVIOUS_SCHEMA:
        graph.execute_query(statement)  # type: ignore[arg-type]
    for registry in (A, B):  # both registries wrote into the one graph: it mixes them (model 1 is both)
        sync_like_the_previous_version(postgres_cluster, graph, registries[registry])
    rows, _, _ = graph.execute_query("MATCH (m:Model {id: 1}) RETURN m.name AS name")
    assert [r["name"] for r in rows] == ["ranker"]  # churn was overwritten: the old graph cannot be split
    old_graph = unscoped(graph)
    assert old_graph[0] and old_graph[1]

    # The upgrade: the id-only constraints go (they would refuse B's model 1 next to A's), A rebuilds its
    # graph from its own outbox, and the old nodes are neither adopted nor changed.
    first = sync(postgres_cluster, graph, registries[A], A)
    rows, _, _ = graph.execute_query("SHOW CONSTRAINTS YIELD properties RETURN properties")
    assert all("registry" in r["properties"] for r in rows)
    rows, _, _ = graph.execute_query("SHOW INDEXES YIELD name RETURN name")
    assert not {r["name"] for r in rows} & {"model_name", "dataset_name", "model_version_number"}
    with postgres_cluster.primary.connect(registries[A]) as conn:
        every_event = len(conn.execute("SELECT id FROM registry.outbox").fetchall())
    assert first.rebuilt and first.events == every_event  # the whole history, replayed
    assert answers(graph, A) == expected_a()
    assert answers(graph, B) == {k: (None if ":" in k else NONE) for k in expected_b()}  # B has not synced yet
    assert unscoped(graph) == old_graph

    assert sync(postgres_cluster, graph, registries[B], B).rebuilt
    assert answers(graph, B) == expected_b()
    assert answers(graph, A) == expected_a()
    assert unscoped(graph) == old_graph
    # A client that does not say its registry cannot tell them apart any more: it refuses.
    with (
        pytest.warns(DeprecationWarning, match="registry="),
        lineage_client.Lineage(graph) as lin,
        pytest.raises(ValueError, match="several ModelRegistries"),
    ):
        lin.upstream("churn", 1)
    # Later passes only drain: the rebuild happened once.
    assert not sync(postgres_cluster, graph, registries[A], A).rebuilt


def test_a_registry_of_the_same_name_from_another_database_is_refused_and_changes_nothing(
    postgres_cluster: PostgresCluster, registries: dict[str, str], graph: neo4j.Driver
) -> None:
    """E.g. ``team-a/models`` of another cluster on the same Neo4j: the name cannot tell them apart, so the
    second one is reported, never allowed to rebuild over the first."""
    sync(postgres_cluster, graph, registries[A], A)
    with pytest.raises(lineage.GraphInUse) as refused:
        sync(postgres_cluster, graph, registries[B], A)
    assert refused.value.registry == A
    assert answers(graph, A) == expected_a()
    with postgres_cluster.primary.connect(registries[B]) as conn:
        assert observe.outbox(conn).pending_events == len(conn.execute("SELECT id FROM registry.outbox").fetchall())
