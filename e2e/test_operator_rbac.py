"""The chart's RBAC is sufficient (the e2e suite runs the operator with it) and minimal (checked here)."""

from __future__ import annotations

import pytest

from mlinfra.devenv import operator as op_mod
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
]
DENIED = [
    ("create", "deployments.apps"),
    ("list", "nodes"),
    ("delete", "customresourcedefinitions"),
    ("create", "datastores.mlinfra.io"),
    ("delete", "datastores.mlinfra.io"),
    ("create", "clusterrolebindings"),
    ("create", "pods/exec"),
    ("create", "persistentvolumeclaims"),
    ("update", "namespaces"),
    ("create", "serviceaccounts/token"),
    # Secrets only by name: no listing or watching every Secret of the cluster, no deleting them.
    ("list", "secrets"),
    ("watch", "secrets"),
    ("delete", "secrets"),
    ("update", "secrets"),
]


def can_i(cp: ControlPlane, account: str, verb: str, resource: str) -> bool:
    out = cp.kubectl(
        "auth", "can-i", verb, resource, "-A", f"--as=system:serviceaccount:{op_mod.NAMESPACE}:{account}", check=False
    )
    return out.stdout.strip() == "yes"


@pytest.mark.parametrize(("verb", "resource"), ALLOWED)
def test_operator_may(control_plane: ControlPlane, operator_account: str, verb: str, resource: str) -> None:
    assert can_i(control_plane, operator_account, verb, resource)


@pytest.mark.parametrize(("verb", "resource"), DENIED)
def test_operator_may_not(control_plane: ControlPlane, operator_account: str, verb: str, resource: str) -> None:
    assert not can_i(control_plane, operator_account, verb, resource)
