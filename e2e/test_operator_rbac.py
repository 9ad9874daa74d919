"""The chart's RBAC is sufficient (the e2e suite runs the operator with it) and minimal (checked here), in
both modes: cluster-wide (the session's control plane) and namespaced (``watchNamespaces``, below)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e_support import condition, get_json, wait_for
from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs, secretscan
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane

ALLOWED = [
    ("watch", "datastores.mlinfra.io"),
    ("patch", "datastores.mlinfra.io/status"),
    ("update", "datastores.mlinfra.io/finalizers"),
    ("patch", "statefulsets.apps"),
    ("create", "secrets"),
    ("get", "secrets"),
    ("patch", "secrets"),
    ("delete", "persistentvolumeclaims"),
    ("list", "customresourcedefinitions"),
    ("create", "cronjobs.batch"),
    ("create", "events"),
    ("create", "deployments.apps"),  # a PostgreSQL store's WAL archiver (stores.walarchiver)
    ("create", "backups.mlinfra.io"),  # the backup schedule's Backups
    ("patch", "pods"),  # the role label of a replicated store's members (stores.roles)
    ("delete", "pods"),  # a failover fences the old primary by deleting its pod (stores.ha)
    ("create", "pods/exec"),  # ... and kills its server in the pod first (rbac.killHungPrimary)
    ("get", "pods/exec"),  # (the exec's websocket opens with a GET)
]
DENIED = [
    ("create", "daemonsets.apps"),
    ("list", "nodes"),
    ("delete", "customresourcedefinitions"),
    ("create", "datastores.mlinfra.io"),
    ("delete", "datastores.mlinfra.io"),
    ("create", "clusterrolebindings"),
    ("create", "persistentvolumeclaims"),
    ("update", "namespaces"),
    ("create", "serviceaccounts/token"),
    # Secrets only by name: no listing or watching every Secret of the cluster, no deleting them.
    ("list", "secrets"),
    ("watch", "secrets"),
    ("delete", "secrets"),
    ("update", "secrets"),
]


def resource_args(resource: str) -> list[str]:
    """``kubectl auth can-i``'s words for ``resource``: a subresource (``pods/exec``) goes in --subresource
    (``pods/exec`` alone means the pod named exec)."""
    kind, _, sub = resource.partition("/")
    return [kind, f"--subresource={sub}"] if sub else [kind]


def can_i(cp: ControlPlane, account: str, verb: str, resource: str) -> bool:
    out = cp.kubectl(
        "auth", "can-i", verb, *resource_args(resource), "-A",
        f"--as=system:serviceaccount:{op_mod.NAMESPACE}:{account}", check=False,
    )  # fmt: skip
    return out.stdout.strip() == "yes"


@pytest.mark.parametrize(("verb", "resource"), ALLOWED)
def test_operator_may(control_plane: ControlPlane, operator_account: str, verb: str, resource: str) -> None:
    assert can_i(control_plane, operator_account, verb, resource)


@pytest.mark.parametrize(("verb", "resource"), DENIED)
def test_operator_may_not(control_plane: ControlPlane, operator_account: str, verb: str, resource: str) -> None:
    assert not can_i(control_plane, operator_account, verb, resource)


# --- namespaced mode: watchNamespaces set --------------------------------------------------------------------
# On a control plane of its own: the chart installed with watchNamespaces=[rbac-a, rbac-b] grants a Role per
# watched namespace and, cluster-wide, only Kopf's observation of namespaces and CRDs. The operator runs as
# that ServiceAccount with the Deployment's own arguments: it serves the watched namespaces without a single
# denied call, and never touches rbac-c.

WATCHED = ("rbac-a", "rbac-b")
UNWATCHED = "rbac-c"
# The namespaced part of ALLOWED: granted by the Roles, so inside a watched namespace only.
NAMESPACED_ALLOWED = [(verb, resource) for verb, resource in ALLOWED if resource != "customresourcedefinitions"]
# Cluster-wide in namespaced mode: Kopf's runtime observation, read-only.
OBSERVATION = [
    ("list", "namespaces"),
    ("watch", "namespaces"),
    ("list", "customresourcedefinitions"),
    ("watch", "customresourcedefinitions"),
]
# Denied cluster-wide in namespaced mode (besides DENIED and every NAMESPACED_ALLOWED with -A).
NOT_CLUSTER_WIDE = [
    ("get", "namespaces"),
    ("get", "customresourcedefinitions"),
    ("list", "datastores.mlinfra.io"),
    ("list", "pods"),
    ("get", "secrets"),
]
# Kopf's words when a call is refused (its fallbacks log "Not enough permissions ..."), and the API's
# ("... is forbidden: User ..."; the client library's "Reason: Forbidden").
DENIAL_WORDS = ("not enough permissions", "forbidden")


@dataclass
class Namespaced:
    cp: ControlPlane
    account: str
    work: Path


@pytest.fixture(scope="module")
def namespaced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespaced]:
    work = tmp_path_factory.mktemp("rbac-namespaced")
    with ControlPlane(work / "kube") as cp:
        # A Role can only be created in an existing namespace: the watched ones exist before the install.
        for ns in (*WATCHED, UNWATCHED):
            cp.kubectl("create", "namespace", ns)
        for ns in (*WATCHED, UNWATCHED):  # the StatefulSets' pods need it
            wait_for(
                f"the default ServiceAccount of {ns}",
                lambda ns=ns: cp.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
            )
        account = op_mod.install_chart(cp, extra=("--set", f"watchNamespaces={{{','.join(WATCHED)}}}"))
        yield Namespaced(cp, account, work)


def can_i_in(cp: ControlPlane, account: str, verb: str, resource: str, namespace: str | None) -> bool:
    """``kubectl auth can-i`` as the operator's ServiceAccount, in ``namespace`` or (None) cluster-wide."""
    where = ["-n", namespace] if namespace else ["-A"]
    out = cp.kubectl(
        "auth", "can-i", verb, *resource_args(resource), *where,
        f"--as=system:serviceaccount:{op_mod.NAMESPACE}:{account}", check=False,
    )  # fmt: skip
    return out.stdout.strip() == "yes"


def test_namespaced_rbac_is_confined_to_the_watched_namespaces(namespaced: Namespaced) -> None:
    cp, account = namespaced.cp, namespaced.account
    wrong: list[str] = []

    def expect(allowed: bool, verb: str, resource: str, namespace: str | None) -> None:
        if can_i_in(cp, account, verb, resource, namespace) != allowed:
            wrong.append(f"{verb} {resource} in {namespace or 'all namespaces'}: expected {allowed}")

    for verb, resource in NAMESPACED_ALLOWED:
        for ns in WATCHED:
            expect(True, verb, resource, ns)
        expect(False, verb, resource, UNWATCHED)
        expect(False, verb, resource, None)
    for verb, resource in DENIED:
        for where in (*WATCHED, UNWATCHED, None):
            expect(False, verb, resource, where)
    for verb, resource in OBSERVATION:
        expect(True, verb, resource, None)
    for verb, resource in NOT_CLUSTER_WIDE:
        expect(False, verb, resource, None)
    # The examples, spelt out.
    expect(False, "list", "secrets", None)
    expect(False, "create", "statefulsets.apps", UNWATCHED)
    assert not wrong, "\n".join(wrong)


def managed_redis(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": "db", "namespace": ns},
        "spec": {"engine": "redis", "managed": {"replicas": 1, "storage": {"size": "1Gi"}}},
    }


def deployment_namespaces(cp: ControlPlane) -> tuple[str, ...]:
    """The ``--namespace`` values of the chart's Deployment: the operator runs with exactly these."""
    deployment = get_json(
        cp, "deployment", "-n", op_mod.NAMESPACE, "-l", f"app.kubernetes.io/instance={op_mod.RELEASE}"
    )
    (item,) = deployment["items"]
    args = item["spec"]["template"]["spec"]["containers"][0]["args"]
    return tuple(args[i + 1] for i, arg in enumerate(args) if arg == "--namespace")


def test_namespaced_operator_serves_only_the_watched_namespaces(namespaced: Namespaced) -> None:
    cp, work = namespaced.cp, namespaced.work
    assert deployment_namespaces(cp) == WATCHED
    kubeconfig = op_mod.service_account_kubeconfig(cp, op_mod.NAMESPACE, namespaced.account, work / "op.kubeconfig")
    backer = Backer(cp, work / "backed", work / "endpoint-map.json").start()
    try:
        with procs.ProcStack() as stack:
            op_mod.start_operator(stack, kubeconfig, work, backer.map_path, namespaces=deployment_namespaces(cp))
            # The unwatched store first: by the time the watched ones are Ready, it was there all along.
            cp.apply([managed_redis(UNWATCHED)])
            cp.apply([managed_redis(ns) for ns in WATCHED])
            for ns in WATCHED:
                wait_for(
                    f"{ns}/db Ready",
                    lambda ns=ns: condition(get_json(cp, "datastore", "db", "-n", ns), "Ready").get("status") == "True",
                    180,
                )
                ds = get_json(cp, "datastore", "db", "-n", ns)
                # What the unwatched store must lack, this one has: the check below can fail.
                assert "mlinfra.io/finalizer" in ds["metadata"].get("finalizers", [])
                assert [key for key in ds["metadata"].get("annotations") or {} if key.startswith("kopf.")]
                assert get_json(cp, "statefulset", "db", "-n", ns)["spec"]["replicas"] == 1
            # Deletion under the Role: the finalizer comes off (deletionPolicy Retain by default).
            cp.kubectl("delete", "datastore", "db", "-n", WATCHED[0], "--wait=true", "--timeout=90s")

            untouched = get_json(cp, "datastore", "db", "-n", UNWATCHED)
            assert not untouched.get("status"), untouched.get("status")
            assert not untouched["metadata"].get("finalizers")
            annotations = untouched["metadata"].get("annotations") or {}
            assert not [key for key in annotations if key.startswith("kopf.")], annotations
            children = get_json(cp, "statefulsets,services,configmaps,secrets", "-n", UNWATCHED)["items"]
            assert not [c for c in children if c["metadata"].get("labels", {}).get("mlinfra.io/datastore")]
            assert cp.kubectl("get", "secret", "db-credentials", "-n", UNWATCHED, check=False).returncode != 0
    finally:
        backer.stop()
        for ns in (*WATCHED, UNWATCHED):
            secretscan.audit_namespace(cp, ns)

    log = (work / "operator.log").read_text(errors="replace")
    assert UNWATCHED not in log
    denials = [line for line in log.splitlines() if any(word in line.lower() for word in DENIAL_WORDS)]
    assert not denials, "the operator was refused calls:\n" + "\n".join(denials[:20])
