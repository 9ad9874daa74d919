"""k8s.ownership against the in-memory API: a child is written only when it is absent, the owner's, or was
ours (the operator's labels, left by an earlier object of the same kind and name); anything else is a
Conflict naming who holds it, and nothing is written."""

from __future__ import annotations

from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra.engines import names
from mlinfra.k8s import objects, ownership, syncjobs

NS = "ml"
OWNER = {
    "apiVersion": "mlinfra.io/v1alpha1",
    "kind": "DataStore",
    "name": "db",
    "uid": "uid-now",
    "controller": True,
    "blockOwnerDeletion": True,
}
OURS = {"app.kubernetes.io/managed-by": "mlinfra-operator", "mlinfra.io/datastore": "db"}


def ref(uid: str, kind: str = "DataStore", name: str = "db", api: str = "mlinfra.io/v1alpha1", **kw: Any) -> dict:
    return {"apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": True, **kw}


def service(
    name: str = "db", refs: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None, port: int = 6379
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels or {}}
    if refs is not None:
        meta["ownerReferences"] = refs
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"ports": [{"port": port}]}}


def desired(name: str = "db", port: int = 6379) -> dict[str, Any]:
    return service(name, [OWNER], OURS, port)


def test_the_operators_label_is_the_one_its_children_carry() -> None:
    job = syncjobs.SyncJob("mlinfra.io/featureview", "x", NS, (), "SPEC", {}, (), "c")
    assert ownership.MANAGED_BY == names.MANAGED_BY == syncjobs.labels(job)[ownership.MANAGED_BY_LABEL]
    assert syncjobs.labels(job)[ownership.owner_label("FeatureView")] == "x"


def test_an_absent_child_is_applied_and_the_owners_own_child_is_corrected(kube: FakeKube) -> None:
    ownership.apply_owned(kube, desired())
    assert kube.writes == [("apply", "Service", NS, "db")]
    ownership.apply_owned(kube, desired(port=7000))  # drift (or a change) in our own child: force applies it
    assert kube.get("Service", NS, "db")["spec"]["ports"] == [{"port": 7000}]
    assert [r["uid"] for r in kube.get("Service", NS, "db")["metadata"]["ownerReferences"]] == ["uid-now"]


@pytest.mark.parametrize(
    ("existing", "holder"),
    [
        (service(), "was created by someone else (it has no controller)"),
        # Our labels are not enough when another object controls it ...
        (service(refs=[ref("uid-x", kind="Deployment", name="web", api="apps/v1")], labels=OURS), "Deployment web"),
        # ... nor another DataStore's child (DataStore `a-hl` wanting the headless Service of DataStore `a`) ...
        (service(refs=[ref("uid-a", name="a")], labels=OURS), "DataStore a"),
        # ... nor a same-named owner of another API group.
        (service(refs=[ref("uid-old", api="other.example/v1")], labels=OURS), "DataStore db"),
        # A previous DataStore's child, but not labelled as ours: someone else's by now.
        (service(refs=[ref("uid-old")]), "DataStore db"),
        # Labelled by the operator for another DataStore.
        (service(labels={**OURS, "mlinfra.io/datastore": "other"}), "someone else"),
        (service(labels={"mlinfra.io/datastore": "db"}), "someone else"),  # not managed by the operator
    ],
)
def test_someone_elses_object_is_a_conflict_and_left_unchanged(
    kube: FakeKube, existing: dict[str, Any], holder: str
) -> None:
    before = kube.put(existing)
    with pytest.raises(ownership.Conflict) as exc:
        ownership.apply_owned(kube, desired(port=7000))
    assert holder in str(exc.value)
    assert (exc.value.kind, exc.value.name) == ("Service", "db")
    assert kube.get("Service", NS, "db") == before
    assert kube.writes == []


def test_the_conflict_message_names_the_object_its_holder_and_the_fix(kube: FakeKube) -> None:
    kube.put(service("db", refs=[ref("uid-a", name="a")], labels=OURS))
    with pytest.raises(ownership.Conflict) as exc:
        ownership.apply_owned(kube, desired())
    assert str(exc.value) == (
        "Service db already exists and is controlled by DataStore a; DataStore db needs that name and left it "
        "unchanged: give this DataStore another name, or delete or rename Service db"
    )


@pytest.mark.parametrize(
    "refs",
    [
        None,  # orphaned (kubectl delete --cascade=orphan, or a Retain deletion)
        [ref("uid-old")],  # the previous DataStore db, its children not yet garbage-collected
        [ref("uid-old", api="mlinfra.io/v1beta1")],  # ... served at another version of the same group
    ],
)
def test_a_child_left_by_an_earlier_object_of_the_same_name_is_adopted(
    kube: FakeKube, refs: list[dict[str, Any]] | None
) -> None:
    kube.put(service(refs=refs, labels=OURS))
    ownership.apply_owned(kube, desired(port=7000))
    stored = kube.get("Service", NS, "db")
    assert [r["uid"] for r in stored["metadata"]["ownerReferences"]] == ["uid-now"]
    assert stored["spec"]["ports"] == [{"port": 7000}]


def test_adoption_keeps_references_that_are_not_the_previous_owners(kube: FakeKube) -> None:
    # (The server-side apply that follows keeps them too: ownerReferences merge by uid. FakeKube's apply
    # replaces lists, so the adoption patch is what is looked at here.)
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keep", "uid": "uid-cm"}  # not a controller
    existing = kube.put(service(refs=[other, ref("uid-old")], labels=OURS))
    adopted = ownership.adopt(kube, existing, OWNER)
    assert [r["uid"] for r in adopted["metadata"]["ownerReferences"]] == ["uid-cm", "uid-now"]


def test_apply_all_writes_nothing_when_one_child_conflicts(kube: FakeKube) -> None:
    kube.put(service("db-hl"))
    with pytest.raises(ownership.Conflict) as exc:
        ownership.apply_all_owned(kube, [desired("db"), desired("db-hl"), desired("db-x")])
    assert exc.value.name == "db-hl"
    assert kube.writes == []
    assert [s["metadata"]["name"] for s in ownership.apply_all_owned(kube, [desired("db"), desired("db-x")])] == [
        "db",
        "db-x",
    ]


def test_a_child_without_a_controller_reference_is_a_programming_error(kube: FakeKube) -> None:
    with pytest.raises(ValueError, match="without a controller owner"):
        ownership.apply_owned(kube, service("db", refs=[], labels=OURS))


def secret(refs: list[dict[str, Any]] | None, labels: dict[str, str], password: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "db-credentials", "namespace": NS, "labels": labels}
    if refs is not None:
        meta["ownerReferences"] = refs
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"password": password}}


def test_create_owned_creates_once_returns_the_owners_and_adopts_what_was_ours(kube: FakeKube) -> None:
    made = ownership.create_owned(kube, secret([OWNER], OURS, "first"))
    again = ownership.create_owned(kube, secret([OWNER], OURS, "second"))
    assert again["data"] == made["data"]
    assert kube.writes == [("create", "Secret", NS, "db-credentials")]

    retained = FakeKube()
    retained.put(secret(None, OURS, "kept"))
    found = ownership.create_owned(retained, secret([OWNER], OURS, "new"))
    assert found["data"] == retained.get("Secret", NS, "db-credentials")["data"]  # the kept password
    assert [r["uid"] for r in found["metadata"]["ownerReferences"]] == ["uid-now"]


def test_create_owned_refuses_a_users_object_of_that_name(kube: FakeKube) -> None:
    before = kube.put(secret(None, {}, "the-users"))
    with pytest.raises(ownership.Conflict, match="Secret db-credentials already exists and was created by someone"):
        ownership.create_owned(kube, secret([OWNER], OURS, "new"))
    assert kube.get("Secret", NS, "db-credentials") == before
    assert kube.writes == []


@pytest.mark.parametrize(
    "refs",
    [None, [OWNER], [ref("uid-before")], [ref("uid-before"), ref("uid-app", "Application", "x", "argoproj.io/v1")]],
)
def test_create_retained_makes_and_keeps_a_child_that_names_no_owner(
    kube: FakeKube, refs: list[dict[str, Any]] | None
) -> None:
    kube.put(secret(refs, OURS, "kept"))
    found = ownership.create_retained(kube, secret(None, OURS, "new"), OWNER)
    assert found["data"] == kube.get("Secret", NS, "db-credentials")["data"]  # the kept password
    # References to this owner or an earlier one of its name go (the garbage collector would follow them);
    # another's (non-controller here) stays.
    left = [r["uid"] for r in found["metadata"].get("ownerReferences") or []]
    assert left == ([] if not refs or len(refs) == 1 else ["uid-app"])

    fresh = FakeKube()
    made = ownership.create_retained(fresh, secret(None, OURS, "first"), OWNER)
    assert not made["metadata"].get("ownerReferences") and fresh.writes == [("create", "Secret", NS, "db-credentials")]


def test_create_retained_refuses_a_users_object_and_a_child_written_with_an_owner(kube: FakeKube) -> None:
    before = kube.put(secret(None, {}, "the-users"))
    with pytest.raises(ownership.Conflict, match="was created by someone"):
        ownership.create_retained(kube, secret(None, OURS, "new"), OWNER)
    assert kube.get("Secret", NS, "db-credentials") == before and kube.writes == []
    with pytest.raises(ValueError, match="created without owner references"):
        ownership.create_retained(FakeKube(), secret([OWNER], OURS, "new"), OWNER)


def test_delete_owned_deletes_only_the_owners_child(kube: FakeKube) -> None:
    assert not ownership.delete_owned(kube, OWNER, "Service", NS, "db")  # absent
    kube.put(service("db"))  # the user's
    kube.put(service("db-prev", refs=[ref("uid-old")], labels=OURS))  # a previous object's: the GC's to delete
    assert not ownership.delete_owned(kube, OWNER, "Service", NS, "db")
    assert not ownership.delete_owned(kube, OWNER, "Service", NS, "db-prev")
    kube.put(service("db-mine", refs=[OWNER], labels=OURS))
    assert ownership.delete_owned(kube, OWNER, "Service", NS, "db-mine")
    assert kube.writes == [("delete", "Service", NS, "db-mine")]
    assert {s["metadata"]["name"] for s in kube.kinds("Service")} == {"db", "db-prev"}


class RecordingKube(objects.Kube):
    """The real client's request building, with the API server replaced by a recorder."""

    def __init__(self, status: int | None = None) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.status = status

    def _call(self, method: str, path: str, body: Any = None, query: Any = None, content_type: str = "") -> Any:
        self.calls.append((method, path, body))
        if self.status == 409:
            raise objects.ApiError(409, "Precondition failed: UID in precondition: a, UID in object meta: b")
        return {}


def test_kube_delete_sends_the_uid_precondition_and_reads_a_failed_one_as_not_deleted() -> None:
    kube = RecordingKube()
    assert kube.delete("CronJob", NS, "x-materialize", uid="a")
    assert kube.calls[0][2] == {"propagationPolicy": "Background", "preconditions": {"uid": "a"}}
    assert not RecordingKube(status=409).delete("CronJob", NS, "x-materialize", uid="a")
    with pytest.raises(objects.ApiError):
        RecordingKube(status=409).delete("CronJob", NS, "x-materialize")  # without a precondition: an error
