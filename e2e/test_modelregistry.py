"""ModelRegistry on the real control plane with the operator running, over real PostgreSQL and Neo4j."""

from __future__ import annotations

import base64
import signal
from typing import Any

import psycopg
import pytest

from e2e_support import condition, get_json, wait_for
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.registry import migrate


def stores(cp: ControlPlane, ns: str, pg: PostgresCluster, graph: Neo4jServer) -> None:
    for name, user, password in (("pg-creds", "postgres", pg.password), ("neo-creds", "neo4j", graph.password)):
        cp.kubectl(
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            f"--from-literal=username={user}",
            f"--from-literal=password={password}",
        )
    cp.apply(
        [
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "DataStore",
                "metadata": {"name": "meta", "namespace": ns},
                "spec": {
                    "engine": "postgres",
                    "external": {
                        "endpoint": f"127.0.0.1:{pg.primary.port}",
                        "credentialsSecretRef": {"name": "pg-creds"},
                    },
                },
            },
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "DataStore",
                "metadata": {"name": "graph", "namespace": ns},
                "spec": {
                    "engine": "neo4j",
                    "external": {"endpoint": f"127.0.0.1:{graph.port}", "credentialsSecretRef": {"name": "neo-creds"}},
                },
            },
        ]
    )


def registry(ns: str, name: str, database: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "ModelRegistry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "metadataStoreRef": {"name": "meta"},
            "lineageStoreRef": {"name": "graph"},
            "database": database,
            "lineageSync": {"interval": "2s", "batchSize": 50, "maxLag": "20s"},
            **spec,
        },
    }


def mr_condition(cp: ControlPlane, ns: str, name: str, type_: str) -> dict[str, Any]:
    return condition(get_json(cp, "modelregistry", name, "-n", ns), type_)


def secret_conn(cp: ControlPlane, ns: str, name: str) -> str:
    data = {k: base64.b64decode(v).decode() for k, v in get_json(cp, "secret", name, "-n", ns)["data"].items()}
    assert {"engine", "host", "port", "username", "password", "database", "uri", "tls"} <= set(data)
    return (
        f"host={data['host']} port={data['port']} dbname={data['database']} user={data['username']} "
        f"password={data['password']}"
    )


def test_registry_schema_roles_and_lineage(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    postgres_cluster: PostgresCluster,
    neo4j_server: Neo4jServer,
    namespace: str,
) -> None:
    cp = control_plane
    stores(cp, namespace, postgres_cluster, neo4j_server)
    database = f"reg_{namespace[-6:]}"
    cp.apply([registry(namespace, "models", database)])
    wait_for("ModelRegistry Ready", lambda: mr_condition(cp, namespace, "models", "Ready").get("status") == "True", 120)
    st = get_json(cp, "modelregistry", "models", "-n", namespace)["status"]
    assert st["schemaVersion"] == migrate.latest_version()
    assert mr_condition(cp, namespace, "models", "SchemaApplied")["status"] == "True"

    # Least privilege, with the credentials the operator generated.
    with psycopg.connect(secret_conn(cp, namespace, st["writerSecret"]), autocommit=True) as writer:
        for model in ("churn", "fraud", "ranking"):
            writer.execute("INSERT INTO registry.registered_models (name) VALUES (%s)", (model,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.execute("DELETE FROM registry.audit_log")
    with psycopg.connect(secret_conn(cp, namespace, st["readerSecret"]), autocommit=True) as reader:
        assert reader.execute("SELECT count(*) FROM registry.registered_models").fetchone() == (3,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("INSERT INTO registry.registered_models (name) VALUES ('nope')")

    # The outbox drains into the graph; status follows.
    def synced() -> bool:
        # The counts first: until they show the new rows, "0 pending" may be an older observation.
        s = get_json(cp, "modelregistry", "models", "-n", namespace)["status"]
        return (
            s.get("counts", {}).get("registeredModels") == 3
            and s.get("lineage", {}).get("pendingEvents") == 0
            and s.get("lineage", {}).get("nodes", 0) >= 3
        )

    wait_for("outbox synced", synced, 90)
    st = get_json(cp, "modelregistry", "models", "-n", namespace)["status"]
    assert st["counts"]["registeredModels"] == 3
    # The graph is the registry's own share of the Neo4j database every test of the session uses.
    with neo4j_server.driver() as driver:
        records, _, _ = driver.execute_query(
            "MATCH (m:Model {registry: $registry}) RETURN m.name AS name", registry=f"{namespace}/models"
        )
    assert sorted(r["name"] for r in records) == ["churn", "fraud", "ranking"]
    assert mr_condition(cp, namespace, "models", "LineageInSync")["status"] == "True"
    assert "mlinfra_modelregistry_lineage_pending_events" in operator.metrics()

    # Stopping Neo4j: LineageInSync turns False with a reason, and recovers.
    assert neo4j_server.proc is not None
    neo4j_server.proc.signal(signal.SIGSTOP)
    try:
        with psycopg.connect(secret_conn(cp, namespace, st["writerSecret"]), autocommit=True) as writer:
            writer.execute("INSERT INTO registry.registered_models (name) VALUES ('while-down')")
        wait_for(
            "LineageInSync=False",
            lambda: mr_condition(cp, namespace, "models", "LineageInSync").get("status") == "False",
            120,
        )
        assert mr_condition(cp, namespace, "models", "LineageInSync")["reason"] in (
            "LineageStoreUnavailable",
            "LineageLagging",
        )
    finally:
        neo4j_server.proc.signal(signal.SIGCONT)
    wait_for(
        "LineageInSync=True again",
        lambda: mr_condition(cp, namespace, "models", "LineageInSync").get("status") == "True",
        120,
    )
    wait_for(
        "the event written while Neo4j was down synced",
        lambda: (
            get_json(cp, "modelregistry", "models", "-n", namespace)["status"]["lineage"]["pendingEvents"] == 0
            and get_json(cp, "modelregistry", "models", "-n", namespace)["status"]["counts"]["registeredModels"] == 4
        ),
        90,
    )


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"lineageStoreRef": {"name": "meta-copy"}}, "WrongEngine"),  # a lineage store that is not neo4j
        ({"metadataStoreRef": {"name": "missing"}}, "StoreNotFound"),
        ({"schemaVersion": 999}, "InvalidSpec"),
    ],
)
def test_bad_registry_specs_say_what_to_fix(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    postgres_cluster: PostgresCluster,
    neo4j_server: Neo4jServer,
    namespace: str,
    spec: dict[str, Any],
    reason: str,
) -> None:
    cp = control_plane
    stores(cp, namespace, postgres_cluster, neo4j_server)
    cp.apply(
        [
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "DataStore",
                "metadata": {"name": "meta-copy", "namespace": namespace},
                "spec": {
                    "engine": "postgres",
                    "external": {
                        "endpoint": f"127.0.0.1:{postgres_cluster.primary.port}",
                        "credentialsSecretRef": {"name": "pg-creds"},
                    },
                },
            }
        ]
    )
    body = registry(namespace, "bad", f"reg_{namespace[-6:]}")
    body["spec"].update(spec)
    cp.apply([body])
    wait_for(f"Ready=False {reason}", lambda: mr_condition(cp, namespace, "bad", "Ready").get("reason") == reason, 90)
    assert mr_condition(cp, namespace, "bad", "Ready")["message"]


def test_downgrade_is_refused(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    postgres_cluster: PostgresCluster,
    neo4j_server: Neo4jServer,
    namespace: str,
) -> None:
    cp = control_plane
    stores(cp, namespace, postgres_cluster, neo4j_server)
    cp.apply([registry(namespace, "pinned", f"reg_{namespace[-6:]}")])
    wait_for("Ready", lambda: mr_condition(cp, namespace, "pinned", "Ready").get("status") == "True", 120)
    cp.kubectl(
        "patch", "modelregistry", "pinned", "-n", namespace, "--type=merge", "-p", '{"spec":{"schemaVersion":1}}'
    )
    wait_for("Stalled", lambda: mr_condition(cp, namespace, "pinned", "Stalled").get("status") == "True", 60)
    stalled = mr_condition(cp, namespace, "pinned", "Stalled")
    assert stalled["reason"] == "InvalidSpec"
    assert "downgrade" in stalled["message"]
    # Nothing was undone: the schema stays at the newest version.
    assert (
        get_json(cp, "modelregistry", "pinned", "-n", namespace)["status"]["schemaVersion"] == migrate.latest_version()
    )


def test_scheduled_lineage_sync_runs_as_a_cronjob(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    postgres_cluster: PostgresCluster,
    neo4j_server: Neo4jServer,
    namespace: str,
    tmp_path: Any,
) -> None:
    """With spec.lineageSync.schedule the operator owns a CronJob and only observes; the Job's command,
    run as a process against the real stores, drains the outbox."""
    import os
    import subprocess
    import sys

    from mlinfra.registry import jobs, lineagerole, reconcile

    cp = control_plane
    stores(cp, namespace, postgres_cluster, neo4j_server)
    spec = registry(namespace, "cron", f"reg_{namespace[-6:]}")
    spec["spec"]["lineageSync"]["schedule"] = "*/10 * * * *"
    cp.apply([spec])
    wait_for("Ready", lambda: mr_condition(cp, namespace, "cron", "Ready").get("status") == "True", 120)
    st = get_json(cp, "modelregistry", "cron", "-n", namespace)["status"]
    with psycopg.connect(secret_conn(cp, namespace, st["writerSecret"]), autocommit=True) as writer:
        writer.execute("INSERT INTO registry.registered_models (name) VALUES ('scheduled')")
    wait_for(
        "an event pending",
        lambda: (
            get_json(cp, "modelregistry", "cron", "-n", namespace)["status"].get("lineage", {}).get("pendingEvents", 0)
            >= 1
        ),
        60,
    )

    cron = get_json(cp, "cronjob", jobs.cronjob_name("cron"), "-n", namespace)
    assert cron["spec"]["schedule"] == "*/10 * * * *"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["sync", "modelregistry", f"{namespace}/cron"]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}}
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    secrets_ = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    # The metadata store through the registry's own lineage role, never the store's admin Secret; Neo4j
    # Community has no narrower user: the lineage store's own Secret.
    assert secrets_ == {"metadata-conn": lineagerole.secret_name("cron"), "lineage-conn": "graph-conn"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for volume, secret in secrets_.items():
        directory = tmp_path / volume
        directory.mkdir()
        data = {k: base64.b64decode(v) for k, v in get_json(cp, "secret", secret, "-n", namespace)["data"].items()}
        if volume == "metadata-conn":
            assert data["username"].decode() == lineagerole.role_name(namespace, "cron")
            assert data["password"].decode() != postgres_cluster.password
        for key, value in data.items():
            (directory / key).write_bytes(value)
        env[next(e["name"] for e in container["env"] if e["value"] == mounts[volume])] = str(directory)
    env.pop("KUBECONFIG", None)
    run = subprocess.run(
        [sys.executable, "-m", "mlinfra", *container["args"]], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    wait_for(
        "outbox drained by the Job's command",
        lambda: get_json(cp, "modelregistry", "cron", "-n", namespace)["status"]["lineage"]["pendingEvents"] == 0,
        60,
    )
    # Its model 1 is a node of its own, next to any other registry's model 1 on this Neo4j.
    with neo4j_server.driver() as driver:
        records, _, _ = driver.execute_query(
            "MATCH (m:Model {registry: $registry}) RETURN m.id AS id, m.name AS name", registry=f"{namespace}/cron"
        )
    assert [(r["id"], r["name"]) for r in records] == [(1, "scheduled")]

    # Deleted, the registry takes its lineage role along; its database and writer role stay.
    cp.kubectl("delete", "modelregistry", "cron", "-n", namespace, "--wait=true", "--timeout=60s")
    with postgres_cluster.primary.connect() as admin:
        present = {
            kind: admin.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (reconcile.role_name(namespace, "cron", kind),)
            ).fetchone()
            is not None
            for kind in ("lineage", "writer")
        }
    assert present == {"lineage": False, "writer": True}
