"""A DataStore bootstrapped from a Backup (``spec.managed.bootstrap``), the operator's side: what is checked
before anything is created (each refusal a Problem that creates nothing), the record fixed in
``status.restoredFrom`` before the StatefulSet exists, the restore init container built from that record alone
(no secret value anywhere in it), and a Backup deleted afterwards changing nothing.

The in-memory Kubernetes API, and a real volume target holding real manifests and WAL names (the catalog and
the WAL planner run for real; the Secrets are read through the same code that opens the S3 target).
"""

from __future__ import annotations

import base64
import copy
import datetime
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra import problems
from mlinfra.api import backup as backup_api
from mlinfra.api import datastore as api
from mlinfra.backup import catalog, configured, pg_wal
from mlinfra.backup.sealed import EncryptionKey
from mlinfra.backup.target import Target, VolumeTarget
from mlinfra.context import Context, Obj, Recorder
from mlinfra.engines import names, render
from mlinfra.handlers import statuswrite
from mlinfra.problems import ProblemError
from mlinfra.stores import backupaccess, bootstrap, reconcile, restoreplan, status

pytestmark = pytest.mark.unit

NS = "ml"
UID = "11111111-2222-3333-4444-555555555555"
SOURCE = "features-pg"
SOURCE_UID = "99999999-8888-7777-6666-555555555555"
BACKUP = "nightly"
BACKUP_ID = "20261130T030000Z-abcdef"
MB = 1 << 20
T0 = datetime.datetime(2026, 11, 30, 3, 0, tzinfo=datetime.UTC)
# Values that must never appear outside their Secrets.
ACCESS_KEY = "AKIAEXAMPLEACCESSKEY9"
SECRET_KEY = "wJalrXUtnFEMI-example-secret-key-value"
ENCRYPTION_KEY = "5f" * 32
SECRET_VALUES = (ACCESS_KEY, SECRET_KEY, ENCRYPTION_KEY)
TARGET = {
    "s3": {"bucket": "ml-backups", "endpoint": "minio.storage.svc:9000", "credentialsSecretRef": {"name": "backup-s3"}}
}
ENCRYPTION = {"keySecretRef": {"name": "backup-key", "key": "key"}}
PREFIX = configured.store_prefix(NS, SOURCE, SOURCE_UID)


# --- fixtures --------------------------------------------------------------------------------------------------


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def backup_body(
    engine: str = "redis",
    *,
    ready: str = "True",
    reason: str = "Complete",
    stalled: str = "False",
    encryption: bool = True,
) -> dict[str, Any]:
    st: dict[str, Any] = {
        "engine": engine,
        "backupId": BACKUP_ID,
        "storeUid": SOURCE_UID,
        "target": TARGET,
        "location": f"s3://ml-backups/{PREFIX}/backups/{BACKUP_ID}/",
        "conditions": [
            {"type": "Ready", "status": ready, "reason": reason, "message": f"backup {BACKUP_ID}: {reason}"},
            {"type": "Stalled", "status": stalled, "reason": reason if stalled == "True" else "Ready", "message": ""},
        ],
    }
    if encryption:
        st["encryption"] = ENCRYPTION
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": BACKUP, "namespace": NS, "uid": "b-uid"},
        "spec": {"dataStoreRef": {"name": SOURCE}},
        "status": st,
    }


def store_body(
    engine: str = "redis",
    target_time: str | None = None,
    config: dict[str, str] | None = None,
    version: str | None = None,
    bootstrap_from: str | None = BACKUP,
) -> dict[str, Any]:
    managed: dict[str, Any] = {"replicas": 2, "storage": {"size": "1Gi"}}
    if bootstrap_from is not None:
        managed["bootstrap"] = {"backup": {"name": bootstrap_from}}
        if target_time is not None:
            managed["bootstrap"]["targetTime"] = target_time
    if config:
        managed["config"] = config
    if version:
        managed["version"] = version
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": "db", "namespace": NS, "uid": UID, "generation": 1},
        "spec": {"engine": engine, "managed": managed},
    }


class KubeReporter(Recorder):
    """Writes status_now through the handlers' own path (statuswrite.write_now), into the in-memory API."""

    def __init__(self, kube: FakeKube, body: dict[str, Any]) -> None:
        super().__init__()
        self.kube, self.body = kube, body

    def status_now(self, new: dict[str, Any]) -> None:  # type: ignore[override]
        super().status_now(new)
        statuswrite.write_now(self.kube, self.body, new, status.OWNED)


def obj(body: dict[str, Any], kube: FakeKube | None = None) -> Obj[api.DataStore]:
    report = KubeReporter(kube, body) if kube is not None else Recorder()
    return Obj(body, problems.parse(api.DataStore, body), report)


def pg_meta(stop_lsn: str = "0/3000100", mark_lsn: str = "0/3000200", version_num: int = 150008) -> dict[str, Any]:
    return {
        "label": f"mlinfra-{BACKUP_ID}",
        "timeline": 1,
        "start_lsn": "0/1000028",
        "stop_lsn": stop_lsn,
        "stop_time": T0.isoformat(),
        "stop_mark_lsn": mark_lsn,
        "wal_segment_size": 16 * MB,
        "system_identifier": "7300000000000000001",
        "server_version": "15.8",
        "server_version_num": version_num,
    }


def mark(segno: int, minutes: float) -> str:
    name = pg_wal.segment_name(1, segno, 16 * MB)
    return pg_wal.Mark(name, T0 + datetime.timedelta(minutes=minutes), segno * 16 * MB + 0x60).name


def upload(volume: VolumeTarget, tmp: Path, engine: str, meta: dict[str, Any]) -> None:
    staging = tmp / "staging"
    staging.mkdir()
    (staging / ("dump.rdb" if engine == "redis" else "base.tar")).write_bytes(b"backup bytes")
    key = EncryptionKey.from_secret_value("backup-key/key", ENCRYPTION_KEY.encode())
    store = catalog.StoreRef(NS, SOURCE, SOURCE_UID)
    catalog.upload_backup(volume, PREFIX, BACKUP_ID, staging, key, meta, engine=engine, store=store)


def archive(volume: VolumeTarget, wal_names: list[str]) -> None:
    for name in wal_names:
        volume.put(catalog.wal_key(PREFIX, name), io.BytesIO(b""))


@pytest.fixture
def volume(tmp_path: Path) -> VolumeTarget:
    root = tmp_path / "target"
    root.mkdir()
    return VolumeTarget(root)


@pytest.fixture
def opener(volume: VolumeTarget) -> bootstrap.Opener:
    """The target as the operator opens it (every Secret read through the API), then the volume in its place."""

    def open_(spec: backup_api.Target, read: backupaccess.Reader, namespace: str) -> Target:
        backupaccess.target(spec, read, namespace)
        return volume

    return open_


@pytest.fixture
def source(kube: FakeKube) -> None:
    """The Secrets the source store's backups were written with."""
    kube.put(secret("backup-s3", {"accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY}))
    kube.put(secret("backup-key", {"key": ENCRYPTION_KEY}))


@pytest.fixture
def seam(monkeypatch: pytest.MonkeyPatch, opener: bootstrap.Opener) -> Iterator[None]:
    """reconcile.reconcile opens the target through bootstrap.OPEN_TARGET: the volume here."""
    monkeypatch.setattr(bootstrap, "OPEN_TARGET", opener)
    yield


def refused(
    ctx: Context, body: dict[str, Any], opener: bootstrap.Opener
) -> tuple[problems.Problem, Obj[api.DataStore]]:
    o = obj(body)
    with pytest.raises(ProblemError) as err:
        bootstrap.restored_from(ctx, o, o.model, None, opener)
    return err.value.problem, o


def no_secret_in(*things: Any) -> None:
    text = json.dumps(things, default=str)
    for value in SECRET_VALUES:
        assert value not in text
        assert base64.b64encode(value.encode()).decode() not in text


# --- what is checked -----------------------------------------------------------------------------------------


def test_a_missing_backup_stalls_the_store_and_creates_nothing(
    ctx: Context, kube: FakeKube, source: None, opener: bootstrap.Opener
) -> None:
    problem, o = refused(ctx, store_body(), opener)
    assert (problem.reason, problem.stalled, problem.recheck) == (bootstrap.BACKUP_NOT_FOUND, True, 30.0)
    assert f"Backup {BACKUP!r} not found in namespace {NS!r}" in problem.message
    assert kube.writes == [] and isinstance(o.report, Recorder) and o.report.statuses == []
    # Through the reconcile: no child, no credentials, no status record.
    with pytest.raises(ProblemError):
        reconcile.reconcile(ctx, obj(store_body()))
    assert kube.writes == []


def test_a_backup_being_taken_is_waited_for_and_a_failed_one_stalls(
    ctx: Context, kube: FakeKube, source: None, opener: bootstrap.Opener
) -> None:
    kube.put(backup_body(ready="False", reason="Running"))
    problem, _ = refused(ctx, store_body(), opener)
    assert (problem.reason, problem.stalled, problem.recheck) == (bootstrap.BACKUP_NOT_READY, False, 30.0)
    assert "Running" in problem.message
    kube.put(backup_body(ready="False", reason="BackupFailed", stalled="True"))
    problem, _ = refused(ctx, store_body(), opener)
    assert (problem.reason, problem.stalled) == (bootstrap.BACKUP_NOT_READY, True)
    assert "BackupFailed" in problem.message
    assert problems.summary(problem)[2].status == "True"  # Stalled


def test_a_backup_of_another_engine_is_refused(
    ctx: Context, kube: FakeKube, source: None, opener: bootstrap.Opener
) -> None:
    kube.put(backup_body(engine="postgres"))
    problem, _ = refused(ctx, store_body("redis"), opener)
    assert (problem.reason, problem.stalled) == (problems.WRONG_ENGINE, True)
    assert "postgres store, not redis" in problem.message


@pytest.mark.parametrize(
    ("secrets", "reason", "named"),
    [
        ({"backup-key": {"key": ENCRYPTION_KEY}}, problems.SECRET_NOT_FOUND, "'backup-s3'"),
        (
            {"backup-s3": {"accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY}},
            problems.SECRET_NOT_FOUND,
            "'backup-key'",
        ),
        (
            {"backup-s3": {"accessKeyId": ACCESS_KEY}, "backup-key": {"key": ENCRYPTION_KEY}},
            problems.SECRET_NOT_FOUND,
            "'secretAccessKey'",
        ),
        (
            {
                "backup-s3": {"accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY},
                "backup-key": {"key": SECRET_KEY},  # a passphrase, not 64 hex digits
            },
            backupaccess.INVALID_ENCRYPTION_KEY,
            "backup-key/key",
        ),
    ],
)
def test_the_targets_secrets_and_the_key_must_exist_and_be_usable(
    ctx: Context,
    kube: FakeKube,
    volume: VolumeTarget,
    tmp_path: Path,
    opener: bootstrap.Opener,
    secrets: dict[str, dict[str, str]],
    reason: str,
    named: str,
) -> None:
    upload(volume, tmp_path, "redis", {"keys": 3})
    kube.put(backup_body())
    for name, data in secrets.items():
        kube.put(secret(name, data))
    problem, o = refused(ctx, store_body(), opener)
    # Stalled (the user creates or fixes the Secret) and looked at again: the store heals without a spec change.
    assert (problem.reason, problem.stalled, problem.recheck) == (reason, True, 30.0)
    assert named in problem.message and f"Backup {BACKUP!r}" in problem.message
    no_secret_in(problem.message)
    assert o.report.statuses == []  # type: ignore[attr-defined]


def test_a_backup_gone_from_the_target_is_refused(
    ctx: Context, kube: FakeKube, source: None, opener: bootstrap.Opener
) -> None:
    kube.put(backup_body())  # Ready, but nothing on the target
    problem, _ = refused(ctx, store_body(), opener)
    assert (problem.reason, problem.stalled) == (bootstrap.BACKUP_MISSING, True)
    assert f"{PREFIX}/backups/{BACKUP_ID}/" in problem.message


def test_a_postgres_backup_of_another_major_is_refused(
    ctx: Context, kube: FakeKube, source: None, volume: VolumeTarget, tmp_path: Path, opener: bootstrap.Opener
) -> None:
    upload(volume, tmp_path, "postgres", pg_meta(version_num=160004))
    kube.put(backup_body("postgres"))
    problem, _ = refused(ctx, store_body("postgres"), opener)  # the default: 15
    assert (problem.reason, problem.stalled) == (bootstrap.VERSION_MISMATCH, True)
    assert "PostgreSQL 16, this store would run 15" in problem.message
    o = obj(store_body("postgres", version="16"))
    assert bootstrap.restored_from(ctx, o, o.model, None, opener) is not None


@pytest.fixture
def pg_archive(kube: FakeKube, source: None, volume: VolumeTarget, tmp_path: Path) -> None:
    """A base backup ending at T0 in segment 3; the archive has 3-5 and 7-8 (6 is missing), marks at +10 and +40
    minutes: reachable from T0 to T0+10min."""
    upload(volume, tmp_path, "postgres", pg_meta())
    archive(volume, [*(pg_wal.segment_name(1, n, 16 * MB) for n in (3, 4, 5, 7, 8)), mark(4, 10), mark(8, 40)])
    kube.put(backup_body("postgres"))


@pytest.mark.parametrize(
    ("target_time", "says"),
    [
        ("2026-11-30T02:59:00Z", f"the earliest point this base backup can reach is {T0.isoformat()}"),
        ("2026-11-30T03:20:00Z", "WAL segment 000000010000000000000006 is missing"),
        ("2026-11-30T04:30:00+01:00", "after the last recoverability point 2026-11-30T03:10:00+00:00"),
    ],
)
def test_a_target_time_outside_the_reachable_window_is_refused_naming_it(
    ctx: Context, pg_archive: None, opener: bootstrap.Opener, target_time: str, says: str
) -> None:
    problem, o = refused(ctx, store_body("postgres", target_time=target_time), opener)
    assert (problem.reason, problem.stalled, problem.recheck) == (bootstrap.TARGET_TIME_UNREACHABLE, True, 60.0)
    assert says in problem.message and target_time in problem.message
    assert o.report.statuses == []  # type: ignore[attr-defined]


def test_a_reachable_target_time_is_fixed_with_where_the_data_comes_from(
    ctx: Context, kube: FakeKube, pg_archive: None, opener: bootstrap.Opener
) -> None:
    o = obj(store_body("postgres", target_time="2026-11-30T04:05:00+01:00"))
    found = bootstrap.restored_from(ctx, o, o.model, None, opener)
    assert found is not None
    written = o.report.statuses  # type: ignore[attr-defined]
    assert len(written) == 1 and backup_api.RestoredFrom.model_validate(written[0]["restoredFrom"]) == found
    record = written[0]["restoredFrom"]
    assert {k: v for k, v in record.items() if k != "restoredAt"} == {
        "backup": BACKUP,
        "backupId": BACKUP_ID,
        "engine": "postgres",
        "sourceStore": SOURCE,
        "sourceUid": SOURCE_UID,
        "target": TARGET,
        "encryption": ENCRYPTION,
        "targetTime": "2026-11-30T04:05:00+01:00",
        "location": f"s3://ml-backups/{PREFIX}/backups/{BACKUP_ID}/",
    }
    assert datetime.datetime.fromisoformat(record["restoredAt"]).tzinfo is not None
    no_secret_in(written)
    # The plan the pod gets: recover to that instant, on PostgreSQL's data volume.
    plan = bootstrap.plan(o.model, NS, found)
    assert plan.target_time == datetime.datetime(2026, 11, 30, 3, 5, tzinfo=datetime.UTC)
    assert plan.data_dir == "/var/lib/postgresql/data" and plan.location == record["location"]
    assert plan.source_prefix == PREFIX


def test_a_store_without_bootstrap_is_not_looked_at(ctx: Context, kube: FakeKube) -> None:
    o = obj(store_body(bootstrap_from=None))
    assert bootstrap.restored_from(ctx, o, o.model, None) is None
    assert o.report.statuses == []  # type: ignore[attr-defined]


# --- the record, then the StatefulSet -----------------------------------------------------------------------


@pytest.fixture
def redis_backup(kube: FakeKube, source: None, volume: VolumeTarget, tmp_path: Path, seam: None) -> None:
    upload(volume, tmp_path, "redis", {"keys": 3})
    kube.put(backup_body("redis"))


def first_reconcile(ctx: Context, kube: FakeKube, body: dict[str, Any]) -> dict[str, Any]:
    kube.put(body)
    reconcile.reconcile(ctx, obj(body, kube))
    return kube.get("DataStore", NS, "db")


def test_the_record_is_written_before_the_statefulset_and_the_pods_restore_from_it(
    ctx: Context, kube: FakeKube, redis_backup: None
) -> None:
    stored = first_reconcile(ctx, kube, store_body("redis", config={"appendonly": "yes"}))
    record = stored["status"]["restoredFrom"]
    assert record["backup"] == BACKUP and record["sourceUid"] == SOURCE_UID
    writes = [(verb, kind) for verb, kind, _, _ in kube.writes]
    assert writes.index(("patch/status", "DataStore")) < writes.index(("apply", "StatefulSet"))
    assert writes[0] == ("patch/status", "DataStore")  # before any child, the credentials too

    sts = kube.get("StatefulSet", NS, "db")
    pod = sts["spec"]["template"]["spec"]
    restore = pod["initContainers"][0]
    assert [c["name"] for c in pod["initContainers"]] == [restoreplan.CONTAINER]
    assert restore["image"] == ctx.settings.job_image and restore["args"] == ["restore", "pod"]
    assert "command" not in restore  # the image's entrypoint is `mlinfra`
    env = {e["name"]: e["value"] for e in restore["env"]}
    assert set(env) == {
        restoreplan.PLAN_ENV,
        f"{restoreplan.SECRET_DIR_ENV}_0",
        f"{restoreplan.SECRET_DIR_ENV}_1",
        "MLINFRA_LOG_FORMAT",
    }
    assert all("valueFrom" not in e for e in restore["env"])  # no Secret reaches the environment
    plan = restoreplan.RestorePlan.model_validate_json(env[restoreplan.PLAN_ENV])
    assert plan.model_dump(exclude={"target", "encryption"}) == {
        "namespace": NS,
        "store": "db",
        "backup": BACKUP,
        "backup_id": BACKUP_ID,
        "engine": "redis",
        "source_store": SOURCE,
        "source_uid": SOURCE_UID,
        "target_time": None,
        "data_dir": "/data",
        "appendonly": True,
        "secret_dirs": {"backup-s3": "MLINFRA_RESTORE_SECRET_0", "backup-key": "MLINFRA_RESTORE_SECRET_1"},
    }
    assert plan.encryption is not None and plan.encryption.key_secret_ref.name == "backup-key"
    assert json.loads(env[restoreplan.PLAN_ENV])["secretDirs"]  # camelCase on the wire, as the pod reads it
    # Each Secret read-only in its own directory, named by the variable the plan gives; the data volume.
    assert env["MLINFRA_RESTORE_SECRET_0"] == f"{restoreplan.SECRETS_ROOT}/0"
    mounts = {m["name"]: m for m in restore["volumeMounts"]}
    assert mounts[names.DATA_VOLUME] == {"name": names.DATA_VOLUME, "mountPath": "/data"}
    assert mounts["restore-secret-0"] == {
        "name": "restore-secret-0",
        "mountPath": f"{restoreplan.SECRETS_ROOT}/0",
        "readOnly": True,
    }
    assert mounts["restore-secret-1"]["readOnly"] is True and mounts["restore-tmp"]["mountPath"] == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["restore-secret-0"]["secret"] == {"secretName": "backup-s3", "optional": True}
    assert volumes["restore-secret-1"]["secret"] == {"secretName": "backup-key", "optional": True}
    assert volumes["restore-tmp"] == {"name": "restore-tmp", "emptyDir": {"sizeLimit": "64Mi"}}
    assert restore["resources"]["limits"] == {"memory": "1Gi"}
    assert restore["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "privileged": False,
        "readOnlyRootFilesystem": True,
    }
    # Everything else is the store as it renders without a bootstrap.
    plain = render.render_managed(
        problems.parse(api.DataStore, store_body("redis", config={"appendonly": "yes"}, bootstrap_from=None)),
        ctx.settings.engine_images,
        ctx.settings.operator_namespace,
    )
    plain_sts = next(o for o in plain if o["kind"] == "StatefulSet")
    stripped = copy.deepcopy(sts)
    spec = stripped["spec"]["template"]["spec"]
    del spec["initContainers"]
    spec["volumes"] = [v for v in spec["volumes"] if not v["name"].startswith("restore-")]
    for key in ("status",):
        stripped.pop(key, None)
    assert {k: v for k, v in stripped["spec"].items()} == plain_sts["spec"]
    # No secret value in anything the operator wrote but the Secrets themselves.
    no_secret_in([o for kind in ("StatefulSet", "ConfigMap", "Service", "DataStore") for o in kube.kinds(kind)])


def test_postgres_restores_before_its_own_bootstrap_container(
    ctx: Context, kube: FakeKube, pg_archive: None, seam: None
) -> None:
    first_reconcile(ctx, kube, store_body("postgres", target_time="2026-11-30T03:05:00Z"))
    pod = kube.get("StatefulSet", NS, "db")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == [restoreplan.CONTAINER, "bootstrap"]
    env = {e["name"]: e["value"] for e in pod["initContainers"][0]["env"]}
    plan = restoreplan.RestorePlan.model_validate_json(env[restoreplan.PLAN_ENV])
    assert plan.engine == "postgres" and plan.appendonly is False
    assert plan.target_time == datetime.datetime(2026, 11, 30, 3, 5, tzinfo=datetime.UTC)
    mounts = {m["name"]: m["mountPath"] for m in pod["initContainers"][0]["volumeMounts"]}
    assert mounts[names.DATA_VOLUME] == render.PROFILES["postgres"].data_dir


def test_a_backup_deleted_after_the_record_was_fixed_changes_nothing(
    ctx: Context, kube: FakeKube, redis_backup: None, volume: VolumeTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = first_reconcile(ctx, kube, store_body("redis"))
    sts = kube.get("StatefulSet", NS, "db")
    # Retention deleted the Backup, its objects went from the target, the old store's Secrets were deleted.
    kube.delete("Backup", NS, BACKUP)
    kube.delete("Secret", NS, "backup-s3")
    kube.delete("Secret", NS, "backup-key")
    for info in list(volume.list("")):
        volume.delete(info.key)

    def never(spec: backup_api.Target, read: backupaccess.Reader, namespace: str) -> Target:
        raise AssertionError("a restored store's source is not looked at again")

    monkeypatch.setattr(bootstrap, "OPEN_TARGET", never)
    writes = list(kube.writes)
    again = obj(stored, kube)
    reconcile.reconcile(ctx, again)  # the drift timer, a resume, an operator upgrade
    assert kube.get("StatefulSet", NS, "db") == sts
    assert kube.writes == writes  # nothing rewritten: the pods do not roll
    assert again.report.statuses == []  # type: ignore[attr-defined]
    # And the status the observation computes keeps the record.
    new = status.compute(status.Facts(generation=1, engine="redis", mode="managed"), stored["status"])
    assert new["restoredFrom"] == stored["status"]["restoredFrom"]
    assert status.problem_status(stored, problems.Problem("X", "y", False))["restoredFrom"] == new["restoredFrom"]


def test_a_record_written_by_an_earlier_run_is_read_back_not_checked_again(
    ctx: Context, kube: FakeKube, redis_backup: None
) -> None:
    stored = first_reconcile(ctx, kube, store_body("redis"))
    kube.delete("Backup", NS, BACKUP)
    kube.delete("StatefulSet", NS, "db")  # the run that wrote the record was killed before the StatefulSet
    stale = store_body("redis")  # the handler's body from before the record
    o = obj(stale, kube)
    found = bootstrap.restored_from(ctx, o, o.model, None)
    assert found is not None
    assert found == backup_api.RestoredFrom.model_validate(stored["status"]["restoredFrom"])
    assert o.report.statuses == []  # type: ignore[attr-defined]


def test_a_lost_record_is_read_back_from_the_statefulset(ctx: Context, kube: FakeKube, redis_backup: None) -> None:
    stored = first_reconcile(ctx, kube, store_body("redis"))
    sts = kube.get("StatefulSet", NS, "db")
    kube.delete("Backup", NS, BACKUP)
    # The status went (the object restored from a cluster backup without it).
    kube.merge_patch("DataStore", NS, "db", {"status": {"restoredFrom": None}}, subresource="status")
    lost = kube.get("DataStore", NS, "db")
    assert "restoredFrom" not in lost["status"]
    reconcile.reconcile(ctx, obj(lost, kube))
    record = kube.get("DataStore", NS, "db")["status"]["restoredFrom"]
    assert record == {k: v for k, v in stored["status"]["restoredFrom"].items() if k != "restoredAt"}
    assert kube.get("StatefulSet", NS, "db") == sts


def test_an_incomplete_record_stalls_rather_than_restoring_something_else(ctx: Context, kube: FakeKube) -> None:
    body = store_body("redis")
    body["status"] = {"restoredFrom": {"backup": BACKUP}}
    with pytest.raises(ProblemError) as err:
        reconcile.reconcile(ctx, obj(body))
    assert err.value.problem.reason == bootstrap.RECORD_INCOMPLETE and err.value.problem.stalled
    assert kube.writes == []


def test_a_store_without_bootstrap_renders_as_before(ctx: Context, kube: FakeKube) -> None:
    body = store_body("postgres", bootstrap_from=None)
    reconcile.reconcile(ctx, obj(body))
    sts = kube.get("StatefulSet", NS, "db")
    ds = problems.parse(api.DataStore, body)
    plain = next(
        o
        for o in render.render_managed(ds, ctx.settings.engine_images, ctx.settings.operator_namespace)
        if o["kind"] == "StatefulSet"
    )
    assert sts["spec"] == plain["spec"]
    assert [c["name"] for c in sts["spec"]["template"]["spec"]["initContainers"]] == ["bootstrap"]
    assert "restoredFrom" not in (kube.get_or_none("DataStore", NS, "db") or {}).get("status", {})


# --- what the restore container said -----------------------------------------------------------------------


def _pod0(state: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
    restore = {"name": restoreplan.CONTAINER, "state": state, "lastState": last or {}}
    other = {"name": "bootstrap", "state": {"waiting": {"reason": "PodInitializing"}}, "lastState": {}}
    return {"metadata": {"name": "restored-0"}, "status": {"initContainerStatuses": [restore, other]}}


FAILED_UNUSABLE = {"exitCode": 2, "reason": "Error", "message": "Unusable: Secret 'backup-key' has no key 'key'\n"}
FAILED_TARGET = {"exitCode": 1, "reason": "Error", "message": "TargetFailed: s3://bk: connection refused"}


def test_a_restore_that_cannot_succeed_stalls_the_store_with_what_the_container_said() -> None:
    waiting = {"waiting": {"reason": "CrashLoopBackOff"}}
    found = bootstrap.restore_failure("restored", [_pod0(waiting, {"terminated": FAILED_UNUSABLE})])
    assert found is not None and found.reason == bootstrap.RESTORE_FAILED and found.stalled
    assert "restored-0" in found.message and "exit 2" in found.message
    assert "Secret 'backup-key' has no key 'key'" in found.message and "\n" not in found.message
    # Running again after the back-off: the last failure stands until a run ends well.
    again = bootstrap.restore_failure("restored", [_pod0({"running": {}}, {"terminated": FAILED_UNUSABLE})])
    assert again is not None and again.stalled


def test_a_restore_that_may_succeed_later_is_reported_as_retried() -> None:
    found = bootstrap.restore_failure("restored", [_pod0({"terminated": FAILED_TARGET})])
    assert found is not None and not found.stalled and "retried" in found.message and "TargetFailed" in found.message


def test_a_restore_that_ended_well_or_has_not_ended_is_no_problem() -> None:
    done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    assert bootstrap.restore_failure("restored", [_pod0(done, {"terminated": FAILED_TARGET})]) is None
    assert bootstrap.restore_failure("restored", [_pod0({"running": {}})]) is None
    assert bootstrap.restore_failure("restored", [_pod0({"waiting": {"reason": "PodInitializing"}})]) is None
    assert bootstrap.restore_failure("restored", []) is None
    # Another store's pod of a similar name is not this store's pod 0.
    other = _pod0({"terminated": FAILED_UNUSABLE})
    other["metadata"]["name"] = "restored-2-0"
    assert bootstrap.restore_failure("restored", [other]) is None
