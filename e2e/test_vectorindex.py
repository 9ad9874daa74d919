"""VectorIndex on the real control plane with the operator running: a real PostgreSQL source and a Qdrant store.

The store is the one ``qdrant_target`` decides: with ``QDRANT_URL`` set, an external DataStore on that real
server (the operator path against a server, not only the library); else the managed store the local platform
serves with qdrant-client local mode (no Qdrant server binary exists here). Collection and alias names carry
the test's own prefix and are removed after each test, failed or not (the ``space`` fixture)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client.http import models

import qdrant_target
from e2e_support import condition, get_json, run_job_command, wait_for
from mlinfra.api import datastore as datastore_api
from mlinfra.api import vectorindex as vectorindex_api
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.engines import connection
from mlinfra.vectors import collection as vi_collection
from mlinfra.vectors import jobs, syncrole
from mlinfra.vectors.collection import APPLIED_KEY

DIM = 8
STORE = qdrant_target.STORE


@pytest.fixture(scope="session")
def qdrant_server() -> qdrant_target.Server | None:
    """The real server at QDRANT_URL (None: the local platform's managed store). Requested first by the tests,
    so a URL that cannot be used fails them at once, before the control plane starts."""
    return qdrant_target.server_or_fail()


@pytest.fixture
def space(
    qdrant_server: qdrant_target.Server | None,
    control_plane: ControlPlane,
    backer: Backer,
    namespace: str,
    record_property: Callable[[str, object], None],
) -> Iterator[qdrant_target.Space]:
    record_property("qdrant", "real-server" if qdrant_server else "local-mode")
    target = qdrant_target.Space(control_plane, namespace, backer, qdrant_server)
    yield target
    # A teardown, so it runs when the test failed too (and a failure here does not hide the test's own).
    removed, left = target.cleanup()
    print(f"--- removed from Qdrant under {target.prefix}: {removed}")
    assert not left, f"still on the Qdrant server after the cleanup: {left}"


def stores(cp: ControlPlane, ns: str, pg: PostgresCluster, space: qdrant_target.Space) -> None:
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
            *space.store_objects(),
        ]
    )


def index(ns: str, name: str, collection: str, table: str, **extra: Any) -> dict[str, Any]:
    """The VectorIndex ``name`` (its Kubernetes name) serving the alias ``collection`` (a Qdrant name, unique
    per test run: see ``qdrant_target``)."""
    spec: dict[str, Any] = {
        "storeRef": {"name": STORE},
        "collection": collection,
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


def events(cp: ControlPlane, ns: str, name: str) -> list[str]:
    items = get_json(cp, "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return [f"{e['reason']}: {e.get('message', '')}" for e in items]


def store(cp: ControlPlane, ns: str, name: str = STORE) -> dict[str, Any]:
    return dict(get_json(cp, "datastore", name, "-n", ns))


def drift_hnsw_m(space: qdrant_target.Space, collection: str, m: int) -> None:
    """Change the collection's HNSW ``m`` by hand, as a user with a Qdrant client would."""
    with space.client() as client:
        if space.real:
            client.update_collection(collection, hnsw_config=models.HnswConfigDiff(m=m))
            return
        # Local mode builds no HNSW graph and ignores hnsw_config; the operator compares the spec with the
        # settings the collection records (its metadata) instead, so that record is what a hand change alters.
        metadata = client.get_collection(collection).config.metadata or {}
        applied = dict(metadata[APPLIED_KEY])
        applied["hnsw"] = {**applied["hnsw"], "m": m}
        client.update_collection(collection, metadata={APPLIED_KEY: applied})


@pytest.mark.qdrant
def test_vectorindex_sync_rebuild_and_query(
    qdrant_server: qdrant_target.Server | None,
    space: qdrant_target.Space,
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
    alias = space.name("docs")
    with pg.primary.connect() as conn:
        conn.execute(
            f"create table public.{table} (id bigint primary key, title text, lang text, "
            "embedding real[], updated_at timestamptz not null default now(), "
            "deleted boolean not null default false)"
        )
    rng = np.random.default_rng(7)
    rows = insert(pg, table, range(1, 121), rng)
    stores(cp, ns, pg, space)
    cp.apply([index(ns, name, alias, table)])
    wait_for("VectorIndex Ready", lambda: cond(cp, ns, name, "Ready").get("status") == "True", 150)
    assert cond(cp, ns, name, "CollectionReady")["status"] == "True"
    st = vi(cp, ns, name)["status"]
    first = st["activeCollection"]
    assert first.startswith(f"{alias}-") and st["points"] == 0

    # The store as the operator observed it.
    wait_for("DataStore Ready", lambda: condition(store(cp, ns), "Ready").get("status") == "True")
    ds = store(cp, ns)["status"]
    if space.real:
        # Only a server has a version to report, and shards whose replicas it reports per collection.
        assert qdrant_server is not None
        with space.client() as client:
            version = client.info().version
            cluster = client.collection_cluster_info(first)
        assert (ds["mode"], ds["endpoint"], ds["version"]) == ("external", qdrant_server.endpoint, version)
        shards = [(s.shard_id, cluster.peer_id, str(s.state)) for s in cluster.local_shards]
        shards += [(s.shard_id, s.peer_id, str(s.state)) for s in cluster.remote_shards]
        expected = [{"shard": s, "peer": str(p), "state": state} for s, p, state in sorted(shards)]
        assert expected, "the server reports no shard for the collection"
        wait_for("replicas[] from the server", lambda: vi(cp, ns, name)["status"].get("replicas") == expected, 60)
    else:
        # Local mode has no server: no version (it would be the client library's), and no shards or peers,
        # so the VectorIndex reports no replicas rather than an invented list.
        assert ds["mode"] == "managed" and "version" not in ds and "local-mode" in ds["capabilities"]
        assert "replicas" not in vi(cp, ns, name)["status"]

    # Never synced: every row is behind.
    wait_for("rowsBehind = 120", lambda: vi(cp, ns, name)["status"].get("sync", {}).get("rowsBehind") == 120, 60)
    assert cond(cp, ns, name, "Synced")["reason"] == "Behind"

    # The CronJob runs `mlinfra sync vectorindex` with two connection Secrets: the source as the index's own
    # least-privilege role (not the store's admin), Qdrant as its store (no per-collection credentials); the
    # Job's command syncs.
    cron = get_json(cp, "cronjob", jobs.cronjob_name(name), "-n", ns)
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["sync", "vectorindex", f"{ns}/{name}"]
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {syncrole.secret_name(name), f"{STORE}-conn"}
    mounted, admin = (
        connection.ConnectionInfo.from_secret_base64(get_json(cp, "secret", secret, "-n", ns)["data"])
        for secret in (syncrole.secret_name(name), "source-conn")
    )
    assert mounted.username == syncrole.role_name(ns, name) and mounted.username != admin.username
    assert mounted.password != admin.password
    assert (mounted.endpoint, mounted.database) == (admin.endpoint, admin.database)
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
    with space.client() as client:
        hits = client.query_points(alias, query=rows[77], limit=3, with_payload=True).points
    assert hits[0].id == 77 and hits[0].payload == {"title": "doc 77", "lang": "en"}

    # Drift by hand: the alias deleted -> the timer restores it and says so.
    with space.client() as client:
        client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))]
        )
    wait_for(
        "DriftRepaired event",
        lambda: any(
            e.startswith(f"DriftRepaired: changed by hand, restored: alias {alias}: missing -> {first}")
            for e in events(cp, ns, name)
        ),
        60,
    )
    # HNSW m changed by hand (spec says 16) -> set back in place, and said so.
    drift_hnsw_m(space, first, 8)
    wait_for(
        "DriftRepaired event for hnsw.m",
        lambda: any(
            e.startswith("DriftRepaired: changed by hand, restored: ") and "hnsw.m: 8 -> 16" in e
            for e in events(cp, ns, name)
        ),
        60,
    )
    with space.client() as client:
        config = client.get_collection(first).config
    if space.real:
        assert config.hnsw_config.m == 16  # the server's own setting
    else:
        assert (config.metadata or {})[APPLIED_KEY]["hnsw"]["m"] == 16  # what local mode records
    # The whole collection deleted by hand: recreated empty, and the watermark reset so the next sync
    # copies every row again (rowsBehind shows it) instead of believing it is caught up.
    with space.client() as client:
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

    # An immutable change (distance) rebuilds blue/green in a Job: new collection, backfilled, verified, alias
    # moved. The Job runs `mlinfra rebuild vectorindex` with the sync Job's mounts; kwok runs nothing (and
    # marks the Job Complete at once, which the operator must not take for a rebuild done): its command is
    # run here.
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
    dot = index(ns, name, alias, table)["spec"]
    dot["vectors"]["distance"] = "Dot"
    target = vi_collection.physical_name(vectorindex_api.VectorIndexSpec.model_validate(dot))
    rebuild_job = jobs.rebuild_job_name(name, target, 1)
    wait_for(
        "the rebuild Job", lambda: cp.kubectl("get", "job", rebuild_job, "-n", ns, check=False).returncode == 0, 60
    )
    job = get_json(cp, "job", rebuild_job, "-n", ns)
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "index-rebuild"
    assert job["spec"]["backoffLimit"] == 0
    rebuild_pod = job["spec"]["template"]["spec"]
    assert rebuild_pod["containers"][0]["args"] == ["rebuild", "vectorindex", f"{ns}/{name}"]
    assert rebuild_pod["volumes"] == pod["volumes"]
    # Not done while the alias has not moved, whatever the Job says.
    wait_for(
        "Ready False while the rebuild is pending", lambda: cond(cp, ns, name, "Ready").get("status") == "False", 30
    )
    assert vi(cp, ns, name)["status"]["activeCollection"] == first
    summary = run_job_command(cp, ns, rebuild_pod, backer, tmp_path / "rebuild")
    assert (summary["rebuilt"], summary["active"], summary["previous"], summary["points"]) == (True, target, first, 149)
    # A rebuild Job is no sync: the sync status never reports it.
    assert cond(cp, ns, name, "Synced").get("reason") != "SyncFailed"

    def rebuilt() -> bool:
        s = vi(cp, ns, name)["status"]
        return (
            s.get("activeCollection") == target
            and s.get("previousCollection") == first
            and cond(cp, ns, name, "Ready").get("status") == "True"
        )

    wait_for("rebuilt into a new collection", rebuilt, 150)
    st = vi(cp, ns, name)["status"]
    assert st["points"] == 149 and st["sync"]["rowsBehind"] == 0
    assert st["activeCollection"].startswith(f"{alias}-")  # under the test's prefix: the cleanup finds it
    assert cond(cp, ns, name, "Reindexing")["reason"] == "Idle"
    seen = events(cp, ns, name)
    assert any(e.startswith("Rebuilding: vectors.distance: Cosine -> Dot") and rebuild_job in e for e in seen), seen
    assert len([e for e in seen if e.startswith(f"Rebuilt: alias {alias} moved from {first} to {target}")]) == 1, seen
    assert st["activeCollection"] == target
    with space.client() as client:
        info = client.get_collection(alias)
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
    with space.client() as client:
        assert not client.collection_exists(first)
        assert client.count(alias, exact=True).count == 149

    # Deleted: the sync role goes with the index; the collection and the bookkeeping rows stay.
    role = syncrole.role_name(ns, name)
    cp.kubectl("delete", "vectorindex", name, "-n", ns, "--wait=true", "--timeout=60s")
    with pg.primary.connect() as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
        kept = conn.execute("SELECT count(*) FROM mlinfra.vector_watermarks WHERE name = %s", (name,)).fetchone()
        assert kept == (1,)
    with space.client() as client:
        assert client.count(alias, exact=True).count == 149


@pytest.mark.qdrant
def test_vectorindex_bad_input_is_reported(
    qdrant_server: qdrant_target.Server | None,
    space: qdrant_target.Space,
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
    stores(cp, ns, pg, space)
    # A source column that does not exist: Stalled, InvalidSpec, naming the column.
    cp.apply([index(ns, "missing-col", space.name("missing-col"), table)])
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
                    "storeRef": {"name": STORE},
                    "collection": space.name("clientside"),
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
    bad = index(ns, "zero", space.name("zero"), table)
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


# --- the QDRANT_URL target itself: what it builds from the environment ---------------------------------------

KEY = "k3y-never-shown"


@pytest.mark.parametrize(
    ("env", "endpoint", "tls", "password"),
    [
        ({"QDRANT_URL": "http://127.0.0.1:6333"}, "127.0.0.1:6333", False, ""),
        ({"QDRANT_URL": "https://qdrant.example.com", "QDRANT_API_KEY": KEY}, "qdrant.example.com:6333", True, KEY),
        ({"QDRANT_URL": "http://[::1]:7000/", "QDRANT_API_KEY": ""}, "[::1]:7000", False, ""),
    ],
)
def test_a_qdrant_url_makes_an_external_store(env: dict[str, str], endpoint: str, tls: bool, password: str) -> None:
    server = qdrant_target.server_from_env(env)
    assert server is not None and KEY not in repr(server)
    secret, ds = qdrant_target.store_objects("ns", server)
    datastore_api.DataStore.model_validate(ds)  # what the operator itself accepts
    external = ds["spec"]["external"]
    assert (ds["spec"]["engine"], external["endpoint"], external.get("tls")) == (
        "qdrant",
        endpoint,
        {"enabled": True} if tls else None,
    )
    assert external["credentialsSecretRef"] == {"name": secret["metadata"]["name"]}
    # Without QDRANT_API_KEY: empty values, which the operator passes on as "no API key".
    assert secret["stringData"] == {"username": "", "password": password}


def test_no_qdrant_url_is_the_managed_store() -> None:
    assert qdrant_target.server_from_env({"QDRANT_API_KEY": KEY}) is None
    [ds] = qdrant_target.store_objects("ns", None)
    assert datastore_api.DataStore.model_validate(ds).spec.managed is not None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("grpc://127.0.0.1:6334", "http:// or https://"),
        (f"http://admin:{KEY}@127.0.0.1:6333", "must not carry credentials"),
        (f"http://127.0.0.1:6333/qdrant?api-key={KEY}", "no path, query or fragment"),
        ("http://127.0.0.1:99999", "a port that is not a number from 1 to 65535"),
        ("http://:6333", "names no host"),
    ],
)
def test_a_qdrant_url_the_store_cannot_take_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(qdrant_target.TargetError) as refused:
        qdrant_target.server_from_env({"QDRANT_URL": url})
    assert says in str(refused.value) and KEY not in str(refused.value)


def test_the_external_store_a_url_makes_is_published_by_the_operator(
    control_plane: ControlPlane, operator: OperatorProcess, namespace: str
) -> None:
    """The manifests of the QDRANT_URL path through the API server and the operator, here where no server
    answers: each store's connection Secret says what the URL and the key said, and no status carries the key."""
    cp, ns = control_plane, namespace
    urls = {"plain": {"QDRANT_URL": "http://127.0.0.1:1"}, "keyed": {"QDRANT_URL": "https://127.0.0.1:1"}}
    urls["keyed"]["QDRANT_API_KEY"] = KEY
    for name, env in urls.items():
        cp.apply(qdrant_target.store_objects(ns, qdrant_target.server_from_env(env), name=name))

    def unreachable(name: str) -> bool:
        return condition(store(cp, ns, name), "Reachable").get("status") == "False"

    wait_for("both stores observed, unreachable", lambda: all(unreachable(name) for name in urls))
    for name, tls, password in (("plain", False, ""), ("keyed", True, KEY)):
        data = get_json(cp, "secret", f"{name}-conn", "-n", ns)["data"]
        info = connection.ConnectionInfo.from_secret_base64(data)
        assert (info.engine, info.endpoint, info.tls, info.password) == ("qdrant", "127.0.0.1:1", tls, password)
        assert info.uri == f"{'https' if tls else 'http'}://127.0.0.1:1"
        ds = store(cp, ns, name)
        assert ds["status"]["mode"] == "external" and condition(ds, "Ready")["status"] == "False"
    assert KEY not in json.dumps(get_json(cp, "datastores", "-n", ns))
    assert KEY not in json.dumps(get_json(cp, "events", "-n", ns))
