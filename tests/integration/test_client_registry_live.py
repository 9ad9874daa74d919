"""The registry SDK on a real PostgreSQL (and Neo4j): a scripted history written with the writer role lands in
the tables, the audit log and the outbox; refused calls write nothing; after the lineage sync the graph
queries return exactly the expected sets."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from mlinfra.client import lineage as lineage_client
from mlinfra.client import registry
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.engines import connection
from mlinfra.registry import lineage, migrate, roles

pytestmark = pytest.mark.integration
REGISTRY = "ml/sdk"  # the ModelRegistry whose graph the sync writes and the client reads


@pytest.fixture(scope="module")
def database(postgres_cluster: PostgresCluster) -> Iterator[tuple[str, connection.ConnectionInfo]]:
    """A fresh database with the migrations applied, and the writer role's connection."""
    suffix = secrets.token_hex(4)
    name, writer, reader = f"sdk_{suffix}", f"sdk_writer_{suffix}", f"sdk_reader_{suffix}"
    password = secrets.token_urlsafe(16)
    with postgres_cluster.primary.connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with postgres_cluster.primary.connect(name) as conn:
        migrate.apply(conn)
        roles.ensure_roles(conn, name, writer, password, reader, secrets.token_urlsafe(16))
    yield (
        name,
        connection.ConnectionInfo.for_engine(
            "postgres", "127.0.0.1", password, username=writer, port=postgres_cluster.primary.port, database=name
        ),
    )
    with postgres_cluster.primary.connect() as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.execute(f'DROP ROLE "{writer}"')
        admin.execute(f'DROP ROLE "{reader}"')


def script(reg: registry.Registry) -> dict[str, Any]:
    """The history: two models, three versions, two datasets, two FeatureViews, two deployments."""
    reg.register_model("churn", "Churn classifier")
    reg.register_model("ranker")
    events = reg.register_dataset("events", "s3://lake/events/2024-05", version="2024-05", checksum="sha256:aa01")
    reg.register_dataset("holdout", "s3://lake/holdout")
    v1 = reg.create_version("churn", aliases=["candidate"], run_id="run-1")
    reg.log_params(v1, {"lr": 0.1, "optimizer": "adam", "layers": [64, 32]})
    reg.log_metrics(v1, {"auc": 0.91, "loss": 0.4}, step=1)
    reg.log_metrics(v1, {"auc": 0.93}, step=2)
    artifact = reg.add_artifact(v1, "s3://lake/models/churn/1/model.onnx", "sha256:ab12", 1234)
    reg.link_dataset(v1, events, "TRAINED_ON")
    reg.link_dataset(v1, "holdout", "EVALUATED_ON")
    reg.link_feature_view(v1, "ml", "user-stats")
    v2 = reg.create_version("churn")
    reg.link_dataset(v2, ("events", "2024-05"))
    reg.link_dataset(v2, ("events", "2024-05"))  # twice: harmless
    reg.link_feature_view(v2, "ml", "user-stats")
    reg.link_feature_view(v2, "ml", "sessions")
    reg.set_stage(v2, "production")
    champion = reg.set_alias(("churn", 2), "champion")
    deployment = reg.record_deployment(("churn", "champion"), "prod")
    r1 = reg.create_version("ranker", 1, stage="staging")
    reg.link_dataset(r1, "holdout", "TRAINED_ON")
    reg.link_feature_view(r1, "ml", "sessions")
    reg.record_deployment(r1, "staging")
    return {"v1": v1, "v2": v2, "champion": champion, "artifact": artifact, "deployment": deployment}


EXPECTED_OUTBOX = [
    "registered_models.insert",
    "registered_models.insert",
    "datasets.insert",
    "datasets.insert",
    "model_versions.insert",
    "model_version_datasets.insert",
    "model_version_datasets.insert",
    "model_version_features.insert",
    "model_versions.insert",
    "model_version_datasets.insert",
    "model_version_features.insert",
    "model_version_features.insert",
    "model_versions.update",
    "deployments.insert",
    "model_versions.insert",
    "model_version_datasets.insert",
    "model_version_features.insert",
    "deployments.insert",
]


def outbox(conn: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in conn.execute("SELECT event_type FROM registry.outbox ORDER BY id").fetchall()]


@pytest.fixture(scope="module")
def history(database: tuple[str, connection.ConnectionInfo]) -> dict[str, Any]:
    """The scripted history, written once per module: every test that reads it can also run alone."""
    _, writer = database
    with registry.Registry(writer.to_secret_data()) as reg:
        return script(reg)


def test_scripted_history_rows_audit_log_and_outbox(
    postgres_cluster: PostgresCluster, database: tuple[str, connection.ConnectionInfo], history: dict[str, Any]
) -> None:
    name, writer = database
    made = history
    with registry.Registry(writer.to_secret_data()) as reg:
        assert made["v1"].version == 1 and made["v1"].aliases == ("candidate",)
        assert made["v2"].version == 2 and made["v2"].stage == "none"
        assert made["champion"].stage == "production" and made["champion"].aliases == ("champion",)
        assert made["deployment"].version == 2 and made["deployment"].environment == "prod"
        assert made["artifact"].name == "model.onnx" and made["artifact"].size_bytes == 1234
        assert reg.get_version(("churn", "candidate")).version == 1
        assert reg.params(made["v1"]) == {"layers": "[64, 32]", "lr": "0.1", "optimizer": "adam"}

    with postgres_cluster.primary.connect(name) as conn:
        assert conn.execute(
            "SELECT m.name, mv.version, mv.stage, mv.run_id FROM registry.model_versions mv "
            "JOIN registry.registered_models m ON m.id = mv.model_id ORDER BY 1, 2"
        ).fetchall() == [
            ("churn", 1, "none", "run-1"),
            ("churn", 2, "production", None),
            ("ranker", 1, "staging", None),
        ]
        assert conn.execute(
            "SELECT a.alias, mv.version FROM registry.model_version_aliases a "
            "JOIN registry.model_versions mv ON mv.id = a.model_version_id ORDER BY 1"
        ).fetchall() == [("candidate", 1), ("champion", 2)]
        assert conn.execute("SELECT key, value, step FROM registry.metrics ORDER BY step, key").fetchall() == [
            ("auc", 0.91, 1),
            ("loss", 0.4, 1),
            ("auc", 0.93, 2),
        ]
        assert conn.execute("SELECT uri, checksum, size_bytes FROM registry.artifacts").fetchall() == [
            ("s3://lake/models/churn/1/model.onnx", "sha256:ab12", 1234)
        ]
        assert conn.execute(
            "SELECT d.name, d.version, l.relation, mv.version FROM registry.model_version_datasets l "
            "JOIN registry.datasets d ON d.id = l.dataset_id "
            "JOIN registry.model_versions mv ON mv.id = l.model_version_id ORDER BY 1, 3, 4"
        ).fetchall() == [
            ("events", "2024-05", "TRAINED_ON", 1),
            ("events", "2024-05", "TRAINED_ON", 2),
            ("holdout", "", "EVALUATED_ON", 1),
            ("holdout", "", "TRAINED_ON", 1),
        ]
        assert conn.execute("SELECT environment FROM registry.deployments ORDER BY id").fetchall() == [
            ("prod",),
            ("staging",),
        ]
        # The triggers wrote the audit log, as the writer, one row per changed row (aliases and params too).
        audit = conn.execute("SELECT actor, table_name, operation FROM registry.audit_log").fetchall()
        assert {actor for actor, _, _ in audit} == {writer.username}
        assert Counter((table, op) for _, table, op in audit) == Counter(
            {
                ("registered_models", "INSERT"): 2,
                ("datasets", "INSERT"): 2,
                ("model_versions", "INSERT"): 3,
                ("model_versions", "UPDATE"): 1,
                ("model_version_aliases", "INSERT"): 2,
                ("params", "INSERT"): 3,
                ("metrics", "INSERT"): 3,
                ("artifacts", "INSERT"): 1,
                ("model_version_datasets", "INSERT"): 4,
                ("model_version_features", "INSERT"): 4,
                ("deployments", "INSERT"): 2,
            }
        )
        assert outbox(conn) == EXPECTED_OUTBOX
        stage_event = conn.execute(
            "SELECT payload FROM registry.outbox WHERE event_type = 'model_versions.update'"
        ).fetchone()
        assert stage_event is not None and stage_event[0]["stage"] == "production"


def test_refused_calls_write_nothing(
    postgres_cluster: PostgresCluster, database: tuple[str, connection.ConnectionInfo]
) -> None:
    name, writer = database
    with registry.Registry(writer) as reg:
        reg.register_model("refusals")
        reg.create_version("refusals", aliases=["champion"])
        with postgres_cluster.primary.connect(name) as conn:
            before = conn.execute("SELECT count(*) FROM registry.audit_log").fetchone()
        with pytest.raises(registry.AlreadyExists, match="'refusals' is already registered"):
            reg.register_model("refusals")
        assert reg.register_model("refusals", exist_ok=True).name == "refusals"
        with pytest.raises(registry.NotFound, match="no registered model 'nope'"):
            reg.create_version("nope")
        with pytest.raises(registry.AlreadyExists, match="already has version 1"):
            reg.create_version("refusals", 1)
        with pytest.raises(registry.AliasInUse, match="names version 1"):
            reg.create_version("refusals", aliases=["champion"])  # the version is not created either
        with pytest.raises(registry.NotFound, match="has no version 9"):
            reg.log_params(("refusals", 9), {"lr": 1})
        with pytest.raises(registry.NotFound, match="has no alias 'best'"):
            reg.record_deployment(("refusals", "best"), "prod")
        with pytest.raises(registry.NotFound, match="no dataset 'ghost'"):
            reg.link_dataset(("refusals", 1), "ghost")
        reg.log_params(("refusals", 1), {"lr": 0.1})
        reg.log_params(("refusals", 1), {"lr": 0.1})  # same value: harmless
        with pytest.raises(registry.Conflict, match=r"param 'lr' is already '0\.1'"):
            reg.log_params(("refusals", 1), {"batch": 32, "lr": 0.2})  # nothing of it is kept
        assert reg.params(("refusals", 1)) == {"lr": "0.1"}
        reg.add_artifact(("refusals", 1), "s3://b/m.pt", "sha256:01", 1)
        with pytest.raises(registry.AlreadyExists, match=r"artifact 'm\.pt'"):
            reg.add_artifact(("refusals", 1), "s3://c/m.pt", "sha256:02", 2)
        reg.register_dataset("d", "s3://d")
        assert reg.register_dataset("d", "s3://d", exist_ok=True).uri == "s3://d"
        with pytest.raises(registry.Conflict, match="registered with uri 's3://d'"):
            reg.register_dataset("d", "s3://other", exist_ok=True)
        with postgres_cluster.primary.connect(name) as conn:
            after = conn.execute("SELECT count(*) FROM registry.audit_log").fetchone()
            versions = conn.execute(
                "SELECT count(*) FROM registry.model_versions mv JOIN registry.registered_models m "
                "ON m.id = mv.model_id WHERE m.name = 'refusals'"
            ).fetchone()
        assert before is not None and after is not None
        assert after[0] - before[0] == 3  # the param, the artifact and the dataset: nothing of the refused calls
        assert versions == (1,)
        # Moving an alias is explicit.
        reg.create_version("refusals")
        assert reg.set_alias(("refusals", 2), "champion", move=True).aliases == ("champion",)
        assert reg.get_version(("refusals", 1)).aliases == ()
        reg.remove_alias("refusals", "champion")
        with pytest.raises(registry.NotFound):
            reg.get_version(("refusals", "champion"))


def test_lineage_queries_after_the_sync(
    postgres_cluster: PostgresCluster,
    neo4j_server: Neo4jServer,
    database: tuple[str, connection.ConnectionInfo],
    history: dict[str, Any],
) -> None:
    """The scripted history synced from the outbox into the graph of its registry, then asked."""
    name, _ = database
    with neo4j_server.driver() as driver:
        driver.execute_query("MATCH (n) DETACH DELETE n")
        lineage.ensure_schema(driver)
        with postgres_cluster.primary.connect(name) as conn:
            lineage.sync(conn, driver, batch_size=7, registry=REGISTRY)
        graph = connection.ConnectionInfo.for_engine(
            "neo4j", "127.0.0.1", neo4j_server.password, port=neo4j_server.port, username=neo4j_server.user
        )
        DL, FV = lineage_client.DatasetLink, lineage_client.FeatureViewRef
        VL, DEP = lineage_client.VersionLink, lineage_client.DeploymentRef
        with lineage_client.Lineage(graph.to_secret_data(), registry=REGISTRY) as graph_queries:
            up = graph_queries.upstream("churn", 1)
            assert up.datasets == {DL("events", "2024-05", "TRAINED_ON"), DL("holdout", "", "EVALUATED_ON")}
            assert up.trained_on == {DL("events", "2024-05", "TRAINED_ON")}
            assert up.feature_views == {FV("ml", "user-stats")}
            up2 = lineage_client.Upstream(
                frozenset({DL("events", "2024-05", "TRAINED_ON")}),
                frozenset({FV("ml", "user-stats"), FV("ml", "sessions")}),
            )
            assert graph_queries.upstream("churn", 2) == up2
            with pytest.raises(LookupError, match="no version 7 of model 'churn'"):
                graph_queries.upstream("churn", 7)

            events = graph_queries.downstream_of_dataset("events")
            assert events.versions == {VL("churn", 1, "TRAINED_ON"), VL("churn", 2, "TRAINED_ON")}
            assert {(d.model, d.version, d.environment, d.retired) for d in events.deployments} == {
                ("churn", 2, "prod", False)
            }
            assert graph_queries.downstream_of_dataset("events", "2023-01").versions == frozenset()
            holdout = graph_queries.downstream_of_dataset("holdout", "")
            assert holdout.versions == {VL("churn", 1, "EVALUATED_ON"), VL("ranker", 1, "TRAINED_ON")}
            assert {(d.model, d.environment) for d in holdout.deployments} == {("ranker", "staging")}
            assert holdout.models == {"churn", "ranker"}

            sessions = graph_queries.downstream_of_feature_view("ml", "sessions")
            assert sessions.versions == {VL("churn", 2, "USES_FEATURE"), VL("ranker", 1, "USES_FEATURE")}
            assert {(d.model, d.version, d.environment) for d in sessions.deployments} == {
                ("churn", 2, "prod"),
                ("ranker", 1, "staging"),
            }
            assert all(isinstance(d, DEP) for d in sessions.deployments)
            user_stats = graph_queries.downstream_of_feature_view("ml", "user-stats")
            assert user_stats.versions == {VL("churn", 1, "USES_FEATURE"), VL("churn", 2, "USES_FEATURE")}
            assert graph_queries.downstream_of_feature_view("other", "sessions") == lineage_client.Downstream(
                frozenset(), frozenset()
            )
        # A driver passed in stays open (the caller owns it).
        with lineage_client.Lineage(driver, registry=REGISTRY) as graph_queries:
            assert graph_queries.upstream("ranker", 1).trained_on == {DL("holdout", "", "TRAINED_ON")}
        driver.verify_connectivity()
        # Another registry's client, on the same database, sees none of it.
        with lineage_client.Lineage(driver, registry="ml/other") as other:
            with pytest.raises(LookupError):
                other.upstream("churn", 1)
            assert other.downstream_of_dataset("events") == lineage_client.Downstream(frozenset(), frozenset())
        # Without registry= (the API before registries were scoped): the database's one registry is read...
        with pytest.warns(DeprecationWarning, match="registry="), lineage_client.Lineage(driver) as unnamed:
            assert unnamed.registry == REGISTRY
            assert unnamed.upstream("churn", 2) == up2
        # ...and a database holding the graphs of two registries is refused rather than guessed at.
        driver.execute_query("CREATE (:LineageRegistry {registry: 'ml/other', history: 'elsewhere'})")
        with (
            pytest.warns(DeprecationWarning),
            lineage_client.Lineage(driver) as unnamed,
            pytest.raises(ValueError, match="several ModelRegistries"),
        ):
            unnamed.upstream("churn", 2)
        driver.execute_query("MATCH (r:LineageRegistry {registry: 'ml/other'}) DELETE r")
