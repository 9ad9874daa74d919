"""The local control plane is a real Kubernetes: API server, admission/CEL, controllers, scheduler, kwok."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from typing import Any

import pytest
import yaml

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane


def get(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


def wait(what: str, check: Any, timeout: float = 60) -> None:
    procs.wait_until(what, check, timeout)


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Any:
    name = ("t-" + request.node.name.replace("_", "-").lower()[:40]).rstrip("-")
    control_plane.kubectl("create", "namespace", name)
    wait(
        "default ServiceAccount",
        lambda: control_plane.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
    )
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def test_version_is_the_pinned_release(control_plane: ControlPlane) -> None:
    ctx = ssl.create_default_context(cafile=str(control_plane.ca))
    with urllib.request.urlopen(f"{control_plane.server}/version", context=ctx) as r:  # noqa: S310
        info = json.load(r)
    assert info["gitVersion"] == control_plane.tools.kubernetes_version
    assert info["gitVersion"].startswith("v1.35.")
    out = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == info["gitVersion"]
    assert out["serverVersion"]["gitVersion"] == info["gitVersion"]


def test_fake_nodes_are_ready(control_plane: ControlPlane) -> None:
    nodes = get(control_plane, "nodes")["items"]
    assert len(nodes) == control_plane.nodes
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]


def test_fake_nodes_renew_their_leases(control_plane: ControlPlane) -> None:
    """As kubelets do: without renewals the node controller marks every node (and pod) NotReady once its grace
    period passes, which a long test session or `make demo` outlives."""

    def renewals() -> dict[str, str]:
        leases = get(control_plane, "leases", "-n", "kube-node-lease")["items"]
        return {lease["metadata"]["name"]: lease["spec"].get("renewTime", "") for lease in leases}

    first = renewals()
    assert set(first) == {n["metadata"]["name"] for n in get(control_plane, "nodes")["items"]}
    wait("every lease renewed again", lambda: all(renewals()[name] > first[name] for name in first), 90)


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.mlinfra.io"},
    "spec": {
        "group": "example.mlinfra.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                                "x-kubernetes-validations": [
                                    {"rule": "self.min <= self.max", "message": "min must not exceed max"},
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, lo: int, hi: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "example.mlinfra.io/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"min": lo, "max": hi},
        }
    )


def test_api_server_enforces_cel_rules(control_plane: ControlPlane) -> None:
    control_plane.apply([CRD])
    wait(
        "CRD established",
        lambda: (
            control_plane.kubectl(
                "wait", "--for=condition=Established", "crd/widgets.example.mlinfra.io", "--timeout=5s", check=False
            ).returncode
            == 0
        ),
    )
    ok = control_plane.kubectl("apply", "--server-side", "-f", "-", input=widget("good", 1, 2), check=False)
    assert ok.returncode == 0, ok.stderr
    bad = control_plane.kubectl("apply", "--server-side", "-f", "-", input=widget("bad", 3, 2), check=False)
    assert bad.returncode != 0
    assert "min must not exceed max" in bad.stderr
    assert "bad" not in control_plane.kubectl("get", "widgets", "-o", "name").stdout


def test_statefulset_pods_become_ready_with_bound_volumes(control_plane: ControlPlane, namespace: str) -> None:
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": namespace},
        "spec": {
            "serviceName": "db",
            "replicas": 2,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {
                    "containers": [
                        {
                            "name": "db",
                            "image": "example.invalid/db:1",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ]
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            ],
        },
    }
    control_plane.apply([sts])

    def all_ready() -> bool:
        status = get(control_plane, "statefulset", "db", "-n", namespace)["status"]
        return bool(status.get("readyReplicas") == 2)

    wait("StatefulSet ready", all_ready, 90)
    pods = get(control_plane, "pods", "-n", namespace, "-l", "app=db")["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == ["db-0", "db-1"]
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"].startswith("kwok-node-")
    pvcs = get(control_plane, "pvc", "-n", namespace)["items"]
    assert sorted(p["metadata"]["name"] for p in pvcs) == ["data-db-0", "data-db-1"]
    assert {p["status"]["phase"] for p in pvcs} == {"Bound"}


def test_job_pod_succeeds(control_plane: ControlPlane, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once", "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "run", "image": "example.invalid/job:1", "command": ["true"]}],
                }
            },
        },
    }
    control_plane.apply([job])
    wait(
        "Job complete",
        lambda: get(control_plane, "job", "once", "-n", namespace).get("status", {}).get("succeeded") == 1,
        90,
    )
    pods = get(control_plane, "pods", "-n", namespace, "-l", "job-name=once")["items"]
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]


def test_garbage_collector_deletes_owned_children(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = get(control_plane, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    control_plane.apply([child])
    control_plane.kubectl("delete", "configmap", "owner", "-n", namespace)

    def child_gone() -> bool:
        return control_plane.kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode != 0

    wait("child garbage-collected", child_gone, 60)


def test_kubectl_errors_are_reported(control_plane: ControlPlane) -> None:
    with pytest.raises(subprocess.CalledProcessError) as err:
        control_plane.kubectl("get", "configmap", "does-not-exist", "-n", "default")
    assert "not found" in err.value.stderr


def test_a_namespace_being_deleted_refuses_new_children_with_a_cause_the_client_recognises(
    control_plane: ControlPlane, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the operator meets when it creates a child while the object's namespace is deleted: a 403 whose
    cause the operator's client reads as NamespaceTerminating (handlers stall the object instead of crashing);
    other refusals do not carry it."""
    from mlinfra.k8s import client, objects

    held = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "held", "namespace": namespace, "finalizers": ["mlinfra.io/test-hold"]},
    }
    control_plane.apply([held])
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    client.reset()
    try:
        kube = objects.Kube()
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late", "namespace": namespace}}
        with pytest.raises(objects.ApiError) as other:  # not namespace deletion: a Secret with an invalid name
            kube.create({**secret, "metadata": {"name": "Not_Valid", "namespace": namespace}})
        assert not other.value.namespace_terminating
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
        wait(
            "the namespace Terminating",
            lambda: get(control_plane, "namespace", namespace)["status"].get("phase") == "Terminating",
        )
        with pytest.raises(objects.ApiError) as refused:
            kube.create(secret)
        assert refused.value.status == 403 and refused.value.namespace_terminating, refused.value
        assert "being terminated" in str(refused.value)
    finally:
        client.reset()
        control_plane.kubectl(
            "patch", "configmap", "held", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
        )
