"""A DataStore never takes over what the operator did not create: a user's Service or Secret of a child's
name, or another DataStore's child, makes it Stalled (ChildConflict, rechecked) with nothing written; a
credentials Secret left by an earlier DataStore of the same name is adopted with its password. Also the
CronJobs and on-demand Jobs of FeatureViews and VectorIndexes, written through the same check."""

from __future__ import annotations

import base64
import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra import problems
from mlinfra.api import datastore as api
from mlinfra.api import featureview as fv_api
from mlinfra.api import vectorindex as vi_api
from mlinfra.context import Context, Obj, Recorder
from mlinfra.engines import connection, names, render
from mlinfra.features import jobs as fv_jobs
from mlinfra.features import reconcile as fv_reconcile
from mlinfra.features import schema, synccreds
from mlinfra.problems import Problem, ProblemError
from mlinfra.stores import children, credentials, reconcile, status
from mlinfra.vectors import jobs as vi_jobs
from mlinfra.vectors import reconcile as vi_reconcile

NS = "ml"
OURS = {"app.kubernetes.io/managed-by": "mlinfra-operator"}


def body(name: str = "db", uid: str | None = None, engine: str = "redis", **managed: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": NS, "uid": uid or f"uid-{name}", "generation": 1},
        "spec": {
            "engine": engine,
            "managed": {"replicas": 2, "storage": {"size": "1Gi"}, "networkPolicy": True, **managed},
        },
    }


def obj(b: dict[str, Any]) -> Obj[api.DataStore]:
    return Obj(b, problems.parse(api.DataStore, b))


def conflict(call: Any) -> Problem:
    with pytest.raises(ProblemError) as exc:
        call()
    p = exc.value.problem
    assert (p.reason, p.stalled, p.recheck) == ("ChildConflict", True, children.RECHECK)
    return p


def user_object(kind: str, name: str, **extra: Any) -> dict[str, Any]:
    api_version = {"Service": "v1", "Secret": "v1", "ConfigMap": "v1"}.get(kind, "apps/v1")
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": NS}, **extra}


def controller(o: dict[str, Any]) -> str | None:
    return next((r["uid"] for r in o["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


def test_a_users_service_of_the_client_services_name_stalls_the_store_and_nothing_is_written(
    ctx: Context, kube: FakeKube
) -> None:
    before = kube.put(user_object("Service", "db", spec={"ports": [{"port": 80}], "selector": {"app": "web"}}))
    p = conflict(lambda: reconcile.reconcile(ctx, obj(body())))
    assert p.message == (
        "Service db already exists and was created by someone else (it has no controller); DataStore db needs "
        "that name and left it unchanged: give this DataStore another name, or delete or rename Service db"
    )
    assert kube.writes == []  # no credentials, no StatefulSet: a conflicted store starts nothing
    assert kube.get("Service", NS, "db") == before

    # The status says Stalled with the reason; the user deletes their Service and the next look heals it.
    st = status.problem_status(body(), p)
    by_type = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert by_type["Stalled"] == ("True", "ChildConflict") and by_type["Ready"] == ("False", "ChildConflict")
    kube.delete("Service", NS, "db")
    reconcile.reconcile(ctx, obj(body()))
    assert controller(kube.get("Service", NS, "db")) == "uid-db"


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("StatefulSet", "db"),
        ("Service", "db-hl"),
        ("ConfigMap", "db-config"),
        ("PodDisruptionBudget", "db"),
        ("NetworkPolicy", "db"),
        ("Secret", "db-conn"),
    ],
)
def test_every_child_name_is_checked(ctx: Context, kube: FakeKube, kind: str, name: str) -> None:
    api_version = {"PodDisruptionBudget": "policy/v1", "NetworkPolicy": "networking.k8s.io/v1"}.get(kind)
    theirs = user_object(kind, name)
    if api_version:
        theirs["apiVersion"] = api_version
    before = kube.put(theirs)
    p = conflict(lambda: reconcile.reconcile(ctx, obj(body())))
    assert p.message.startswith(f"{kind} {name} already exists and was created by someone else")
    assert kube.writes == [] and kube.get(kind, NS, name) == before


def test_a_users_credentials_secret_is_a_conflict_and_stays_untouched(ctx: Context, kube: FakeKube) -> None:
    users = user_object("Secret", "db-credentials", data={"password": base64.b64encode(b"theirs").decode()})
    before = kube.put(users)
    p = conflict(lambda: reconcile.reconcile(ctx, obj(body())))
    assert p.message.startswith("Secret db-credentials already exists and was created by someone else")
    assert kube.get("Secret", NS, "db-credentials") == before
    assert kube.writes == []


def labelled(name: str, store: str, refs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    s = user_object("Secret", name, data={"password": base64.b64encode(b"kept").decode()})
    s["metadata"]["labels"] = {**OURS, names.DATASTORE_LABEL: store}
    if refs is not None:
        s["metadata"]["ownerReferences"] = refs
    return s


def ds_ref(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "mlinfra.io/v1alpha1", "kind": "DataStore", "name": name, "uid": uid, "controller": True}


@pytest.mark.parametrize(
    "refs",
    [None, [ds_ref("db", "uid-before")]],  # orphaned by a Retain deletion; or the old store still referenced
)
def test_credentials_left_by_an_earlier_store_of_the_name_are_adopted_with_the_password(
    ctx: Context, kube: FakeKube, refs: list[dict[str, Any]] | None
) -> None:
    kube.put(labelled("db-credentials", "db", refs))
    reconcile.reconcile(ctx, obj(body()))
    creds = kube.get("Secret", NS, "db-credentials")
    assert not creds["metadata"].get("ownerReferences")  # Retain: the store's by its labels only
    conn = {k: base64.b64decode(v).decode() for k, v in kube.get("Secret", NS, "db-conn")["data"].items()}
    assert conn["password"] == "kept"


@pytest.mark.parametrize(
    "secret",
    [
        labelled("db-credentials", "other"),  # the operator's, for another DataStore
        labelled("db-credentials", "db", [ds_ref("other", "uid-other")]),  # controlled by another DataStore
    ],
)
def test_credentials_of_someone_else_are_never_adopted(ctx: Context, kube: FakeKube, secret: dict[str, Any]) -> None:
    before = kube.put(secret)
    conflict(lambda: reconcile.reconcile(ctx, obj(body())))
    assert kube.get("Secret", NS, "db-credentials") == before


def test_an_external_stores_connection_secret_never_overwrites_the_users(ctx: Context, kube: FakeKube) -> None:
    # The user keeps the store's credentials in a Secret named like the connection Secret the store publishes.
    creds = user_object("Secret", "ext-conn", data={"user": base64.b64encode(b"app").decode()})
    creds["data"]["pass"] = base64.b64encode(b"pw").decode()
    before = kube.put(creds)
    b = body("ext")
    b["spec"] = {
        "engine": "redis",
        "external": {
            "endpoint": "redis.data.svc:6379",
            "credentialsSecretRef": {"name": "ext-conn", "usernameKey": "user", "passwordKey": "pass"},
        },
    }
    p = conflict(lambda: reconcile.reconcile(ctx, obj(b)))
    assert p.message.startswith("Secret ext-conn already exists and was created by someone else")
    assert kube.get("Secret", NS, "ext-conn") == before


# --- two DataStores claiming one name -----------------------------------------------------------------------


def child_keys(name: str) -> set[tuple[str, str]]:
    """Every (kind, name) a managed DataStore ``name`` writes (engines/names.py spells them)."""
    ds = problems.parse(api.DataStore, body(name))
    rendered = {(c["kind"], c["metadata"]["name"]) for c in render.render_managed(ds)}
    return rendered | {("Secret", names.credentials_secret(name)), ("Secret", names.connection_secret(name))}


STORE_NAMES = ["a", "a-hl", "a-config", "a-conn", "a-credentials", "a-hl-hl", "a-0", "data-a"]


def test_the_only_names_two_datastores_can_share_are_headless_against_client_services() -> None:
    shared = {
        (n1, n2, key) for n1, n2 in itertools.permutations(STORE_NAMES, 2) for key in child_keys(n1) & child_keys(n2)
    }
    assert shared == {
        ("a", "a-hl", ("Service", "a-hl")),
        ("a-hl", "a", ("Service", "a-hl")),
        ("a-hl", "a-hl-hl", ("Service", "a-hl-hl")),
        ("a-hl-hl", "a-hl", ("Service", "a-hl-hl")),
    }


@pytest.mark.parametrize(
    ("order", "stalled"),
    [
        (STORE_NAMES, {"a-hl"}),
        # The first to claim a name keeps it: a-hl-hl first takes a-hl out, and a-hl (which wrote nothing)
        # no longer stands in a's way.
        (["a-hl-hl", "a-hl", "a", *STORE_NAMES[2:5]], {"a-hl"}),
    ],
)
def test_of_two_datastores_claiming_one_child_the_second_is_stalled_and_the_first_keeps_working(
    ctx: Context, kube: FakeKube, order: list[str], stalled: set[str]
) -> None:
    messages = {}
    for name in order:
        try:
            reconcile.reconcile(ctx, obj(body(name)))
        except ProblemError as exc:
            assert exc.problem.reason == "ChildConflict"
            messages[name] = exc.problem.message
    assert set(messages) == stalled
    # a's headless Service a-hl, or a-hl-hl's client Service a-hl-hl (the headless Service a-hl wants).
    taken, holder = ("a-hl", "a") if order[0] == "a" else ("a-hl-hl", "a-hl-hl")
    assert messages["a-hl"].startswith(
        f"Service {taken} already exists and is controlled by DataStore {holder}; DataStore a-hl needs that name"
    )
    assert not any(controller(o) == "uid-a-hl" for k in ("Service", "Secret", "StatefulSet") for o in kube.kinds(k))
    # The others are whole and theirs: reconciling them again writes nothing.
    writes = list(kube.writes)
    for name in set(order) - stalled:
        reconcile.reconcile(ctx, obj(body(name)))
        for kind, child in child_keys(name):
            held = kube.get(kind, NS, child)
            if child == names.credentials_secret(name):  # retained: labelled for its store, no owner reference
                assert controller(held) is None and held["metadata"]["labels"]["mlinfra.io/datastore"] == name
            else:
                assert controller(held) == f"uid-{name}", (kind, child)
    assert kube.writes == writes


def test_delete_policy_delete_removes_only_the_statefulsets_claims(ctx: Context, kube: FakeKube) -> None:
    b = body()
    b["spec"]["deletionPolicy"] = "Delete"
    selector = names.selector_labels(problems.parse(api.DataStore, b))
    for claim in ("data-db-0", "data-db-1", "data-db-backup", "db-scratch", "data-db-01"):
        kube.put(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": NS, "labels": selector},
            }
        )
    reconcile.delete(ctx, obj(b))
    left = [p["metadata"]["name"] for p in kube.kinds("PersistentVolumeClaim")]
    assert sorted(left) == ["data-db-01", "data-db-backup", "db-scratch"]  # carry the labels, are not its claims


# --- the CronJobs and Jobs of FeatureViews and VectorIndexes ------------------------------------------------


def fv_body(materialization: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "entities": [{"name": "user_id", "type": "int64"}],
        "features": [{"name": "clicks", "type": "int64"}],
        "offline": {"storeRef": {"name": "offline"}},
        "online": {"storeRef": {"name": "online"}},
    }
    if materialization:
        spec["materialization"] = {"schedule": "*/5 * * * *"}
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "x", "namespace": NS, "uid": "fv-uid", "generation": 1},
        "spec": spec,
    }


def vi_body() -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": "x", "namespace": NS, "uid": "vi-uid", "generation": 1},
        "spec": {
            "storeRef": {"name": "vectors"},
            "collection": "docs",
            "vectors": {"size": 4, "distance": "Cosine"},
            "source": {
                "storeRef": {"name": "pg"},
                "table": "docs",
                "idColumn": "id",
                "vectorColumn": "embedding",
                "updatedAtColumn": "updated_at",
            },
        },
    }


@pytest.fixture
def tables_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """The FeatureView's database steps replaced: only its CronJob is looked at."""
    info = connection.ConnectionInfo("postgres", "h", 1, "u", "p", "db", False)
    monkeypatch.setattr(fv_reconcile, "stores", lambda ctx, o: fv_reconcile.Stores(offline=info, online=info))

    @contextlib.contextmanager
    def no_connection(*_: Any, **__: Any) -> Iterator[None]:
        yield None

    monkeypatch.setattr(fv_reconcile.connection, "postgres", no_connection)
    monkeypatch.setattr(schema, "ensure_bookkeeping", lambda conn: None)
    if hasattr(fv_reconcile, "claim"):  # the table's claim on the server (class 1 of issue 13)
        monkeypatch.setattr(fv_reconcile.claim, "claim", lambda *_: None)
    monkeypatch.setattr(
        schema, "ensure_offline_table", lambda conn, spec, view: schema.SchemaResult("public.x", False, (), ())
    )
    monkeypatch.setattr(synccreds, "ensure_sync_role", lambda *_: "mlinfra_x_fv")
    monkeypatch.setattr(synccreds, "ensure_online_user", lambda *_: None)


def fv_obj(b: dict[str, Any]) -> Obj[fv_api.FeatureView]:
    return Obj(b, problems.parse(fv_api.FeatureView, b), Recorder())


def test_a_users_cronjob_of_the_featureviews_cronjob_name_is_a_conflict(
    ctx: Context, kube: FakeKube, tables_in_place: None
) -> None:
    before = kube.put(user_object("CronJob", fv_jobs.cronjob_name("x"), apiVersion="batch/v1", spec={}))
    p = conflict(lambda: fv_reconcile.reconcile(ctx, fv_obj(fv_body())))
    assert p.message.startswith("CronJob x-materialize already exists and was created by someone else")
    assert kube.get("CronJob", NS, "x-materialize") == before
    # Nor is it deleted when the view no longer asks for a CronJob: it is not the view's.
    o = fv_obj(fv_body(materialization=False))
    fv_reconcile.reconcile(ctx, o)
    assert kube.get("CronJob", NS, "x-materialize") == before
    assert o.report.events == []  # type: ignore[attr-defined]
    assert [w for w in kube.writes if w[1] == "CronJob"] == []  # (the view's own Secret is written)


def test_the_featureviews_own_cronjob_is_applied_and_removed(
    ctx: Context, kube: FakeKube, tables_in_place: None
) -> None:
    fv_reconcile.reconcile(ctx, fv_obj(fv_body()))
    assert controller(kube.get("CronJob", NS, "x-materialize")) == "fv-uid"
    fv_reconcile.reconcile(ctx, fv_obj(fv_body(materialization=False)))
    assert kube.kinds("CronJob") == []


def test_a_featureview_and_a_vectorindex_named_alike_each_get_their_own_job(ctx: Context, kube: FakeKube) -> None:
    fv_job = fv_reconcile.request_sync(ctx, fv_obj(fv_body()), "now-1")
    vi = vi_body()
    vi_job = vi_reconcile.request_sync(ctx, Obj(vi, problems.parse(vi_api.VectorIndex, vi), Recorder()), "now-1")
    assert fv_job != vi_job
    assert (fv_job, vi_job) == (fv_jobs.ondemand_job_name("x", "now-1"), vi_jobs.ondemand_job_name("x", "now-1"))
    assert {controller(j) for j in kube.kinds("Job")} == {"fv-uid", "vi-uid"}


def test_an_on_demand_job_name_held_by_someone_else_is_a_conflict(ctx: Context, kube: FakeKube) -> None:
    name = fv_jobs.ondemand_job_name("x", "now-1")
    other = user_object("Job", name, apiVersion="batch/v1", spec={})
    other["metadata"]["ownerReferences"] = [
        {"apiVersion": "batch/v1", "kind": "CronJob", "name": "x", "uid": "cj-uid", "controller": True}
    ]
    before = kube.put(other)
    p = conflict(lambda: fv_reconcile.request_sync(ctx, fv_obj(fv_body()), "now-1"))
    assert p.message.startswith(f"Job {name} already exists and is controlled by CronJob x; FeatureView x needs")
    assert kube.get("Job", NS, name) == before


# --- credentials.ensure for the other kinds (the registry's role Secrets) -----------------------------------

MR_OWNER = {
    "apiVersion": "mlinfra.io/v1alpha1",
    "kind": "ModelRegistry",
    "name": "models",
    "uid": "mr-uid",
    "controller": True,
}
MR_LABELS = {**OURS, "mlinfra.io/modelregistry": "models"}


def ensure(kube: FakeKube) -> dict[str, str]:
    return credentials.ensure(kube, NS, "models-writer", {}, ("password",), MR_LABELS, MR_OWNER)


def test_a_registrys_role_secret_is_adopted_only_when_the_operator_made_it(kube: FakeKube) -> None:
    users = user_object("Secret", "models-writer", data={"password": base64.b64encode(b"theirs").decode()})
    before = kube.put(users)
    with pytest.raises(ProblemError) as exc:
        ensure(kube)
    assert exc.value.problem.reason == "ChildConflict"
    assert exc.value.problem.message.startswith("Secret models-writer already exists and was created by someone")
    assert kube.get("Secret", NS, "models-writer") == before

    kube.delete("Secret", NS, "models-writer")
    kube.put({**users, "metadata": {**users["metadata"], "labels": MR_LABELS}})  # left by registry "models"
    assert ensure(kube) == {"password": "theirs"}
    assert controller(kube.get("Secret", NS, "models-writer")) == "mr-uid"


def test_a_retain_deletion_of_a_conflicted_store_leaves_the_users_secret_alone(ctx: Context, kube: FakeKube) -> None:
    kube.put(user_object("Secret", "db-credentials", data={"password": base64.b64encode(b"theirs").decode()}))
    conflict(lambda: reconcile.reconcile(ctx, obj(body())))
    b = body()
    b["spec"]["deletionPolicy"] = "Retain"
    reconcile.delete(ctx, obj(b))
    assert kube.writes == []
