"""External DataStores against the real local Redis, PostgreSQL and Neo4j, with the operator running."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import yaml

from e2e_support import condition, get_json, wait_for
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster


def credentials(cp: ControlPlane, ns: str, name: str, username: str, password: str) -> None:
    cp.kubectl(
        "create",
        "secret",
        "generic",
        name,
        "-n",
        ns,
        f"--from-literal=username={username}",
        f"--from-literal=password={password}",
    )


def external(ns: str, name: str, engine: str, port: int, secret: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "engine": engine,
            "external": {"endpoint": f"127.0.0.1:{port}", "credentialsSecretRef": {"name": secret}, **extra},
        },
    }


def ready(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    def is_ready() -> bool:
        return condition(get_json(cp, "datastore", name, "-n", ns), "Ready").get("status") == "True"

    wait_for(f"DataStore {ns}/{name} Ready", is_ready, 90)
    return dict(get_json(cp, "datastore", name, "-n", ns))


def test_external_redis_reports_members_and_lag(
    control_plane: ControlPlane, operator: OperatorProcess, redis_cluster: RedisCluster, namespace: str
) -> None:
    cp = control_plane
    credentials(cp, namespace, "redis-creds", "default", redis_cluster.password)
    cp.apply([external(namespace, "cache", "redis", redis_cluster.primary.port, "redis-creds")])
    ds = ready(cp, namespace, "cache")
    st = ds["status"]
    assert st["observedGeneration"] == ds["metadata"]["generation"]
    assert st["mode"] == "external"
    assert st["endpoint"] == f"127.0.0.1:{redis_cluster.primary.port}"
    assert st["version"].startswith("7.")
    roles = sorted(m["role"] for m in st["members"])
    assert roles == ["primary", "replica"]
    assert condition(ds, "Replicating")["status"] == "True"
    assert condition(ds, "Stalled")["status"] == "False"
    assert all(c["observedGeneration"] == ds["metadata"]["generation"] for c in st["conditions"])

    # The one connection Secret format.
    conn = get_json(cp, "secret", st["connectionSecret"], "-n", namespace)
    data = {k: base64.b64decode(v).decode() for k, v in conn["data"].items()}
    assert {"engine", "host", "port", "username", "password", "database", "uri", "tls"} <= set(data)
    assert (data["engine"], data["host"], data["port"]) == ("redis", "127.0.0.1", str(redis_cluster.primary.port))
    assert data["password"] == redis_cluster.password
    assert redis_cluster.password not in data["uri"]
    assert conn["metadata"]["ownerReferences"][0]["uid"] == ds["metadata"]["uid"]
    # No secret anywhere in status.
    assert redis_cluster.password not in yaml.safe_dump(st)

    # Lag is measured from the engine: freeze the replica and write on the primary.
    replica = redis_cluster.replicas[0]
    primary = redis_cluster.primary.client()
    replica.pause()
    try:
        payload = "x" * 65536
        for i in range(8):
            primary.set(f"lag-{i}", payload)

        def lagging() -> bool:
            members = get_json(cp, "datastore", "cache", "-n", namespace)["status"]["members"]
            return any(m["role"] == "replica" and m.get("lagBytes", 0) >= 65536 for m in members)

        wait_for("the replica's lag in status", lagging, 60)
        max_lag = get_json(cp, "datastore", "cache", "-n", namespace)["status"]["replication"]["maxLagBytes"]
        assert max_lag >= 65536
    finally:
        replica.resume()

    def caught_up() -> bool:
        st = get_json(cp, "datastore", "cache", "-n", namespace)["status"]
        return all(m.get("lagBytes", 0) == 0 for m in st["members"] if m["role"] == "replica")

    wait_for("the replica to catch up in status", caught_up, 60)
    metrics = operator.metrics()
    assert 'mlinfra_datastore_replication_lag_bytes{member="' in metrics
    assert "controller_runtime_reconcile_total{" in metrics


def test_external_postgres_reports_the_streaming_standby(
    control_plane: ControlPlane, operator: OperatorProcess, postgres_cluster: PostgresCluster, namespace: str
) -> None:
    cp = control_plane
    credentials(cp, namespace, "pg-creds", "postgres", postgres_cluster.password)
    cp.apply(
        [external(namespace, "offline", "postgres", postgres_cluster.primary.port, "pg-creds", database="postgres")]
    )
    ds = ready(cp, namespace, "offline")
    st = ds["status"]
    assert st["version"].startswith("15")
    members = {m["name"]: m for m in st["members"]}
    primaries = [m for m in members.values() if m["role"] == "primary"]
    replicas = [m for m in members.values() if m["role"] == "replica"]
    assert len(primaries) == 1 and len(replicas) == 1
    assert replicas[0]["ready"] is True
    assert "lagBytes" in replicas[0]
    assert condition(ds, "Replicating")["status"] == "True"


def test_external_neo4j_has_no_replication(
    control_plane: ControlPlane, operator: OperatorProcess, neo4j_server: Neo4jServer, namespace: str
) -> None:
    cp = control_plane
    credentials(cp, namespace, "neo-creds", "neo4j", neo4j_server.password)
    cp.apply([external(namespace, "lineage", "neo4j", neo4j_server.port, "neo-creds")])
    ds = ready(cp, namespace, "lineage")
    assert ds["status"]["version"].startswith("5.26")
    repl = condition(ds, "Replicating")
    assert (repl["status"], repl["reason"]) == ("False", "NotApplicable")


def test_missing_secret_then_recovery(
    control_plane: ControlPlane, operator: OperatorProcess, redis_cluster: RedisCluster, namespace: str
) -> None:
    cp = control_plane
    cp.apply([external(namespace, "orphan", "redis", redis_cluster.primary.port, "not-yet")])

    def reported() -> bool:
        c = condition(get_json(cp, "datastore", "orphan", "-n", namespace), "Ready")
        return c.get("reason") == "SecretNotFound"

    wait_for("SecretNotFound", reported, 60)
    ready_cond = condition(get_json(cp, "datastore", "orphan", "-n", namespace), "Ready")
    assert ready_cond["status"] == "False"
    assert "'not-yet'" in ready_cond["message"]
    events = get_json(cp, "events", "-n", namespace, "--field-selector", "involvedObject.name=orphan")["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "SecretNotFound" for e in events)

    # The operator keeps serving other objects meanwhile.
    credentials(cp, namespace, "ok-creds", "default", redis_cluster.password)
    cp.apply([external(namespace, "healthy", "redis", redis_cluster.primary.port, "ok-creds")])
    ready(cp, namespace, "healthy")

    # Creating the Secret later resolves it (the handler retries).
    credentials(cp, namespace, "not-yet", "default", redis_cluster.password)
    ready(cp, namespace, "orphan")


def test_unreachable_store_reports_why_without_secrets(
    control_plane: ControlPlane, operator: OperatorProcess, namespace: str
) -> None:
    cp = control_plane
    password = secrets.token_urlsafe(16)
    credentials(cp, namespace, "creds", "default", password)
    cp.apply([external(namespace, "nowhere", "redis", procs.free_port(), "creds")])

    def unreachable() -> bool:
        return condition(get_json(cp, "datastore", "nowhere", "-n", namespace), "Reachable").get("status") == "False"

    wait_for("Reachable=False", unreachable, 60)
    ds = get_json(cp, "datastore", "nowhere", "-n", namespace)
    ready_cond = condition(ds, "Ready")
    assert (ready_cond["status"], ready_cond["reason"]) == ("False", "Unreachable")
    assert ready_cond["message"]
    assert password not in yaml.safe_dump(ds["status"])


def test_spec_the_schema_cannot_refuse_is_stalled(
    control_plane: ControlPlane, operator: OperatorProcess, redis_cluster: RedisCluster, namespace: str
) -> None:
    """A port above 65535 is refused at admission (a CEL rule); what no rule can say — a cron range that runs
    backwards — reaches the operator, which reports InvalidSpec and a Warning, and a fixed spec recovers."""
    cp = control_plane
    credentials(cp, namespace, "creds", "default", redis_cluster.password)
    refused = cp.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(external(namespace, "badport", "redis", 99999, "creds")), check=False
    )
    assert refused.returncode != 0 and "a port from 1 to 65535" in refused.stderr, refused.stderr

    view = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "backwards", "namespace": namespace},
        "spec": {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": "clicks", "type": "int64"}],
            "offline": {"storeRef": {"name": "offline"}},
            "online": {"storeRef": {"name": "online"}, "ttl": "24h"},
            "materialization": {"schedule": "0 17-9 * * *"},
        },
    }
    cp.apply([view])

    def stalled() -> bool:
        return condition(get_json(cp, "featureview", "backwards", "-n", namespace), "Stalled").get("status") == "True"

    wait_for("Stalled=True", stalled, 60)
    fv = get_json(cp, "featureview", "backwards", "-n", namespace)
    assert condition(fv, "Stalled")["reason"] == "InvalidSpec"
    assert "17-9" in condition(fv, "Stalled")["message"]
    assert condition(fv, "Ready")["status"] == "False"
    events = get_json(cp, "events", "-n", namespace, "--field-selector", "involvedObject.name=backwards")["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "InvalidSpec" for e in events)
    # Fixing the spec: no longer stalled (it now waits for its stores, which this test does not create).
    cp.kubectl(
        "patch",
        "featureview",
        "backwards",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"materialization":{"schedule":"0 9-17 * * *"}}}',
    )
    wait_for(
        "Stalled=False",
        lambda: (
            condition(get_json(cp, "featureview", "backwards", "-n", namespace), "Stalled").get("status") == "False"
        ),
        60,
    )
