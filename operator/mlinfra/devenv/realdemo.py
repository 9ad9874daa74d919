"""``mlinfra demo`` (``make demo``): the samples on a real node, every store, Job and the operator a real Pod.

The control plane with one real node (``mlinfra.devenv.realnode``), the chart installed with the operator
image built from our Dockerfile and the locally built engine images as its ``engineImages``; the managed
samples run as StatefulSets on the node, the external samples point at real servers on this host (reached
from the Pods through forwarders on the host end of the node's link, the way a cluster reaches a database
outside it). The FeatureView loop's sync runs as the Job's Pod; the ModelRegistry loop registers a model
and reads the lineage graph. This process plays the user's application: it reaches a managed store at its
primary Pod's address (the host routes the node's pod range), as ``kubectl port-forward`` would.

Qdrant is left out: no Qdrant server binary can be obtained here, and qdrant-client's local mode (what the
kwok demo serves the Qdrant sample with) cannot run inside a Pod of the operator. The kwok demo (``mlinfra
demo --kwok``, :mod:`mlinfra.devenv.demo`) still runs the VectorIndex loop.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlinfra.api.featureview import FeatureView
from mlinfra.devenv import demo as kwok_demo
from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.platform import Platform
from mlinfra.devenv.realnode import RealNode
from mlinfra.engines.connection import ConnectionInfo
from mlinfra.features.jobs import SYNC_REQUESTED_ANNOTATION, ondemand_job_name

NAMESPACE = kwok_demo.NAMESPACE
ENGINE_IMAGES = {"redis": "redis", "postgres": "postgres", "neo4j": "neo4j"}


def _get(cp: ControlPlane, kind: str, name: str, ns: str = NAMESPACE) -> dict[str, Any]:
    return dict(json.loads(cp.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout))


def reach(cp: ControlPlane, namespace: str = NAMESPACE) -> Callable[[ConnectionInfo, str], ConnectionInfo]:
    """From this host: a managed store at its pod 0's IP (the primary), an external one as it is."""

    def resolve(conn: ConnectionInfo, store: str) -> ConnectionInfo:
        if _get(cp, "datastore", store, namespace)["spec"].get("managed") is None:
            return conn
        ip = _get(cp, "pod", f"{store}-0", namespace)["status"]["podIP"]
        return replace(conn, host=ip)

    return resolve


def feature_loop(cp: ControlPlane, view: str = "user-activity") -> str:
    """Rows offline, "sync now" (the Job's Pod runs the sync), an online read with the SDK."""
    fv = _get(cp, "featureview", view)
    spec = FeatureView.model_validate(fv).spec
    to = reach(cp)
    offline_ref, online_ref = spec.offline.store_ref.name, spec.online.store_ref.name
    offline = to(ConnectionInfo.from_secret_data(kwok_demo._secret_data(cp, f"{offline_ref}-conn")), offline_ref)
    online = to(ConnectionInfo.from_secret_data(kwok_demo._secret_data(cp, f"{online_ref}-conn")), online_ref)
    now = datetime.datetime.now(datetime.UTC)
    kwok_demo.insert_offline_rows(offline, fv["status"]["offlineTable"], now)
    requested = now.isoformat()
    cp.kubectl(
        "annotate", "featureview", view, "-n", NAMESPACE, f"{SYNC_REQUESTED_ANNOTATION}={requested}", "--overwrite"
    )
    job = ondemand_job_name(view, requested)
    procs.wait_until(
        "the sync Job", lambda: cp.kubectl("get", "job", job, "-n", NAMESPACE, check=False).returncode == 0, 60
    )

    def finished() -> bool:
        conds = _get(cp, "job", job).get("status", {}).get("conditions", [])
        return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conds)

    procs.wait_until("the sync Job's Pod", finished, 300)
    pods = json.loads(cp.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"job-name={job}", "-o", "json").stdout)
    pod = pods["items"][-1]
    log = cp.kubectl("logs", "-n", NAMESPACE, pod["metadata"]["name"]).stdout.strip()
    read = kwok_demo.read_online(fv, online, offline)
    procs.wait_until(
        "the run in status",
        lambda: _get(cp, "featureview", view)["status"].get("lastMaterialization", {}).get("outcome") == "Succeeded",
        60,
    )
    st = _get(cp, "featureview", view)["status"]
    lines = [
        f"Job {job}: Pod {pod['metadata']['name']} on node {pod['spec']['nodeName']}, "
        f"{pod['status']['phase']}; its log:",
        log,
        *read,
    ]
    lines.append(f"status.lastMaterialization: {st['lastMaterialization']}")
    return "\n".join(lines)


def run(state_dir: Path, once: bool = False, timeout: float = 300) -> int:
    """Run the demo on a real node; ``once`` stops after printing (exit code 1 when a sample is not Ready)."""
    if os.geteuid() != 0:
        print(
            "the real node needs root (network namespaces, containerd, mounts): run `sudo make demo`, or "
            "`mlinfra demo --kwok` for the demo on fake nodes",
            file=sys.stderr,
            flush=True,
        )
        return 2
    stack = procs.ProcStack()
    cp = ControlPlane(state_dir / "kube", nodes=0)
    node = RealNode(cp, state_dir / "node")
    host = Platform(workdir=state_dir / "host", kube=False)
    keep = False
    try:
        with procs.stopping_on_signals():
            print("== starting the control plane (etcd, kube-apiserver, controller-manager, scheduler)", flush=True)
            cp.start()
            print(
                "== starting a real node: kubelet, kube-proxy, containerd + runc + CNI, CoreDNS; building and "
                "importing the images (the first run builds them: a few minutes)",
                flush=True,
            )
            node.start()
            assert node.layout is not None
            print(
                f"   node {node.name} Ready: network namespace {node.layout.netns}, Pods in {node.layout.pod_cidr}",
                flush=True,
            )
            print(
                "== starting the servers of the external samples on this host: Redis + replica, "
                "PostgreSQL + standby, Neo4j",
                flush=True,
            )
            host.start()
            forwarded = _forward_host_servers(stack, host, node.layout.host_ip, state_dir / "logs")
            print("== installing the Helm chart: the operator as a Pod, from our Dockerfile's image", flush=True)
            repo, tag = node.image("operator").rsplit(":", 1)
            op_mod.install_chart(
                cp,
                extra=(
                    "--set",
                    f"image.repository={repo}",
                    "--set",
                    f"image.tag={tag}",
                    "--set",
                    "image.pullPolicy=Never",
                    *[
                        arg
                        for engine, image in ENGINE_IMAGES.items()
                        for arg in ("--set", f"engineImages.{engine}={node.image(image)}")
                    ],
                    "--set-json",
                    'extraEnv=[{"name": "MLINFRA_OBSERVE_INTERVAL", "value": "5"}]',
                ),
            )
            cp.kubectl("create", "namespace", NAMESPACE)
            procs.wait_until(
                "the demo namespace's ServiceAccount",
                lambda: cp.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False).returncode == 0,
                60,
            )
            print(
                f"== applying manifests/samples/ into namespace {NAMESPACE} (Qdrant left out: no server binary)",
                flush=True,
            )
            docs = []
            for doc in kwok_demo.samples():
                if doc["spec"]["engine"] == "qdrant":
                    continue
                doc["metadata"]["namespace"] = NAMESPACE
                ext = doc["spec"].get("external")
                if ext:
                    endpoint, user, password, database = forwarded[doc["spec"]["engine"]]
                    ext["endpoint"] = endpoint
                    if database:
                        ext["database"] = database
                    cp.kubectl(
                        "create",
                        "secret",
                        "generic",
                        ext["credentialsSecretRef"]["name"],
                        "-n",
                        NAMESPACE,
                        f"--from-literal=username={user}",
                        f"--from-literal=password={password}",
                    )
                docs.append(doc)
            cp.apply(docs, field_manager="mlinfra-demo")
            ok = kwok_demo._wait_ready(cp.kubectl, [d["metadata"]["name"] for d in docs], timeout)
            if ok:
                views = kwok_demo.samples("featureview-*.yaml")
                for doc in views:
                    doc["metadata"]["namespace"] = NAMESPACE
                cp.apply(views, field_manager="mlinfra-demo")
                print("== FeatureView user-activity: rows offline, sync now (a Job's Pod), read online", flush=True)
                ok = kwok_demo._wait_ready(cp.kubectl, [v["metadata"]["name"] for v in views], timeout, "featureviews")
                if ok:
                    print(feature_loop(cp), flush=True)
                    registries = kwok_demo.samples("modelregistry-*.yaml")
                    for doc in registries:
                        doc["metadata"]["namespace"] = NAMESPACE
                    cp.apply(registries, field_manager="mlinfra-demo")
                    print("== ModelRegistry models: migrations, roles, a model version, lineage in Neo4j", flush=True)
                    ok = kwok_demo._wait_ready(
                        cp.kubectl, [r["metadata"]["name"] for r in registries], timeout, "modelregistries"
                    )
                    if ok:
                        print(kwok_demo.registry_loop(cp, reach(cp)), flush=True)
            items = json.loads(cp.kubectl("get", "datastores", "-n", NAMESPACE, "-o", "json").stdout)["items"]
            print(
                f"\n$ kubectl get pods -n {NAMESPACE} -o wide\n"
                + cp.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide").stdout,
                flush=True,
            )
            print(f"$ kubectl get mlinfra -n {NAMESPACE} -o wide\n" + kwok_demo.table(cp.kubectl), flush=True)
            print(
                "observed replication (measured by the operator's Pod on the store Pods):\n"
                + kwok_demo.lag_report(items),
                flush=True,
            )
            if once:
                if not ok:
                    keep = True
                    print(f"logs kept in {state_dir}", flush=True)
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
        stack.close()
        node.stop()
        host.stop()
        cp.stop()
        if not keep:
            host.remove()


def _forward_host_servers(
    stack: procs.ProcStack, host: Platform, bind: str, logs: Path
) -> dict[str, tuple[str, str, str, str | None]]:
    """Forwarders from the host end of the node's link to the host's servers (bound to 127.0.0.1): the
    external samples' endpoints. engine -> (endpoint, username, password, database)."""
    servers: dict[str, tuple[int, str, str, str | None]] = {}
    if host.redis:
        servers["redis"] = (host.redis.primary.port, "default", host.redis.password, None)
    if host.postgres:
        servers["postgres"] = (host.postgres.primary.port, "postgres", host.postgres.password, "postgres")
    if host.neo4j:
        servers["neo4j"] = (host.neo4j.port, "neo4j", host.neo4j.password, None)
    out = {}
    for engine, (port, user, password, database) in servers.items():
        stack.add(
            procs.Proc(
                f"forward-{engine}",
                ["socat", f"TCP-LISTEN:{port},bind={bind},fork,reuseaddr", f"TCP:127.0.0.1:{port}"],
                logs / f"forward-{engine}.log",
            )
        )
        procs.wait_until(f"the {engine} forwarder", lambda p=port: procs.port_open(p, bind), 30)  # type: ignore[misc]
        out[engine] = (f"{bind}:{port}", user, password, database)
    return out
