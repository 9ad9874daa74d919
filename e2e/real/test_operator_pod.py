"""The operator as the chart's Deployment, in a Pod on the real node: restricted, scraped through its
Service, and resuming every object after its Pod is deleted without re-creating anything."""

from __future__ import annotations

import json

from real_support import datastore, get, members_ok, ready

from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realnode import RealNode

SELECTOR = "app.kubernetes.io/name=mlinfra-operator"


def operator_pod(cp: ControlPlane) -> dict[str, object]:
    pods = json.loads(cp.kubectl("get", "pods", "-n", op_mod.NAMESPACE, "-l", SELECTOR, "-o", "json").stdout)
    running = [
        p for p in pods["items"] if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    assert len(running) == 1, [p["metadata"]["name"] for p in pods["items"]]
    return dict(running[0])


def test_operator_runs_restricted_and_its_metrics_are_scraped_through_the_service(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    pod = operator_pod(real_cp)
    spec, name = pod["spec"], pod["metadata"]["name"]  # type: ignore[index]
    assert spec["nodeName"] == real_node.name  # type: ignore[index]
    assert spec["containers"][0]["image"] == real_node.image("operator")  # type: ignore[index]
    # Restricted Pod Security, really applied by the runtime: uid 10001, read-only root filesystem.
    probe = (
        "import os, tempfile; print(os.getuid()); "
        "print(os.access('/opt/venv', os.W_OK)); tempfile.NamedTemporaryFile(dir='/tmp')"
    )
    out = real_cp.kubectl("exec", "-n", op_mod.NAMESPACE, name, "--", "python", "-c", probe).stdout.split()
    assert out == ["10001", "False"]

    services = json.loads(real_cp.kubectl("get", "svc", "-n", op_mod.NAMESPACE, "-o", "json").stdout)["items"]
    metrics = next(s for s in services if s["metadata"]["name"].endswith("-metrics"))
    port = metrics["spec"]["ports"][0]["port"]
    url = f"http://{metrics['metadata']['name']}.{op_mod.NAMESPACE}.svc:{port}/metrics"
    real_cp.kubectl(
        "run",
        "scraper",
        "-n",
        real_ns,
        f"--image={real_node.image('python')}",
        "--image-pull-policy=Never",
        "--restart=Never",
        "--command",
        "--",
        "sleep",
        "3600",
    )
    real_cp.kubectl("wait", "-n", real_ns, "--for=condition=Ready", "--timeout=120s", "pod/scraper")
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    body = real_cp.kubectl("exec", "-n", real_ns, "scraper", "--", "python3", "-c", fetch, url).stdout
    assert "controller_runtime_reconcile_total" in body
    # Liveness through the kubelet: the container has never been restarted by its probe.
    status = pod["status"]["containerStatuses"][0]  # type: ignore[index]
    assert status["ready"] and status["restartCount"] == 0


def children(cp: ControlPlane, ns: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind in ("statefulset", "service", "secret", "configmap", "poddisruptionbudget"):
        for item in json.loads(cp.kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"]:
            if any(o.get("kind") == "DataStore" for o in item["metadata"].get("ownerReferences", [])):
                out[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["uid"]
    return out


def test_a_new_operator_pod_resumes_without_recreating_children(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    ns = real_ns
    real_cp.apply([datastore(ns, "kv", "redis", real_node.image("redis"), 1)], field_manager="test")
    procs.wait_until("DataStore kv Ready", lambda: ready(real_cp, ns, "kv"), 240)
    before = children(real_cp, ns)
    assert {"statefulset/kv", "secret/kv-conn", "service/kv", "service/kv-hl"} <= set(before)
    sts_generation = get(real_cp, ns, "statefulset", "kv")["metadata"]["generation"]

    old = operator_pod(real_cp)["metadata"]["name"]  # type: ignore[index]
    real_cp.kubectl("delete", "pod", "-n", op_mod.NAMESPACE, old, "--wait=true", timeout=120)
    procs.wait_until("a new operator pod", lambda: operator_pod(real_cp)["metadata"]["name"] != old, 120)  # type: ignore[index]
    new = operator_pod(real_cp)["metadata"]["name"]  # type: ignore[index]
    real_cp.kubectl("wait", "-n", op_mod.NAMESPACE, "--for=condition=Ready", "--timeout=120s", f"pod/{new}")
    # The new operator went through the object (Kopf's resume) and keeps observing it...
    procs.wait_until(
        "the new operator resumed kv",
        lambda: "reconcile_datastore" in real_cp.kubectl("logs", "-n", op_mod.NAMESPACE, new).stdout,
        120,
    )
    procs.wait_until("kv still Ready", lambda: ready(real_cp, ns, "kv") and members_ok(real_cp, ns, "kv", 1), 60)
    # ...and re-created nothing.
    assert children(real_cp, ns) == before
    assert get(real_cp, ns, "statefulset", "kv")["metadata"]["generation"] == sts_generation


def test_scaling_a_managed_store_one_three_one(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    ns = real_ns
    real_cp.apply([datastore(ns, "scaled", "redis", real_node.image("redis"), 1)], field_manager="test")
    procs.wait_until("1 member", lambda: ready(real_cp, ns, "scaled") and members_ok(real_cp, ns, "scaled", 1), 240)
    real_cp.kubectl(
        "patch", "datastore", "scaled", "-n", ns, "--type=merge", "-p", '{"spec": {"managed": {"replicas": 3}}}'
    )
    procs.wait_until(
        "3 members streaming", lambda: ready(real_cp, ns, "scaled") and members_ok(real_cp, ns, "scaled", 3), 300
    )
    pods = json.loads(real_cp.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == ["scaled-0", "scaled-1", "scaled-2"]
    real_cp.kubectl(
        "patch", "datastore", "scaled", "-n", ns, "--type=merge", "-p", '{"spec": {"managed": {"replicas": 1}}}'
    )
    procs.wait_until(
        "back to 1 member",
        lambda: (
            ready(real_cp, ns, "scaled")
            and members_ok(real_cp, ns, "scaled", 1)
            and get(real_cp, ns, "datastore", "scaled")["status"]["replication"]["desiredReplicas"] == 1
        ),
        240,
    )
    procs.wait_until(
        "replica pods gone",
        lambda: (
            [
                p["metadata"]["name"]
                for p in json.loads(real_cp.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
            ]
            == ["scaled-0"]
        ),
        120,
    )
    # The replicas' volumes are kept (whenScaled: Retain): scaling up again resumes from them.
    pvcs = json.loads(real_cp.kubectl("get", "pvc", "-n", ns, "-o", "json").stdout)["items"]
    assert sorted(p["metadata"]["name"] for p in pvcs) == ["data-scaled-0", "data-scaled-1", "data-scaled-2"]
