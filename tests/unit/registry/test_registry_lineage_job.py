"""The lineage-sync Job builder (which Secrets it mounts) and the lineage role's drop at deletion, against the
in-memory Kubernetes API (PostgreSQL replaced: tests/integration/test_registry_lineage_role.py has the real
one)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fakekube import FakeKube
from kind_support import put_store

from mlinfra import problems
from mlinfra.api import modelregistry as api
from mlinfra.context import Context, Obj, Recorder
from mlinfra.engines import pg_roles
from mlinfra.features import syncrole
from mlinfra.registry import jobs, lineagerole, reconcile, sync_cli

pytestmark = pytest.mark.unit

NS, NAME = "team", "models"


def body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "ModelRegistry",
        "metadata": {"name": NAME, "namespace": NS, "uid": "mr-uid", "generation": 1},
        "spec": {
            "metadataStoreRef": {"name": "meta"},
            "lineageStoreRef": {"name": "graph"},
            "database": "reg",
            "lineageSync": {"schedule": "*/5 * * * *"},
            **spec,
        },
    }


def obj_of(b: dict[str, Any]) -> Obj[api.ModelRegistry]:
    return Obj(b, problems.parse(api.ModelRegistry, b), Recorder())


def pod_spec(cron: dict[str, Any]) -> dict[str, Any]:
    return dict(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"])


def test_the_job_mounts_the_registrys_lineage_secret_not_the_metadata_stores_admin_secret() -> None:
    cron = jobs.cronjob(obj_of(body()).model, "example.test/mlinfra:1", {"uid": "mr-uid"})
    assert cron is not None
    pod = pod_spec(cron)
    secrets_ = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets_ == {"metadata-conn": lineagerole.secret_name(NAME), "lineage-conn": "graph-conn"}
    assert "meta-conn" not in str(pod)  # nowhere, not even in an env value
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"] if m["name"] in secrets_}
    assert mounts == {"metadata-conn": jobs.METADATA_DIR, "lineage-conn": jobs.LINEAGE_DIR}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env[sync_cli.METADATA_DIR_ENV], env[sync_cli.LINEAGE_DIR_ENV]) == (jobs.METADATA_DIR, jobs.LINEAGE_DIR)


def test_no_schedule_no_job() -> None:
    b = body()
    b["spec"]["lineageSync"] = {"interval": "30s"}
    assert jobs.cronjob(obj_of(b).model, "img", {"uid": "mr-uid"}) is None


def test_the_lineage_role_and_secret_names_are_bounded_and_their_own() -> None:
    long_ns, long_name = "n" * 63, "r" * 253
    assert len(lineagerole.role_name(long_ns, long_name).encode()) <= pg_roles.MAX_IDENTIFIER
    assert lineagerole.role_name("team-x", "models") != lineagerole.role_name("team", "x-models")
    others = {pg_roles.role_name("a", "b", k) for k in ("writer", "reader")} | {syncrole.role_name("a", "b")}
    assert lineagerole.role_name("a", "b") not in others
    secret = lineagerole.secret_name(long_name)
    assert secret.endswith("-lineage-sync") and len(secret) <= 253
    assert lineagerole.secret_name(NAME) not in {f"{NAME}-writer", f"{NAME}-reader", jobs.cronjob_name(NAME)}
    assert lineagerole.mark(NS, NAME) == f"mlinfra-operator: role of ModelRegistry {NS}/{NAME}"


class Dropped:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.databases: list[str | None] = []
        self.result: bool | Exception = True
        self.present = True


@pytest.fixture
def dropped(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dropped]:
    d = Dropped()

    @contextlib.contextmanager
    def fake_connection(info: Any, database: str) -> Iterator[object]:
        d.databases.append(database)
        yield object()

    def drop(conn: Any, namespace: str, name: str) -> bool:
        d.calls.append((namespace, name))
        if isinstance(d.result, Exception):
            raise d.result
        return d.result

    monkeypatch.setattr(reconcile, "_postgres", fake_connection)
    monkeypatch.setattr(lineagerole, "drop", drop)
    monkeypatch.setattr(lineagerole, "present", lambda conn, namespace, name: d.present)
    yield d


def meta_store(kube: FakeKube) -> None:
    put_store(kube, NS, "meta", "postgres", True, host="meta.team.svc", port=7, username="admin",
              password="admin-pw", database="app")  # fmt: skip


def test_deletion_drops_the_lineage_role_in_the_registry_database(
    ctx: Context, kube: FakeKube, dropped: Dropped
) -> None:
    meta_store(kube)
    obj = obj_of(body())
    reconcile.delete(ctx, obj)
    assert (dropped.calls, dropped.databases) == ([(NS, NAME)], ["app", "reg"])  # looked for, then dropped
    role = lineagerole.role_name(NS, NAME)
    assert obj.report.events == [("Normal", "LineageRoleDropped", f"lineage role {role} dropped")]  # type: ignore[attr-defined]


def test_deletion_of_a_registry_whose_role_is_not_its_own_says_nothing(
    ctx: Context, kube: FakeKube, dropped: Dropped
) -> None:
    meta_store(kube)
    dropped.result = False
    obj = obj_of(body(database=None))
    reconcile.delete(ctx, obj)
    assert dropped.databases == ["app", "app"]  # the store's own database when spec.database is omitted
    assert obj.report.events == []  # type: ignore[attr-defined]


def test_deletion_of_a_registry_that_never_had_a_lineage_role_looks_only(
    ctx: Context, kube: FakeKube, dropped: Dropped
) -> None:
    meta_store(kube)
    dropped.present = False
    obj = obj_of(body())
    reconcile.delete(ctx, obj)  # its database may not even exist: it is not connected to
    assert (dropped.databases, dropped.calls, obj.report.events) == (["app"], [], [])  # type: ignore[attr-defined]


@pytest.mark.parametrize("store", [False, True])
def test_a_store_that_cannot_be_reached_keeps_the_role_and_says_so(
    ctx: Context, kube: FakeKube, dropped: Dropped, store: bool
) -> None:
    if store:
        meta_store(kube)
        dropped.result = psycopg.OperationalError("connection refused")
    obj = obj_of(body())
    reconcile.delete(ctx, obj)  # never raises: the deletion goes on
    [(kind, reason, message)] = obj.report.events  # type: ignore[attr-defined]
    assert (kind, reason) == ("Warning", "LineageRoleKept")
    assert message.startswith(f"the lineage role {lineagerole.role_name(NS, NAME)} was not dropped: ")
    assert ("connection refused" if store else "DataStore 'meta' not found") in message
    assert "admin-pw" not in message
