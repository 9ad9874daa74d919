"""Managed DataStores: provisioned in the real control plane (Pods Ready on kwok nodes) and served by real
local servers started from what the operator rendered (the backer), so they reach Ready for real."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from e2e_support import condition, get_json, wait_for
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.operator import OperatorProcess


def managed(ns: str, name: str, engine: str, replicas: int, policy: str = "Retain") -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "engine": engine,
            "deletionPolicy": policy,
            "managed": {"replicas": replicas, "storage": {"size": "1Gi"}},
        },
    }


def ds_condition(cp: ControlPlane, ns: str, name: str, type_: str) -> dict[str, Any]:
    return condition(get_json(cp, "datastore", name, "-n", ns), type_)


def wait_ready(cp: ControlPlane, ns: str, name: str, timeout: float = 150) -> dict[str, Any]:
    wait_for(f"{ns}/{name} Ready", lambda: ds_condition(cp, ns, name, "Ready").get("status") == "True", timeout)
    return dict(get_json(cp, "datastore", name, "-n", ns))


ROLES_OF_TWO = {"db-0": "primary", "db-1": "replica"}


def role_labels(cp: ControlPlane, ns: str, store: str) -> dict[str, str | None]:
    pods = get_json(cp, "pods", "-n", ns, "-l", f"mlinfra.io/datastore={store}")["items"]
    return {p["metadata"]["name"]: p["metadata"].get("labels", {}).get("mlinfra.io/role") for p in pods}


def secret_values(cp: ControlPlane, ns: str, name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in get_json(cp, "secret", name, "-n", ns)["data"].items()}


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(
        r["uid"] == owner["metadata"]["uid"] and r.get("controller")
        for r in obj["metadata"].get("ownerReferences") or []
    )


@pytest.mark.parametrize(("engine", "replicas"), [("redis", 2), ("postgres", 2), ("neo4j", 1)])
def test_managed_store_is_provisioned_and_ready(
    control_plane: ControlPlane, operator: OperatorProcess, backer: Backer, namespace: str, engine: str, replicas: int
) -> None:
    cp = control_plane
    cp.apply([managed(namespace, "db", engine, replicas)])
    ds = wait_ready(cp, namespace, "db")
    st = ds["status"]
    assert st["mode"] == "managed"
    assert st["endpoint"].startswith(f"db.{namespace}.svc:")

    # Children exist, are owned by the store, and the Pods run on the fake nodes.
    sts = get_json(cp, "statefulset", "db", "-n", namespace)
    assert sts["spec"]["replicas"] == replicas
    assert owned_by(sts, ds)
    for kind in ("service", "configmap"):
        for item in get_json(cp, kind, "-n", namespace, "-l", "mlinfra.io/datastore=db")["items"]:
            if item["metadata"]["name"] == "db-primary":
                # The primary record is retained under Retain, as the credentials are (a store re-created on
                # the kept volumes must know which held the primary).
                assert not item["metadata"].get("ownerReferences") and item["data"]["primary"] == "db-0"
                continue
            assert owned_by(item, ds), f"{kind} {item['metadata']['name']}"
    creds = get_json(cp, "secret", "db-credentials", "-n", namespace)
    assert len(base64.b64decode(creds["data"]["password"])) >= 24
    pvcs = get_json(cp, "pvc", "-n", namespace)["items"]
    assert len(pvcs) == replicas and {p["status"]["phase"] for p in pvcs} == {"Bound"}

    # Members and roles are those of the live servers, named by Pod.
    members = {m["name"]: m for m in st["members"]}
    assert set(members) == {f"db-{i}" for i in range(replicas)}
    assert members["db-0"]["role"] in ("primary", "standalone")
    for i in range(1, replicas):
        assert members[f"db-{i}"]["role"] == "replica"
    assert st["replication"]["readyReplicas"] == replicas
    if replicas > 1:
        assert ds_condition(cp, namespace, "db", "Replicating")["status"] == "True"
        # Role-aware endpoints: the pods carry the roles their servers report, the read-only Service selects
        # the replicas by it, and the connection Secret names it.
        wait_for("pods labelled with their roles", lambda: role_labels(cp, namespace, "db") == ROLES_OF_TWO)
        ro = get_json(cp, "service", "db-ro", "-n", namespace)
        assert owned_by(ro, ds) and ro["spec"]["selector"]["mlinfra.io/role"] == "replica"
        conn = secret_values(cp, namespace, "db-conn")
        assert conn["readOnlyHost"] == f"db-ro.{namespace}.svc"
        assert conn["readOnlyUri"].startswith("redis://default@db-ro." if engine == "redis" else "postgresql://")


def test_scaling_changes_the_statefulset_and_the_members(
    control_plane: ControlPlane, operator: OperatorProcess, backer: Backer, namespace: str
) -> None:
    cp = control_plane
    cp.apply([managed(namespace, "cache", "redis", 1)])
    wait_ready(cp, namespace, "cache")
    cp.kubectl(
        "patch", "datastore", "cache", "-n", namespace, "--type=merge", "-p", '{"spec":{"managed":{"replicas":3}}}'
    )
    wait_for(
        "StatefulSet scaled to 3",
        lambda: get_json(cp, "statefulset", "cache", "-n", namespace)["spec"]["replicas"] == 3,
    )

    def three_members() -> bool:
        st = get_json(cp, "datastore", "cache", "-n", namespace)["status"]
        replicas = [m for m in st.get("members", []) if m["role"] == "replica" and m["ready"]]
        return len(replicas) == 2 and st["observedGeneration"] == 2

    wait_for("two replicas streaming", three_members, 150)
    wait_ready(cp, namespace, "cache")
    assert ds_condition(cp, namespace, "cache", "Replicating")["status"] == "True"
    three = {"cache-0": "primary", "cache-1": "replica", "cache-2": "replica"}
    wait_for("the new members labelled replicas", lambda: role_labels(cp, namespace, "cache") == three)
    assert secret_values(cp, namespace, "cache-conn")["readOnlyHost"] == f"cache-ro.{namespace}.svc"
    cp.kubectl(
        "patch", "datastore", "cache", "-n", namespace, "--type=merge", "-p", '{"spec":{"managed":{"replicas":1}}}'
    )
    wait_for(
        "StatefulSet scaled to 1",
        lambda: get_json(cp, "statefulset", "cache", "-n", namespace)["spec"]["replicas"] == 1,
    )
    # One member: no replicas to read from, so no read-only Service and no read-only keys in the Secret.
    wait_for(
        "the read-only Service and keys gone",
        lambda: (
            not get_json(
                cp,
                "service",
                "-n",
                namespace,
                "-l",
                "mlinfra.io/datastore=cache",
                "--field-selector",
                "metadata.name=cache-ro",
            )["items"]
            and "readOnlyHost" not in secret_values(cp, namespace, "cache-conn")
        ),
    )


def test_managed_qdrant_is_served_by_local_mode_and_says_so(
    control_plane: ControlPlane, operator: OperatorProcess, backer: Backer, namespace: str
) -> None:
    cp = control_plane
    cp.apply([managed(namespace, "vectors", "qdrant", 1), managed(namespace, "cluster", "qdrant", 2)])
    wait_ready(cp, namespace, "vectors")
    st = get_json(cp, "datastore", "vectors", "-n", namespace)["status"]
    # No server here: the status names the client library's local mode instead of a version.
    assert "local-mode" in json.dumps(st)
    assert [m["name"] for m in st["members"]] == ["vectors-0"]
    # Two peers would be a cluster, which local mode cannot be: never Ready, and it says why.
    wait_for(
        "Ready=False saying why",
        lambda: "not served locally" in ds_condition(cp, namespace, "cluster", "Ready").get("message", ""),
    )
    ready = ds_condition(cp, namespace, "cluster", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unreachable")
    assert ds_condition(cp, namespace, "cluster", "Reachable")["status"] == "False"


@pytest.mark.parametrize(
    ("policy", "cascade"),
    [("Retain", "background"), ("Retain", "foreground"), ("Delete", "background")],
)
def test_deletion_policy(
    control_plane: ControlPlane, operator: OperatorProcess, backer: Backer, namespace: str, policy: str, cascade: str
) -> None:
    """Foreground is how Argo CD prunes: the garbage collector deletes the owner's dependents before the owner,
    so Retain holds only if the retained Secret never named the store as its owner."""
    cp = control_plane
    cp.apply([managed(namespace, "kv", "redis", 2, policy)])
    wait_ready(cp, namespace, "kv")
    assert len(get_json(cp, "pvc", "-n", namespace)["items"]) == 2
    credentials = get_json(cp, "secret", "kv-credentials", "-n", namespace)
    password = credentials["data"]["password"]
    # Retain: no reference for the garbage collector to follow, whichever runs first at deletion, it or the
    # operator's finalizer (a race the finalizer alone can lose under foreground deletion).
    assert bool(credentials["metadata"].get("ownerReferences")) == (policy == "Delete")
    cp.kubectl("delete", "datastore", "kv", "-n", namespace, f"--cascade={cascade}", "--timeout=60s")

    def children_gone() -> bool:
        return cp.kubectl("get", "statefulset", "kv", "-n", namespace, check=False).returncode != 0

    wait_for("StatefulSet garbage-collected", children_gone, 60)
    if policy == "Retain":
        assert len(get_json(cp, "pvc", "-n", namespace)["items"]) == 2
        secret = get_json(cp, "secret", "kv-credentials", "-n", namespace)
        assert not secret["metadata"].get("ownerReferences")
        # A DataStore of the same name is Ready on what was kept: the same claims, the same password.
        cp.apply([managed(namespace, "kv", "redis", 2, policy)])
        wait_ready(cp, namespace, "kv")
        assert get_json(cp, "secret", "kv-credentials", "-n", namespace)["data"]["password"] == password
        assert get_json(cp, "secret", "kv-conn", "-n", namespace)["data"]["password"] == password
        assert len(get_json(cp, "pvc", "-n", namespace)["items"]) == 2
    else:
        wait_for("PVCs deleted", lambda: not get_json(cp, "pvc", "-n", namespace)["items"], 60)
        wait_for(
            "credentials deleted",
            lambda: cp.kubectl("get", "secret", "kv-credentials", "-n", namespace, check=False).returncode != 0,
            60,
        )
