"""ModelRegistry reconcile/observe/problem paths against the in-memory Kubernetes API (no databases: the
PostgreSQL and Neo4j steps are replaced where a test needs to get past them)."""

from __future__ import annotations

import base64
import contextlib
import datetime
from collections.abc import Iterator
from typing import Any

import kopf
import neo4j
import pytest
from fakekube import FakeKube
from kind_support import problem_of
from kind_support import put_store as put_any_store

from mlinfra import metrics, problems
from mlinfra.api import modelregistry as api
from mlinfra.context import Context, Obj, Recorder
from mlinfra.engines import connection
from mlinfra.problems import Problem
from mlinfra.registry import claim, jobs, lineage, lineagerole, migrate, reconcile, roles, status
from mlinfra.registry import observe as observe_mod

pytestmark = pytest.mark.unit

NS, NAME, UID = "team", "models", "mr-uid"
SYNC_LINEAGE = reconcile._sync_lineage  # the real one (the fixture below replaces it)


def mr_body(
    lineage: bool = True, schedule: str | None = None, previous: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    s: dict[str, Any] = {"metadataStoreRef": {"name": "meta"}, "database": "reg", **spec}
    if lineage:
        s["lineageStoreRef"] = {"name": "graph"}
        s["lineageSync"] = {"interval": "30s", "maxLag": "1m", **({"schedule": schedule} if schedule else {})}
    body: dict[str, Any] = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "ModelRegistry",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 4},
        "spec": s,
    }
    if previous is not None:
        body["status"] = previous
    return body


def obj_of(body: dict[str, Any]) -> Obj[api.ModelRegistry]:
    return Obj(body, problems.parse(api.ModelRegistry, body), Recorder())


def decoded(kube: FakeKube, name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in kube.get("Secret", NS, name)["data"].items()}


class Databases:
    """Stands in for PostgreSQL and Neo4j: what reconcile/observe asked of them, and what they answer."""

    def __init__(self) -> None:
        self.applied = 0
        self.roles: list[tuple[str, ...]] = []
        self.lineage_roles: list[tuple[str, ...]] = []  # (database, namespace, name, password)
        self.claims: list[tuple[str, str]] = []
        self.sync_passes = 0
        self.synced_registries: set[str] = set()
        self.sync_error: str | None = None
        self.history = "2024-05-01T12:00:00.000001Z"  # of the registry database
        self.graph_history: str | None = None  # of the graph's LineageRegistry node
        self.graph_registries: list[str] = []
        self.outbox = observe_mod.Outbox(0, None, None, None, records_passes=True)
        self.graph_error: Exception | None = None


@pytest.fixture
def dbs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Databases]:
    d = Databases()

    @contextlib.contextmanager
    def fake_connection(*_: Any, **__: Any) -> Iterator[object]:
        yield object()

    def apply(conn: Any, target: Any) -> int:
        d.applied = migrate.resolve_target(target, migrate.shipped())
        return d.applied

    def sync(mr: Any, registry: str, graph: connection.ConnectionInfo, conn: Any) -> str | None:
        assert graph.engine == "neo4j"
        d.sync_passes += 1
        d.synced_registries.add(registry)
        return d.sync_error

    def graph(driver: Any, registry: str) -> observe_mod.Graph:
        d.graph_registries.append(registry)
        return observe_mod.Graph(9, 8)

    @contextlib.contextmanager
    def neo4j(info: Any) -> Iterator[object]:
        if d.graph_error is not None:
            raise d.graph_error
        yield object()

    monkeypatch.setattr(reconcile, "_postgres", fake_connection)
    monkeypatch.setattr(reconcile, "_neo4j", neo4j)
    monkeypatch.setattr(reconcile, "_ensure_database", lambda stores: False)
    monkeypatch.setattr(reconcile, "_sync_lineage", sync)
    monkeypatch.setattr(migrate, "applied_version", lambda conn: d.applied)
    monkeypatch.setattr(migrate, "apply", apply)
    monkeypatch.setattr(roles, "ensure_roles", lambda conn, *args, owner: d.roles.append((*args, owner)))
    monkeypatch.setattr(claim, "claim", lambda conn, database, owner: d.claims.append((database, owner)))

    def lineage_role(conn: Any, database: str, namespace: str, name: str, password: str) -> str:
        d.lineage_roles.append((database, namespace, name, password))
        return lineagerole.role_name(namespace, name)

    monkeypatch.setattr(lineagerole, "ensure", lineage_role)
    monkeypatch.setattr(observe_mod, "schema_version", lambda conn: d.applied)
    monkeypatch.setattr(observe_mod, "counts", lambda conn: observe_mod.Counts(2, 3, 1, 0))
    monkeypatch.setattr(observe_mod, "outbox", lambda conn: d.outbox)
    monkeypatch.setattr(observe_mod, "graph", graph)
    monkeypatch.setattr(lineage, "history", lambda conn: d.history)
    monkeypatch.setattr(lineage, "graph_history", lambda driver, registry: d.graph_history)
    yield d
    metrics.forget_registry(NS, NAME)


def conds(st: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in st["conditions"]}


# --- store references ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [reconcile.reconcile, reconcile.observe])
def test_a_missing_metadata_store_is_not_stalled_and_names_the_field(ctx: Context, step: Any) -> None:
    p = problem_of(lambda: step(ctx, obj_of(mr_body())))
    assert (p.reason, p.stalled) == (problems.STORE_NOT_FOUND, False)
    assert p.message.startswith("spec.metadataStoreRef: DataStore 'meta' not found")


@pytest.mark.parametrize("step", [reconcile.reconcile, reconcile.observe])
def test_a_metadata_store_of_the_wrong_engine_stalls(ctx: Context, kube: FakeKube, step: Any) -> None:
    put_store(kube, "meta", "redis")
    p = problem_of(lambda: step(ctx, obj_of(mr_body())))
    assert (p.reason, p.stalled) == (problems.WRONG_ENGINE, True)
    assert p.message.startswith("spec.metadataStoreRef: DataStore 'meta' is a redis store")


@pytest.mark.parametrize("step", [reconcile.reconcile, reconcile.observe])
def test_a_lineage_store_of_the_wrong_engine_stalls_the_registry(
    ctx: Context, kube: FakeKube, dbs: Databases, step: Any
) -> None:
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "postgres")
    p = problem_of(lambda: step(ctx, obj_of(mr_body())))
    assert (p.reason, p.stalled) == (problems.WRONG_ENGINE, True)
    assert p.message == "spec.lineageStoreRef: DataStore 'graph' is a postgres store; a neo4j store is required"
    assert dbs.roles == [] and kube.get_or_none("Secret", NS, "models-writer") is None  # nothing done


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (False, "spec.lineageStoreRef: DataStore 'graph' not found in namespace 'team'"),
        (True, "spec.lineageStoreRef: DataStore 'graph' is not Ready: connection refused"),
    ],
)
def test_a_lineage_store_missing_or_not_ready_only_delays_the_graph(
    ctx: Context, kube: FakeKube, dbs: Databases, present: bool, expected: str
) -> None:
    put_store(kube, "meta", "postgres")
    if present:
        put_store(kube, "graph", "neo4j", ready=False)
    stores = reconcile.resolve_stores(ctx, obj_of(mr_body()))
    assert (stores.lineage, stores.lineage_problem) == (None, expected)

    reconcile.reconcile(ctx, obj_of(mr_body()))  # the registry itself is served
    dbs.graph_error = AssertionError("the graph is not asked for without a usable lineage store")
    st = reconcile.observe(ctx, obj_of(mr_body()))
    c = conds(st)
    assert c["Ready"][:2] == ("True", "Ready") and c["Stalled"][0] == "False"
    assert c["LineageInSync"] == ("False", "LineageStoreUnavailable", expected)
    assert dbs.sync_passes == 0


# --- reconcile ----------------------------------------------------------------------------------------------


def test_reconcile_makes_the_role_secrets_once_in_the_connection_format_and_syncs_once(
    ctx: Context, kube: FakeKube, dbs: Databases
) -> None:
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")
    obj = obj_of(mr_body())
    reconcile.reconcile(ctx, obj)

    writer, reader = decoded(kube, "models-writer"), decoded(kube, "models-reader")
    w_role, r_role = reconcile.role_name(NS, NAME, "writer"), reconcile.role_name(NS, NAME, "reader")
    assert w_role.startswith("mlinfra_team_models_") and (writer["username"], reader["username"]) == (w_role, r_role)
    assert (writer["host"], writer["port"], writer["database"]) == (f"meta.{NS}.svc", "7", "reg")
    assert len(writer["password"]) >= 24 and writer["password"] != reader["password"]
    assert writer["uri"].startswith(f"postgresql://{w_role}@meta.team.svc:7/reg")
    for name in ("models-writer", "models-reader"):
        secret = kube.get("Secret", NS, name)
        assert [r["uid"] for r in secret["metadata"]["ownerReferences"]] == [UID]
        assert secret["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "mlinfra-operator",
            "mlinfra.io/modelregistry": NAME,
        }
    assert dbs.roles == [("reg", w_role, writer["password"], r_role, reader["password"], f"{NS}/{NAME}")]
    assert dbs.sync_passes == 1  # in process: one pass on every reconcile
    assert dbs.synced_registries == {f"{NS}/{NAME}"}  # the graph's nodes are the registry's own
    assert ("Normal", "Migrated", f"schema version 0 -> {migrate.latest_version()}") in obj.report.events  # type: ignore[attr-defined]
    assert kube.kinds("CronJob") == []

    # Idempotent: nothing written again, passwords kept, no event for a schema already there.
    writes = list(kube.writes)
    again = obj_of(mr_body())
    reconcile.reconcile(ctx, again)
    assert kube.writes == writes
    assert decoded(kube, "models-writer") == writer
    assert again.report.events == []  # type: ignore[attr-defined]
    assert dbs.sync_passes == 2


# What the operator puts on a role Secret: one left from an earlier registry of this name is adopted (a
# Secret of that name without them is the user's, never taken over: see tests/unit/stores).
OPERATORS_LABELS = {"app.kubernetes.io/managed-by": "mlinfra-operator", "mlinfra.io/modelregistry": "models"}


def test_an_existing_role_secret_keeps_its_password_and_is_owned_again(
    ctx: Context, kube: FakeKube, dbs: Databases
) -> None:
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "models-writer", "namespace": NS, "labels": OPERATORS_LABELS},
            "stringData": {"username": "mlinfra_team_models_writer", "password": "kept-from-before"},
        }
    )
    reconcile.reconcile(ctx, obj_of(mr_body()))
    assert decoded(kube, "models-writer")["password"] == "kept-from-before"
    assert [r["uid"] for r in kube.get("Secret", NS, "models-writer")["metadata"]["ownerReferences"]] == [UID]
    assert dbs.roles[0][2] == "kept-from-before"


def test_a_role_secret_without_a_password_is_stalled_and_never_overwritten(
    ctx: Context, kube: FakeKube, dbs: Databases
) -> None:
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "models-writer", "namespace": NS, "labels": OPERATORS_LABELS},
            "stringData": {"username": "someone"},
        }
    )
    p = problem_of(lambda: reconcile.reconcile(ctx, obj_of(mr_body())))
    assert (p.reason, p.stalled) == (problems.SECRET_NOT_FOUND, True)
    assert "'models-writer'" in p.message
    assert decoded(kube, "models-writer") == {"username": "someone"}


def test_with_a_schedule_the_cronjob_syncs_and_the_operator_does_not(
    ctx: Context, kube: FakeKube, dbs: Databases
) -> None:
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")
    reconcile.reconcile(ctx, obj_of(mr_body(schedule="*/10 * * * *")))
    cron = kube.get("CronJob", NS, jobs.cronjob_name(NAME))
    assert cron["spec"]["schedule"] == "*/10 * * * *"
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == "example.test/mlinfra:1"
    assert [r["uid"] for r in cron["metadata"]["ownerReferences"]] == [UID]
    dbs.outbox = observe_mod.Outbox(5, 100.0, None, None, records_passes=True)  # due, were it in process
    reconcile.observe(ctx, obj_of(mr_body(schedule="*/10 * * * *")))
    assert dbs.sync_passes == 0

    reconcile.reconcile(ctx, obj_of(mr_body()))  # the schedule removed: the CronJob goes
    assert kube.kinds("CronJob") == []
    assert dbs.sync_passes == 1
    # The lineage role and its Secret stay while the registry lives (made again with the same password).
    assert kube.get_or_none("Secret", NS, lineagerole.secret_name(NAME)) is not None
    assert len(dbs.lineage_roles) == 1


def test_the_cronjob_gets_a_lineage_role_of_its_own_in_a_secret_of_the_connection_format(
    ctx: Context, kube: FakeKube, dbs: Databases
) -> None:
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")
    reconcile.reconcile(ctx, obj_of(mr_body(schedule="*/10 * * * *")))
    secret = lineagerole.secret_name(NAME)
    values = decoded(kube, secret)
    role = lineagerole.role_name(NS, NAME)
    assert role.endswith("_lineage") and role not in {reconcile.role_name(NS, NAME, k) for k in ("writer", "reader")}
    assert (values["username"], values["host"], values["port"], values["database"]) == (
        role,
        "meta.team.svc",
        "7",
        "reg",
    )
    assert values["uri"].startswith(f"postgresql://{role}@meta.team.svc:7/reg") and values["tls"] == "false"
    assert len(values["password"]) >= 24 and values["password"] != "admin-pw"
    assert values["password"] not in {decoded(kube, f"{NAME}-{k}")["password"] for k in ("writer", "reader")}
    assert dbs.lineage_roles == [("reg", NS, NAME, values["password"])]
    made = kube.get("Secret", NS, secret)
    assert [r["uid"] for r in made["metadata"]["ownerReferences"]] == [UID]
    assert made["metadata"]["labels"] == OPERATORS_LABELS
    # The CronJob mounts it, not the store's admin Secret.
    pod = kube.get("CronJob", NS, jobs.cronjob_name(NAME))["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert sorted(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v) == sorted([secret, "graph-conn"])

    writes = list(kube.writes)
    reconcile.reconcile(ctx, obj_of(mr_body(schedule="*/10 * * * *")))
    assert kube.writes == writes  # nothing written again
    assert dbs.lineage_roles[-1] == ("reg", NS, NAME, values["password"])  # the password kept


def test_without_a_schedule_there_is_no_lineage_role(ctx: Context, kube: FakeKube, dbs: Databases) -> None:
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")
    reconcile.reconcile(ctx, obj_of(mr_body()))
    assert dbs.lineage_roles == [] and kube.get_or_none("Secret", NS, lineagerole.secret_name(NAME)) is None


def test_a_lineage_role_of_another_holder_stalls_and_writes_no_login_secret(
    ctx: Context, kube: FakeKube, dbs: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")

    def refuse(*_: Any, **__: Any) -> str:
        raise lineagerole.RoleConflict(lineagerole.role_name(NS, NAME), None)

    monkeypatch.setattr(lineagerole, "ensure", refuse)
    p = problem_of(lambda: reconcile.reconcile(ctx, obj_of(mr_body(schedule="*/10 * * * *"))))
    assert (p.reason, p.stalled, p.recheck) == (reconcile.ROLE_CONFLICT, True, reconcile.CONFLICT_RECHECK)
    assert "made outside the operator" in p.message
    assert "username" not in decoded(kube, lineagerole.secret_name(NAME))  # only the generated password
    assert kube.kinds("CronJob") == []


# --- observe: the lineage schedule, from what the registry database recorded -------------------------------


@pytest.mark.parametrize(
    ("outbox", "due"),
    [
        (observe_mod.Outbox(0, None, None, None, records_passes=True), True),  # never synced
        (observe_mod.Outbox(0, None, None, 29.0, records_passes=True), False),
        (observe_mod.Outbox(0, None, None, 30.0, records_passes=True), True),  # every interval, even idle
        (observe_mod.Outbox(3, 40.0, None, 10.0, records_passes=True), False),
        (observe_mod.Outbox(0, None, None, None, records_passes=False), False),  # nothing to do, no trace left
        (observe_mod.Outbox(0, None, None, 999.0, records_passes=False), False),
        (observe_mod.Outbox(2, 5.0, None, None, records_passes=False), True),
        (observe_mod.Outbox(2, 5.0, None, 31.0, records_passes=False), True),
        (observe_mod.Outbox(2, 5.0, None, 3.0, records_passes=False), False),
    ],
)
def test_a_sync_pass_is_due_once_the_interval_passed_since_the_recorded_one(
    outbox: observe_mod.Outbox, due: bool
) -> None:
    assert reconcile.sync_due(outbox, datetime.timedelta(seconds=30)) is due


def test_observe_syncs_when_due_reports_the_databases_and_records_the_metrics(
    ctx: Context, kube: FakeKube, dbs: Databases
) -> None:
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")
    dbs.applied = 3
    dbs.outbox = observe_mod.Outbox(4, 75.4, None, 5.0, records_passes=True)  # synced 5 s ago: not due
    stale = {
        "schemaVersion": 1,
        "lineage": {"pendingEvents": 0, "nodes": 1},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "schema version 3",
                "observedGeneration": 4,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    st = reconcile.observe(ctx, obj_of(mr_body(previous=stale)))
    assert dbs.sync_passes == 0
    assert st["schemaVersion"] == 3 and st["observedGeneration"] == 4
    assert st["lineage"] == {"pendingEvents": 4, "oldestPendingAgeSeconds": 75, "nodes": 9, "relationships": 8}
    assert st["counts"] == {"registeredModels": 2, "modelVersions": 3, "datasets": 1, "deployments": 0}
    assert (st["writerSecret"], st["readerSecret"]) == ("models-writer", "models-reader")
    c = conds(st)
    assert c["LineageInSync"] == ("False", "LineageLagging", "4 events pending, the oldest for 75s (> 60s)")
    assert st["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert metrics.REGISTRY_PENDING_EVENTS.labels(NS, NAME)._value.get() == 4
    assert metrics.REGISTRY_LINEAGE_LAG.labels(NS, NAME)._value.get() == 75.4
    assert metrics.REGISTRY_LINEAGE_MAX_LAG.labels(NS, NAME)._value.get() == 60

    dbs.outbox = observe_mod.Outbox(4, 75.4, None, 31.0, records_passes=True)  # due
    dbs.sync_error = "lineage sync failed: ServiceUnavailable: down"
    dbs.graph_error = AssertionError("a failed pass is the lineage problem: the graph is not asked again")
    st = reconcile.observe(ctx, obj_of(mr_body()))
    assert dbs.sync_passes == 1
    assert conds(st)["LineageInSync"] == ("False", "LineageStoreUnavailable", dbs.sync_error)
    assert conds(st)["Ready"][0] == "True"


def test_an_unreachable_graph_is_the_lineage_problem_not_the_registrys(
    ctx: Context, kube: FakeKube, dbs: Databases
) -> None:
    import neo4j

    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")
    dbs.applied = 3
    dbs.outbox = observe_mod.Outbox(0, None, None, 1.0, records_passes=True)
    dbs.graph_error = neo4j.exceptions.ServiceUnavailable("no route")
    c = conds(reconcile.observe(ctx, obj_of(mr_body())))
    assert c["Ready"][0] == "True"
    assert c["LineageInSync"] == ("False", "LineageStoreUnavailable", "lineage store: ServiceUnavailable: no route")


def test_without_a_lineage_store_lineage_is_not_applicable(ctx: Context, kube: FakeKube, dbs: Databases) -> None:
    put_store(kube, "meta", "postgres")
    dbs.applied = 2
    st = reconcile.observe(ctx, obj_of(mr_body(lineage=False)))
    assert "lineage" not in st and dbs.sync_passes == 0
    assert conds(st)["LineageInSync"] == ("True", "NotApplicable", "no spec.lineageStoreRef")
    assert conds(st)["SchemaApplied"] == ("True", "Migrated", "schema version 2")


# --- problem status -----------------------------------------------------------------------------------------


def triple(st: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(c["type"], c["status"], c["reason"], c["message"]) for c in st["conditions"]]


def test_problem_status_keeps_what_was_reported_and_says_why() -> None:
    previous = {
        "schemaVersion": 3,
        "writerSecret": "models-writer",
        "readerSecret": "models-reader",
        "counts": {"registeredModels": 1},
        "lineage": {"pendingEvents": 0},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "schema version 3",
                "observedGeneration": 3,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
            {"type": "SomeoneElses", "status": "True", "reason": "X", "message": ""},
        ],
    }
    waiting = status.problem_status(
        mr_body(previous=previous), Problem("StoreNotReady", "spec.metadataStoreRef: down", stalled=False)
    )
    assert set(waiting) == {"observedGeneration", "schemaVersion", "writerSecret", "readerSecret", "conditions"}
    assert (
        waiting["observedGeneration"],
        waiting["schemaVersion"],
        waiting["writerSecret"],
        waiting["readerSecret"],
    ) == (4, 3, "models-writer", "models-reader")
    assert triple(waiting) == [
        ("Ready", "False", "StoreNotReady", "spec.metadataStoreRef: down"),
        ("Reconciling", "True", "StoreNotReady", "spec.metadataStoreRef: down"),
        ("Stalled", "False", "Ready", ""),
        ("SchemaApplied", "Unknown", "StoreNotReady", "spec.metadataStoreRef: down"),
        ("SomeoneElses", "True", "X", ""),
    ]
    assert all(c["observedGeneration"] == 4 for c in waiting["conditions"][:4])

    refused = status.problem_status(mr_body(), Problem("InvalidSpec", "never downgrade", stalled=True))
    assert set(refused) == {"observedGeneration", "conditions"}
    assert triple(refused) == [
        ("Ready", "False", "InvalidSpec", "never downgrade"),
        ("Reconciling", "False", "InvalidSpec", ""),
        ("Stalled", "True", "InvalidSpec", "never downgrade"),
        ("SchemaApplied", "False", "InvalidSpec", "never downgrade"),
    ]


def test_an_invalid_spec_is_a_stalled_problem() -> None:
    body = mr_body()
    body["spec"]["schemaVersion"] = 0
    p = problem_of(lambda: problems.parse(api.ModelRegistry, body))
    assert triple(status.problem_status(body, p))[2][:3] == ("Stalled", "True", "InvalidSpec")


# --- role names ---------------------------------------------------------------------------------------------


def test_role_names_are_injective_over_namespace_and_name_and_fit_postgres() -> None:
    names_ = {
        reconcile.role_name(ns, name, kind)
        for ns in ("a", "b", "team-x", "team")
        for name in ("models", "m2", "x-models")
        for kind in ("writer", "reader", "lineage")
    }
    assert len(names_) == 36
    # Alike once made identifiers, distinct roles: neither tenant can reset the other's password.
    assert reconcile.role_name("team-x", "models", "writer") != reconcile.role_name("team", "x-models", "writer")
    assert reconcile.role_name("team-a", "models", "reader") != reconcile.role_name("team", "a-models", "reader")
    readable = reconcile.role_name("Team.X", "m-1", "writer")
    assert readable.startswith("mlinfra_team_x_m_1_") and readable.endswith("_writer") and len(readable) <= 63
    long_ns, long_name = "n" * 63, "r" * 200
    long_roles = {
        reconcile.role_name(long_ns, f"{long_name}{i}", kind) for i in range(50) for kind in ("writer", "reader")
    }
    assert len(long_roles) == 100
    assert all(len(r.encode()) <= 63 and r.startswith("mlinfra_nnn") for r in long_roles)
    assert all(r.endswith(("_writer", "_reader")) for r in long_roles)


def test_the_registry_claims_its_database_and_marks_its_roles(ctx: Context, kube: FakeKube, dbs: Databases) -> None:
    put_store(kube, "meta", "postgres")
    reconcile.reconcile(ctx, obj_of(mr_body()))
    assert dbs.claims and all(owner == f"{NS}/{NAME}" for _, owner in dbs.claims)
    assert dbs.roles and all(args[-1] == f"{NS}/{NAME}" for args in dbs.roles)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (lambda: claim.DatabaseInUse("postgres", "other/models"), reconcile.DATABASE_IN_USE),
        (lambda: roles.RoleConflict("mlinfra_x_writer", "other/models"), reconcile.ROLE_CONFLICT),
    ],
)
def test_a_database_or_role_held_by_another_registry_stalls_and_is_rechecked(
    ctx: Context, kube: FakeKube, dbs: Databases, monkeypatch: pytest.MonkeyPatch, error: Any, reason: str
) -> None:
    put_store(kube, "meta", "postgres")

    def refuse(*_: Any, **__: Any) -> None:
        raise error()

    monkeypatch.setattr(
        claim if reason == reconcile.DATABASE_IN_USE else roles,
        "claim" if reason == reconcile.DATABASE_IN_USE else "ensure_roles",
        refuse,
    )
    p = problem_of(lambda: reconcile.reconcile(ctx, obj_of(mr_body())))
    assert (p.reason, p.stalled, p.recheck) == (reason, True, reconcile.CONFLICT_RECHECK)
    assert "other/models" in p.message and "nothing was changed" in p.message


# --- the handler: wiring only -------------------------------------------------------------------------------


def test_the_handler_wires_the_package_into_the_one_shape(ctx: Context) -> None:
    from mlinfra.handlers import kind
    from mlinfra.handlers import modelregistry as handler

    k = handler.KIND
    assert (
        k.model,
        k.owned,
        k.reconcile,
        k.observe,
        k.problem_status,
        k.forget,
        k.delete,
        k.request_sync,
        k.retry_delay,
        k.drift_timer,
    ) == (
        api.ModelRegistry,
        status.OWNED,
        reconcile.reconcile,
        reconcile.observe,
        status.problem_status,
        metrics.forget_registry,
        reconcile.delete,
        None,
        15,
        False,
    )
    registry = kopf.OperatorRegistry()
    kind.register(registry, ctx, handler.KIND)
    assert registry._changing.get_all_handlers() and registry._spawning.get_all_handlers()


def put_store(kube: FakeKube, name: str, engine: str, ready: bool = True) -> None:
    put_any_store(
        kube,
        NS,
        name,
        engine,
        ready,
        host=f"{name}.{NS}.svc",
        port=7,
        username="admin",
        password="admin-pw",
        database="app" if engine == "postgres" else "neo4j",
    )


# --- the lineage graph: the registry's own share of a shared Neo4j database -----------------------------------


def test_observe_counts_only_the_registrys_own_graph(ctx: Context, kube: FakeKube, dbs: Databases) -> None:
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")
    reconcile.reconcile(ctx, obj_of(mr_body()))
    dbs.graph_history = dbs.history  # built from this registry database: fine
    st = reconcile.observe(ctx, obj_of(mr_body()))
    assert dbs.graph_registries == [f"{NS}/{NAME}"]
    assert (st["lineage"]["nodes"], st["lineage"]["relationships"]) == (9, 8)
    assert conds(st)["Ready"][0] == "True"


@pytest.mark.parametrize("due", [True, False])
def test_a_graph_of_this_name_built_from_another_database_stalls_on_every_observation(
    ctx: Context, kube: FakeKube, dbs: Databases, due: bool
) -> None:
    """Whether or not a sync pass is due (a CronJob may sync): the status must not flip with the interval."""
    put_store(kube, "meta", "postgres")
    put_store(kube, "graph", "neo4j")
    reconcile.reconcile(ctx, obj_of(mr_body()))
    dbs.outbox = observe_mod.Outbox(0, None, None, None if due else 1.0, records_passes=True)
    dbs.graph_history = "2001-01-01T00:00:00.000000Z"
    passes = dbs.sync_passes
    p = problem_of(lambda: reconcile.observe(ctx, obj_of(mr_body())))
    assert (p.reason, p.stalled, p.recheck) == (reconcile.LINEAGE_GRAPH_IN_USE, True, reconcile.CONFLICT_RECHECK)
    assert "ModelRegistry team/models built from another registry database" in p.message
    assert "2001-01-01T00:00:00.000000Z" in p.message and "nothing was changed" in p.message
    assert "MATCH (n {registry: 'team/models'}) DETACH DELETE n" in p.message
    assert dbs.sync_passes == passes + (1 if due else 0)
    assert dbs.graph_registries == []  # nothing of that graph is reported as this registry's


def test_a_sync_refused_by_the_graph_is_a_stalled_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*_: Any, **kwargs: Any) -> None:
        raise lineage.GraphInUse(kwargs["registry"], None, "then", "now")

    @contextlib.contextmanager
    def driver(info: Any) -> Iterator[object]:
        yield object()

    monkeypatch.setattr(reconcile, "_neo4j", driver)
    monkeypatch.setattr(reconcile, "_postgres", lambda info, database: contextlib.nullcontext(object()))
    monkeypatch.setattr(lineage, "ensure_schema", lambda driver: None)
    monkeypatch.setattr(lineage, "sync", refused)
    mr = obj_of(mr_body()).model
    graph = connection.ConnectionInfo.for_engine("neo4j", "graph.team.svc", "pw")
    meta = connection.ConnectionInfo.for_engine("postgres", "meta.team.svc", "pw")
    stores = reconcile.Stores(meta, meta, "reg", graph, None)
    p = problem_of(lambda: SYNC_LINEAGE(mr, "team/models", graph, stores))
    assert (p.reason, p.stalled) == (reconcile.LINEAGE_GRAPH_IN_USE, True)
    assert p.message.startswith(
        "spec.lineageStoreRef: the Neo4j database holds a lineage graph of ModelRegistry team/models"
    )
    assert "pw" not in p.message


def test_a_driver_error_names_its_cause() -> None:
    # What the Neo4j driver raises when a read on a silent server times out: the timeout is only the cause.
    try:
        try:
            raise TimeoutError("timed out")
        except TimeoutError as timeout:
            raise neo4j.exceptions.SessionExpired("Failed to read from defunct connection") from timeout
    except neo4j.exceptions.SessionExpired as exc:
        text = reconcile._driver_error(exc)
    assert text == "SessionExpired: Failed to read from defunct connection (TimeoutError: timed out)"
    assert reconcile._driver_error(OSError("refused")) == "OSError: refused"
