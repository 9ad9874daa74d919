"""``mlinfra restore pod`` decides before it reads anything: pods > 0 and volumes that hold data are left
alone, a plan or Secret it cannot use ends with exit 2 and a termination message without the secret; and the
rendered start.sh agrees with the layout and the recovery settings of the restore. (The restore itself runs
against real servers: tests/integration/test_bootstrap_restore.py.)"""

from __future__ import annotations

import json
import re
import secrets
import struct
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mlinfra import cli
from mlinfra.api.datastore import DataStore
from mlinfra.backup import catalog, configured, postgres, rdb
from mlinfra.backup.target import VolumeTarget
from mlinfra.backups import bootstrap_cli
from mlinfra.engines import render
from mlinfra.stores import backupaccess as access
from mlinfra.stores import restoreplan, sync_command

ACCESS_KEY = "AKIA-not-a-real-key-0001"
SECRET_KEY = "s3-secret-key-that-must-not-leak-0002"
BAD_KEY = "passphrase-that-must-not-leak-0003"


def plan_doc(data_dir: Path | str, engine: str = "postgres", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "namespace": "team-a",
        "store": "orders-restored",
        "backup": "orders-nightly",
        "backupId": "20260101T000000Z-abcdef",
        "engine": engine,
        "sourceStore": "orders",
        "sourceUid": "0b7c5d8e-1f2a-4b3c-9d4e-5f6a7b8c9d0e",
        "target": {
            "s3": {
                "bucket": "backups",
                "endpoint": "127.0.0.1:9",  # nothing listens: no test here may reach it
                "credentialsSecretRef": {"name": "s3-creds"},
                "tls": {"enabled": False},
            }
        },
        "encryption": {"keySecretRef": {"name": "backup-key", "key": "key"}},
        "dataDir": str(data_dir),
        "secretDirs": {"s3-creds": f"{restoreplan.SECRET_DIR_ENV}_0", "backup-key": f"{restoreplan.SECRET_DIR_ENV}_1"},
    }
    doc.update(extra)
    return doc


def secret_dirs(root: Path, key_value: str = BAD_KEY) -> dict[str, Path]:
    creds = root / "secrets" / "0"
    key = root / "secrets" / "1"
    for d in (creds, key):
        d.mkdir(parents=True)
    (creds / "accessKeyId").write_text(ACCESS_KEY)
    (creds / "secretAccessKey").write_text(SECRET_KEY)
    (key / "key").write_text(key_value)
    return {"s3-creds": creds, "backup-key": key}


@pytest.fixture
def termination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    path.write_text("")
    monkeypatch.setenv(sync_command.TERMINATION_LOG_ENV, str(path))
    for name in ("HOSTNAME", restoreplan.PLAN_ENV):
        monkeypatch.delenv(name, raising=False)
    return path


def in_pod(
    monkeypatch: pytest.MonkeyPatch, hostname: str, doc: dict[str, Any] | str | None, dirs: dict[str, Path]
) -> None:
    monkeypatch.setenv("HOSTNAME", hostname)
    if doc is not None:
        monkeypatch.setenv(restoreplan.PLAN_ENV, doc if isinstance(doc, str) else json.dumps(doc))
    for i, name in enumerate(("s3-creds", "backup-key")):
        if name in dirs:
            monkeypatch.setenv(f"{restoreplan.SECRET_DIR_ENV}_{i}", str(dirs[name]))


def summary(capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert isinstance(last, dict)
    return last, out


def never_read(name: str, key: str, what: str) -> bytes:
    raise AssertionError(f"Secret {name}/{key} read")


def test_the_ordinal_comes_from_the_hostname() -> None:
    assert bootstrap_cli.ordinal("orders-restored-0") == 0
    assert bootstrap_cli.ordinal("orders-restored-12") == 12
    for bad in ("", "orders", "orders-x", "orders-1a", "orders-\u0661"):
        with pytest.raises(bootstrap_cli.Unusable, match="ordinal"):
            bootstrap_cli.ordinal(bad)


def test_a_pod_other_than_0_exits_at_once(
    termination: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No plan at all, and the volume untouched: pod 1 does not even look.
    in_pod(monkeypatch, "orders-restored-1", None, {})
    assert bootstrap_cli.run() == sync_command.EXIT_OK
    last, out = summary(capsys)
    assert last["outcome"] == bootstrap_cli.NOT_POD_ZERO
    assert "pods > 0 copy pod 0" in out
    assert termination.read_text().startswith(f"{bootstrap_cli.NOT_POD_ZERO}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["termination-log"]


@pytest.mark.parametrize(
    ("engine", "present"),
    [("postgres", "pgdata/PG_VERSION"), ("redis", "dump.rdb"), ("redis", "appendonlydir/appendonly.aof.manifest")],
)
def test_a_volume_that_holds_data_is_not_restored_into(tmp_path: Path, engine: str, present: str) -> None:
    data = tmp_path / "volume"
    (data / present).parent.mkdir(parents=True)
    (data / present).write_text("15\n")
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*"))
    lines: list[str] = []
    plan = restoreplan.RestorePlan.model_validate(plan_doc(data, engine))
    assert bootstrap_cli.restore_into(plan, never_read, lines.append) == bootstrap_cli.HOLDS_DATA
    assert any("holds data: not restoring" in line for line in lines)
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == before  # no working directory


def test_an_empty_pgdata_or_a_foreign_file_is_not_data(tmp_path: Path) -> None:
    data = tmp_path / "volume"
    (data / "pgdata").mkdir(parents=True)
    (data / "lost+found").mkdir()
    assert bootstrap_cli.holds_data("postgres", data) is None
    assert bootstrap_cli.holds_data("redis", data) is None
    (data / "pgdata" / "PG_VERSION").write_text("15\n")
    assert bootstrap_cli.holds_data("postgres", data) == data / "pgdata"
    assert bootstrap_cli.holds_data("redis", data) is None


def test_the_command_runs_holds_data_on_pod_0(
    termination: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "volume"
    (data / "pgdata").mkdir(parents=True)
    (data / "pgdata" / "PG_VERSION").write_text("15\n")
    in_pod(monkeypatch, "orders-restored-0", plan_doc(data), secret_dirs(tmp_path))
    assert bootstrap_cli.run() == sync_command.EXIT_OK
    last, _ = summary(capsys)
    assert (last["outcome"], last["store"]) == (bootstrap_cli.HOLDS_DATA, "team-a/orders-restored")
    assert termination.read_text().startswith(f"{bootstrap_cli.HOLDS_DATA}: ")
    assert not (data / restoreplan.WORK_DIR).exists()


def unusable(termination: Path, capsys: pytest.CaptureFixture[str], *secrets: str) -> tuple[dict[str, Any], str]:
    assert bootstrap_cli.run() == sync_command.EXIT_UNUSABLE
    last, out = summary(capsys)
    message = termination.read_text()
    assert last["outcome"] == bootstrap_cli.UNUSABLE and message.startswith(f"{bootstrap_cli.UNUSABLE}: ")
    assert "\n" not in message
    for secret in (ACCESS_KEY, SECRET_KEY, BAD_KEY, *secrets):
        assert secret not in out and secret not in message
    return last, message


def test_no_plan_is_unusable(
    termination: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    in_pod(monkeypatch, "orders-restored-0", None, {})
    _, message = unusable(termination, capsys)
    assert restoreplan.PLAN_ENV in message and "is not set" in message


def test_a_plan_that_is_not_one_is_unusable_and_not_repeated(
    termination: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = "value-only-in-the-input-0004"
    doc = plan_doc(tmp_path, engine="neo4j", store={"oops": marker})
    in_pod(monkeypatch, "orders-restored-0", doc, secret_dirs(tmp_path))
    _, message = unusable(termination, capsys, marker)
    assert "engine" in message and "store" in message

    in_pod(monkeypatch, "orders-restored-0", "{not json " + marker, {})
    _, message = unusable(termination, capsys, marker)
    assert "is not a restore plan" in message


def test_a_missing_secret_directory_or_key_is_unusable_and_the_volume_untouched(
    termination: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "volume"
    data.mkdir()
    dirs = secret_dirs(tmp_path)
    in_pod(monkeypatch, "orders-restored-0", plan_doc(data), {"s3-creds": dirs["s3-creds"]})
    _, message = unusable(termination, capsys)
    assert f"{restoreplan.SECRET_DIR_ENV}_1 is not set" in message and "backup-key" in message

    (dirs["s3-creds"] / "secretAccessKey").unlink()
    in_pod(monkeypatch, "orders-restored-0", plan_doc(data), dirs)
    _, message = unusable(termination, capsys)
    assert "'s3-creds' has no key 'secretAccessKey'" in message
    assert list(data.iterdir()) == []  # the Secrets are read before the volume is touched


def test_a_key_that_is_not_one_is_unusable_without_its_value(
    termination: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "volume"
    data.mkdir()
    in_pod(monkeypatch, "orders-restored-0", plan_doc(data), secret_dirs(tmp_path, BAD_KEY))
    _, message = unusable(termination, capsys)
    assert "spec.backup.encryption" in message and f"got {len(BAD_KEY)} bytes" in message
    assert list(data.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"engine": "redis", "targetTime": "2026-01-01T00:00:00Z"}, "targetTime is for postgres"),
        ({"targetTime": "2026-01-01T00:00:00"}, "no time zone"),
        ({"dataDir": "relative/data"}, "not an absolute path"),
    ],
)
def test_plans_that_cannot_be_restored_are_unusable(
    termination: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: dict[str, Any],
    expected: str,
) -> None:
    doc = {**plan_doc(tmp_path / "volume"), **extra}
    in_pod(monkeypatch, "orders-restored-0", doc, secret_dirs(tmp_path))
    _, message = unusable(termination, capsys)
    assert expected in message


def test_the_cli_wires_restore_pod(termination: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", "orders-restored-2")
    result = CliRunner().invoke(cli.app, ["restore", "pod"])
    assert result.exit_code == 0, result.output
    assert bootstrap_cli.NOT_POD_ZERO in result.output
    monkeypatch.setenv("HOSTNAME", "orders-restored-0")
    assert CliRunner().invoke(cli.app, ["restore", "pod"]).exit_code == sync_command.EXIT_UNUSABLE
    # Options are for the by-hand restore; it still wants --into.
    assert CliRunner().invoke(cli.app, ["restore", "pod", "--into", "/tmp/x"]).exit_code == 2
    by_hand = CliRunner().invoke(cli.app, ["restore", "team-a/orders-nightly"])
    assert by_hand.exit_code == 2 and "--into" in by_hand.output


def test_start_sh_knows_the_restore_layout_and_resets_every_recovery_setting() -> None:
    ds = DataStore.model_validate(
        {"metadata": {"name": "orders", "namespace": "team-a"}, "spec": {"engine": "postgres", "managed": {}}}
    )
    script = render.render_config_files(ds)["start.sh"]
    assert f'restore_dir="$(dirname "$pgdata")/{restoreplan.WORK_DIR}"' in script
    assert f'restore_marker="${{restore_dir}}/{restoreplan.PENDING}"' in script
    assert re.findall(r"ALTER SYSTEM RESET (\w+);", script) == list(postgres.RECOVERY_SETTINGS)
    # pgdata under the data volume, as the init container lays it out.
    assert f"default_pgdata={render.PROFILES['postgres'].data_dir}/{bootstrap_cli.PGDATA}" in script


# --- restore_into on a target that is a directory (the S3 target's twin), with a minimal RDB ----------------


def tiny_rdb() -> bytes:
    content = b"REDIS0010" + b"\xfe\x00\xfb\x01\x00\x00\x01a\x01b" + b"\xff"  # db 0: a = "b"
    return content + struct.pack("<Q", rdb.crc64(0, content))


@pytest.fixture
def on_volume_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VolumeTarget:
    target = VolumeTarget(tmp_path / "target")
    monkeypatch.setattr(access, "target", lambda spec, read, namespace, reach=None: target)
    return target


def upload(target: VolumeTarget, tmp_path: Path, engine: str, uid: str, manifest_uid: str | None = None) -> str:
    """A backup under the store prefix of ``uid``, whose manifest names ``manifest_uid`` (default: the same)."""
    staging = tmp_path / f"staging-{engine}-{secrets.token_hex(3)}"
    staging.mkdir()
    (staging / "dump.rdb").write_bytes(tiny_rdb())
    doc = plan_doc(tmp_path)
    backup_id = catalog.new_backup_id()
    catalog.upload_backup(
        target,
        configured.store_prefix(doc["namespace"], doc["sourceStore"], uid),
        backup_id,
        staging,
        None,
        {"engine": engine},
        engine=engine,
        store=catalog.StoreRef(doc["namespace"], doc["sourceStore"], manifest_uid or uid),
    )
    return backup_id


def unencrypted(data: Path, engine: str, backup_id: str, **extra: Any) -> restoreplan.RestorePlan:
    doc = plan_doc(data, engine, backupId=backup_id, **extra)
    doc.pop("encryption")
    return restoreplan.RestorePlan.model_validate(doc)


def test_a_backup_of_another_engine_or_store_is_refused_before_the_volume_is_touched(
    tmp_path: Path, on_volume_target: VolumeTarget
) -> None:
    uid = plan_doc(tmp_path)["sourceUid"]
    redis_backup = upload(on_volume_target, tmp_path, "redis", uid)
    data = tmp_path / "volume"
    data.mkdir()
    with pytest.raises(bootstrap_cli.Unusable, match="is a redis backup; this store is postgres"):
        bootstrap_cli.restore_into(unencrypted(data, "postgres", redis_backup), never_read, print)
    foreign = upload(on_volume_target, tmp_path, "redis", uid, manifest_uid="another-uid")
    with pytest.raises(bootstrap_cli.Unusable, match="taken from another store"):
        bootstrap_cli.restore_into(unencrypted(data, "redis", foreign), never_read, print)
    plan = unencrypted(data, "redis", redis_backup).model_copy(update={"source_uid": "another-uid"})
    with pytest.raises(bootstrap_cli.Unusable, match="is not at"):  # another store's prefix: no such backup
        bootstrap_cli.restore_into(plan, never_read, print)
    assert list(data.iterdir()) == []


def test_redis_restores_whole_and_leaves_no_working_directory(tmp_path: Path, on_volume_target: VolumeTarget) -> None:
    uid = plan_doc(tmp_path)["sourceUid"]
    backup_id = upload(on_volume_target, tmp_path, "redis", uid)
    data = tmp_path / "volume"
    # What a killed attempt left: a half-downloaded working directory and a partial file beside the data.
    (data / restoreplan.WORK_DIR / "backup").mkdir(parents=True)
    (data / restoreplan.WORK_DIR / "backup" / ".partial-dump.rdb.1234").write_bytes(b"REDIS00")
    lines: list[str] = []
    plan = unencrypted(data, "redis", backup_id)
    assert bootstrap_cli.restore_into(plan, never_read, lines.append) == bootstrap_cli.RESTORED
    assert sorted(p.name for p in data.iterdir()) == ["dump.rdb"]
    assert (data / "dump.rdb").read_bytes() == tiny_rdb()
    assert any("a previous attempt was stopped half-way" in line for line in lines)
    assert any(f"{len(tiny_rdb())} bytes" in line for line in lines)

    aof = tmp_path / "aof-volume"
    plan = unencrypted(aof, "redis", backup_id, appendonly=True)
    assert bootstrap_cli.restore_into(plan, never_read, lines.append) == bootstrap_cli.RESTORED
    assert sorted(p.name for p in aof.iterdir()) == ["appendonlydir"]
    assert (aof / "appendonlydir" / "appendonly.aof.1.base.rdb").read_bytes() == tiny_rdb()


@pytest.mark.parametrize("damage", ["deleted", "altered"])
def test_a_damaged_backup_is_unusable_and_the_volume_stays_empty(
    termination: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    on_volume_target: VolumeTarget,
    damage: str,
) -> None:
    uid = plan_doc(tmp_path)["sourceUid"]
    backup_id = upload(on_volume_target, tmp_path, "redis", uid)
    under = catalog.backup_dir(configured.store_prefix("team-a", "orders", uid), backup_id)
    [data_object] = [o.key for o in on_volume_target.list(under) if not o.key.endswith("manifest.json")]
    if damage == "deleted":
        on_volume_target.delete(data_object)
    else:
        with (on_volume_target.root / data_object).open("r+b") as f:  # one byte of the sealed object flipped
            f.seek(-1, 2)
            last = f.read(1)
            f.seek(-1, 2)
            f.write(bytes([last[0] ^ 0xFF]))
    data = tmp_path / "volume"
    doc = plan_doc(data, "redis", backupId=backup_id, secretDirs={"s3-creds": f"{restoreplan.SECRET_DIR_ENV}_0"})
    doc.pop("encryption")
    in_pod(monkeypatch, "orders-restored-0", doc, {"s3-creds": secret_dirs(tmp_path)["s3-creds"]})
    # Running again reads the same objects: exit 2, which the store reports as Stalled (stores.bootstrap).
    assert bootstrap_cli.run() == sync_command.EXIT_UNUSABLE
    last, _ = summary(capsys)
    assert last["outcome"] == bootstrap_cli.UNUSABLE and "the backup is damaged" in last["error"]
    assert termination.read_text().startswith(f"{bootstrap_cli.UNUSABLE}: the backup is damaged")
    assert not (data / "dump.rdb").exists()
