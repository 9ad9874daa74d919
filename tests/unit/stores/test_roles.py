"""The role label of a replicated store's pods, from the members of the last observation."""

from __future__ import annotations

from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra.k8s import objects
from mlinfra.stores import roles

pytestmark = pytest.mark.unit

NS = "ml"
ROLE = "mlinfra.io/role"


def pod(name: str, role: str | None = None) -> dict[str, Any]:
    labels = {"mlinfra.io/datastore": "db"}
    if role is not None:
        labels[ROLE] = role
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels}}


MEMBERS = [
    {"name": "db-0", "role": "primary", "ready": True},
    {"name": "db-1", "role": "replica", "ready": True, "lagBytes": 0},
    {"name": "db-2", "role": "replica", "ready": False},  # still copying the primary, or lost it
    {"name": "db-3", "role": "unknown", "ready": False},  # a pod the primary does not report
    {"name": "10.0.0.9", "role": "replica", "ready": True},  # a WAL archiver: streams, but is no pod of the store
]


def test_only_a_streaming_replica_is_labelled_one() -> None:
    assert roles.wanted(MEMBERS) == {
        "db-0": "primary",
        "db-1": "replica",
        "db-2": None,
        "db-3": None,
        "10.0.0.9": "replica",
    }


def test_only_the_labels_that_differ_are_written_and_only_on_the_stores_pods() -> None:
    now = {"db-0": "primary", "db-1": None, "db-2": "replica", "db-3": None}
    assert roles.changes(now, MEMBERS) == {"db-1": "replica", "db-2": None}
    assert roles.changes({"db-0": "primary", "db-1": "replica"}, MEMBERS[:2]) == {}
    # A former primary that reports itself a replica now (after a failover) changes label.
    assert roles.changes({"db-0": "primary"}, [{"name": "db-0", "role": "replica", "ready": True}]) == {
        "db-0": "replica"
    }


def test_relabel_patches_the_pods_and_removes_a_label_that_no_longer_holds(kube: FakeKube) -> None:
    for p in (pod("db-0"), pod("db-1"), pod("db-2", "replica")):
        kube.put(p)
    now = roles.current(kube.list_("Pod", NS))
    assert now == {"db-0": None, "db-1": None, "db-2": "replica"}
    written = roles.relabel(kube, NS, now, MEMBERS)
    assert written == {"db-0": "primary", "db-1": "replica", "db-2": None}
    labels = {p["metadata"]["name"]: p["metadata"]["labels"] for p in kube.list_("Pod", NS)}
    assert labels["db-0"][ROLE] == "primary" and labels["db-1"][ROLE] == "replica"
    assert ROLE not in labels["db-2"] and labels["db-2"]["mlinfra.io/datastore"] == "db"
    # Nothing to write the second time.
    assert roles.relabel(kube, NS, roles.current(kube.list_("Pod", NS)), MEMBERS) == {}


def test_a_pod_gone_meanwhile_is_skipped(kube: FakeKube) -> None:
    kube.put(pod("db-1"))
    written = roles.relabel(kube, NS, {"db-0": None, "db-1": None}, MEMBERS)
    assert written == {"db-1": "replica"}


class Refusing(FakeKube):
    def merge_patch(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise objects.ApiError(403, 'pods "db-0" is forbidden')


def test_an_operator_that_may_not_patch_pods_leaves_them_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    kube = Refusing()
    roles._refused_once.clear()
    assert roles.relabel(kube, NS, {"db-0": None, "db-1": None}, MEMBERS) == {}
    assert roles.relabel(kube, NS, {"db-0": None}, MEMBERS) == {}
    said = [r for r in caplog.records if "cannot label pods with their role" in r.getMessage()]
    assert len(said) == 1 and "upgrade the chart" in said[0].getMessage()
