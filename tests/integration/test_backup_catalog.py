"""The backup catalog on real targets: a staging directory goes up as one backup and comes back identical; a
killed upload is never a backup; deletion touches only what is ours; corruption is caught."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from mlinfra.backup import catalog, retention
from mlinfra.backup.catalog import (
    CatalogError,
    ForeignManifest,
    StoreRef,
    WalConflict,
    delete_backup,
    delete_leftover,
    download_backup,
    leftovers,
    list_backups,
    new_backup_id,
    upload_backup,
)
from mlinfra.backup.sealed import ChecksumMismatch, DecryptionFailed, EncryptionKey, SealError
from mlinfra.backup.target import NotFound, ObjectInfo, Target, VolumeTarget
from mlinfra.devenv.minio import MinioServer

pytestmark = pytest.mark.integration

KEY = EncryptionKey("backup-encryption/key", os.urandom(32))
STORE = StoreRef("team-a", "features-pg", "0d9c1c3e-6f1e-4a43-9d39-2f4b5c2b7a10")
PREFIX = "team-a/features-pg"
META = {"startLsn": "0/2000028", "stopLsn": "0/2000100", "timeline": 1}
BIG = 50 << 20


@pytest.fixture(params=["volume", "s3"])
def targets(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Target, Target]:
    """The target under test, and a neighbour seeing what lies around it (the directory around the volume;
    the whole bucket around the S3 target's prefix)."""
    if request.param == "volume":
        return VolumeTarget(tmp_path / "bucket" / "tenant"), VolumeTarget(tmp_path / "bucket")
    s3: MinioServer = request.getfixturevalue("s3_server")
    bucket = s3.new_bucket("catalog")
    return s3.target(bucket, "tenant"), s3.target(bucket)


@pytest.fixture
def target(targets: tuple[Target, Target]) -> Target:
    return targets[0]


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A staging directory like an engine produces: a 50 MB file, small ones, nesting, an empty file and dir."""
    root = tmp_path_factory.mktemp("staging")
    with (root / "base.tar").open("wb") as f:
        for _ in range(BIG // (1 << 20)):
            f.write(os.urandom(1 << 19) + bytes(1 << 19))
    (root / "backup_manifest").write_text('{"PostgreSQL-Backup-Manifest-Version": 1}\n')
    (root / "pg_wal.tar").write_bytes(os.urandom(3 << 20))
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "keys.rdb").write_bytes(b"REDIS0011" + os.urandom(1000))
    (root / "nested" / "empty.json").write_bytes(b"")
    (root / "empty-dir").mkdir()
    (root / "base.tar").chmod(0o600)
    return root


def _tree(root: Path) -> dict[str, str]:
    """Every file (sha256, mode) and directory under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_mode & 0o777:o}"
    return out


def _raw(target: Target, key: str) -> bytes:
    buf = io.BytesIO()
    target.get(key, buf)
    return buf.getvalue()


def _keys(target: Target, prefix: str = "") -> list[str]:
    return [o.key for o in target.list(prefix)]


@pytest.mark.parametrize("enc", [None, KEY], ids=["plain", "encrypted"])
def test_a_backup_round_trips_identically(
    target: Target, staging: Path, tmp_path: Path, enc: EncryptionKey | None
) -> None:
    bid = new_backup_id()
    up = upload_backup(target, PREFIX, bid, staging, enc, META, engine="postgres", store=STORE)
    assert up.total_size == sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    assert up.encrypted is (enc is not None)
    assert {o.key_id for o in up.objects} == {enc.key_id if enc else None}
    assert up.completed >= up.started

    listed = list_backups(target, PREFIX)
    assert [m.backup_id for m in listed] == [bid]
    assert listed[0] == up

    into = tmp_path / "restore"
    down = download_backup(target, PREFIX, bid, into, enc)
    assert down == up
    assert down.meta == META and down.engine == "postgres" and down.store == STORE
    assert _tree(into) == _tree(staging)

    # The manifest is readable JSON naming what a person restoring by hand needs, and no key material.
    manifest = _raw(target, f"{PREFIX}/backups/{bid}/manifest.json")
    assert b'"createdBy": "mlinfra-operator"' in manifest
    assert KEY.secret.hex().encode() not in manifest
    if enc:
        assert b"REDIS0011" not in _raw(target, f"{PREFIX}/backups/{bid}/files/nested/deeper/keys.rdb")


def test_the_wrong_key_or_no_key_cannot_restore_an_encrypted_backup(
    target: Target, staging: Path, tmp_path: Path
) -> None:
    bid = new_backup_id()
    upload_backup(target, PREFIX, bid, staging / "nested", KEY, {}, engine="redis", store=STORE)
    with pytest.raises(DecryptionFailed, match="wrong key") as err:
        download_backup(target, PREFIX, bid, tmp_path / "a", EncryptionKey(KEY.key_id, os.urandom(32)))
    assert KEY.secret.hex() not in str(err.value)
    with pytest.raises(DecryptionFailed, match="no key was given"):
        download_backup(target, PREFIX, bid, tmp_path / "b", None)
    # Nothing unverified was left under a file's name.
    assert not [p for p in (tmp_path / "a").rglob("*") if p.is_file()]


class Killed(Exception):
    pass


class KilledAfter:
    """A target whose writer dies after ``n`` puts (a Backup Job killed mid-upload)."""

    def __init__(self, inner: Target, n: int) -> None:
        self.inner, self.left = inner, n

    def describe(self) -> str:
        return self.inner.describe()

    def put(self, key: str, source: BinaryIO, size: int | None = None) -> None:
        if self.left == 0:
            raise Killed(key)
        self.left -= 1
        self.inner.put(key, source, size)

    def get(self, key: str, sink: BinaryIO) -> None:
        self.inner.get(key, sink)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def check(self) -> None:
        self.inner.check()


def test_a_killed_upload_is_no_backup_and_becomes_a_leftover(target: Target, staging: Path) -> None:
    done = new_backup_id(datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))
    upload_backup(target, PREFIX, done, staging / "nested", None, {}, engine="redis", store=STORE)
    killed = new_backup_id()
    with pytest.raises(Killed):
        upload_backup(KilledAfter(target, 2), PREFIX, killed, staging / "nested", None, {}, engine="redis", store=STORE)
    assert len(_keys(target, f"{PREFIX}/backups/{killed}/")) == 2  # objects, no manifest

    assert [m.backup_id for m in list_backups(target, PREFIX)] == [done]
    with pytest.raises(NotFound):
        download_backup(target, PREFIX, killed, Path("/nonexistent-never-written"), None)
    # Within the grace period it may still be uploading: not a leftover yet.
    assert leftovers(target, PREFIX) == []
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=7)
    assert leftovers(target, PREFIX, now=later) == [killed]
    assert leftovers(target, PREFIX, now=later, grace=datetime.timedelta(days=1)) == []

    # A complete backup is never a leftover and delete_leftover refuses it.
    with pytest.raises(CatalogError, match="complete"):
        delete_leftover(target, PREFIX, done)
    deleted = delete_leftover(target, PREFIX, killed)
    assert len(deleted) == 2
    assert _keys(target, f"{PREFIX}/backups/{killed}/") == []
    assert leftovers(target, PREFIX, now=later) == []
    assert [m.backup_id for m in list_backups(target, PREFIX)] == [done]


def test_deletion_and_retention_touch_only_our_objects(targets: tuple[Target, Target], staging: Path) -> None:
    target, around = targets
    t0 = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    ids = [new_backup_id(t0 + datetime.timedelta(days=i)) for i in range(3)]
    for bid in ids:
        upload_backup(target, PREFIX, bid, staging / "nested", KEY, {}, engine="redis", store=STORE)
    half = new_backup_id(t0 - datetime.timedelta(days=1))
    with pytest.raises(Killed):
        upload_backup(KilledAfter(target, 1), PREFIX, half, staging / "nested", KEY, {}, engine="redis", store=STORE)

    foreign = {
        "outside/the/prefix.txt": b"someone else's",
        "team-a/features-pg-other/backups/" + ids[0] + "/manifest.json": b"a neighbour store",
        f"{PREFIX}/notes.txt": b"a person's notes beside our folders",
        f"{PREFIX}/backups/README": b"not a backup id",
        f"{PREFIX}/backups/{ids[0]}/extra.txt": b"dropped into our backup's folder",
        f"{PREFIX}/backups/{half}/extra.txt": b"dropped into a leftover's folder",
        f"{PREFIX}/backups/20200101T000000Z-abcdef/manifest.json": b'{"createdBy": "someone-else"}',
        f"{PREFIX}/wal/not-a-segment": b"foreign",
    }
    for key, data in foreign.items():
        target.put(key, io.BytesIO(data), len(data))
    beside = b"beside the target's prefix"
    around.put("tenant-other/backups/x", io.BytesIO(beside), len(beside))

    # The foreign manifest is not ours: not listed, not restorable, not deletable, not a leftover.
    assert [m.backup_id for m in list_backups(target, PREFIX)] == ids
    with pytest.raises(ForeignManifest):
        download_backup(target, PREFIX, "20200101T000000Z-abcdef", Path("/nonexistent-never-written"), KEY)
    with pytest.raises(ForeignManifest):
        delete_backup(target, PREFIX, "20200101T000000Z-abcdef")

    # Retention over what is listed: keep the newest one.
    complete = [retention.BackupRef(m.backup_id, m.completed) for m in list_backups(target, PREFIX)]
    doomed = retention.to_delete(complete, retention.Policy(keep_last=1), datetime.datetime.now(datetime.UTC))
    assert doomed == ids[:2]
    for bid in doomed:
        delete_backup(target, PREFIX, bid)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    assert leftovers(target, PREFIX, now=later) == [half]
    delete_leftover(target, PREFIX, half)

    remaining = set(_keys(target))
    assert set(foreign) <= remaining
    ours = remaining - set(foreign)
    assert ours and all(k.startswith(f"{PREFIX}/backups/{ids[2]}/") for k in ours)
    for key, data in foreign.items():
        assert _raw(target, key) == data
    assert _raw(around, "tenant-other/backups/x") == beside
    assert {k for k in _keys(around) if not k.startswith("tenant/")} == {"tenant-other/backups/x"}
    assert [m.backup_id for m in list_backups(target, PREFIX)] == [ids[2]]

    # Names outside our forms are refused outright.
    for bad in ("../x", "20200101T000000Z-ABCDEF", "latest", ""):
        with pytest.raises(CatalogError):
            delete_leftover(target, PREFIX, bad)


@pytest.mark.parametrize(
    ("enc", "error"), [(None, ChecksumMismatch), (KEY, DecryptionFailed)], ids=["plain", "encrypted"]
)
def test_a_corrupted_stored_object_is_detected(
    target: Target, staging: Path, tmp_path: Path, enc: EncryptionKey | None, error: type[SealError]
) -> None:
    bid = new_backup_id()
    upload_backup(target, PREFIX, bid, staging, enc, META, engine="postgres", store=STORE)
    key = f"{PREFIX}/backups/{bid}/files/pg_wal.tar"
    stored = bytearray(_raw(target, key))
    stored[len(stored) // 2] ^= 0x04  # one bit, mid-object: bit rot
    target.put(key, io.BytesIO(bytes(stored)), len(stored))
    into = tmp_path / "restore"
    with pytest.raises(error, match=r"pg_wal\.tar"):
        download_backup(target, PREFIX, bid, into, enc)
    assert not (into / "pg_wal.tar").exists()
    assert not [p.name for p in into.iterdir() if p.name.startswith(".partial-")]


def test_an_object_swapped_for_another_valid_one_is_detected(target: Target, staging: Path, tmp_path: Path) -> None:
    # Both objects authenticate on their own; only the manifest's checksum says the contents are not these.
    bid = new_backup_id()
    upload_backup(target, PREFIX, bid, staging / "nested", KEY, {}, engine="redis", store=STORE)
    a, b = (f"{PREFIX}/backups/{bid}/files/{p}" for p in ("deeper/keys.rdb", "empty.json"))
    raw_a = _raw(target, a)
    target.put(b, io.BytesIO(raw_a), len(raw_a))
    with pytest.raises(ChecksumMismatch, match="the manifest expects"):
        download_backup(target, PREFIX, bid, tmp_path / "restore", KEY)


def test_a_complete_backup_is_never_overwritten(target: Target, staging: Path) -> None:
    bid = new_backup_id()
    upload_backup(target, PREFIX, bid, staging / "nested", None, {}, engine="redis", store=STORE)
    with pytest.raises(CatalogError, match="already exists"):
        upload_backup(target, PREFIX, bid, staging / "nested", None, {}, engine="redis", store=STORE)


def test_restoring_into_a_directory_holding_the_files_is_refused(target: Target, staging: Path, tmp_path: Path) -> None:
    bid = new_backup_id()
    upload_backup(target, PREFIX, bid, staging / "nested", None, {}, engine="redis", store=STORE)
    into = tmp_path / "restore"
    into.mkdir()
    (into / "empty.json").write_text("precious")
    with pytest.raises(CatalogError, match=r"already holds empty\.json"):
        download_backup(target, PREFIX, bid, into, None)
    assert (into / "empty.json").read_text() == "precious"


def test_a_staging_directory_with_a_symlink_is_refused(target: Target, tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "link").symlink_to("/etc/hostname")
    with pytest.raises(CatalogError, match="not a regular file"):
        upload_backup(target, PREFIX, new_backup_id(), stage, None, {}, engine="redis", store=STORE)
    assert _keys(target) == []


def _segment(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / "spool" / name
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("enc", [None, KEY], ids=["plain", "encrypted"])
def test_wal_files_are_archived_listed_verified_and_deleted(
    target: Target, tmp_path: Path, enc: EncryptionKey | None
) -> None:
    segs = {
        "000000010000000000000001": os.urandom(1 << 20),
        "000000010000000000000002": os.urandom(1 << 20),
        "000000010000000000000003": os.urandom(1 << 20),
        "00000002.history": b"1\t0/3000000\tno recovery target specified\n",
    }
    for name, data in segs.items():
        obj = catalog.put_wal(target, PREFIX, _segment(tmp_path, name, data), enc)
        assert obj.sha256 == hashlib.sha256(data).hexdigest()
    foreign = f"{PREFIX}/wal/README.md"
    target.put(foreign, io.BytesIO(b"x"), 1)
    assert catalog.list_wal(target, PREFIX) == sorted(segs)

    # Archiving the same file again is fine (an archiver re-sending after a crash); different contents not.
    catalog.put_wal(
        target, PREFIX, _segment(tmp_path, "000000010000000000000002", segs["000000010000000000000002"]), enc
    )
    with pytest.raises(WalConflict):
        catalog.put_wal(target, PREFIX, _segment(tmp_path, "000000010000000000000002", os.urandom(10)), enc)
    with pytest.raises(CatalogError, match="not a PostgreSQL WAL file name"):
        catalog.put_wal(target, PREFIX, _segment(tmp_path, "notes.txt", b"x"), enc)

    out = tmp_path / "restored" / "000000010000000000000002"
    out.parent.mkdir()
    catalog.get_wal(target, PREFIX, "000000010000000000000002", out, enc)
    assert out.read_bytes() == segs["000000010000000000000002"]

    # Verified on its own, without a manifest: a flipped bit means no file for restore_command.
    key = f"{PREFIX}/wal/000000010000000000000003"
    stored = bytearray(_raw(target, key))
    stored[-50] ^= 0x01
    target.put(key, io.BytesIO(bytes(stored)), len(stored))
    bad = tmp_path / "restored" / "000000010000000000000003"
    with pytest.raises(SealError):
        catalog.get_wal(target, PREFIX, "000000010000000000000003", bad, enc)
    assert not bad.exists()
    with pytest.raises(NotFound):
        catalog.get_wal(target, PREFIX, "000000010000000000000009", tmp_path / "restored" / "x", enc)

    doomed = retention.wal_to_delete(["000000010000000000000002"], catalog.list_wal(target, PREFIX))
    assert doomed == ["000000010000000000000001"]
    catalog.delete_wal(target, PREFIX, doomed)
    assert catalog.list_wal(target, PREFIX) == sorted(set(segs) - {"000000010000000000000001"})
    with pytest.raises(CatalogError):
        catalog.delete_wal(target, PREFIX, ["README.md"])
    assert _raw(target, foreign) == b"x"


def test_an_empty_or_missing_staging_directory_is_no_backup(target: Target, tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for stage in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(CatalogError, match="staging directory"):
            upload_backup(target, PREFIX, new_backup_id(), stage, None, {}, engine="redis", store=STORE)
    assert list_backups(target, PREFIX) == []


@pytest.mark.parametrize("key", ["files/../../../escape", "files//x", "other/x", "files/"])
def test_a_manifest_cannot_make_a_restore_write_outside_its_directory(
    target: Target, staging: Path, tmp_path: Path, key: str
) -> None:
    bid = new_backup_id()
    upload_backup(target, PREFIX, bid, staging / "nested", None, {}, engine="redis", store=STORE)
    mkey = f"{PREFIX}/backups/{bid}/manifest.json"
    doc = json.loads(_raw(target, mkey))
    doc["objects"][0]["key"] = key
    data = json.dumps(doc).encode()
    target.put(mkey, io.BytesIO(data), len(data))
    with pytest.raises(ForeignManifest, match="invalid object"):
        download_backup(target, PREFIX, bid, tmp_path / "restore", None)
    assert list_backups(target, PREFIX) == []
    assert not (tmp_path / "escape").exists()
