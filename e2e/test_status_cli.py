"""`mlinfra status` against the real control plane, with the operator and real stores behind it.

Managed PostgreSQL, Redis and Qdrant (served by the backer), an external Neo4j, FeatureViews, a ModelRegistry
and a VectorIndex on them, one FeatureView whose online store does not exist. The CLI runs as a subprocess,
as a user would run it, and its output is compared, resource by resource, with the objects' .status read
from the API server at the same resourceVersions. Then the same as a ServiceAccount that only has the
read-only RBAC the chart aggregates into `view`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from e2e_support import condition, get_json, wait_for
from mlinfra.devenv import operator as op_mod
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.operator import OperatorProcess

PLURALS = {
    "DataStore": "datastores",
    "FeatureView": "featureviews",
    "ModelRegistry": "modelregistries",
    "VectorIndex": "vectorindexes",
}

# Every resource of the scene: kind, name, and the stores it must be listed under with the role each plays.
# DataStores are the roots (no stores above them).
RESOURCES: list[tuple[str, str, dict[str, list[str]]]] = [
    ("DataStore", "offline", {}),
    ("DataStore", "online", {}),
    ("DataStore", "graph", {}),
    ("DataStore", "vectors", {}),
    ("FeatureView", "clicks", {"offline": ["offline"], "online": ["online"]}),
    ("FeatureView", "orphan", {"offline": ["offline"], "missing-cache": ["online"]}),
    ("ModelRegistry", "models", {"offline": ["metadata"], "graph": ["lineage"]}),
    ("VectorIndex", "docs", {"vectors": ["index"]}),
]
# What the scene is known to look like once settled, independent of how the CLI computes anything.
FACTS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    (
        "DataStore",
        "offline",
        {"ready": "True"},
        {"engine": "postgres", "mode": "managed", "readyReplicas": 2, "desiredReplicas": 2},
    ),
    (
        "DataStore",
        "online",
        {"ready": "True"},
        {"engine": "redis", "mode": "managed", "readyReplicas": 2, "desiredReplicas": 2},
    ),
    ("DataStore", "graph", {"ready": "True"}, {"engine": "neo4j", "mode": "external"}),
    ("DataStore", "vectors", {"ready": "True"}, {"engine": "qdrant", "mode": "managed"}),
    ("FeatureView", "clicks", {"ready": "True", "lastSync": None}, {"lagSeconds": 0, "lastMaterialization": None}),
    ("FeatureView", "orphan", {"ready": "False", "reason": "StoreNotFound"}, {}),
    # Nothing pending: no oldest pending event, so no lag figure.
    ("ModelRegistry", "models", {"ready": "True"}, {"pendingEvents": 0, "lagSeconds": None}),
    # No source table: an empty collection, and no sync figures at all.
    (
        "VectorIndex",
        "docs",
        {"ready": "True", "lastSync": None},
        {"points": 0, "rowsBehind": None, "lagSeconds": None, "lastRun": None},
    ),
]


def managed(ns: str, name: str, engine: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"engine": engine, "managed": {"replicas": replicas, "storage": {"size": "1Gi"}}},
    }


def view(ns: str, name: str, online: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": "clicks", "type": "int64"}],
            "offline": {"storeRef": {"name": "offline"}, "table": f"{name}_{ns[-6:]}"},
            "online": {"storeRef": {"name": online}, "ttl": "24h"},
            "materialization": {"schedule": "*/5 * * * *"},
            "freshness": {"maxLag": "10m"},
        },
    }


def scene(cp: ControlPlane, ns: str, graph: Neo4jServer) -> None:
    cp.kubectl(
        "create",
        "secret",
        "generic",
        "neo-creds",
        "-n",
        ns,
        "--from-literal=username=neo4j",
        f"--from-literal=password={graph.password}",
    )
    cp.apply(
        [
            managed(ns, "offline", "postgres", 2),
            managed(ns, "online", "redis", 2),
            managed(ns, "vectors", "qdrant", 1),  # served by qdrant-client's local mode (see the backer)
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "DataStore",
                "metadata": {"name": "graph", "namespace": ns},
                "spec": {
                    "engine": "neo4j",
                    "external": {"endpoint": f"127.0.0.1:{graph.port}", "credentialsSecretRef": {"name": "neo-creds"}},
                },
            },
            view(ns, "clicks", "online"),
            view(ns, "orphan", "missing-cache"),
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "ModelRegistry",
                "metadata": {"name": "models", "namespace": ns},
                "spec": {
                    "metadataStoreRef": {"name": "offline"},
                    "lineageStoreRef": {"name": "graph"},
                    "database": f"reg_{ns[-6:]}",
                    # Each in-process pass moves status.lineage.lastSyncTime: a pass every observation (2 s) left
                    # no window for a `mlinfra status` run between two status writes on a loaded machine.
                    "lineageSync": {"interval": "30s", "maxLag": "5m"},
                },
            },
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "VectorIndex",
                "metadata": {"name": "docs", "namespace": ns},
                "spec": {
                    "storeRef": {"name": "vectors"},
                    "collection": f"docs_{ns[-6:]}",
                    "vectors": {"size": 4, "distance": "Cosine"},
                },
            },
        ]
    )


def settled(cp: ControlPlane, ns: str) -> bool:
    objs = objects(cp, ns)
    for kind, name, expected, _ in FACTS:
        ready = condition(objs.get((kind, name), {}), "Ready")
        if ready.get("status") != expected["ready"]:
            return False
        if "reason" in expected and ready.get("reason") != expected["reason"]:
            return False
    for store in ("offline", "online"):  # Ready needs the primary; the replica may still be catching up
        if (objs[("DataStore", store)]["status"].get("replication") or {}).get("readyReplicas") != 2:
            return False
    registry = objs[("ModelRegistry", "models")]["status"]
    return (
        registry.get("lineage", {}).get("lastSyncTime") is not None
        and objs[("FeatureView", "clicks")]["status"].get("freshness", {}).get("lagSeconds") == 0
    )


def objects(cp: ControlPlane, ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    items = get_json(cp, ",".join(PLURALS.values()), "-n", ns)["items"]
    return {(o["kind"], o["metadata"]["name"]): o for o in items}


def mlinfra_status(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)  # never mistake this host for a pod
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "mlinfra", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def consistent_run(
    cp: ControlPlane, ns: str, kubeconfig: Path, *args: str
) -> tuple[str, dict[tuple[str, str], dict[str, Any]]]:
    """The CLI's stdout and the objects as they were while it ran: retried until no object changed
    (resourceVersion) between a read before and a read after the run."""
    changed: list[tuple[str, str]] = []
    for _ in range(60):  # status changes when something observed changes: right after settling, that is often
        before = objects(cp, ns)
        run = mlinfra_status(kubeconfig, *args)
        assert run.returncode == 0, run.stderr
        after = objects(cp, ns)
        changed = [
            k
            for k in after
            if before.get(k, {}).get("metadata", {}).get("resourceVersion") != after[k]["metadata"]["resourceVersion"]
        ]
        if not changed:
            return run.stdout, after
        time.sleep(0.5)
    raise AssertionError(
        f"objects kept changing while `mlinfra status` ran: {changed} {[after[k].get('status') for k in changed]}"
    )


# --- what .status says, written out per kind: the JSON contract of docs/observability.md -------------------------


def expected_entry(obj: dict[str, Any]) -> dict[str, Any]:
    st = obj.get("status") or {}
    ready = condition(obj, "Ready")
    kind = obj["kind"]
    if kind == "DataStore":
        rep = st.get("replication") or {}
        figures = {
            "engine": obj["spec"]["engine"],
            "mode": st.get("mode"),
            "readyReplicas": rep.get("readyReplicas"),
            "desiredReplicas": rep.get("desiredReplicas"),
            "maxLagSeconds": rep.get("maxLagSeconds"),
            "maxLagBytes": rep.get("maxLagBytes"),
            "backups": (obj["spec"].get("backup") is not None),
            "lastBackupTime": (st.get("backup") or {}).get("lastSuccessfulTime"),
        }
        last = None
    elif kind == "FeatureView":
        run = st.get("lastMaterialization")
        figures = {
            "lagSeconds": (st.get("freshness") or {}).get("lagSeconds"),
            "lastMaterialization": {k: run.get(k) for k in ("outcome", "startTime", "endTime", "rows")}
            if run
            else None,
        }
        last = (run.get("endTime") or run.get("startTime")) if run else None
    elif kind == "VectorIndex":
        sync = st.get("sync") or {}
        run = sync.get("lastRun")
        figures = {
            "points": st.get("points"),
            "rowsBehind": sync.get("rowsBehind"),
            "lagSeconds": sync.get("lagSeconds"),
            "lastRun": {k: run.get(k) for k in ("outcome", "startTime", "endTime", "rows")} if run else None,
        }
        last = (run.get("endTime") or run.get("startTime")) if run else None
    else:
        lineage = st.get("lineage") or {}
        figures = {
            "schemaVersion": st.get("schemaVersion"),
            "pendingEvents": lineage.get("pendingEvents"),
            "lagSeconds": lineage.get("oldestPendingAgeSeconds"),
            "lastSyncTime": lineage.get("lastSyncTime"),
        }
        last = lineage.get("lastSyncTime")
    reconciling = (
        st.get("observedGeneration") != obj["metadata"]["generation"]
        or condition(obj, "Reconciling").get("status") == "True"
    )
    return {
        "kind": kind,
        "namespace": obj["metadata"]["namespace"],
        "name": obj["metadata"]["name"],
        "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason", ""),
        "message": ready.get("message", ""),
        "reconciling": reconciling,
        "lastSync": last,
        "figures": figures,
    }


def placements(doc: dict[str, Any], ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> {"root": entry} for stores, {store: entry-with-roles} for dependents."""
    [tree] = [t for t in doc["namespaces"] if t["namespace"] == ns]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for store in tree["stores"]:
        if store["resource"] is not None:
            found.setdefault(("DataStore", store["name"]), {})["root"] = store["resource"]
        for dep in store["dependents"]:
            found.setdefault((dep["kind"], dep["name"]), {})[store["name"]] = dep
    return found


def check_json(stdout: str, objs: dict[tuple[str, str], dict[str, Any]], ns: str) -> dict[str, Any]:
    doc = json.loads(stdout)
    assert doc["formatVersion"] == 1
    found = placements(doc, ns)
    assert set(found) == {(k, n) for k, n, _ in RESOURCES}
    for kind, name, stores in RESOURCES:
        want = expected_entry(objs[(kind, name)])
        if not stores:
            assert found[(kind, name)] == {"root": want}, (kind, name)
            continue
        assert set(found[(kind, name)]) == set(stores), (kind, name)
        for store, roles in stores.items():
            entry = dict(found[(kind, name)][store])
            assert entry.pop("storeRoles") == roles, (kind, name, store)
            assert entry.pop("alsoUnder") == [s for s in stores if s != store], (kind, name, store)
            assert entry == want, (kind, name, store)
    [tree] = [t for t in doc["namespaces"] if t["namespace"] == ns]
    assert [(s["name"], s["missing"]) for s in tree["stores"]] == [
        ("graph", False),
        ("offline", False),
        ("online", False),
        ("vectors", False),
        ("missing-cache", True),
    ]
    for kind, name, top, figures in FACTS:
        entry = found[(kind, name)].get("root") or next(iter(found[(kind, name)].values()))
        assert {k: entry[k] for k in top} == top, (kind, name)
        assert {k: entry["figures"][k] for k in figures} == figures, (kind, name)
    return doc


def test_status_matches_the_objects(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    neo4j_server: Neo4jServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, namespace
    scene(cp, ns, neo4j_server)
    wait_for("the scene settled (stores Ready, views and registry observed)", lambda: settled(cp, ns), 240)

    # -o json: every resource under every store it uses, with exactly what its .status says.
    stdout, objs = consistent_run(cp, ns, cp.kubeconfig, "-n", ns, "-o", "json")
    check_json(stdout, objs, ns)

    # The plain form: no colour through a pipe, ASCII, one line per resource per store, aligned columns.
    stdout, objs = consistent_run(cp, ns, cp.kubeconfig, "-n", ns)
    assert "\033[" not in stdout and stdout.isascii()
    lines = stdout.splitlines()
    assert lines[0] == f"NAMESPACE {ns}"
    header = lines[1]
    assert header.split() == ["NAME", "READY", "REASON", "LAST", "SYNC", "DETAILS"]
    for kind, name, stores in RESOURCES:
        obj = objs[(kind, name)]
        ready = condition(obj, "Ready")
        rows = [line for line in lines if line.lstrip("|`- ").startswith(f"{kind}/{name} ")]
        assert len(rows) == max(1, len(stores)), (kind, name, rows)
        for row in rows:
            assert row[header.index("READY") :].split()[:2] == [ready["status"], ready["reason"]], row
            if kind == "DataStore":
                rep = obj["status"].get("replication") or {}
                assert f"engine={obj['spec']['engine']} mode={obj['status']['mode']}" in row
                if rep:
                    assert f"replicas={rep['readyReplicas']}/{rep['desiredReplicas']}" in row
            if kind == "VectorIndex":
                assert f"points={obj['status']['points']} rowsBehind=- lag=- lastRun=never [index]" in row
            if kind == "ModelRegistry":
                lineage = obj["status"]["lineage"]
                assert f"pending={lineage['pendingEvents']}" in row
                assert row[header.index("LAST SYNC") :].startswith(lineage["lastSyncTime"] + " ("), row
            if ready["status"] != "True":
                # Why it is not Ready, on the next line.
                assert " ".join(ready["message"].split())[:100] in lines[lines.index(row) + 1]
    missing = lines.index("(missing store missing-cache)")
    assert lines[missing + 1].startswith("`- FeatureView/orphan ")

    # -A: the namespace is one section among all the cluster's.
    run = mlinfra_status(cp.kubeconfig, "-A", "-o", "json")
    assert run.returncode == 0, run.stderr
    assert ns in [t["namespace"] for t in json.loads(run.stdout)["namespaces"]]

    # A forced colour run paints READY cells (what a terminal shows).
    run = mlinfra_status(cp.kubeconfig, "-n", ns, "--color")
    assert "\033[32mTrue" in run.stdout and "\033[31m(missing store missing-cache)" in run.stdout


def test_status_needs_only_read_access(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    neo4j_server: Neo4jServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    """A ServiceAccount bound (in this namespace only) to the chart's aggregated view role, and another to the
    built-in `view` role that it aggregates into, can run it; they could not change anything."""
    cp, ns = control_plane, namespace
    scene(cp, ns, neo4j_server)
    wait_for("the scene settled", lambda: settled(cp, ns), 240)
    chart_view = cp.kubectl(
        "get",
        "clusterroles",
        "-o",
        "name",
        "-l",
        f"app.kubernetes.io/instance={op_mod.RELEASE},rbac.authorization.k8s.io/aggregate-to-view=true",
    ).stdout.split()
    assert len(chart_view) == 1, chart_view
    for account, role in (
        ("reader-chart", chart_view[0].removeprefix("clusterrole.rbac.authorization.k8s.io/")),
        ("reader-view", "view"),
    ):
        cp.kubectl("create", "serviceaccount", account, "-n", ns)
        cp.kubectl(
            "create", "rolebinding", account, "-n", ns, f"--clusterrole={role}", f"--serviceaccount={ns}:{account}"
        )
        who = f"--as=system:serviceaccount:{ns}:{account}"
        wait_for(
            f"{account} may list datastores",
            lambda w=who: (
                cp.kubectl("auth", "can-i", "list", "datastores.mlinfra.io", "-n", ns, w, check=False).stdout.strip()
                == "yes"
            ),
            60,
        )
        for verb in ("patch", "delete"):
            assert (
                cp.kubectl("auth", "can-i", verb, "datastores.mlinfra.io", "-n", ns, who, check=False).stdout.strip()
                == "no"
            )

        kubeconfig = op_mod.service_account_kubeconfig(cp, ns, account, tmp_path / f"{account}.kubeconfig")
        stdout, objs = consistent_run(cp, ns, kubeconfig, "-n", ns, "-o", "json")
        check_json(stdout, objs, ns)

        # Without -n: the namespace of the kubeconfig's context, as kubectl would use it.
        config = yaml.safe_load(kubeconfig.read_text())
        config["contexts"][0]["context"]["namespace"] = ns
        in_ns = tmp_path / f"{account}-in-ns.kubeconfig"
        in_ns.write_text(yaml.safe_dump(config))
        stdout, objs = consistent_run(cp, ns, in_ns, "-o", "json")
        assert [t["namespace"] for t in json.loads(stdout)["namespaces"]] == [ns]

        # Cluster-wide listing is refused to a namespace-scoped reader: a one-line error, exit code 1.
        run = mlinfra_status(kubeconfig, "-A")
        assert run.returncode == 1
        assert run.stderr.startswith("error: listing mlinfra resources in all namespaces: 403"), run.stderr
        assert "Traceback" not in run.stderr
