"""DataStore reconcile and delete against the in-memory Kubernetes API: credentials created once, children
owned, the connection published, an idle reconcile writes nothing, user Secrets missing, deletionPolicy."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra import problems
from mlinfra.api import datastore as api
from mlinfra.context import Context, Obj
from mlinfra.problems import ProblemError
from mlinfra.stores import reconcile, status

NS = "ml"
UID = "11111111-2222-3333-4444-555555555555"


def managed_body(engine: str = "redis", replicas: int = 2, policy: str = "Retain", name: str = "db") -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": NS, "uid": UID, "generation": 1},
        "spec": {
            "engine": engine,
            "deletionPolicy": policy,
            "managed": {"replicas": replicas, "storage": {"size": "1Gi"}},
        },
    }


def external_body(endpoint: str = "redis.data.svc:6380", tls: dict[str, Any] | None = None) -> dict[str, Any]:
    ext: dict[str, Any] = {
        "endpoint": endpoint,
        "credentialsSecretRef": {"name": "user-creds", "usernameKey": "user", "passwordKey": "pass"},
    }
    if tls is not None:
        ext["tls"] = tls
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": "ext", "namespace": NS, "uid": UID, "generation": 1},
        "spec": {"engine": "redis", "external": ext},
    }


def obj(body: dict[str, Any]) -> Obj[api.DataStore]:
    return Obj(body, problems.parse(api.DataStore, body))


def secret(
    name: str, data: dict[str, str], owner_uid: str | None = None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels or {}}
    if owner_uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "DataStore",
                "name": "db",
                "uid": owner_uid,
                "controller": True,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def decoded(kube: FakeKube, name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in kube.get("Secret", NS, name)["data"].items()}


def owned(o: dict[str, Any]) -> bool:
    return [r["uid"] for r in o["metadata"].get("ownerReferences") or []] == [UID]


def test_managed_redis_creates_credentials_once_owns_children_and_publishes_the_connection(
    ctx: Context, kube: FakeKube
) -> None:
    reconcile.reconcile(ctx, obj(managed_body("redis")))

    creds = decoded(kube, "db-credentials")
    assert set(creds) == {"password"} and len(creds["password"]) >= 24
    assert [w for w in kube.writes if w[1] == "Secret" and w[3] == "db-credentials"] == [
        ("create", "Secret", NS, "db-credentials")
    ]
    sts = kube.get("StatefulSet", NS, "db")
    assert sts["spec"]["replicas"] == 2
    children = [
        *kube.kinds("StatefulSet"),
        *kube.kinds("Service"),
        *kube.kinds("ConfigMap"),
        *kube.kinds("PodDisruptionBudget"),
        *kube.kinds("Secret"),
    ]
    assert {c["kind"] for c in children} >= {"StatefulSet", "Service", "ConfigMap", "Secret"}
    # Retain (the default): the credentials Secret and the primary record name no owner, or the garbage
    # collector would take them (a store re-created on the kept volumes needs both).
    retained = [c for c in children if c["metadata"]["name"] in ("db-credentials", "db-primary")]
    assert [c["metadata"].get("ownerReferences") for c in retained] == [None, None]
    assert {c["metadata"]["labels"]["mlinfra.io/datastore"] for c in retained} == {"db"}
    assert kube.get("ConfigMap", NS, "db-primary")["data"]["primary"] == "db-0"
    others = [c for c in children if c not in retained]
    assert all(owned(c) for c in others), [c["metadata"]["name"] for c in others if not owned(c)]
    conn = decoded(kube, "db-conn")
    assert conn["host"] == f"db.{NS}.svc" and conn["port"] == "6379"
    assert conn["username"] == "default" and conn["password"] == creds["password"]
    assert conn["tls"] == "false" and conn["uri"] == f"redis://default@db.{NS}.svc:6379/0"
    # Two members: reads that may lag have the replicas' Service.
    assert conn["readOnlyHost"] == f"db-ro.{NS}.svc" and conn["readOnlyUri"] == f"redis://default@db-ro.{NS}.svc:6379/0"
    assert owned(kube.get("Service", NS, "db-ro"))

    # A second reconcile (a resume, the drift timer) writes nothing and keeps the password.
    writes = list(kube.writes)
    reconcile.reconcile(ctx, obj(managed_body("redis")))
    assert kube.writes == writes
    assert decoded(kube, "db-credentials") == creds


def test_scaled_down_to_one_member_the_read_only_service_and_keys_go(ctx: Context, kube: FakeKube) -> None:
    reconcile.reconcile(ctx, obj(managed_body("postgres", replicas=3)))
    assert kube.get_or_none("Service", NS, "db-ro") is not None
    reconcile.reconcile(ctx, obj(managed_body("postgres", replicas=1)))
    assert kube.get_or_none("Service", NS, "db-ro") is None
    # (The keys leave the Secret too: the apply no longer names them. The in-memory API merges applies, so the
    # kwok tier's scaling test checks that against the real API server.)


def test_a_scale_down_that_would_remove_the_primary_is_stalled_until_it_is_switched(
    ctx: Context, kube: FakeKube
) -> None:
    reconcile.reconcile(ctx, obj(managed_body("redis", replicas=3)))
    kube.merge_patch("ConfigMap", NS, "db-primary", {"data": {"primary": "db-2", "epoch": "1"}})
    sts = kube.get("StatefulSet", NS, "db")
    with pytest.raises(ProblemError) as stalled:
        reconcile.reconcile(ctx, obj(managed_body("redis", replicas=2)))
    problem = stalled.value.problem
    assert (problem.reason, problem.stalled, problem.recheck) == ("PrimaryWouldBeRemoved", True, 30.0)
    assert "would remove db-2, the primary" in problem.message and f"mlinfra promote {NS}/db db-0" in problem.message
    assert kube.get("StatefulSet", NS, "db") == sts  # nothing scaled
    # After a switchover to db-0 the same spec goes through.
    kube.merge_patch("ConfigMap", NS, "db-primary", {"data": {"primary": "db-0", "epoch": "2"}})
    reconcile.reconcile(ctx, obj(managed_body("redis", replicas=2)))
    assert kube.get("StatefulSet", NS, "db")["spec"]["replicas"] == 2
    assert kube.get("Service", NS, "db")["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == "db-0"


def test_a_read_only_service_name_held_by_someone_else_is_never_deleted(ctx: Context, kube: FakeKube) -> None:
    users = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db-ro", "namespace": NS}, "spec": {}}
    kube.put(users)
    reconcile.reconcile(ctx, obj(managed_body("postgres", replicas=1)))
    assert kube.get_or_none("Service", NS, "db-ro") is not None


def test_managed_postgres_credentials_carry_the_user_and_the_replication_password(ctx: Context, kube: FakeKube) -> None:
    reconcile.reconcile(ctx, obj(managed_body("postgres")))
    creds = decoded(kube, "db-credentials")
    assert creds["username"] == "postgres"
    assert len(creds["password"]) >= 24 and len(creds["replication-password"]) >= 24
    assert creds["password"] != creds["replication-password"]
    conn = decoded(kube, "db-conn")
    assert (conn["username"], conn["password"], conn["database"]) == ("postgres", creds["password"], "postgres")


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_a_credentials_secret_left_by_a_retained_store_is_adopted_with_its_password(
    ctx: Context, kube: FakeKube, policy: str
) -> None:
    kube.put(
        secret(
            "db-credentials",
            {"username": "admin", "password": "kept-pw", "replication-password": "r"},
            owner_uid="old-uid",
            labels={"app.kubernetes.io/managed-by": "mlinfra-operator", "mlinfra.io/datastore": "db"},
        )
    )
    reconcile.reconcile(ctx, obj(managed_body("postgres", policy=policy)))
    assert decoded(kube, "db-credentials") == {"username": "admin", "password": "kept-pw", "replication-password": "r"}
    held = kube.get("Secret", NS, "db-credentials")["metadata"].get("ownerReferences")
    # Retain: the old store's reference goes and none takes its place; Delete: owned, so collected with it.
    assert held is None if policy == "Retain" else owned(kube.get("Secret", NS, "db-credentials"))
    conn = decoded(kube, "db-conn")
    assert (conn["username"], conn["password"]) == ("admin", "kept-pw")


def test_a_credentials_secret_without_the_password_is_stalled_and_never_overwritten(
    ctx: Context, kube: FakeKube
) -> None:
    kube.put(secret("db-credentials", {"other": "x"}, owner_uid=UID))
    with pytest.raises(ProblemError) as exc:
        reconcile.reconcile(ctx, obj(managed_body("redis")))
    assert exc.value.problem == problems.Problem(
        "SecretNotFound",
        "Secret 'db-credentials' lacks the key(s) password; delete it to have new credentials generated",
        stalled=True,
    )
    assert decoded(kube, "db-credentials") == {"other": "x"}
    assert kube.kinds("StatefulSet") == [] and kube.get_or_none("Secret", NS, "db-conn") is None


def test_external_store_with_its_credentials_secret_missing_waits_for_it(ctx: Context, kube: FakeKube) -> None:
    with pytest.raises(ProblemError) as exc:
        reconcile.reconcile(ctx, obj(external_body()))
    assert exc.value.problem == problems.Problem(
        "SecretNotFound",
        "spec.external.credentialsSecretRef: Secret 'user-creds' not found in namespace 'ml'",
        stalled=False,
    )
    assert kube.writes == []

    kube.put(secret("user-creds", {"user": "app"}))
    with pytest.raises(ProblemError) as exc:
        reconcile.reconcile(ctx, obj(external_body()))
    assert exc.value.problem.message == "spec.external.credentialsSecretRef: Secret 'user-creds' has no key 'pass'"
    assert not exc.value.problem.stalled


def test_external_store_publishes_its_endpoint_credentials_and_ca(ctx: Context, kube: FakeKube) -> None:
    kube.put(secret("user-creds", {"user": "app", "pass": "pw"}))
    tls = {"enabled": True, "caSecretRef": {"name": "ca", "key": "ca.crt"}}
    with pytest.raises(ProblemError) as exc:
        reconcile.reconcile(ctx, obj(external_body(tls=tls)))
    assert exc.value.problem.message == "spec.external.tls.caSecretRef: Secret 'ca' not found in namespace 'ml'"

    kube.put(secret("ca", {"ca.crt": "-----BEGIN CERTIFICATE-----"}))
    reconcile.reconcile(ctx, obj(external_body(tls=tls)))
    conn = decoded(kube, "ext-conn")
    assert (conn["host"], conn["port"], conn["username"], conn["password"]) == ("redis.data.svc", "6380", "app", "pw")
    assert conn["tls"] == "true" and conn["ca.crt"] == "-----BEGIN CERTIFICATE-----"
    assert owned(kube.get("Secret", NS, "ext-conn"))
    assert kube.kinds("StatefulSet") == [] and kube.get_or_none("Secret", NS, "ext-credentials") is None


@pytest.mark.parametrize(
    ("engine", "tls", "published"),
    [
        # Each setting travels into the Secret, so sync Jobs and the SDK verify as the operator does.
        ("postgres", {"enabled": True, "serverName": "db.example.com"}, {"serverName": "db.example.com"}),
        ("redis", {"enabled": True, "insecureSkipVerify": True}, {"insecureSkipVerify": "true"}),
        ("redis", {"enabled": True}, {}),  # verified against the host: no extra keys
        # TLS off: the other settings mean nothing and are not published.
        ("postgres", {"enabled": False, "serverName": "db.example.com", "insecureSkipVerify": True}, None),
    ],
)
def test_external_tls_settings_are_published(
    ctx: Context, kube: FakeKube, engine: str, tls: dict[str, Any], published: dict[str, str] | None
) -> None:
    kube.put(secret("user-creds", {"user": "app", "pass": "pw"}))
    body = external_body(tls=tls)
    body["spec"]["engine"] = engine
    reconcile.reconcile(ctx, obj(body))
    conn = decoded(kube, "ext-conn")
    assert conn["tls"] == ("false" if published is None else "true")
    assert {key: conn[key] for key in ("serverName", "insecureSkipVerify") if key in conn} == (published or {})


def test_an_external_port_out_of_range_is_an_invalid_spec(ctx: Context, kube: FakeKube) -> None:
    kube.put(secret("user-creds", {"user": "app", "pass": "pw"}))
    with pytest.raises(ProblemError) as exc:
        reconcile.reconcile(ctx, obj(external_body(endpoint="redis.data.svc:70000")))
    assert exc.value.problem.reason == "InvalidSpec" and exc.value.problem.stalled
    # The model refuses it as the API server does (the CRD's endpoint pattern only takes ports 1-65535).
    assert "spec.external.endpoint" in exc.value.problem.message
    assert "port from 1 to 65535" in exc.value.problem.message


def test_a_spec_the_model_refuses_reports_engine_and_mode_from_the_raw_body() -> None:
    body = managed_body("neo4j", replicas=3)  # neo4j Community runs a single instance
    with pytest.raises(ProblemError) as exc:
        problems.parse(api.DataStore, body)
    st = status.problem_status(body, exc.value.problem)
    assert st["mode"] == "managed" and st["observedGeneration"] == 1
    by_type = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert by_type == {
        "Ready": ("False", "InvalidSpec"),
        "Reconciling": ("False", "InvalidSpec"),
        "Stalled": ("True", "InvalidSpec"),
        "Reachable": ("Unknown", "InvalidSpec"),
        "Replicating": ("Unknown", "InvalidSpec"),
    }


def pvc(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
    }


def store_labels(name: str, engine: str = "redis") -> dict[str, str]:
    return {"app.kubernetes.io/name": engine, "app.kubernetes.io/instance": name, "mlinfra.io/datastore": name}


def test_delete_with_retain_orphans_the_credentials_and_keeps_the_volumes(ctx: Context, kube: FakeKube) -> None:
    body = managed_body("redis", policy="Retain")
    reconcile.reconcile(ctx, obj(body))
    kube.put(pvc("data-db-0", store_labels("db")))
    reconcile.delete(ctx, obj(body))
    assert kube.get("Secret", NS, "db-credentials")["metadata"].get("ownerReferences") is None
    assert [p["metadata"]["name"] for p in kube.kinds("PersistentVolumeClaim")] == ["data-db-0"]


def test_delete_with_delete_removes_the_store_volumes_only(ctx: Context, kube: FakeKube) -> None:
    body = managed_body("redis", policy="Delete")
    reconcile.reconcile(ctx, obj(body))
    for claim in (
        pvc("data-db-0", store_labels("db")),
        pvc("data-db-1", store_labels("db")),
        pvc("data-other-0", store_labels("other")),
    ):
        kube.put(claim)
    reconcile.delete(ctx, obj(body))
    assert [p["metadata"]["name"] for p in kube.kinds("PersistentVolumeClaim")] == ["data-other-0"]
    assert owned(kube.get("Secret", NS, "db-credentials"))  # garbage-collected with the store


def test_delete_of_an_external_store_touches_nothing(ctx: Context, kube: FakeKube) -> None:
    kube.put(secret("user-creds", {"user": "app", "pass": "pw"}))
    kube.put(pvc("data-ext-0", store_labels("ext")))
    body = external_body()
    reconcile.reconcile(ctx, obj(body))
    writes = list(kube.writes)
    reconcile.delete(ctx, obj(copy.deepcopy(body)))
    assert kube.writes == writes
