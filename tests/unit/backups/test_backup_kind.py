"""The Backup kind's pure parts: the plan (the backup id, where a started backup is found), the Job (what it
mounts and never carries), and the status contract (the manifest decides; failures stall)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from mlinfra.api import backup as api
from mlinfra.backup import catalog
from mlinfra.backups import job, status
from mlinfra.backups.plan import NO_BACKUP_POLICY, Plan, backup_id, resolve
from mlinfra.k8s import conditions
from mlinfra.problems import STORE_NOT_FOUND, ProblemError

pytestmark = pytest.mark.unit

TARGET = {
    "s3": {
        "bucket": "ml-backups",
        "prefix": "prod",
        "endpoint": "minio:9000",
        "credentialsSecretRef": {"name": "s3"},
        "tls": {"caSecretRef": {"name": "s3", "key": "ca.crt"}},
    }
}


def backup_body(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "Backup",
        "metadata": {
            "name": "nightly",
            "namespace": "ml",
            "uid": "ABCDEF12-3456-7890-abcd-ef1234567890",
            "creationTimestamp": "2026-11-30T03:00:05Z",
            "generation": 1,
        },
        "spec": {"dataStoreRef": {"name": "pg"}},
        **({"status": status} if status else {}),
    }


def store_body(backup: dict[str, Any] | None = TARGET, encryption: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"engine": "postgres", "managed": {}}
    if backup is not None:
        spec["backup"] = {"target": backup}
        if encryption:
            spec["backup"]["encryption"] = {"keySecretRef": {"name": "key", "key": "k"}}
    return {"metadata": {"name": "pg", "namespace": "ml", "uid": "store-uid-1"}, "spec": spec}


def test_the_backup_id_is_fixed_by_the_backup_itself() -> None:
    assert backup_id(backup_body()) == "20261130T030005Z-abcdef"
    created = datetime.datetime(2026, 11, 30, 3, 0, 5, tzinfo=datetime.UTC)
    assert catalog.backup_time(backup_id(backup_body())) == created


def test_a_missing_store_is_waited_for_and_a_store_without_policy_says_what_to_set() -> None:
    with pytest.raises(ProblemError) as missing:
        resolve(backup_body(), None)
    assert missing.value.problem.reason == STORE_NOT_FOUND and not missing.value.problem.stalled
    with pytest.raises(ProblemError) as nowhere:
        resolve(backup_body(), store_body(backup=None))
    p = nowhere.value.problem
    assert p.reason == NO_BACKUP_POLICY and p.stalled and "spec.backup.target" in p.message


def test_a_started_backup_is_found_from_its_status_even_when_the_store_is_gone() -> None:
    plan = resolve(backup_body(), store_body())
    st = status.compute(status.Facts(generation=1, plan=plan, attempts=1), None)
    later = resolve(backup_body(**st), None)
    assert later == plan
    assert later.location == f"s3://ml-backups/prod/ml/pg/store-uid-1/backups/{plan.backup_id}/"


def test_the_job_mounts_each_secret_once_and_carries_no_secret_value() -> None:
    plan = resolve(backup_body(), store_body())
    built = job.build(plan, "mlinfra:test", {"kind": "Backup", "name": "nightly", "uid": "u"})
    pod = built["spec"]["template"]["spec"]
    assert built["metadata"]["name"] == "nightly-backup" and built["spec"]["backoffLimit"] == job.RETRIES
    assert sorted(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v) == ["key", "pg-conn", "s3"]
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["args"] == ["take", "backup", "ml/nightly"]
    assert next(v for v in pod["volumes"] if v["name"] == "tmp")["emptyDir"] == {}  # a whole backup is staged
    env = {e["name"]: e["value"] for e in container["env"]}
    spec = json.loads(env[job.PLAN_ENV])
    assert Plan.model_validate(spec) == plan
    assert {env[var] for var in spec["secretDirs"].values()} == {m["mountPath"] for m in container["volumeMounts"][:3]}


def manifest(plan: Plan) -> catalog.Manifest:
    t0 = datetime.datetime(2026, 11, 30, 3, 0, 6, 123456, tzinfo=datetime.UTC)
    obj = catalog.ManifestObject("files/base.tar", 1000, 1064, "0" * 64, True, "key/k", 0o600)
    meta = {"timeline": 1, "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "start_segment": "0" * 23 + "2"}
    return catalog.Manifest(
        plan.backup_id, "postgres", plan.store_ref, t0, t0 + datetime.timedelta(seconds=40), (obj,), (), meta
    )


def test_the_manifest_makes_a_backup_ready_and_the_status_is_stable() -> None:
    plan = resolve(backup_body(), store_body())
    facts = status.Facts(generation=1, plan=plan, manifest=manifest(plan))
    first = status.compute(facts, None)
    assert conditions.is_true(first["conditions"], "Ready")
    assert first["sizeBytes"] == 1064 and first["encrypted"] is True
    assert first["completedAt"] == "2026-11-30T03:00:46Z"
    assert first["wal"] == {"timeline": 1, "startLsn": "0/2000028", "stopLsn": "0/2000100", "startWal": "0" * 23 + "2"}
    assert status.compute(facts, first) == first  # nothing changed: nothing to write


def test_a_failed_job_stalls_and_a_vanished_manifest_is_reported() -> None:
    plan = resolve(backup_body(), store_body())
    failed = status.compute(status.Facts(generation=1, plan=plan, job_failed="Job nightly-backup failed"), None)
    assert conditions.is_true(failed["conditions"], "Stalled")
    assert conditions.get(failed["conditions"], "Ready")["reason"] == status.BACKUP_FAILED  # type: ignore[index]
    done = status.compute(status.Facts(generation=1, plan=plan, manifest=manifest(plan)), None)
    gone = status.compute(status.Facts(generation=1, plan=plan, was_complete=True), done)
    assert conditions.get(gone["conditions"], "Ready")["reason"] == status.BACKUP_MISSING  # type: ignore[index]
    assert gone["completedAt"] == done["completedAt"]  # what it was is still said


def test_the_target_model_refuses_what_s3_would() -> None:
    with pytest.raises(ValueError, match="bucket"):
        api.Target.model_validate({"s3": {"bucket": "Bad_Bucket", "credentialsSecretRef": {"name": "s"}}})
    with pytest.raises(ValueError, match="prefix"):
        api.Target.model_validate(
            {"s3": {"bucket": "ok-bucket", "prefix": "a/../b", "credentialsSecretRef": {"name": "s"}}}
        )


def test_a_complete_backup_is_looked_at_again_only_after_the_recheck_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlinfra.backups import reconcile
    from mlinfra.context import Obj

    plan = resolve(backup_body(), store_body())
    found: list[catalog.Manifest | None] = [manifest(plan)]
    reads: list[str] = []
    clock = [1000.0]

    def read(target: Any, p: Plan) -> catalog.Manifest | None:
        reads.append(p.backup_id)
        return found[0]

    monkeypatch.setattr(reconcile, "_plan", lambda ctx, obj: plan)
    monkeypatch.setattr(reconcile, "_target", lambda ctx, p: None)
    monkeypatch.setattr(reconcile, "_manifest", read)
    monkeypatch.setattr(reconcile, "_job_state", lambda ctx, p: (None, 1))
    monkeypatch.setattr(reconcile.time, "monotonic", lambda: clock[0])
    ctx: Any = None

    def observe(previous: dict[str, Any] | None) -> dict[str, Any]:
        body = backup_body(**(previous or {}))
        return dict(reconcile.observe(ctx, Obj(body, api.Backup.model_validate(body))))

    first = observe(None)
    assert conditions.is_true(first["conditions"], "Ready") and len(reads) == 1
    clock[0] += reconcile.COMPLETE_RECHECK - 1
    assert observe(first) == first and len(reads) == 1  # found complete a moment ago: no GET
    found[0] = None  # deleted from the target outside the operator
    clock[0] += 2
    gone = observe(first)
    assert len(reads) == 2
    assert conditions.get(gone["conditions"], "Ready")["reason"] == status.BACKUP_MISSING  # type: ignore[index]
    assert observe(gone) != first and len(reads) == 3  # not complete: looked at every time
