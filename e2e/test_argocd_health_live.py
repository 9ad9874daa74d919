"""The Argo CD health checks on live objects: each kind driven by the real operator into each state, and the
kind's health.lua run (as Argo CD runs it) on the object the API server returns.

With ``MLINFRA_CAPTURE_ARGOCD=1`` every object is written to tests/unit/fixtures/argocd/<kind>-<state>.json
(metadata trimmed to name, namespace and generation), which the unit tier evaluates on every run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

from e2e_support import condition, get_json, wait_for
from mlinfra.build import argocd
from mlinfra.devenv import procs
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster

ROOT = argocd.repo_root()
FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "argocd"
CAPTURE = os.environ.get("MLINFRA_CAPTURE_ARGOCD") == "1"
PLURALS = {
    "DataStore": "datastores",
    "FeatureView": "featureviews",
    "ModelRegistry": "modelregistries",
    "VectorIndex": "vectorindexes",
}

Obj = dict[str, Any]


def trimmed(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {k: meta[k] for k in ("name", "namespace", "generation") if k in meta},
        "spec": obj.get("spec", {}),
        "status": obj.get("status", {}),
    }


def health(obj: Obj) -> dict[str, str]:
    hs = argocd.evaluate(argocd.health_script(ROOT, obj["kind"]), obj)
    assert hs is not None
    return hs


def reach(
    cp: ControlPlane, kind: str, ns: str, name: str, what: str, check: Callable[[Obj], bool], timeout: float = 120
) -> Obj:
    """Wait until the live object satisfies ``check`` (a fact about its status, not about health); return
    that very object."""
    seen: list[Obj] = []

    def ok() -> bool:
        obj = get_json(cp, PLURALS[kind], name, "-n", ns)
        if check(obj):
            seen.append(obj)
            return True
        return False

    wait_for(f"{kind} {ns}/{name}: {what}", ok, timeout)
    return seen[-1]


def expect(obj: Obj, status: str, fixture: str | None = None) -> dict[str, str]:
    """Argo CD's verdict on ``obj`` is ``status``; capture it as ``fixture`` when asked."""
    hs = health(obj)
    assert hs["status"] == status, (hs, json.dumps(obj.get("status"), indent=1))
    assert hs["message"]
    if CAPTURE and fixture:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        (FIXTURES / f"{fixture}.json").write_text(json.dumps(trimmed(obj), indent=2) + "\n")
    return hs


def cond_is(type_: str, status: str, reason: str | None = None) -> Callable[[Obj], bool]:
    def check(obj: Obj) -> bool:
        c = condition(obj, type_)
        return c.get("status") == status and (reason is None or c.get("reason") == reason)

    return check


def current(obj: Obj) -> bool:
    return (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]


def ready(obj: Obj) -> bool:
    return current(obj) and cond_is("Ready", "True")(obj)


@contextlib.contextmanager
def operator_paused(op: OperatorProcess) -> Iterator[None]:
    """The operator frozen (SIGSTOP): a spec change made now is a generation nobody has observed yet."""
    op.proc.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        op.proc.signal(signal.SIGCONT)


def new_generation_unobserved(
    cp: ControlPlane, op: OperatorProcess, kind: str, ns: str, name: str, patch: Obj, fixture: str
) -> None:
    before = get_json(cp, PLURALS[kind], name, "-n", ns)
    with operator_paused(op):
        cp.kubectl("patch", PLURALS[kind], name, "-n", ns, "--type=merge", "-p", json.dumps(patch))
        obj = get_json(cp, PLURALS[kind], name, "-n", ns)
        assert obj["metadata"]["generation"] == before["metadata"]["generation"] + 1
        assert obj["status"]["observedGeneration"] == before["metadata"]["generation"]
        hs = expect(obj, "Progressing", fixture)
    assert f"generation {obj['metadata']['generation']}" in hs["message"]
    expect(reach(cp, kind, ns, name, "the new generation observed and Ready", ready), "Healthy")


def secret(cp: ControlPlane, ns: str, name: str, username: str, password: str) -> None:
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


def external(ns: str, name: str, engine: str, port: int, creds: str, **extra: Any) -> Obj:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "engine": engine,
            "external": {"endpoint": f"127.0.0.1:{port}", "credentialsSecretRef": {"name": creds}, **extra},
        },
    }


def run_sync(cp: ControlPlane, backer: Backer, kind: str, ns: str, name: str) -> dict[str, Any]:
    """The sync Job's command, run on the host as the Job would run it (kwok's Pods run nothing): the
    connections come from the DataStores' published Secrets, managed stores through the endpoint map."""
    env = {**os.environ, **cp.env(), "MLINFRA_ENDPOINT_MAP": str(backer.map_path)}
    run = subprocess.run(
        [sys.executable, "-m", "mlinfra", "sync", kind, f"{ns}/{name}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


# --- DataStore ---------------------------------------------------------------------------------------------


def test_datastore_health(
    control_plane: ControlPlane, operator: OperatorProcess, redis_cluster: RedisCluster, namespace: str
) -> None:
    cp, ns = control_plane, namespace
    secret(cp, ns, "creds", "default", redis_cluster.password)
    cp.apply([external(ns, "cache", "redis", redis_cluster.primary.port, "creds")])
    expect(reach(cp, "DataStore", ns, "cache", "Ready", ready), "Healthy", "datastore-ready")
    new_generation_unobserved(
        cp,
        operator,
        "DataStore",
        ns,
        "cache",
        {"spec": {"deletionPolicy": "Delete"}},
        "datastore-progressing-generation",
    )

    # A Secret that does not exist yet: the operator retries (Reconciling), Argo CD waits.
    cp.apply([external(ns, "waiting", "redis", redis_cluster.primary.port, "not-yet")])
    expect(
        reach(cp, "DataStore", ns, "waiting", "SecretNotFound", cond_is("Reconciling", "True", "SecretNotFound")),
        "Progressing",
        "datastore-progressing-reconciling",
    )

    # The store down: nothing answers at the endpoint.
    cp.apply([external(ns, "down", "redis", procs.free_port(), "creds")])
    expect(
        reach(cp, "DataStore", ns, "down", "Unreachable", cond_is("Ready", "False", "Unreachable")),
        "Degraded",
        "datastore-degraded-unreachable",
    )

    # A port no server can have is refused at admission now (a CEL rule), so nothing reaches the operator.
    refused = cp.kubectl(
        "apply", "-f", "-", input=json.dumps(external(ns, "badport", "redis", 99999, "creds")), check=False
    )
    assert refused.returncode != 0 and "a port from 1 to 65535" in refused.stderr, refused.stderr

    # Something only the user can fix: the name of the store's connection Secret is held by a Secret the
    # operator did not create (never taken over): Stalled.
    secret(cp, ns, "taken-conn", "someone", "else")
    cp.apply([external(ns, "taken", "redis", redis_cluster.primary.port, "creds")])
    expect(
        reach(cp, "DataStore", ns, "taken", "Stalled", cond_is("Stalled", "True", "ChildConflict")),
        "Degraded",
        "datastore-degraded-stalled",
    )


# --- FeatureView ---------------------------------------------------------------------------------------------


def feature_view(ns: str, name: str) -> Obj:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": "clicks", "type": "int64"}],
            "offline": {"storeRef": {"name": "offline"}, "table": name.replace("-", "_")},
            "online": {"storeRef": {"name": "online"}, "ttl": "24h"},
            "materialization": {"schedule": "*/5 * * * *", "batchSize": 100},
            "freshness": {"maxLag": "10m"},
        },
    }


def test_featureview_health(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    postgres_cluster: PostgresCluster,
    redis_cluster: RedisCluster,
    namespace: str,
) -> None:
    cp, ns = control_plane, namespace
    secret(cp, ns, "pg-creds", "postgres", postgres_cluster.password)
    secret(cp, ns, "kv-creds", "default", redis_cluster.password)
    cp.apply(
        [
            external(ns, "offline", "postgres", postgres_cluster.primary.port, "pg-creds"),
            external(ns, "online", "redis", redis_cluster.primary.port, "kv-creds"),
        ]
    )
    name = f"health-{ns[-6:]}"
    table = name.replace("-", "_")
    cp.apply([feature_view(ns, name)])
    expect(reach(cp, "FeatureView", ns, name, "Ready", ready), "Healthy", "featureview-ready")
    new_generation_unobserved(
        cp,
        operator,
        "FeatureView",
        ns,
        name,
        {"spec": {"materialization": {"batchSize": 200}}},
        "featureview-progressing-generation",
    )

    # Suspended: materialization paused, and otherwise healthy.
    cp.kubectl(
        "patch", "featureview", name, "-n", ns, "--type=merge", "-p", '{"spec":{"materialization":{"suspend":true}}}'
    )
    expect(reach(cp, "FeatureView", ns, name, "suspended and Ready", ready), "Suspended", "featureview-suspended")
    cp.kubectl(
        "patch", "featureview", name, "-n", ns, "--type=merge", "-p", '{"spec":{"materialization":{"suspend":false}}}'
    )
    expect(reach(cp, "FeatureView", ns, name, "resumed and Ready", ready), "Healthy")

    # Freshness objective breached: materialized up to 40 minutes ago, then a newer row arrives offline.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with postgres_cluster.primary.connect() as conn:
        conn.execute(
            f"insert into public.{table} (user_id, clicks, event_timestamp) values (1, 3, %s)",
            (now - datetime.timedelta(minutes=40),),
        )
    assert run_sync(cp, backer, "featureview", ns, name)["outcome"] == "Succeeded"
    with postgres_cluster.primary.connect() as conn:
        conn.execute(f"insert into public.{table} (user_id, clicks, event_timestamp) values (2, 5, %s)", (now,))
    breached = reach(
        cp,
        "FeatureView",
        ns,
        name,
        "FreshnessSLOMet=False",
        lambda o: current(o) and cond_is("FreshnessSLOMet", "False", "FreshnessSLOBreached")(o),
    )
    assert cond_is("Ready", "True")(breached)  # usable, yet Degraded: stale features are served
    expect(breached, "Degraded", "featureview-degraded-slo")

    # A feature type change is refused: Stalled.
    cp.kubectl(
        "patch",
        "featureview",
        name,
        "-n",
        ns,
        "--type=json",
        "-p",
        '[{"op": "replace", "path": "/spec/features/0/type", "value": "string"}]',
    )
    expect(
        reach(
            cp,
            "FeatureView",
            ns,
            name,
            "Stalled",
            lambda o: current(o) and cond_is("Stalled", "True", "ImmutableFieldChange")(o),
        ),
        "Degraded",
        "featureview-degraded-stalled",
    )


# --- ModelRegistry -------------------------------------------------------------------------------------------


def test_modelregistry_health(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    postgres_cluster: PostgresCluster,
    neo4j_server: Neo4jServer,
    namespace: str,
) -> None:
    cp, ns = control_plane, namespace
    secret(cp, ns, "pg-creds", "postgres", postgres_cluster.password)
    secret(cp, ns, "neo-creds", "neo4j", neo4j_server.password)
    cp.apply(
        [
            external(ns, "meta", "postgres", postgres_cluster.primary.port, "pg-creds"),
            external(ns, "graph", "neo4j", neo4j_server.port, "neo-creds"),
        ]
    )
    cp.apply(
        [
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "ModelRegistry",
                "metadata": {"name": "models", "namespace": ns},
                "spec": {
                    "metadataStoreRef": {"name": "meta"},
                    "lineageStoreRef": {"name": "graph"},
                    "database": f"reg_{ns[-6:]}",
                    "lineageSync": {"interval": "2s", "batchSize": 50, "maxLag": "20s"},
                },
            }
        ]
    )
    # Created together with its stores, the registry may be Ready before the graph store is observed: its
    # lineage is then not in sync (Degraded) for a moment. Sync waves create the stores first.
    in_sync = cond_is("LineageInSync", "True")
    expect(
        reach(cp, "ModelRegistry", ns, "models", "Ready, lineage in sync", lambda o: ready(o) and in_sync(o), 180),
        "Healthy",
        "modelregistry-ready",
    )
    new_generation_unobserved(
        cp,
        operator,
        "ModelRegistry",
        ns,
        "models",
        {"spec": {"lineageSync": {"batchSize": 100}}},
        "modelregistry-progressing-generation",
    )

    # The lineage store goes away: the registry serves, its lineage falls behind.
    cp.kubectl(
        "patch",
        "datastore",
        "graph",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"external": {"endpoint": f"127.0.0.1:{procs.free_port()}"}}}),
    )
    out = reach(cp, "ModelRegistry", ns, "models", "LineageInSync=False", cond_is("LineageInSync", "False"), 120)
    assert cond_is("Ready", "True")(out)
    expect(out, "Degraded", "modelregistry-degraded-lineage")
    cp.kubectl(
        "patch",
        "datastore",
        "graph",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"external": {"endpoint": f"127.0.0.1:{neo4j_server.port}"}}}),
    )
    back = reach(cp, "ModelRegistry", ns, "models", "LineageInSync=True again", cond_is("LineageInSync", "True"), 120)
    assert health(back)["status"] == "Healthy"

    # A schema downgrade is refused: Stalled.
    cp.kubectl("patch", "modelregistry", "models", "-n", ns, "--type=merge", "-p", '{"spec":{"schemaVersion":1}}')
    expect(
        reach(
            cp,
            "ModelRegistry",
            ns,
            "models",
            "Stalled",
            lambda o: current(o) and cond_is("Stalled", "True", "InvalidSpec")(o),
        ),
        "Degraded",
        "modelregistry-degraded-stalled",
    )


# --- VectorIndex ---------------------------------------------------------------------------------------------


def vector_index(ns: str, name: str, table: str, vector_column: str = "embedding") -> Obj:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "storeRef": {"name": "vectors"},
            "collection": name,
            "vectors": {"size": 4, "distance": "Cosine"},
            "source": {
                "storeRef": {"name": "source"},
                "table": table,
                "idColumn": "id",
                "vectorColumn": vector_column,
                "updatedAtColumn": "updated_at",
            },
            "sync": {"schedule": "*/10 * * * *", "batchSize": 50, "maxLag": "30m"},
        },
    }


def test_vectorindex_health(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    postgres_cluster: PostgresCluster,
    namespace: str,
) -> None:
    cp, ns = control_plane, namespace
    table = f"docs_{ns[-6:]}"
    with postgres_cluster.primary.connect() as conn:
        conn.execute(
            f"create table public.{table} (id bigint primary key, embedding real[] not null, "
            "updated_at timestamptz not null default now())"
        )
    secret(cp, ns, "pg-creds", "postgres", postgres_cluster.password)
    cp.apply(
        [
            external(ns, "source", "postgres", postgres_cluster.primary.port, "pg-creds"),
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "DataStore",
                "metadata": {"name": "vectors", "namespace": ns},
                "spec": {"engine": "qdrant", "managed": {"replicas": 1, "storage": {"size": "1Gi"}}},
            },
        ]
    )
    cp.apply([vector_index(ns, "docs", table)])
    expect(reach(cp, "VectorIndex", ns, "docs", "Ready", ready, 180), "Healthy", "vectorindex-ready")
    new_generation_unobserved(
        cp,
        operator,
        "VectorIndex",
        ns,
        "docs",
        {"spec": {"sync": {"batchSize": 100}}},
        "vectorindex-progressing-generation",
    )

    cp.kubectl("patch", "vectorindex", "docs", "-n", ns, "--type=merge", "-p", '{"spec":{"sync":{"suspend":true}}}')
    expect(reach(cp, "VectorIndex", ns, "docs", "suspended and Ready", ready), "Suspended", "vectorindex-suspended")
    cp.kubectl("patch", "vectorindex", "docs", "-n", ns, "--type=merge", "-p", '{"spec":{"sync":{"suspend":false}}}')
    expect(reach(cp, "VectorIndex", ns, "docs", "resumed and Ready", ready), "Healthy")

    # The index lag objective breached: synced up to two hours ago, then a newer row arrives in the source.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with postgres_cluster.primary.connect() as conn:
        for i in range(3):
            conn.execute(
                f"insert into public.{table} (id, embedding, updated_at) values (%s, %s, %s)",
                (i, [1.0, float(i), 0.5, 0.25], now - datetime.timedelta(hours=2)),
            )
    assert run_sync(cp, backer, "vectorindex", ns, "docs")["outcome"] == "Succeeded"
    # Behind, within the objective: still Healthy.
    with postgres_cluster.primary.connect() as conn:
        conn.execute(
            f"insert into public.{table} (id, embedding, updated_at) values (8, %s, %s)",
            ([0.5, 0.5, 0.5, 0.25], now - datetime.timedelta(hours=2) + datetime.timedelta(minutes=5)),
        )
    behind = reach(
        cp,
        "VectorIndex",
        ns,
        "docs",
        "Synced=False Behind",
        lambda o: current(o) and cond_is("Synced", "False", "Behind")(o),
    )
    expect(behind, "Healthy", "vectorindex-ready-behind")
    with postgres_cluster.primary.connect() as conn:
        conn.execute(
            f"insert into public.{table} (id, embedding, updated_at) values (9, %s, %s)", ([0.5, 0.5, 0.5, 0.5], now)
        )
    lagging = reach(
        cp,
        "VectorIndex",
        ns,
        "docs",
        "Synced=False LagExceeded",
        lambda o: current(o) and cond_is("Synced", "False", "LagExceeded")(o),
    )
    assert cond_is("Ready", "True")(lagging)  # the index answers queries, but from stale data
    expect(lagging, "Degraded", "vectorindex-degraded-lag")

    # A source column that does not exist: only the user can fix it.
    cp.apply([vector_index(ns, "broken", table, vector_column="no_such_column")])
    expect(
        reach(
            cp,
            "VectorIndex",
            ns,
            "broken",
            "Stalled",
            lambda o: current(o) and cond_is("Stalled", "True", "InvalidSpec")(o),
        ),
        "Degraded",
        "vectorindex-degraded-stalled",
    )
