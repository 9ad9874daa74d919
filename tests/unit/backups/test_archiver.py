"""The WAL archiver's Deployment (a pure builder), which stores want one, and applying / dropping it against
the in-memory Kubernetes API (the slot drop is the only thing stubbed: it needs a server)."""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

import pytest
from fakekube import FakeKube
from kind_support import put_store

from mlinfra.api import datastore as ds_api
from mlinfra.backup import postgres
from mlinfra.backups import archive_cli, job
from mlinfra.backups.plan import Plan
from mlinfra.config import Settings
from mlinfra.context import Context
from mlinfra.engines import names
from mlinfra.k8s import objects
from mlinfra.stores import walarchiver as archiver

UID = "0b7c5d8e-1f2a-4b3c-9d4e-5f6a7b8c9d0e"
POLICY = {
    "target": {
        "s3": {
            "bucket": "backups",
            "endpoint": "s3.example:9000",
            "credentialsSecretRef": {"name": "s3-creds"},
            "tls": {"caSecretRef": {"name": "s3-ca", "key": "ca.crt"}},
        }
    },
    "encryption": {"keySecretRef": {"name": "backup-key", "key": "key"}},
}


def store(engine: str = "postgres", *, external: bool = False, backup: bool = True, **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"engine": engine}
    if external:
        spec["external"] = {"endpoint": "db.example:5432", "credentialsSecretRef": {"name": "db-creds"}}
    else:
        spec["managed"] = {}
    if backup:
        spec["backup"] = copy.deepcopy(POLICY)
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": "orders", "namespace": "team-a", "uid": UID, **meta},
        "spec": spec,
    }


def test_a_postgres_store_with_a_backup_policy_wants_an_archiver() -> None:
    managed = archiver.wants_archiver(store())
    assert managed.wanted and managed.note is None
    external = archiver.wants_archiver(store(external=True))
    assert external.wanted and external.note is not None and "REPLICATION" in external.note


@pytest.mark.parametrize(
    "body",
    [
        store("redis"),
        store("neo4j"),
        store(backup=False),
        store(external=True, backup=False),
        store(deletionTimestamp="2026-11-30T12:00:00Z"),
    ],
)
def test_other_stores_want_none(body: dict[str, Any]) -> None:
    assert not archiver.wants_archiver(body).wanted
    with pytest.raises(ValueError, match="wants no WAL archiver"):
        archiver.plan_for(body)


def test_the_slot_is_one_per_store_and_readable() -> None:
    slot = archiver.slot_for("team-a", "orders", UID)
    assert slot.startswith("mlinfra_team_a_orders_") and len(slot) <= 63
    assert all(c.isalnum() or c == "_" for c in slot) and slot == slot.lower()
    others = {
        archiver.slot_for("team-b", "orders", UID),
        archiver.slot_for("team-a", "orders", "another-uid"),  # deleted and created again under the name
        archiver.slot_for("team-a", "orders-2", UID),
        archiver.slot_for("team", "a_orders", UID),  # the same text once folded: the hash keeps them apart
    }
    assert slot not in others and len(others) == 4
    assert archiver.slot_for("team-a", "orders", UID) == slot  # stable across reconciles


def _deployment(body: dict[str, Any] | None = None) -> dict[str, Any]:
    body = body or store()
    plan = archiver.plan_for(body)
    return archiver.build(plan, "registry.example/mlinfra:1.2", objects.owner_reference(body))


def test_the_deployment_runs_one_archiver_never_two() -> None:
    dep = _deployment()
    assert dep["apiVersion"] == "apps/v1" and dep["kind"] == "Deployment"
    assert dep["metadata"]["name"] == "orders-wal-archiver" and dep["metadata"]["namespace"] == "team-a"
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    owner = dep["metadata"]["ownerReferences"]
    assert owner == [objects.owner_reference(store())] and owner[0]["uid"] == UID and owner[0]["controller"]


def test_the_pod_is_the_backup_jobs_pod_long_running() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    plan = Plan(
        namespace="team-a",
        backup="b",
        store="orders",
        store_uid=UID,
        engine="postgres",
        backup_id="20261130T120000Z-abcdef",
        target=archiver.plan_for(store()).target,
        encryption=archiver.plan_for(store()).encryption,
    )
    job_pod = job.build(plan, "registry.example/mlinfra:1.2", {"uid": "x"})["spec"]["template"]["spec"]
    assert pod["securityContext"] == job_pod["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Always" and pod["terminationGracePeriodSeconds"] >= 30
    (container,) = pod["containers"]
    assert container["securityContext"] == job_pod["containers"][0]["securityContext"]
    assert container["image"] == "registry.example/mlinfra:1.2"
    assert container["args"] == ["archive", "wal", "team-a/orders"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secrets_mounted = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
    assert secrets_mounted == {names.connection_secret("orders"), "s3-creds", "s3-ca", "backup-key"}
    assert all(mounts[name]["readOnly"] for name, v in volumes.items() if "secret" in v)
    assert volumes["spool"] == {"name": "spool", "emptyDir": {}}
    assert mounts["spool"]["mountPath"] == archiver.SPOOL_PATH and not mounts["spool"].get("readOnly")


def test_the_plan_in_the_environment_reads_back_and_names_every_mounted_secret() -> None:
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    spec = json.loads(env[archiver.PLAN_ENV])
    plan = archiver.ArchivePlan.model_validate(spec)
    assert plan == archiver.plan_for(store())
    assert plan.slot == archiver.slot_for("team-a", "orders", UID) and plan.mark_interval == 60.0
    assert plan.store_prefix == f"team-a/orders/{UID}"
    mount_paths = {m["mountPath"] for m in container["volumeMounts"]}
    for secret, var in spec["secretDirs"].items():
        assert env[var] in mount_paths, secret
    assert env[archiver.SPOOL_ENV] == archiver.SPOOL_PATH
    # Secret names only: no value of any Secret is in the Deployment.
    assert "password" not in json.dumps(spec).lower()


def test_a_long_store_name_still_makes_a_valid_deployment_name() -> None:
    name = archiver.deployment_name("x" * 63)
    assert len(name) <= 63 and name.endswith("-wal-archiver")
    assert name != archiver.deployment_name("x" * 62)


@pytest.fixture
def ctx() -> tuple[Context, FakeKube]:
    kube = FakeKube()
    return Context(settings=Settings(job_image="registry.example/mlinfra:1.2"), kube=kube), kube


def test_ensure_applies_the_deployment_and_again_changes_nothing(ctx: tuple[Context, FakeKube]) -> None:
    context, kube = ctx
    body = store()
    ds_api.DataStore.model_validate(body)  # the sample is a valid DataStore
    assert archiver.ensure_archiver(context, body).wanted
    (dep,) = kube.kinds("Deployment")
    assert dep["metadata"]["name"] == "orders-wal-archiver"
    version = dep["metadata"]["resourceVersion"]
    archiver.ensure_archiver(context, body)
    assert kube.kinds("Deployment")[0]["metadata"]["resourceVersion"] == version


def test_a_policy_removed_deletes_the_deployment_and_drops_the_slot(
    ctx: tuple[Context, FakeKube], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, kube = ctx
    info = put_store(kube, "team-a", "orders", "postgres")
    dropped: list[tuple[str, str]] = []
    monkeypatch.setattr(postgres, "drop_slot", lambda conn, slot, timeout=30.0: dropped.append((conn.host, slot)))
    archiver.ensure_archiver(context, store())
    assert kube.kinds("Deployment")
    decision = archiver.ensure_archiver(context, store(backup=False))
    assert not decision.wanted and kube.kinds("Deployment") == []
    assert dropped == [(info.host, archiver.slot_for("team-a", "orders", UID))]


def test_a_slot_still_held_by_the_ending_pod_is_dropped_on_a_later_call(
    ctx: tuple[Context, FakeKube], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, kube = ctx
    put_store(kube, "team-a", "orders", "postgres", password="s3cr3t-password")

    def active(conn: Any, slot: str, timeout: float = 30.0) -> None:
        raise postgres.PostgresBackupError(f'replication slot "{slot}" is active for PID 42')

    monkeypatch.setattr(postgres, "drop_slot", active)
    assert archiver.drop(context, store()) is False
    monkeypatch.setattr(postgres, "drop_slot", lambda conn, slot, timeout=30.0: None)
    assert archiver.drop(context, store()) is True


def test_a_deployment_of_that_name_made_by_someone_else_is_left_alone(ctx: tuple[Context, FakeKube]) -> None:
    context, kube = ctx
    kube.put(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "orders-wal-archiver", "namespace": "team-a"},
            "spec": {"replicas": 3},
        }
    )
    assert archiver.drop(context, store("postgres", backup=False)) is True  # no connection Secret: no slot
    assert kube.kinds("Deployment")[0]["spec"] == {"replicas": 3}


def test_a_managed_store_being_deleted_needs_no_slot_drop(
    ctx: tuple[Context, FakeKube], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, kube = ctx
    put_store(kube, "team-a", "orders", "postgres")
    monkeypatch.setattr(postgres, "drop_slot", lambda *a, **k: pytest.fail("the server goes with the store"))
    assert archiver.drop(context, store(deletionTimestamp="2026-11-30T12:00:00Z")) is True


def test_the_archiver_command_without_its_plan_cannot_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(archiver.PLAN_ENV, raising=False)
    assert archive_cli.run("team-a/orders") == 2
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["event"] == "failed" and archiver.PLAN_ENV in line["error"]


def test_a_server_that_cannot_be_reached_is_retried_until_stopped_without_its_password(tmp_path: Any) -> None:
    stop = threading.Event()
    reports: list[dict[str, Any]] = []
    password = "pw-" + "x" * 20

    class Unreachable:
        info = type("Info", (), {"password": password})()

        def start(self) -> Any:
            raise postgres.PostgresBackupError(f"connection refused (password {password})")

        def stop(self, timeout: float = 30.0) -> None:
            if len(reports) >= 2:
                stop.set()

    assert archive_cli._start(Unreachable, stop, reports.append) is None  # type: ignore[arg-type]
    assert len(reports) >= 2 and all(r["event"] == "start-failed" for r in reports)
    assert all(password not in r["error"] and "***" in r["error"] for r in reports)
