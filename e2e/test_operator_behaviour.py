"""How the operator behaves as a cluster citizen: quiet when idle, never owning what users own."""

from __future__ import annotations

import json
import time
from typing import Any

import yaml

from e2e_support import condition, get_json, wait_for
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster

IDLE_SECONDS = 60


def store(ns: str, name: str, engine: str, port: int, secret: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": ns, "labels": {"team": "ml"}},
        "spec": {
            "engine": engine,
            "external": {"endpoint": f"127.0.0.1:{port}", "credentialsSecretRef": {"name": secret}},
        },
    }


def test_idle_operator_writes_nothing(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    redis_cluster: RedisCluster,
    postgres_cluster: PostgresCluster,
    neo4j_server: Neo4jServer,
    namespace: str,
) -> None:
    cp = control_plane
    stores = {
        "redis": (redis_cluster.primary.port, "default", redis_cluster.password),
        "postgres": (postgres_cluster.primary.port, "postgres", postgres_cluster.password),
        "neo4j": (neo4j_server.port, "neo4j", neo4j_server.password),
    }
    for engine, (port, user, password) in stores.items():
        cp.kubectl(
            "create",
            "secret",
            "generic",
            f"{engine}-creds",
            "-n",
            namespace,
            f"--from-literal=username={user}",
            f"--from-literal=password={password}",
        )
        cp.apply([store(namespace, engine, engine, port, f"{engine}-creds")])
    for engine in stores:
        wait_for(
            f"{engine} Ready",
            lambda e=engine: condition(get_json(cp, "datastore", e, "-n", namespace), "Ready").get("status") == "True",
        )
    time.sleep(5)  # let in-flight observations land

    def versions() -> dict[str, str]:
        items = get_json(cp, "datastores", "-n", namespace)["items"]
        return {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in items}

    before = versions()
    # The operator observes every 2 s here: ~30 observations per store in this minute, none may write.
    time.sleep(IDLE_SECONDS)
    assert versions() == before
    assert "mlinfra_datastore_up" in operator.metrics()


def test_reapplying_the_same_manifest_is_a_no_op(
    control_plane: ControlPlane, operator: OperatorProcess, redis_cluster: RedisCluster, namespace: str
) -> None:
    """Argo CD-style server-side apply twice: no diff, and the operator owns no spec or user metadata."""
    cp = control_plane
    cp.kubectl(
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        namespace,
        "--from-literal=username=default",
        f"--from-literal=password={redis_cluster.password}",
    )
    manifest = yaml.safe_dump(store(namespace, "gitops", "redis", redis_cluster.primary.port, "creds"))
    apply = ("apply", "--server-side", "--field-manager=argocd-controller", "-f", "-")
    cp.kubectl(*apply, input=manifest)
    wait_for(
        "Ready",
        lambda: condition(get_json(cp, "datastore", "gitops", "-n", namespace), "Ready").get("status") == "True",
    )
    time.sleep(3)
    before = get_json(cp, "datastore", "gitops", "-n", namespace)
    cp.kubectl(*apply, input=manifest)
    after = get_json(cp, "datastore", "gitops", "-n", namespace, "--show-managed-fields")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    diff = cp.kubectl(
        "diff", "--server-side", "--field-manager=argocd-controller", "-f", "-", input=manifest, check=False
    )
    assert diff.returncode == 0, diff.stdout

    managers = {entry["manager"] for entry in after["metadata"]["managedFields"]}
    assert len(managers) > 1  # the operator's status and finalizer writes are there too
    for entry in after["metadata"]["managedFields"]:
        fields = json.dumps(entry.get("fieldsV1", {}))
        if entry["manager"] == "argocd-controller":
            continue
        assert '"f:spec"' not in fields, entry["manager"]
        assert '"f:labels"' not in fields, entry["manager"]
    assert after["spec"] == before["spec"]
    assert after["metadata"]["labels"] == {"team": "ml"}
