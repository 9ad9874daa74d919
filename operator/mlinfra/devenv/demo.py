"""``mlinfra demo --kwok``: the whole product on kwok's fake nodes, from nothing to Ready (``make demo`` runs
on a real node: :mod:`mlinfra.devenv.realdemo`).

Starts the local platform (control plane + real Redis, PostgreSQL, Neo4j), installs the Helm chart, runs
the operator as the chart's ServiceAccount, serves managed stores with real local servers, applies
``manifests/samples/`` and waits until the stores are Ready. External samples point at cluster DNS names
of a real platform; here their endpoints are rewritten to the local servers and their credentials
Secrets are created from the local servers' generated passwords. Ctrl-C stops everything.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mlinfra.api.featureview import FeatureView
from mlinfra.client import FeatureStore
from mlinfra.client.connections import from_directory
from mlinfra.client.lineage import Lineage
from mlinfra.client.registry import Registry
from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs, tools, vector_sample
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.platform import Platform
from mlinfra.engines import connection, endpoints
from mlinfra.engines import qdrant as qdrant_engine
from mlinfra.engines.connection import ConnectionInfo
from mlinfra.engines.endpoints import EndpointMap
from mlinfra.features.jobs import SYNC_REQUESTED_ANNOTATION, ondemand_job_name
from mlinfra.vectors import jobs as vector_jobs

log = logging.getLogger(__name__)
NAMESPACE = "mlinfra-demo"


def samples(pattern: str = "datastore-*.yaml") -> list[dict[str, Any]]:
    folder = tools.repo_root() / "manifests" / "samples"
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob(pattern)):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def localize(doc: dict[str, Any], platform: Platform) -> tuple[dict[str, Any], tuple[str, str, str] | None]:
    """An external sample pointed at the local server of its engine, and the Secret it needs."""
    ext = doc["spec"].get("external")
    if not ext:
        return doc, None
    engine = doc["spec"]["engine"]
    if engine == "redis" and platform.redis:
        port, user, password = platform.redis.primary.port, "default", platform.redis.password
    elif engine == "postgres" and platform.postgres:
        port, user, password = platform.postgres.primary.port, "postgres", platform.postgres.password
        ext["database"] = "postgres"
    elif engine == "neo4j" and platform.neo4j:
        port, user, password = platform.neo4j.port, "neo4j", platform.neo4j.password
    else:
        raise ValueError(f"no local {engine} server for the external sample {doc['metadata']['name']}")
    ext["endpoint"] = f"127.0.0.1:{port}"
    return doc, (ext["credentialsSecretRef"]["name"], user, password)


def table(cp_kubectl: Callable[..., Any]) -> str:
    return str(cp_kubectl("get", "mlinfra", "-n", NAMESPACE, "-o", "wide").stdout)


def lag_report(items: list[dict[str, Any]]) -> str:
    lines = [f"{'DATASTORE':<18} {'MEMBER':<22} {'ROLE':<10} {'READY':<6} {'LAG BYTES':>10} {'LAG S':>6}"]
    for ds in items:
        for m in (ds.get("status") or {}).get("members") or []:
            lines.append(
                f"{ds['metadata']['name']:<18} {m['name']:<22} {m.get('role', ''):<10} "
                f"{m.get('ready')!s:<6} {m.get('lagBytes', '-')!s:>10} {m.get('lagSeconds', '-')!s:>6}"
            )
    return "\n".join(lines)


def run(state_dir: Path, once: bool = False, timeout: float = 300) -> int:
    """Run the demo; ``once`` stops after printing the result (exit code 1 when a store is not Ready)."""
    platform = Platform(workdir=state_dir / "run")
    stack = procs.ProcStack()
    backer: Backer | None = None
    keep = False
    try:
        with procs.stopping_on_signals():
            print(
                "== starting the local platform: etcd, kube-apiserver, controller-manager, scheduler, kwok; "
                "Redis + replica, PostgreSQL + standby, Neo4j",
                flush=True,
            )
            platform.start()
            cp = platform.control_plane
            assert cp is not None
            print(platform.summary(), flush=True)
            print("== installing the Helm chart (CRDs, RBAC, Deployment on a fake node)", flush=True)
            account = op_mod.install_chart(cp)
            kubeconfig = op_mod.service_account_kubeconfig(
                cp, op_mod.NAMESPACE, account, platform.workdir / "operator.kubeconfig"
            )
            backer = Backer(cp, platform.workdir / "backed", platform.workdir / "endpoint-map.json").start()
            print(f"== running the operator on this host as serviceaccount {op_mod.NAMESPACE}/{account}", flush=True)
            operator = op_mod.start_operator(stack, kubeconfig, platform.workdir, backer.map_path)
            cp.kubectl("create", "namespace", NAMESPACE)
            procs.wait_until(
                "the demo namespace's ServiceAccount",
                lambda: cp.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False).returncode == 0,
                60,
            )
            print(f"== applying manifests/samples/ into namespace {NAMESPACE}", flush=True)
            docs = []
            for doc in samples():
                doc["metadata"]["namespace"] = NAMESPACE
                doc, secret = localize(doc, platform)
                if secret:
                    cp.kubectl(
                        "create",
                        "secret",
                        "generic",
                        secret[0],
                        "-n",
                        NAMESPACE,
                        f"--from-literal=username={secret[1]}",
                        f"--from-literal=password={secret[2]}",
                    )
                docs.append(doc)
            cp.apply(docs, field_manager="mlinfra-demo")
            # The managed Qdrant store is served by qdrant-client local mode (no server binary here).
            ok = _wait_ready(cp.kubectl, [d["metadata"]["name"] for d in docs], timeout)
            if ok:
                views = samples("featureview-*.yaml")
                for doc in views:
                    doc["metadata"]["namespace"] = NAMESPACE
                cp.apply(views, field_manager="mlinfra-demo")
                print("== FeatureView user-activity: apply, insert rows offline, sync now, read online", flush=True)
                ok = _wait_ready(cp.kubectl, [v["metadata"]["name"] for v in views], timeout, "featureviews")
                if ok:
                    print(feature_loop(cp, backer.map_path, tmp=platform.workdir / "sync"), flush=True)
                    registries = samples("modelregistry-*.yaml")
                    for doc in registries:
                        doc["metadata"]["namespace"] = NAMESPACE
                    cp.apply(registries, field_manager="mlinfra-demo")
                    print("== ModelRegistry models: migrations, roles, register a model version, lineage", flush=True)
                    ok = _wait_ready(
                        cp.kubectl, [r["metadata"]["name"] for r in registries], timeout, "modelregistries"
                    )
                    if ok:
                        print(registry_loop(cp, via_endpoint_map(backer.map_path)), flush=True)
                        indexes = samples("vectorindex-*.yaml")
                        for doc in indexes:
                            doc["metadata"]["namespace"] = NAMESPACE
                            load_vector_source(cp, backer.map_path, doc)
                        cp.apply(indexes, field_manager="mlinfra-demo")
                        print(
                            "== VectorIndex docs: 2,000 documents with 384-d embeddings, sync now, query "
                            "through the alias",
                            flush=True,
                        )
                        ok = _wait_ready(cp.kubectl, [i["metadata"]["name"] for i in indexes], timeout, "vectorindexes")
                        if ok:
                            print(vector_loop(cp, backer.map_path, platform.workdir / "vector-sync"), flush=True)
            items = json.loads(cp.kubectl("get", "datastores", "-n", NAMESPACE, "-o", "json").stdout)["items"]
            print("\n$ kubectl get mlinfra -n mlinfra-demo -o wide\n" + table(cp.kubectl), flush=True)
            print("observed replication (from the live servers):\n" + lag_report(items), flush=True)
            print(f"\noperator metrics: {operator.metrics_url}", flush=True)
            if once:
                if not ok:
                    keep = True
                    print(f"logs kept in {platform.workdir}", flush=True)
                return 0 if ok else 1
            print(
                f"\nrunning; in another shell:  export KUBECONFIG={cp.kubeconfig}\n"
                f"kubectl: {cp.tools.kubectl}\nCtrl-C stops everything.",
                flush=True,
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\n== stopping", flush=True)
        return 0
    finally:
        if backer is not None:
            backer.stop()
        stack.close()
        platform.stop()
        if not keep:
            platform.remove()


def _wait_ready(kubectl: Callable[..., Any], names: list[str], timeout: float, plural: str = "datastores") -> bool:
    deadline = time.monotonic() + timeout
    last = ""
    ready: list[str] = []
    while time.monotonic() < deadline:
        items = json.loads(kubectl("get", plural, "-n", NAMESPACE, "-o", "json").stdout)["items"]
        ready = sorted(
            i["metadata"]["name"]
            for i in items
            if any(
                c["type"] == "Ready" and c["status"] == "True" for c in (i.get("status") or {}).get("conditions", [])
            )
        )
        line = f"   {plural} Ready: {len([n for n in ready if n in names])}/{len(names)}  {', '.join(ready)}"
        if line != last:
            print(line, flush=True)
            last = line
        if set(names) <= set(ready):
            return True
        time.sleep(2)
    print(f"   not Ready after {timeout:.0f}s: {sorted(set(names) - set(ready))}", flush=True)
    return False


def feature_loop(cp: ControlPlane, endpoint_map: Path, tmp: Path, view: str = "user-activity") -> str:
    """The FeatureView loop a user runs: rows offline, "sync now", then an online read with the SDK."""
    fv = json.loads(cp.kubectl("get", "featureview", view, "-n", NAMESPACE, "-o", "json").stdout)
    spec = FeatureView.model_validate(fv).spec
    conns = {}
    for role, ref in (("offline", spec.offline.store_ref.name), ("online", spec.online.store_ref.name)):
        secret = json.loads(cp.kubectl("get", "secret", f"{ref}-conn", "-n", NAMESPACE, "-o", "json").stdout)
        directory = tmp / role
        directory.mkdir(parents=True, exist_ok=True)
        for key, value in secret["data"].items():
            (directory / key).write_bytes(base64.b64decode(value))
        conns[role] = (directory, ref)
    emap = EndpointMap(endpoint_map)
    offline = emap.resolve(from_directory(conns["offline"][0]), NAMESPACE, conns["offline"][1])
    online = emap.resolve(from_directory(conns["online"][0]), NAMESPACE, conns["online"][1])
    now = datetime.datetime.now(datetime.UTC)
    insert_offline_rows(offline, fv["status"]["offlineTable"], now)
    requested = now.isoformat()
    cp.kubectl(
        "annotate", "featureview", view, "-n", NAMESPACE, f"{SYNC_REQUESTED_ANNOTATION}={requested}", "--overwrite"
    )
    job = ondemand_job_name(view, requested)
    procs.wait_until(
        "the sync Job", lambda: cp.kubectl("get", "job", job, "-n", NAMESPACE, check=False).returncode == 0, 60
    )
    # kwok's Pods run nothing: run the Job's container command here, with its environment and mounts.
    container = json.loads(cp.kubectl("get", "job", job, "-n", NAMESPACE, "-o", "json").stdout)["spec"]["template"][
        "spec"
    ]["containers"][0]
    env = {
        **os.environ,
        **{e["name"]: e["value"] for e in container["env"]},
        "MLINFRA_OFFLINE_CONN_DIR": str(conns["offline"][0]),
        "MLINFRA_ONLINE_CONN_DIR": str(conns["online"][0]),
        "MLINFRA_ENDPOINT_MAP": str(endpoint_map),
    }
    env.pop("KUBECONFIG", None)
    run = subprocess.run(
        [sys.executable, "-m", "mlinfra", *container["args"]], env=env, capture_output=True, text=True, timeout=300
    )
    if run.returncode != 0:
        return f"sync failed: {run.stderr[-2000:]}"
    read = read_online(fv, online, offline)
    procs.wait_until(
        "the run in status",
        lambda: (
            json.loads(cp.kubectl("get", "featureview", view, "-n", NAMESPACE, "-o", "json").stdout)["status"]
            .get("lastMaterialization", {})
            .get("outcome")
            == "Succeeded"
        ),
        60,
    )
    st = json.loads(cp.kubectl("get", "featureview", view, "-n", NAMESPACE, "-o", "json").stdout)["status"]
    lines = [f"$ mlinfra sync featureview {NAMESPACE}/{view}   (the Job's command)", run.stdout.strip(), *read]
    lines.append(f"status.lastMaterialization: {st['lastMaterialization']}")
    lines.append(f"status.freshness: {st.get('freshness')}")
    return "\n".join(lines)


def insert_offline_rows(offline: ConnectionInfo, table: str, now: datetime.datetime) -> None:
    """The sample view's activity rows, written the way the application owning the offline table would."""
    rows = [(1, 42, 0.12, "DE", 30), (1, 45, 0.13, "DE", 5), (2, 7, 0.05, "FR", 10), (3, 19, 0.31, "JP", 2)]
    with connection.postgres(offline) as conn:
        for uid, clicks, ctr, country, age in rows:
            conn.execute(
                f"INSERT INTO {table} "  # noqa: S608 - the operator's table name
                "(user_id, clicks_7d, ctr_7d, country, event_timestamp) VALUES (%s, %s, %s, %s, %s)",
                (uid, clicks, ctr, country, now - datetime.timedelta(minutes=age)),
            )


def read_online(fv: dict[str, Any], online: ConnectionInfo, offline: ConnectionInfo) -> list[str]:
    """The SDK's online read of user_id 1..4 (4 has no rows), as the lines the demo prints."""
    keys = [1, 2, 3, 4]
    store = FeatureStore([FeatureView.model_validate(fv)], online=online, offline=offline, namespace=NAMESPACE)
    try:
        values = store.get_online_features(fv["metadata"]["name"], keys)
    finally:
        store.close()
    return [
        "online read (mlinfra.client.FeatureStore.get_online_features, user_id 1..4):",
        *(f"   user_id={uid}: {value}" for uid, value in zip(keys, values, strict=True)),
    ]


def run_job_command(cp: ControlPlane, job: str, endpoint_map: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """kwok's Pods run nothing: run a Job's container here, with its args, its environment and its Secret
    volumes written out as directories (the endpoint map reaches the locally served stores)."""
    pod = json.loads(cp.kubectl("get", "job", job, "-n", NAMESPACE, "-o", "json").stdout)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, endpoints.ENV: str(endpoint_map)}
    for volume in pod.get("volumes", []):
        if "secret" not in volume:
            continue
        mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume["name"])
        directory = tmp / volume["name"]
        directory.mkdir(parents=True, exist_ok=True)
        for key, value in _secret_data(cp, volume["secret"]["secretName"]).items():
            (directory / key).write_text(value)
        for var in (e["name"] for e in container["env"] if e["value"] == mount):
            env[var] = str(directory)
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "mlinfra", *container["args"]], env=env, capture_output=True, text=True, timeout=600
    )


def load_vector_source(cp: ControlPlane, endpoint_map: Path, index: dict[str, Any]) -> None:
    """The sample's source table in its PostgreSQL store, as the application owning it would create it."""
    ref = index["spec"]["source"]["storeRef"]["name"]
    pg = EndpointMap(endpoint_map).resolve(
        ConnectionInfo.from_secret_data(_secret_data(cp, f"{ref}-conn")), NAMESPACE, ref
    )
    with connection.postgres(pg) as conn:
        if conn.execute("SELECT to_regclass('public.doc_embeddings')").fetchone() == (None,):
            vector_sample.create_table(conn)
            vector_sample.load(conn)


def vector_loop(cp: ControlPlane, endpoint_map: Path, tmp: Path, name: str = "docs") -> str:
    """The VectorIndex loop: a source table of 384-d embeddings, "sync now", a similarity query via the alias."""
    doc = json.loads(cp.kubectl("get", "vectorindex", name, "-n", NAMESPACE, "-o", "json").stdout)
    spec = doc["spec"]
    emap = EndpointMap(endpoint_map)
    src_ref, q_ref = spec["source"]["storeRef"]["name"], spec["storeRef"]["name"]
    pg = emap.resolve(ConnectionInfo.from_secret_data(_secret_data(cp, f"{src_ref}-conn")), NAMESPACE, src_ref)
    qdrant = emap.resolve(ConnectionInfo.from_secret_data(_secret_data(cp, f"{q_ref}-conn")), NAMESPACE, q_ref)
    procs.wait_until(
        "rowsBehind in status",
        lambda: (
            json.loads(cp.kubectl("get", "vectorindex", name, "-n", NAMESPACE, "-o", "json").stdout)["status"]
            .get("sync", {})
            .get("rowsBehind", 0)
            > 0
        ),
        60,
    )
    before = json.loads(cp.kubectl("get", "vectorindex", name, "-n", NAMESPACE, "-o", "json").stdout)["status"]
    requested = datetime.datetime.now(datetime.UTC).isoformat()
    cp.kubectl(
        "annotate", "vectorindex", name, "-n", NAMESPACE, f"{SYNC_REQUESTED_ANNOTATION}={requested}", "--overwrite"
    )
    job = vector_jobs.ondemand_job_name(name, requested)
    procs.wait_until(
        "the sync Job", lambda: cp.kubectl("get", "job", job, "-n", NAMESPACE, check=False).returncode == 0, 60
    )
    run = run_job_command(cp, job, endpoint_map, tmp)
    if run.returncode != 0:
        return f"sync failed: {run.stdout[-1000:]} {run.stderr[-2000:]}"

    def caught_up() -> bool:
        st = json.loads(cp.kubectl("get", "vectorindex", name, "-n", NAMESPACE, "-o", "json").stdout)["status"]
        return bool(st.get("sync", {}).get("rowsBehind") == 0 and st.get("points"))

    procs.wait_until("the index caught up in status", caught_up, 90)
    st = json.loads(cp.kubectl("get", "vectorindex", name, "-n", NAMESPACE, "-o", "json").stdout)["status"]
    query_text = "hnsw quantization"
    query = vector_sample.embed_query(query_text)
    with qdrant_engine.open_client(qdrant) as client:
        hits = client.query_points(spec["collection"], query=query, limit=3, with_payload=True).points
    with connection.postgres(pg) as conn:
        exact = vector_sample.brute_force_top_k(conn, "doc_embeddings", query, 3)
    lines = [
        f"status before the sync: rowsBehind={before['sync'].get('rowsBehind')} points={before.get('points')}",
        f"$ mlinfra sync vectorindex {NAMESPACE}/{name}   (the Job's command)",
        run.stdout.strip(),
        f"status: activeCollection={st['activeCollection']} points={st['points']} sync={st['sync']}",
        f"query {query_text!r} through the alias {spec['collection']!r} (top 3):",
    ]
    lines += [f"   id={h.id} score={h.score:.3f} {h.payload}" for h in hits]
    same = [h.id for h in hits] == [i for i, _ in exact]
    lines.append(f"brute force over the source rows gives the same ids: {same}")
    return "\n".join(lines)


def _secret_data(cp: ControlPlane, name: str) -> dict[str, str]:
    secret = json.loads(cp.kubectl("get", "secret", name, "-n", NAMESPACE, "-o", "json").stdout)
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def via_endpoint_map(endpoint_map: Path) -> Callable[[ConnectionInfo, str], ConnectionInfo]:
    """How this host reaches a store of the kwok platform: the endpoint map the backer writes."""
    emap = EndpointMap(endpoint_map)
    return lambda conn, store: emap.resolve(conn, NAMESPACE, store)


def registry_loop(
    cp: ControlPlane, reach: Callable[[ConnectionInfo, str], ConnectionInfo], name: str = "models"
) -> str:
    """Register a model version trained on a dataset with the user-activity features, then ask the graph.
    ``reach(conn, store)``: how this host reaches the DataStore ``store`` whose Secret gave ``conn``."""
    mr = json.loads(cp.kubectl("get", "modelregistry", name, "-n", NAMESPACE, "-o", "json").stdout)
    meta_ref = mr["spec"]["metadataStoreRef"]["name"]
    graph_ref = mr["spec"]["lineageStoreRef"]["name"]
    writer = reach(ConnectionInfo.from_secret_data(_secret_data(cp, mr["status"]["writerSecret"])), meta_ref)
    graph = reach(ConnectionInfo.from_secret_data(_secret_data(cp, f"{graph_ref}-conn")), graph_ref)
    with Registry(writer) as reg:
        reg.register_model("churn", "Predicts churn from user activity", exist_ok=True)
        version = reg.create_version("churn", stage="staging", aliases=("candidate",))
        reg.log_params(version, {"max_depth": 6, "learning_rate": 0.1})
        reg.log_metrics(version, {"auc": 0.87})
        dataset = reg.register_dataset("sessions-2026-11", "s3://ml/sessions/2026-11/", exist_ok=True)
        reg.link_dataset(version, dataset, "TRAINED_ON")
        reg.link_feature_view(version, NAMESPACE, "user-activity")
        reg.record_deployment(version, "staging")

    def synced() -> bool:
        st = json.loads(cp.kubectl("get", "modelregistry", name, "-n", NAMESPACE, "-o", "json").stdout)["status"]
        return bool(st.get("lineage", {}).get("pendingEvents") == 0 and st["lineage"].get("nodes"))

    procs.wait_until("the lineage graph", synced, 120)
    with Lineage(graph, registry=f"{NAMESPACE}/{name}") as lineage:
        up = lineage.upstream("churn", version.version)
        down = lineage.downstream_of_feature_view(NAMESPACE, "user-activity")
    st = json.loads(cp.kubectl("get", "modelregistry", name, "-n", NAMESPACE, "-o", "json").stdout)["status"]
    return "\n".join(
        [
            f"registered churn v{version.version} (trained on sessions-2026-11, uses user-activity), "
            "deployed to staging",
            f"status: schemaVersion={st['schemaVersion']} counts={st.get('counts')} lineage={st.get('lineage')}",
            f"upstream of churn v{version.version}: datasets={sorted(d.name for d in up.datasets)} "
            f"featureViews={sorted(f'{f.namespace}/{f.name}' for f in up.feature_views)}",
            f"downstream of feature view user-activity: models={sorted(down.models)} "
            f"deployments={sorted(d.environment for d in down.deployments)}",
        ]
    )
