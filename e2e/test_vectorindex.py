"""VectorIndex on the real control plane with the operator running: a real PostgreSQL source and the managed
Qdrant store the local platform serves with qdrant-client local mode (no Qdrant server binary exists here)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client.http import models

from e2e_support import condition, get_json, wait_for
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.engines import connection, endpoints
from mlinfra.engines import qdrant as qdrant_engine
from mlinfra.vectors import jobs

DIM = 8


def stores(cp: ControlPlane, ns: str, pg: PostgresCluster) -> None:
    cp.kubectl(
        "create",
        "secret",
        "generic",
        "pg-creds",
        "-n",
        ns,
        "--from-literal=username=postgres",
        f"--from-literal=password={pg.password}",
    )
    cp.apply(
        [
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "DataStore",
                "metadata": {"name": "source", "namespace": ns},
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
                "metadata": {"name": "vectors", "namespace": ns},
                "spec": {"engine": "qdrant", "managed": {"replicas": 1, "storage": {"size": "1Gi"}}},
            },
        ]
    )


def index(ns: str, name: str, table: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "storeRef": {"name": "vectors"},
        "collection": name,
        "vectors": {"size": DIM, "distance": "Cosine"},
        "hnsw": {"m": 16},
        "payloadIndexes": [{"field": "lang", "type": "keyword"}],
        "source": {
            "storeRef": {"name": "source"},
            "table": table,
            "idColumn": "id",
            "vectorColumn": "embedding",
            "payloadColumns": ["title", "lang"],
            "updatedAtColumn": "updated_at",
            "deletedColumn": "deleted",
        },
        "sync": {"schedule": "*/10 * * * *", "batchSize": 50, "maxLag": "1h"},
    }
    spec.update(extra)
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def vi(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    return get_json(cp, "vectorindex", name, "-n", ns)


def cond(cp: ControlPlane, ns: str, name: str, type_: str) -> dict[str, Any]:
    return condition(vi(cp, ns, name), type_)


def insert(pg: PostgresCluster, table: str, ids: range, rng: np.random.Generator) -> dict[int, list[float]]:
    rows = {i: [float(x) for x in rng.normal(size=DIM)] for i in ids}
    with pg.primary.connect() as conn:
        for i, vec in rows.items():
            conn.execute(
                f"insert into public.{table} (id, title, lang, embedding) values (%s, %s, %s, %s) "
                "on conflict (id) do update set embedding = excluded.embedding, updated_at = now()",
                (i, f"doc {i}", "en" if i % 2 else "de", vec),
            )
    return rows


def mounted(cp: ControlPlane, ns: str, secret: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in get_json(cp, "secret", secret, "-n", ns)["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def run_job_command(cp: ControlPlane, ns: str, pod: dict[str, Any], backer: Backer, tmp: Path) -> dict[str, Any]:
    """The sync Job's container, run as a process: its args, its env, its mounted Secrets. Pods on kwok run
    nothing; the endpoint map is how a process on this host reaches the locally served Qdrant store."""
    container = pod["containers"][0]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, endpoints.ENV: str(backer.map_path)}
    for volume in pod["volumes"]:
        if "secret" in volume:
            mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
            var = next(e["name"] for e in container["env"] if e["value"] == mount["mountPath"])
            env[var] = str(mounted(cp, ns, volume["secret"]["secretName"], tmp / volume["name"]))
    env.pop("KUBECONFIG", None)  # the Job's pod has no API access
    run = subprocess.run(
        [sys.executable, "-m", "mlinfra", *container["args"]], env=env, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def qdrant_conn(cp: ControlPlane, ns: str, backer: Backer) -> connection.ConnectionInfo:
    data = get_json(cp, "secret", "vectors-conn", "-n", ns)["data"]
    info = connection.ConnectionInfo.from_secret_base64(data)
    return endpoints.EndpointMap(backer.map_path).resolve(info, ns, "vectors")


def events(cp: ControlPlane, ns: str, name: str) -> list[str]:
    items = get_json(cp, "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return [f"{e['reason']}: {e.get('message', '')}" for e in items]


def test_vectorindex_sync_rebuild_and_query(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    postgres_cluster: PostgresCluster,
    namespace: str,
    tmp_path: Path,
) -> None:
    cp, ns, pg = control_plane, namespace, postgres_cluster
    table = f"emb_{namespace[-6:]}"
    name = f"docs-{namespace[-6:]}"
    with pg.primary.connect() as conn:
        conn.execute(
            f"create table public.{table} (id bigint primary key, title text, lang text, "
            "embedding real[], updated_at timestamptz not null default now(), "
            "deleted boolean not null default false)"
        )
    rng = np.random.default_rng(7)
    rows = insert(pg, table, range(1, 121), rng)
    stores(cp, ns, pg)
    cp.apply([index(ns, name, table)])
    wait_for("VectorIndex Ready", lambda: cond(cp, ns, name, "Ready").get("status") == "True", 150)
    assert cond(cp, ns, name, "CollectionReady")["status"] == "True"
    st = vi(cp, ns, name)["status"]
    first = st["activeCollection"]
    assert first.startswith(f"{name}-") and st["points"] == 0
    # Never synced: every row is behind.
    wait_for("rowsBehind = 120", lambda: vi(cp, ns, name)["status"].get("sync", {}).get("rowsBehind") == 120, 60)
    assert cond(cp, ns, name, "Synced")["reason"] == "Behind"

    # The CronJob runs `mlinfra sync vectorindex` with both connection Secrets; the Job's command syncs.
    cron = get_json(cp, "cronjob", jobs.cronjob_name(name), "-n", ns)
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["sync", "vectorindex", f"{ns}/{name}"]
    assert {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == {"source-conn", "vectors-conn"}
    summary = run_job_command(cp, ns, pod, backer, tmp_path / "run1")
    assert summary["outcome"] == "Succeeded" and summary["upserted"] == 120
    wait_for(
        "caught up",
        lambda: (
            vi(cp, ns, name)["status"].get("sync", {}).get("rowsBehind") == 0
            and vi(cp, ns, name)["status"].get("points") == 120
        ),
        60,
    )
    st = vi(cp, ns, name)["status"]
    assert st["sync"]["lagSeconds"] == 0 and st["sync"]["lastRun"]["outcome"] == "Succeeded"
    assert cond(cp, ns, name, "Synced")["reason"] == "CaughtUp"
    metrics = operator.metrics()
    assert f'mlinfra_vectorindex_points{{name="{name}",namespace="{ns}"}} 120.0' in metrics

    # New rows raise rowsBehind; "sync now" makes a one-off Job, whose command brings it back to 0.
    rows.update(insert(pg, table, range(121, 151), rng))
    with pg.primary.connect() as conn:
        conn.execute(f"update public.{table} set deleted = true, updated_at = now() where id = 2")
    wait_for("rowsBehind = 31", lambda: vi(cp, ns, name)["status"]["sync"].get("rowsBehind") == 31, 60)
    cp.kubectl("annotate", "vectorindex", name, "-n", ns, f"{jobs.SYNC_REQUESTED_ANNOTATION}=now-1")
    job_name = jobs.ondemand_job_name(name, "now-1")
    wait_for("the on-demand Job", lambda: cp.kubectl("get", "job", job_name, "-n", ns, check=False).returncode == 0, 60)
    job = get_json(cp, "job", job_name, "-n", ns)
    summary = run_job_command(cp, ns, job["spec"]["template"]["spec"], backer, tmp_path / "run2")
    assert (summary["upserted"], summary["deleted"]) == (30, 1)
    wait_for(
        "caught up again",
        lambda: (
            vi(cp, ns, name)["status"]["sync"].get("rowsBehind") == 0
            and vi(cp, ns, name)["status"].get("points") == 149
        ),
        60,
    )

    # A similarity query through the alias finds a row's own vector first.
    with qdrant_engine.open_client(qdrant_conn(cp, ns, backer)) as client:
        hits = client.query_points(name, query=rows[77], limit=3, with_payload=True).points
    assert hits[0].id == 77 and hits[0].payload == {"title": "doc 77", "lang": "en"}

    # Drift by hand: the alias deleted -> the timer restores it and says so.
    with qdrant_engine.open_client(qdrant_conn(cp, ns, backer)) as client:
        client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name))]
        )
    wait_for(
        "DriftRepaired event",
        lambda: any(
            e.startswith(f"DriftRepaired: changed by hand, restored: alias {name}: missing -> {first}")
            for e in events(cp, ns, name)
        ),
        60,
    )
    # The whole collection deleted by hand: recreated empty, and the watermark reset so the next sync
    # copies every row again (rowsBehind shows it) instead of believing it is caught up.
    with qdrant_engine.open_client(qdrant_conn(cp, ns, backer)) as client:
        client.delete_collection(first)
    wait_for(
        "recreated, all rows behind",
        lambda: (
            vi(cp, ns, name)["status"]["sync"].get("rowsBehind") == 150
            and vi(cp, ns, name)["status"].get("points") == 0
        ),
        60,
    )
    assert any(e.startswith("WatermarkReset") for e in events(cp, ns, name))
    summary = run_job_command(cp, ns, pod, backer, tmp_path / "run3")
    assert summary["upserted"] == 149 and summary["deleted"] == 1
    wait_for("restored", lambda: vi(cp, ns, name)["status"].get("points") == 149, 60)

    # An immutable change (distance) rebuilds blue/green: new collection, backfilled, verified, alias moved.
    cp.kubectl(
        "patch",
        "vectorindex",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"vectors": {"size": DIM, "distance": "Dot"}}}),
    )

    def rebuilt() -> bool:
        s = vi(cp, ns, name)["status"]
        return (
            s.get("activeCollection") not in (None, first)
            and s.get("previousCollection") == first
            and cond(cp, ns, name, "Ready").get("status") == "True"
        )

    wait_for("rebuilt into a new collection", rebuilt, 150)
    st = vi(cp, ns, name)["status"]
    assert st["points"] == 149 and st["sync"]["rowsBehind"] == 0
    assert cond(cp, ns, name, "Reindexing")["reason"] == "Idle"
    seen = events(cp, ns, name)
    assert any(e.startswith("Rebuilding: vectors.distance: Cosine -> Dot") for e in seen), seen
    assert any(e.startswith(f"Rebuilt: alias {name} moved from {first} to {st['activeCollection']}") for e in seen)
    with qdrant_engine.open_client(qdrant_conn(cp, ns, backer)) as client:
        info = client.get_collection(name)
        assert info.config.params.vectors.distance == models.Distance.DOT  # type: ignore[union-attr]
        assert client.collection_exists(first)  # kept for rollback

    # Retention 0s: the previous collection goes; the live one stays.
    cp.kubectl(
        "patch",
        "vectorindex",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"previousCollectionRetention": "0s"}}),
    )
    wait_for("previous collection deleted", lambda: "previousCollection" not in vi(cp, ns, name)["status"], 90)
    with qdrant_engine.open_client(qdrant_conn(cp, ns, backer)) as client:
        assert not client.collection_exists(first)
        assert client.count(name, exact=True).count == 149


def test_vectorindex_bad_input_is_reported(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    postgres_cluster: PostgresCluster,
    namespace: str,
) -> None:
    cp, ns, pg = control_plane, namespace, postgres_cluster
    table = f"bad_{namespace[-6:]}"
    with pg.primary.connect() as conn:
        conn.execute(
            f"create table public.{table} (id bigint primary key, title text, lang text, "
            "embedding real[], updated_at timestamptz not null default now())"
        )
    stores(cp, ns, pg)
    # A source column that does not exist: Stalled, InvalidSpec, naming the column.
    cp.apply([index(ns, "missing-col", table)])
    wait_for("Stalled InvalidSpec", lambda: cond(cp, ns, "missing-col", "Stalled").get("reason") == "InvalidSpec", 120)
    stalled = cond(cp, ns, "missing-col", "Stalled")
    assert stalled["status"] == "True"
    assert "spec.source.deletedColumn: column 'deleted' does not exist" in stalled["message"]
    # Fixed in the table (a migration, not a spec change): picked up by the recheck without anything else.
    with pg.primary.connect() as conn:
        conn.execute(f"alter table public.{table} add column deleted boolean not null default false")
    wait_for("Ready after the fix", lambda: cond(cp, ns, "missing-col", "Ready").get("status") == "True", 120)

    # No source: an immutable change is refused (nothing to backfill from); the collection is untouched.
    cp.apply(
        [
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "VectorIndex",
                "metadata": {"name": "clientside", "namespace": ns},
                "spec": {
                    "storeRef": {"name": "vectors"},
                    "collection": "clientside",
                    "vectors": {"size": 4, "distance": "Cosine"},
                },
            }
        ]
    )
    wait_for("clientside Ready", lambda: cond(cp, ns, "clientside", "Ready").get("status") == "True", 120)
    active = vi(cp, ns, "clientside")["status"]["activeCollection"]
    assert cond(cp, ns, "clientside", "Synced")["reason"] == "NoSource"
    cp.kubectl(
        "patch",
        "vectorindex",
        "clientside",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"vectors": {"size": 5, "distance": "Cosine"}}}),
    )
    wait_for("refused", lambda: cond(cp, ns, "clientside", "Stalled").get("reason") == "ImmutableFieldChange", 90)
    message = cond(cp, ns, "clientside", "Stalled")["message"]
    assert "vectors.size: 4 -> 5" in message and "nothing to backfill" in message
    assert vi(cp, ns, "clientside")["status"]["activeCollection"] == active

    # What the schema can say, the API server refuses.
    bad = index(ns, "zero", table)
    bad["spec"]["vectors"] = {"size": 0, "distance": "Cosine"}
    out = cp.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0 and "spec.vectors.size must be a positive number" in out.stderr
    bad["spec"]["vectors"] = {"size": 4, "distance": "Hamming"}
    out = cp.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0 and 'Unsupported value: "Hamming"' in out.stderr
    bad["spec"]["vectors"] = {"size": 4, "distance": "Cosine"}
    bad["spec"]["payloadIndexes"] = [{"field": "lang", "type": "blob"}]
    out = cp.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0 and 'Unsupported value: "blob"' in out.stderr
