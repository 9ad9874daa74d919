"""FeatureView reconcile/observe/problem paths against the in-memory Kubernetes API (no databases: the
PostgreSQL steps are replaced where a test needs to get past them)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
import redis
from fakekube import FakeKube
from kind_support import problem_of
from kind_support import put_store as put_any_store

from mlinfra import metrics, problems
from mlinfra.api import featureview as api
from mlinfra.context import Context, Obj, Recorder
from mlinfra.engines import connection
from mlinfra.features import (
    claim,
    freshness,
    identity,
    indexbuild,
    jobs,
    reconcile,
    schema,
    status,
    synccreds,
    syncrole,
    syncuser,
)
from mlinfra.problems import Problem
from mlinfra.stores import connsecret

pytestmark = pytest.mark.unit

NS, VIEW = "team", "clicks"


def view_body(materialization: bool = True, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "entities": [{"name": "user_id", "type": "int64"}],
        "features": [{"name": "clicks", "type": "int64"}],
        "offline": {"storeRef": {"name": "offline"}},
        "online": {"storeRef": {"name": "online"}},
        "freshness": {"maxLag": "10m"},
    }
    if materialization:
        spec["materialization"] = {"schedule": "*/5 * * * *"}
    body: dict[str, Any] = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": VIEW, "namespace": NS, "uid": "fv-uid", "generation": 3},
        "spec": spec,
    }
    if previous is not None:
        body["status"] = previous
    return body


def obj_of(body: dict[str, Any]) -> Obj[api.FeatureView]:
    return Obj(body, problems.parse(api.FeatureView, body), Recorder())


# --- store references ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [reconcile.reconcile, reconcile.observe])
def test_a_missing_offline_store_is_not_stalled_and_names_the_field(ctx: Context, step: Any) -> None:
    p = problem_of(lambda: step(ctx, obj_of(view_body())))
    assert (p.reason, p.stalled) == (problems.STORE_NOT_FOUND, False)
    assert p.message.startswith("spec.offline.storeRef: DataStore 'offline' not found")


def test_a_missing_online_store_names_the_online_field(ctx: Context, kube: FakeKube) -> None:
    put_store(kube, "offline", "postgres")
    p = problem_of(lambda: reconcile.reconcile(ctx, obj_of(view_body())))
    assert (p.reason, p.stalled) == (problems.STORE_NOT_FOUND, False)
    assert p.message.startswith("spec.online.storeRef: DataStore 'online' not found")


def test_a_store_of_the_wrong_engine_stalls(ctx: Context, kube: FakeKube) -> None:
    put_store(kube, "offline", "redis")
    p = problem_of(lambda: reconcile.reconcile(ctx, obj_of(view_body())))
    assert (p.reason, p.stalled) == (problems.WRONG_ENGINE, True)
    assert "spec.offline.storeRef" in p.message and "postgres store is required" in p.message


def test_a_store_not_ready_is_waited_for(ctx: Context, kube: FakeKube) -> None:
    put_store(kube, "offline", "postgres")
    put_store(kube, "online", "redis", ready=False)
    p = problem_of(lambda: reconcile.observe(ctx, obj_of(view_body())))
    assert (p.reason, p.stalled) == (problems.STORE_NOT_READY, False)
    assert p.message == "spec.online.storeRef: DataStore 'online' is not Ready: connection refused"
    assert kube.writes == []


# --- "sync now" ---------------------------------------------------------------------------------------------


def test_a_sync_request_creates_one_job_once(ctx: Context, kube: FakeKube) -> None:
    obj = obj_of(view_body())
    first = reconcile.request_sync(ctx, obj, "now-1")
    second = reconcile.request_sync(ctx, obj, "now-1")
    assert first == second == jobs.ondemand_job_name(VIEW, "now-1")
    assert kube.writes == [("create", "Job", NS, first)]
    job = kube.get("Job", NS, first)
    assert job["metadata"]["ownerReferences"][0]["uid"] == "fv-uid"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "example.test/mlinfra:1"
    assert reconcile.request_sync(ctx, obj, "now-2") != first


# --- reconcile: what it did, as events ---------------------------------------------------------------------


@contextlib.contextmanager
def no_database() -> Iterator[None]:
    yield None


@pytest.fixture
def stores_ready(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    put_store(kube, "offline", "postgres")
    put_store(kube, "online", "redis")
    monkeypatch.setattr(connection, "postgres", lambda *a, **k: no_database())
    monkeypatch.setattr(schema, "ensure_bookkeeping", lambda conn: None)
    monkeypatch.setattr(claim, "claim", lambda conn, schema_name, table, owner: None)
    monkeypatch.setattr(identity, "recorded", lambda conn, ns, view: None)
    monkeypatch.setattr(identity, "offline_table", lambda conn, spec, view: identity.TableId("public.clicks", 16384))
    monkeypatch.setattr(synccreds, "ensure_sync_role", lambda conn, offline, spec, ns, view, password: ROLE)
    monkeypatch.setattr(synccreds, "ensure_online_user", lambda ctx, obj, both: None)
    monkeypatch.setattr(syncrole, "in_place", lambda conn, spec, ns, view: True)


ROLE = syncrole.role_name(NS, VIEW)
SYNC_SECRET = syncrole.secret_name(VIEW)


def test_reconcile_posts_what_it_did_to_the_table_and_applies_the_cronjob(
    ctx: Context, kube: FakeKube, stores_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = iter(
        [
            schema.SchemaResult("public.clicks", created=True, added=(), retained=()),
            schema.SchemaResult("public.clicks", created=False, added=("ctr", "views"), retained=()),
            schema.SchemaResult("public.clicks", created=False, added=(), retained=()),
        ]
    )
    monkeypatch.setattr(schema, "ensure_offline_table", lambda conn, spec, view: next(results))
    events = []
    for _ in range(3):
        obj = obj_of(view_body())
        reconcile.reconcile(ctx, obj)
        events.append(obj.report.events)  # type: ignore[attr-defined]
    assert events == [
        [("Normal", "TableCreated", "table public.clicks created")],
        [("Normal", "ColumnsAdded", "table public.clicks: added columns ctr, views")],
        [],
    ]
    cron = kube.get("CronJob", NS, jobs.cronjob_name(VIEW))
    assert cron["metadata"]["ownerReferences"][0]["uid"] == "fv-uid"
    assert kube.writes == [  # idempotent afterwards
        ("create", "Secret", NS, SYNC_SECRET),
        ("apply", "Secret", NS, SYNC_SECRET),
        ("apply", "CronJob", NS, jobs.cronjob_name(VIEW)),
    ]


def test_a_table_of_another_view_is_refused_and_rechecked(
    ctx: Context, kube: FakeKube, stores_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims: list[tuple[str, str, str]] = []

    def taken(conn: Any, schema_name: str, table: str, owner: str) -> None:
        claims.append((schema_name, table, owner))
        raise claim.TableInUse(f"{schema_name}.{table}", "other/clicks")

    monkeypatch.setattr(claim, "claim", taken)
    monkeypatch.setattr(schema, "ensure_offline_table", lambda *a: pytest.fail("the table must not be touched"))
    p = problem_of(lambda: reconcile.reconcile(ctx, obj_of(view_body())))
    assert (p.reason, p.stalled, p.recheck) == (reconcile.TABLE_IN_USE, True, reconcile.CONFLICT_RECHECK)
    assert "FeatureView other/clicks" in p.message and "nothing was changed" in p.message
    assert claims == [("public", VIEW, f"{NS}/{VIEW}")] and kube.writes == []


def test_reconcile_refuses_an_immutable_change_and_removes_an_unscheduled_cronjob(
    ctx: Context, kube: FakeKube, stores_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(conn: Any, spec: Any, view: str) -> schema.SchemaResult:
        raise schema.ImmutableFieldChange(["public.clicks: feature column clicks: type bigint in the table, text"])

    monkeypatch.setattr(schema, "ensure_offline_table", refuse)
    p = problem_of(lambda: reconcile.reconcile(ctx, obj_of(view_body())))
    assert (p.reason, p.stalled) == ("ImmutableFieldChange", True)
    assert p.message.startswith("refused, nothing was changed: public.clicks: feature column clicks")

    monkeypatch.setattr(
        schema, "ensure_offline_table", lambda conn, spec, view: schema.SchemaResult("public.clicks", False, (), ())
    )
    reconcile.reconcile(ctx, obj_of(view_body()))
    obj = obj_of(view_body(materialization=False))
    reconcile.reconcile(ctx, obj)
    assert kube.kinds("CronJob") == []
    assert [e[1] for e in obj.report.events] == ["CronJobDeleted"]  # type: ignore[attr-defined]


# --- the sync role and the Secret the Job mounts ---------------------------------------------------------


def test_the_job_gets_the_views_role_in_the_stores_connection_format_never_the_admins(
    ctx: Context, kube: FakeKube, stores_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    roles: list[tuple[str, str, str]] = []

    def ensure_role(conn: Any, offline: Any, spec: Any, ns: str, view: str, password: str) -> str:
        roles.append((ns, view, password))
        return ROLE

    monkeypatch.setattr(synccreds, "ensure_sync_role", ensure_role)
    monkeypatch.setattr(
        schema, "ensure_offline_table", lambda conn, spec, view: schema.SchemaResult("public.clicks", False, (), ())
    )
    reconcile.reconcile(ctx, obj_of(view_body()))
    secret = kube.get("Secret", NS, SYNC_SECRET)
    data = connsecret.values(secret)
    store = connsecret.values(kube.get("Secret", NS, "offline-conn"))
    assert data["username"] == ROLE and data["password"] == roles[0][2] != store["password"]
    assert len(data["password"]) >= 32
    # The store's endpoint, database and TLS as published; the format sync_command reads.
    for key in ("engine", "host", "port", "database", "tls"):
        assert data[key] == store[key], key
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "fv-uid"
    pod = kube.get("CronJob", NS, jobs.cronjob_name(VIEW))["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    mounted = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert mounted == {SYNC_SECRET, "online-conn"} and "offline-conn" not in mounted
    # The password is generated once: a second reconcile sets the same one again.
    reconcile.reconcile(ctx, obj_of(view_body()))
    assert [r[2] for r in roles] == [roles[0][2]] * 2
    # A store moved (its published endpoint changed): the Secret follows at the next reconcile.
    put_any_store(kube, NS, "offline", "postgres", host="moved.example", database="db")
    reconcile.reconcile(ctx, obj_of(view_body()))
    assert connsecret.values(kube.get("Secret", NS, SYNC_SECRET))["host"] == "moved.example"


@pytest.fixture
def online_users(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """The Redis steps of the sync user replaced: what ensure was asked, and no server."""
    made: list[tuple[str, str, str]] = []

    def ensure(client: Any, ns: str, view: str, password: str) -> str:
        made.append((ns, view, password))
        return syncuser.user_name(ns, view)

    monkeypatch.setattr(syncuser, "ensure", ensure)
    return made


def test_the_job_gets_an_online_user_of_its_own_and_the_store_restarted_gets_it_back(
    ctx: Context, kube: FakeKube, online_users: list[tuple[str, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    put_store(kube, "online", "redis")
    obj = obj_of(view_body())
    both = reconcile.Stores(offline=INFO, online=INFO, online_published=connsecret.read_connection(kube, NS, "online"))
    assert synccreds.ensure_online_user(ctx, obj, both) == syncuser.secret_name(VIEW)
    data = connsecret.values(kube.get("Secret", NS, syncuser.secret_name(VIEW)))
    assert data["username"] == syncuser.user_name(NS, VIEW) and data["password"] == online_users[0][2]
    assert data["host"] == "online.example" and data["engine"] == "redis"
    assert synccreds.online_secret_of(ctx, obj) == syncuser.secret_name(VIEW)
    job = kube.get("Job", NS, reconcile.request_sync(ctx, obj, "now-1"))
    assert {v["secret"]["secretName"] for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v} == {
        syncrole.secret_name(VIEW),
        syncuser.secret_name(VIEW),
    }
    # The observation finds the user gone (a restart): made again with the Secret's password, said once.
    monkeypatch.setattr(syncuser, "present", lambda client, ns, view: False)
    synccreds.repair_online_user(ctx, obj, INFO)
    assert online_users[-1] == (NS, VIEW, data["password"]) and len(online_users) == 2
    assert [e[:2] for e in obj.report.events] == [("Warning", synccreds.SYNC_USER_RECREATED)]  # type: ignore[attr-defined]
    monkeypatch.setattr(syncuser, "present", lambda client, ns, view: True)
    synccreds.repair_online_user(ctx, obj, INFO)
    assert len(online_users) == 2


def test_store_credentials_that_may_not_make_users_are_used_as_they_are_and_said(
    ctx: Context, kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(client: Any, ns: str, view: str, password: str) -> str:
        raise syncuser.NotPermitted("the store's credentials may not run ACL SETUSER: NOPERM")

    monkeypatch.setattr(syncuser, "ensure", refused)
    put_store(kube, "online", "redis")
    obj = obj_of(view_body())
    assert synccreds.ensure_online_user(ctx, obj, reconcile.Stores(offline=INFO, online=INFO)) is None
    assert kube.get_or_none("Secret", NS, syncuser.secret_name(VIEW)) is None
    assert [w for w in kube.writes if w[1] == "Secret"] == []  # the user first: no Secret made and removed
    [(kind, reason, message)] = obj.report.events  # type: ignore[attr-defined]
    assert (kind, reason) == ("Warning", synccreds.ONLINE_CREDENTIALS_SHARED)
    assert "NOPERM" in message and "online-conn" in message
    job = kube.get("Job", NS, reconcile.request_sync(ctx, obj, "now-1"))
    assert "online-conn" in {
        v["secret"]["secretName"] for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v
    }
    # A user made while the store's credentials could: its Secret (the operator may not delete Secrets) is no
    # longer the one Jobs mount, and whole again once they can.
    monkeypatch.setattr(syncuser, "ensure", lambda client, ns, view, password: syncuser.user_name(ns, view))
    both = reconcile.Stores(offline=INFO, online=INFO)
    assert synccreds.ensure_online_user(ctx, obj, both) == syncuser.secret_name(VIEW)
    monkeypatch.setattr(syncuser, "ensure", refused)
    assert synccreds.ensure_online_user(ctx, obj, both) is None
    assert synccreds.online_secret_of(ctx, obj) is None
    assert "password" in connsecret.values(kube.get("Secret", NS, syncuser.secret_name(VIEW)))
    assert not [w for w in kube.writes if w[0] == "delete"]
    monkeypatch.setattr(syncuser, "ensure", lambda client, ns, view, password: syncuser.user_name(ns, view))
    synccreds.ensure_online_user(ctx, obj, both)
    assert synccreds.online_secret_of(ctx, obj) == syncuser.secret_name(VIEW)


INFO = connection.ConnectionInfo("redis", "127.0.0.1", 1, "default", "p", "0", False)


def test_the_observation_gives_a_role_that_lost_its_grants_them_again(
    ctx: Context, kube: FakeKube, stores_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        schema, "ensure_offline_table", lambda conn, spec, view: schema.SchemaResult("public.clicks", False, (), ())
    )
    reconcile.reconcile(ctx, obj_of(view_body()))
    password = connsecret.values(kube.get("Secret", NS, SYNC_SECRET))["password"]
    again: list[str] = []
    monkeypatch.setattr(
        synccreds, "ensure_sync_role", lambda conn, offline, spec, ns, view, pw: again.append(pw) or ROLE
    )
    obj = obj_of(view_body())
    synccreds.repair_sync_role(ctx, obj, None, INFO)  # type: ignore[arg-type]
    assert again == [] and obj.report.events == []  # type: ignore[attr-defined]
    monkeypatch.setattr(syncrole, "in_place", lambda conn, spec, ns, view: False)
    synccreds.repair_sync_role(ctx, obj, None, INFO)  # type: ignore[arg-type]
    assert again == [password]
    assert [e[:2] for e in obj.report.events] == [("Warning", synccreds.SYNC_ROLE_REPAIRED)]  # type: ignore[attr-defined]


def test_a_role_of_the_views_name_held_by_someone_else_stalls_and_is_rechecked(
    ctx: Context, kube: FakeKube, stores_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def taken(*_: Any) -> str:
        raise syncrole.RoleConflict(ROLE, None, "FeatureView")

    monkeypatch.setattr(synccreds, "ensure_sync_role", taken)
    monkeypatch.setattr(
        schema, "ensure_offline_table", lambda conn, spec, view: schema.SchemaResult("public.clicks", False, (), ())
    )
    p = problem_of(lambda: reconcile.reconcile(ctx, obj_of(view_body())))
    assert (p.reason, p.stalled, p.recheck) == (reconcile.ROLE_CONFLICT, True, reconcile.CONFLICT_RECHECK)
    assert ROLE in p.message and "made outside the operator" in p.message and "nothing was changed" in p.message
    assert kube.kinds("CronJob") == []


def test_a_table_too_large_for_the_reconcile_is_indexed_in_the_background(
    ctx: Context, kube: FakeKube, stores_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = schema.LARGE_TABLE.format(mib=256)
    pending = schema.SchemaResult("public.clicks", False, (), (), (), ("clicks_event_idx",), why, large=True)
    monkeypatch.setattr(schema, "ensure_offline_table", lambda conn, spec, view: pending)
    started: list[str] = []
    monkeypatch.setattr(indexbuild, "start", lambda info, spec, view: started.append(view) or None)
    obj = obj_of(view_body())
    reconcile.reconcile(ctx, obj)
    assert started == [VIEW]
    [(kind, reason, message)] = obj.report.events  # type: ignore[attr-defined]
    assert (kind, reason) == ("Normal", "IndexesPending")
    assert "in the background" in message and "a build is running" in message


def test_deletion_drops_the_role_and_a_store_out_of_reach_does_not_hold_it(
    ctx: Context, kube: FakeKube, stores_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped: list[tuple[str, str]] = []
    monkeypatch.setattr(syncrole, "drop", lambda conn, ns, view: dropped.append((ns, view)) or True)
    monkeypatch.setattr(syncuser, "delete", lambda client, ns, view: dropped.append(("redis", view)) or True)
    obj = obj_of(view_body())
    reconcile.delete(ctx, obj)
    assert dropped == [(NS, VIEW), ("redis", VIEW)]
    assert obj.report.events == [  # type: ignore[attr-defined]
        ("Normal", "SyncRoleDropped", f"sync role {ROLE} dropped"),
        ("Normal", "SyncUserDeleted", f"online store's sync user {ROLE} deleted"),
    ]
    monkeypatch.setattr(syncuser, "delete", lambda client, ns, view: False)  # not the view's: kept, not said

    def down(*_: Any) -> bool:
        raise connection.PostgresDeadlineExceeded("statement timeout (1 s) at offline.example:1")

    monkeypatch.setattr(syncrole, "drop", down)
    obj = obj_of(view_body())
    reconcile.delete(ctx, obj)
    [(kind, reason, message)] = obj.report.events  # type: ignore[attr-defined]
    assert (kind, reason) == ("Warning", "SyncRoleKept") and ROLE in message and "statement timeout" in message
    kube.delete("DataStore", NS, "offline")
    obj = obj_of(view_body())
    reconcile.delete(ctx, obj)  # the store is gone: said, not raised
    assert [e[1] for e in obj.report.events] == ["SyncRoleKept"]  # type: ignore[attr-defined]
    kube.delete("DataStore", NS, "online")
    obj = obj_of(view_body())
    reconcile.delete(ctx, obj)
    assert [e[1] for e in obj.report.events] == ["SyncRoleKept", "SyncUserKept"]  # type: ignore[attr-defined]


# --- observe: the table as it is, never the object's own status ------------------------------------------


def test_observe_reports_the_table_from_postgres_and_the_spec_not_from_status(
    ctx: Context, stores_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        schema,
        "inspect_offline_table",
        lambda conn, spec, view: schema.TableState(
            "public.clicks", exists=True, missing=(), retained=("old_a", "old_b")
        ),
    )
    monkeypatch.setattr(
        freshness,
        "compute",
        lambda conn, spec, ns, view: freshness.Freshness(
            source_watermark=None, online_watermark=None, lag_seconds=42.0
        ),
    )
    monkeypatch.setattr(freshness, "last_run", lambda conn, ns, view: None)
    stale = {
        "offlineTable": "elsewhere.x",
        "onlineKeyPattern": "wrong",
        "conditions": [
            {
                "type": "SchemaApplied",
                "status": "True",
                "reason": "TableReady",
                "message": "table public.clicks created",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 3,
            }
        ],
    }
    new = reconcile.observe(ctx, obj_of(view_body(previous=stale)))
    assert new["offlineTable"] == "public.clicks"
    assert new["onlineKeyPattern"] == f"fv:{NS}:{VIEW}:*"
    cond = {c["type"]: c for c in new["conditions"]}
    assert (
        cond["SchemaApplied"]["message"]
        == "table public.clicks up to date; kept columns of removed features old_a, old_b (not served)"
    )
    assert cond["SchemaApplied"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # no flip: kept
    assert [cond[t]["status"] for t in ("Ready", "Reconciling", "Stalled")] == ["True", "False", "False"]
    assert metrics.FEATUREVIEW_FRESHNESS_LAG.labels(NS, VIEW)._value.get() == 42.0
    assert metrics.FEATUREVIEW_FRESHNESS_MAX_LAG.labels(NS, VIEW)._value.get() == 600.0
    metrics.forget_featureview(NS, VIEW)


@pytest.mark.parametrize(
    ("state", "reason", "message"),
    [
        (
            schema.TableState("public.clicks", exists=False, missing=(), retained=()),
            "TableMissing",
            "table public.clicks does not exist",
        ),
        (
            schema.TableState("public.clicks", exists=True, missing=("clicks", "created_at"), retained=()),
            "ColumnsMissing",
            "table public.clicks lacks columns clicks, created_at",
        ),
    ],
)
def test_a_table_dropped_or_altered_by_hand_is_for_the_reconcile_to_reapply(
    ctx: Context,
    stores_ready: None,
    monkeypatch: pytest.MonkeyPatch,
    state: schema.TableState,
    reason: str,
    message: str,
) -> None:
    monkeypatch.setattr(schema, "inspect_offline_table", lambda conn, spec, view: state)
    p = problem_of(lambda: reconcile.observe(ctx, obj_of(view_body())))
    assert (p.reason, p.message, p.stalled) == (reason, message, False)
    cond = {c["type"]: c for c in status.problem_status(view_body(), p)["conditions"]}
    assert (cond["SchemaApplied"]["status"], cond["SchemaApplied"]["reason"]) == ("False", reason)
    assert (cond["Reconciling"]["status"], cond["Stalled"]["status"]) == ("True", "False")


# --- problem status -----------------------------------------------------------------------------------------


def triple(st: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(c["type"], c["status"], c["reason"], c["message"]) for c in st["conditions"]]


def test_problem_status_keeps_the_table_shown_and_says_why() -> None:
    previous = {"offlineTable": "public.clicks", "onlineKeyPattern": f"fv:{NS}:{VIEW}:*"}
    waiting = status.problem_status(
        view_body(previous=previous), Problem("StoreNotReady", "spec.online.storeRef: down", stalled=False)
    )
    assert waiting["observedGeneration"] == 3
    assert (waiting["offlineTable"], waiting["onlineKeyPattern"]) == (
        previous["offlineTable"],
        previous["onlineKeyPattern"],
    )
    assert triple(waiting) == [
        ("Ready", "False", "StoreNotReady", "spec.online.storeRef: down"),
        ("Reconciling", "True", "StoreNotReady", "spec.online.storeRef: down"),
        ("Stalled", "False", "Ready", ""),
        ("SchemaApplied", "Unknown", "StoreNotReady", "waiting for the stores"),
    ]

    refused = status.problem_status(view_body(), Problem("ImmutableFieldChange", "refused", stalled=True))
    assert "offlineTable" not in refused
    assert triple(refused) == [
        ("Ready", "False", "ImmutableFieldChange", "refused"),
        ("Reconciling", "False", "ImmutableFieldChange", ""),
        ("Stalled", "True", "ImmutableFieldChange", "refused"),
        ("SchemaApplied", "False", "ImmutableFieldChange", "refused"),
    ]


def test_an_invalid_spec_is_a_stalled_problem_with_schema_not_applied() -> None:
    body = view_body()
    body["spec"]["features"] = "not a list"
    p = problem_of(lambda: problems.parse(api.FeatureView, body))
    st = status.problem_status(body, p)
    assert triple(st)[2][:3] == ("Stalled", "True", "InvalidSpec")
    assert triple(st)[3][:3] == ("SchemaApplied", "False", "InvalidSpec")


# --- the handler: wiring only -------------------------------------------------------------------------------


def test_the_handler_wires_the_package_into_the_one_shape(ctx: Context) -> None:
    from mlinfra.handlers import featureview as handler
    from mlinfra.handlers import kind

    k = handler.KIND
    assert (
        k.model,
        k.owned,
        k.reconcile,
        k.observe,
        k.problem_status,
        k.request_sync,
        k.forget,
        k.retry_delay,
        k.drift_timer,
    ) == (
        api.FeatureView,
        status.OWNED,
        reconcile.reconcile,
        reconcile.observe,
        status.problem_status,
        reconcile.request_sync,
        metrics.forget_featureview,
        15,
        True,
    )
    registry = kopf.OperatorRegistry()
    kind.register(registry, ctx, handler.KIND)
    assert registry._changing.get_all_handlers() and registry._spawning.get_all_handlers()


def test_max_lag_is_the_spec_objective() -> None:
    assert status.max_lag(obj_of(view_body()).model) == datetime.timedelta(minutes=10)


def put_store(kube: FakeKube, name: str, engine: str, ready: bool = True) -> None:
    put_any_store(kube, NS, name, engine, ready, database="db" if engine == "postgres" else "0")


# --- observe: a watermark that does not describe the data --------------------------------------------------

EPOCH = "a" * 32


@pytest.fixture
def synced(stores_ready: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A view materialized before (identity recorded), caught up as far as PostgreSQL can tell."""
    monkeypatch.setattr(
        schema,
        "inspect_offline_table",
        lambda conn, spec, view: schema.TableState("public.clicks", exists=True, missing=(), retained=()),
    )
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    monkeypatch.setattr(
        freshness,
        "compute",
        lambda conn, spec, ns, view: freshness.Freshness(source_watermark=when, online_watermark=when, lag_seconds=0),
    )
    monkeypatch.setattr(freshness, "last_run", lambda conn, ns, view: None)
    monkeypatch.setattr(identity, "recorded", lambda conn, ns, view: identity.Recorded(EPOCH, "public.clicks", 16384))


def observe_with_marker(
    ctx: Context, monkeypatch: pytest.MonkeyPatch, marker: str | None, body: dict[str, Any]
) -> tuple[dict[str, Any], Obj[api.FeatureView]]:
    monkeypatch.setattr(reconcile, "online_marker", lambda info, ns, view: marker)
    obj = obj_of(body)
    return dict(reconcile.observe(ctx, obj)), obj


def test_a_lost_marker_is_never_fresh_warns_once_and_starts_a_sync(
    ctx: Context, kube: FakeKube, synced: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics.FEATUREVIEW_FRESHNESS_LAG.labels(NS, VIEW).set(0)
    new, obj = observe_with_marker(ctx, monkeypatch, None, view_body())
    cond = {c["type"]: c for c in new["conditions"]}
    for type_ in ("Ready", "Materialized", "FreshnessSLOMet"):
        assert (cond[type_]["status"], cond[type_]["reason"]) == ("False", "OnlineDataLost"), type_
    assert "no materialization marker" in cond["Materialized"]["message"]
    assert "the next materialization rewrites every key" in cond["Materialized"]["message"]
    assert "lagSeconds" not in new["freshness"] and "onlineWatermark" not in new["freshness"]
    assert (NS, VIEW) not in metrics.FEATUREVIEW_FRESHNESS_LAG._metrics  # unknown, not 0
    [(kind_, reason, message)] = obj.report.events  # type: ignore[attr-defined]
    assert (kind_, reason) == ("Warning", "OnlineDataLost")
    [job] = [w for w in kube.writes if w[:2] == ("create", "Job")]
    assert message.endswith(f"sync Job {job[3]} started")

    # The next tick sees its own status: no second event, no second Job.
    again, obj2 = observe_with_marker(ctx, monkeypatch, None, view_body(previous=new))
    assert obj2.report.events == []  # type: ignore[attr-defined]
    assert [w for w in kube.writes if w[:2] == ("create", "Job")] == [job]
    assert {c["type"]: c["reason"] for c in again["conditions"]}["Materialized"] == "OnlineDataLost"


def test_a_foreign_marker_or_another_table_is_said_and_unscheduled_views_get_no_job(
    ctx: Context, kube: FakeKube, synced: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity, "offline_table", lambda conn, spec, view: identity.TableId("public.other", 99))
    new, obj = observe_with_marker(ctx, monkeypatch, "b" * 32, view_body(materialization=False))
    cond = {c["type"]: c for c in new["conditions"]}
    assert cond["Materialized"]["reason"] == "OnlineDataLost"
    assert "the marker of another materialization" in cond["Materialized"]["message"]
    assert "taken from table public.clicks, the spec reads public.other" in cond["Materialized"]["message"]
    assert [e[1] for e in obj.report.events] == ["OnlineDataLost"]  # type: ignore[attr-defined]
    assert not [w for w in kube.writes if w[:2] == ("create", "Job")]


def test_the_own_marker_keeps_the_lag(ctx: Context, synced: None, monkeypatch: pytest.MonkeyPatch) -> None:
    new, obj = observe_with_marker(ctx, monkeypatch, EPOCH, view_body())
    cond = {c["type"]: c for c in new["conditions"]}
    assert (cond["Ready"]["status"], cond["FreshnessSLOMet"]["reason"]) == ("True", "WithinObjective")
    assert new["freshness"]["lagSeconds"] == 0
    assert obj.report.events == []  # type: ignore[attr-defined]
    metrics.forget_featureview(NS, VIEW)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (redis.ConnectionError("Error 111 connecting to online.example:1. Refused."), "OnlineStoreUnreachable"),
        (redis.TimeoutError("Timeout reading from online.example:1"), problems.DEADLINE_EXCEEDED),
    ],
)
def test_an_unreadable_marker_is_a_problem_not_a_fresh_view(
    ctx: Context, synced: None, monkeypatch: pytest.MonkeyPatch, error: Exception, reason: str
) -> None:
    def fail(client: redis.Redis, ns: str, view: str) -> str | None:
        raise error

    monkeypatch.setattr(identity, "marker", fail)
    if isinstance(error, redis.TimeoutError):
        # A TimeoutError: the handlers report it as DeadlineExceeded, as every missed deadline.
        with pytest.raises(TimeoutError) as caught:
            reconcile.observe(ctx, obj_of(view_body()))
        p = problems.deadline_exceeded(caught.value)
    else:
        p = problem_of(lambda: reconcile.observe(ctx, obj_of(view_body())))
    assert (p.reason, p.stalled) == (reason, False)
    assert p.message.startswith("spec.online.storeRef: ")
    assert type(error).__name__ in p.message  # says what happened (scrubbed of the password, "p" here)
