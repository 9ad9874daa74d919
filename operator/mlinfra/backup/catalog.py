"""The backup catalog: what a complete backup is on a target, and the WAL archive beside the backups.

Layout under a store's prefix (the target may add its own prefix, e.g. an S3 bucket prefix):

    <store-prefix>/backups/<backup-id>/files/<path>     one sealed object per file of the staging directory
    <store-prefix>/backups/<backup-id>/manifest.json    written LAST: the commit point of the backup
    <store-prefix>/wal/<segment name>                   one sealed object per PostgreSQL WAL file

A backup is complete when, and only when, its manifest exists: a killed upload leaves objects without a
manifest (a *leftover*), which :func:`list_backups` never shows and :func:`delete_leftover` removes. Deleting
a backup removes the manifest FIRST, then its objects, so a crash half-way leaves a leftover, never a
manifest pointing at missing objects.

The manifest is plain JSON (a person restoring at 3 a.m. can read it with any S3 client): names, sizes,
SHA-256 of each file's plaintext, the engine's metadata. The data itself is in the sealed objects
(:mod:`mlinfra.backup.sealed`), encrypted when a key is configured. Only what matches our naming is ever
deleted: objects listed by one of our manifests, ``files/`` objects under a well-formed backup id without a
manifest, WAL names of PostgreSQL's form; a foreign object under the prefix is left alone.

WAL files are single objects without a manifest: the sealed format carries the plaintext's size and SHA-256
in its trailer, so :func:`get_wal` verifies each one on its own.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, cast

from mlinfra.backup.sealed import CHUNK, ChecksumMismatch, EncryptionKey, SealedObject, seal, unseal
from mlinfra.backup.target import NotFound, ObjectInfo, Target, check_key

FORMAT = 1
CREATED_BY = "mlinfra-operator"
MANIFEST = "manifest.json"
FILES = "files/"
DEFAULT_GRACE = datetime.timedelta(hours=6)

_ID_TIME = "%Y%m%dT%H%M%SZ"
BACKUP_ID = re.compile(r"^(\d{8}T\d{6}Z)-([0-9a-f]{6})$")
# pg_receivewal / archive_command file names: segments (TTTTTTTTXXXXXXXXYYYYYYYY), a segment still being
# written (.partial), timeline history files, backup history files (<segment>.<offset>.backup), and the
# archiver's marks (<segment>.<UTC time>.<LSN>.mark, see mlinfra.backup.pg_wal: what a restore to a time needs).
WAL_NAME = re.compile(
    r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup|\.\d{8}T\d{6}\.\d{6}Z\.[0-9A-F]{16}\.mark)?"
    r"|[0-9A-F]{8}\.history)$"
)


class CatalogError(Exception):
    """The catalog refuses: not our manifest, an id or name not of our form, a conflicting WAL file."""


class ForeignManifest(CatalogError):
    """A manifest that mlinfra did not write (or cannot read): never restored from, never deleted."""


class WalConflict(CatalogError):
    """A WAL file of that name is already archived with different contents."""


@dataclasses.dataclass(frozen=True)
class StoreRef:
    """The DataStore a backup was taken from."""

    namespace: str
    name: str
    uid: str


@dataclasses.dataclass(frozen=True)
class ManifestObject:
    """One file of a backup: ``key`` is relative to the backup's directory (``files/<path in staging>``)."""

    key: str
    size: int
    stored_size: int
    sha256: str
    encrypted: bool
    key_id: str | None
    mode: int

    @property
    def path(self) -> str:
        """The file's path relative to the staging (and restore) directory."""
        return self.key.removeprefix(FILES)


@dataclasses.dataclass(frozen=True)
class Manifest:
    backup_id: str
    engine: str
    store: StoreRef
    started: datetime.datetime
    completed: datetime.datetime
    objects: tuple[ManifestObject, ...]
    dirs: tuple[str, ...]
    meta: dict[str, Any]
    format: int = FORMAT
    created_by: str = CREATED_BY

    @property
    def total_size(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def stored_size(self) -> int:
        return sum(o.stored_size for o in self.objects)

    @property
    def encrypted(self) -> bool:
        return any(o.encrypted for o in self.objects)

    def to_json(self) -> bytes:
        doc = {
            "format": self.format,
            "createdBy": self.created_by,
            "backupId": self.backup_id,
            "engine": self.engine,
            "store": dataclasses.asdict(self.store),
            "started": _iso(self.started),
            "completed": _iso(self.completed),
            "totalSize": self.total_size,
            "storedSize": self.stored_size,
            "objects": [
                {
                    "key": o.key,
                    "size": o.size,
                    "storedSize": o.stored_size,
                    "sha256": o.sha256,
                    "encrypted": o.encrypted,
                    "keyId": o.key_id,
                    "mode": f"{o.mode:04o}",
                }
                for o in self.objects
            ],
            "dirs": list(self.dirs),
            "meta": self.meta,
        }
        return json.dumps(doc, indent=2, sort_keys=False).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parse and validate a manifest; :class:`ForeignManifest` for anything not ours or not readable."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise ForeignManifest(f"{where} is not JSON: not a manifest of ours") from None
        if not isinstance(doc, dict) or doc.get("createdBy") != CREATED_BY:
            raise ForeignManifest(f"{where} was not written by {CREATED_BY}")
        if doc.get("format") != FORMAT:
            raise ForeignManifest(f"{where} has manifest format {doc.get('format')!r}; this version reads {FORMAT}")
        try:
            objects = tuple(
                ManifestObject(
                    key=str(o["key"]),
                    size=int(o["size"]),
                    stored_size=int(o["storedSize"]),
                    sha256=str(o["sha256"]),
                    encrypted=bool(o["encrypted"]),
                    key_id=None if o["keyId"] is None else str(o["keyId"]),
                    mode=int(str(o["mode"]), 8),
                )
                for o in doc["objects"]
            )
            store = doc["store"]
            manifest = cls(
                backup_id=str(doc["backupId"]),
                engine=str(doc["engine"]),
                store=StoreRef(str(store["namespace"]), str(store["name"]), str(store["uid"])),
                started=_parse_time(doc["started"]),
                completed=_parse_time(doc["completed"]),
                objects=objects,
                dirs=tuple(str(d) for d in doc["dirs"]),
                meta=dict(doc["meta"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ForeignManifest(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
        for o in manifest.objects:
            # A manifest must never make a restore write outside its directory.
            if not o.key.startswith(FILES) or not _safe_rel(o.path) or not re.fullmatch(r"[0-9a-f]{64}", o.sha256):
                raise ForeignManifest(f"{where} lists an invalid object {o.key!r}")
        if not all(_safe_rel(d) for d in manifest.dirs):
            raise ForeignManifest(f"{where} lists an invalid directory")
        return manifest


def _iso(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: object) -> datetime.datetime:
    t = datetime.datetime.fromisoformat(str(value))
    if t.tzinfo is None:
        raise ValueError(f"time {value!r} has no timezone")
    return t.astimezone(datetime.UTC)


def _safe_rel(path: str) -> bool:
    try:
        check_key(path)
    except ValueError:
        return False
    return "\\" not in path and "\0" not in path


# --- names ---------------------------------------------------------------------------------------------------


def new_backup_id(now: datetime.datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<6 hex>``: sorts by start time; the random tail keeps two backups of one second apart."""
    now = now or datetime.datetime.now(datetime.UTC)
    return f"{now.astimezone(datetime.UTC).strftime(_ID_TIME)}-{os.urandom(3).hex()}"


def backup_id_of(created: str, uid: str) -> str:
    """The id of the backup a Backup object writes, fixed by the object itself (its ``creationTimestamp`` and
    uid): every reconcile, the Job and the pruning of leftovers agree on it before any status names it, and two
    Backups created in the same second get different ids. ValueError for a timestamp that is not one."""
    when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    return f"{when.astimezone(datetime.UTC).strftime(_ID_TIME)}-{uid.replace('-', '')[:6].lower()}"


def backup_time(backup_id: str) -> datetime.datetime:
    """The start time encoded in a backup id."""
    m = BACKUP_ID.match(backup_id)
    if not m:
        raise CatalogError(f"{backup_id!r} is not a backup id (YYYYMMDDTHHMMSSZ-xxxxxx)")
    return datetime.datetime.strptime(m.group(1), _ID_TIME).replace(tzinfo=datetime.UTC)


def _prefix(store_prefix: str) -> str:
    try:
        return check_key(store_prefix.rstrip("/"))
    except ValueError as exc:
        raise CatalogError(f"store prefix: {exc}") from None


def backups_prefix(store_prefix: str) -> str:
    return f"{_prefix(store_prefix)}/backups/"


def backup_dir(store_prefix: str, backup_id: str) -> str:
    backup_time(backup_id)  # validates the id
    return f"{backups_prefix(store_prefix)}{backup_id}/"


def manifest_key(store_prefix: str, backup_id: str) -> str:
    return backup_dir(store_prefix, backup_id) + MANIFEST


def wal_prefix(store_prefix: str) -> str:
    return f"{_prefix(store_prefix)}/wal/"


def wal_key(store_prefix: str, name: str) -> str:
    if not WAL_NAME.match(name):
        raise CatalogError(f"{name!r} is not a PostgreSQL WAL file name")
    return wal_prefix(store_prefix) + name


# --- backups -------------------------------------------------------------------------------------------------


def _exists(target: Target, key: str) -> bool:
    return any(o.key == key for o in target.list(key))


def _staged(staging_dir: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    files: list[tuple[str, Path]] = []
    dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(staging_dir):
        dirnames.sort()
        base = Path(dirpath)
        for name in dirnames:
            p = base / name
            if p.is_symlink():
                raise CatalogError(f"staging directory holds a symbolic link {p.relative_to(staging_dir)}")
            dirs.append(p.relative_to(staging_dir).as_posix())
        for name in sorted(filenames):
            p = base / name
            rel = p.relative_to(staging_dir).as_posix()
            if not stat.S_ISREG(p.lstat().st_mode):
                raise CatalogError(f"staging directory holds {rel}, which is not a regular file")
            if not _safe_rel(rel):
                raise CatalogError(f"staging file name {rel!r} cannot be an object key")
            files.append((rel, p))
    return files, dirs


def upload_backup(
    target: Target,
    store_prefix: str,
    backup_id: str,
    staging_dir: Path,
    enc_key: EncryptionKey | None,
    meta: dict[str, Any],
    *,
    engine: str,
    store: StoreRef,
    started: datetime.datetime | None = None,
    compress: bool = False,
) -> Manifest:
    """Upload every file of ``staging_dir`` as backup ``backup_id``, then its manifest (the commit point).

    ``meta`` is what the engine's take() returned (JSON-able). ``started`` defaults to the time in the id.
    A backup id that already has a manifest is refused: a complete backup is never overwritten.
    """
    mkey = manifest_key(store_prefix, backup_id)
    json.dumps(meta)  # fail before uploading gigabytes, not at the commit
    if _exists(target, mkey):
        raise CatalogError(f"backup {backup_id} already exists in {target.describe()}")
    if not staging_dir.is_dir():
        raise CatalogError(f"staging directory {staging_dir} does not exist")
    files, dirs = _staged(staging_dir)
    if not files:
        # An engine that produced nothing failed: an empty "complete" backup would hide it.
        raise CatalogError(f"staging directory {staging_dir} holds no file: nothing to back up")
    base = backup_dir(store_prefix, backup_id)
    objects: list[ManifestObject] = []
    for rel, path in files:
        sealed = seal(target, base + FILES + rel, path, enc_key, compress=compress)
        objects.append(
            ManifestObject(
                key=FILES + rel,
                size=sealed.size,
                stored_size=sealed.stored_size,
                sha256=sealed.sha256,
                encrypted=sealed.encrypted,
                key_id=sealed.key_id,
                mode=stat.S_IMODE(path.stat().st_mode),
            )
        )
    manifest = Manifest(
        backup_id=backup_id,
        engine=engine,
        store=store,
        started=started or backup_time(backup_id),
        completed=datetime.datetime.now(datetime.UTC),
        objects=tuple(objects),
        dirs=tuple(dirs),
        meta=meta,
    )
    data = manifest.to_json()
    target.put(mkey, io.BytesIO(data), len(data))
    return manifest


def read_manifest(target: Target, store_prefix: str, backup_id: str) -> Manifest:
    """The manifest of a complete backup: :class:`NotFound` without one, :class:`ForeignManifest` if not ours."""
    key = manifest_key(store_prefix, backup_id)
    buf = io.BytesIO()
    target.get(key, buf)
    manifest = Manifest.from_json(buf.getvalue(), f"{target.describe()}/{key}")
    if manifest.backup_id != backup_id:
        raise ForeignManifest(f"{key} describes backup {manifest.backup_id!r}, not {backup_id!r}")
    return manifest


def download_backup(
    target: Target, store_prefix: str, backup_id: str, into_dir: Path, enc_key: EncryptionKey | None
) -> Manifest:
    """Download a complete backup into ``into_dir`` (created; must hold none of the backup's files), verifying
    every object's size and SHA-256 against the manifest. A file appears under its name only once verified;
    on an error the exception propagates and ``into_dir`` holds only the files verified before it."""
    manifest = read_manifest(target, store_prefix, backup_id)
    base = backup_dir(store_prefix, backup_id)
    into_dir.mkdir(parents=True, exist_ok=True)
    for d in manifest.dirs:
        (into_dir / d).mkdir(parents=True, exist_ok=True)
    for o in manifest.objects:
        dest = into_dir / o.path
        if dest.exists() or dest.is_symlink():
            raise CatalogError(f"restore directory already holds {o.path}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fetch = partial(_unseal_into, target, base + o.key, enc_key, o.sha256)
        _download_to(dest, fetch, o.size)
        os.chmod(dest, o.mode)
    return manifest


def _unseal_into(
    target: Target, key: str, enc_key: EncryptionKey | None, expect_sha256: str | None, sink: BinaryIO
) -> SealedObject:
    return unseal(target, key, sink, enc_key, expect_sha256)


def _download_to(dest: Path, fetch: Callable[[BinaryIO], SealedObject], expect_size: int | None) -> SealedObject:
    """Write what ``fetch(sink)`` unseals to a temporary file beside ``dest`` and rename it on success."""
    tmp = dest.with_name(f".partial-{dest.name}.{os.urandom(4).hex()}")
    try:
        with tmp.open("xb") as sink:
            got = fetch(sink)
            sink.flush()
            os.fsync(sink.fileno())
        if expect_size is not None and got.size != expect_size:
            raise ChecksumMismatch(f"{got.key}: {got.size} bytes read, the manifest records {expect_size}")
        tmp.replace(dest)
        return got
    finally:
        tmp.unlink(missing_ok=True)


def _scan(target: Target, store_prefix: str) -> dict[str, list[ObjectInfo]]:
    """Objects under ``backups/`` grouped by well-formed backup id (other names are not ours: ignored)."""
    root = backups_prefix(store_prefix)
    found: dict[str, list[ObjectInfo]] = {}
    for info in target.list(root):
        bid, _, _rest = info.key[len(root) :].partition("/")
        if BACKUP_ID.match(bid):
            found.setdefault(bid, []).append(info)
    return found


def list_backups(target: Target, store_prefix: str) -> list[Manifest]:
    """Complete backups of ours, oldest first. A manifest that is not ours or unreadable is skipped (and so
    never deleted by retention); half-written backups are :func:`leftovers`."""
    result: list[Manifest] = []
    for bid, infos in sorted(_scan(target, store_prefix).items()):
        if manifest_key(store_prefix, bid) not in {i.key for i in infos}:
            continue
        try:
            result.append(read_manifest(target, store_prefix, bid))
        except (ForeignManifest, NotFound):
            continue
    return result


def leftovers(
    target: Target,
    store_prefix: str,
    *,
    grace: datetime.timedelta = DEFAULT_GRACE,
    now: datetime.datetime | None = None,
) -> list[str]:
    """Ids of half-written backups: objects of ours under a backup id without a manifest, whose id time and
    newest object are both older than ``grace`` (a backup still uploading is not a leftover)."""
    now = now or datetime.datetime.now(datetime.UTC)
    cutoff = now - grace
    result = []
    for bid, infos in sorted(_scan(target, store_prefix).items()):
        if _is_leftover(store_prefix, bid, infos, cutoff):
            result.append(bid)
    return result


@dataclasses.dataclass(frozen=True)
class Survey:
    """What one listing of ``backups/`` shows: the complete backups of ours (oldest first), the ids whose
    manifest is not ours or could not be read (``unreadable``: never counted, never deleted, and a reason for
    a caller deciding what a backup still needs to keep everything), and the :func:`leftovers`."""

    complete: list[Manifest]
    unreadable: list[str]
    leftovers: list[str]


def survey(
    target: Target,
    store_prefix: str,
    *,
    grace: datetime.timedelta = DEFAULT_GRACE,
    now: datetime.datetime | None = None,
) -> Survey:
    """:func:`list_backups` and :func:`leftovers` from one listing (one GET per manifest)."""
    cutoff = (now or datetime.datetime.now(datetime.UTC)) - grace
    complete: list[Manifest] = []
    unreadable: list[str] = []
    left: list[str] = []
    for bid, infos in sorted(_scan(target, store_prefix).items()):
        if manifest_key(store_prefix, bid) in {i.key for i in infos}:
            try:
                complete.append(read_manifest(target, store_prefix, bid))
            except (ForeignManifest, NotFound):
                unreadable.append(bid)
        elif _is_leftover(store_prefix, bid, infos, cutoff):
            left.append(bid)
    return Survey(complete, unreadable, left)


def _is_leftover(store_prefix: str, bid: str, infos: list[ObjectInfo], cutoff: datetime.datetime) -> bool:
    ours = [i for i in infos if i.key.startswith(backup_dir(store_prefix, bid) + FILES)]
    if any(i.key == manifest_key(store_prefix, bid) for i in infos) or not ours:
        return False
    return backup_time(bid) < cutoff and max(i.modified for i in ours) < cutoff


def delete_backup(target: Target, store_prefix: str, backup_id: str) -> Manifest:
    """Delete a complete backup of ours: the manifest first (from then on the backup is not complete), then
    the objects it lists. :class:`NotFound` if there is no manifest, :class:`ForeignManifest` if not ours."""
    manifest = read_manifest(target, store_prefix, backup_id)
    base = backup_dir(store_prefix, backup_id)
    target.delete(base + MANIFEST)
    for o in manifest.objects:
        target.delete(base + o.key)
    return manifest


def delete_leftover(target: Target, store_prefix: str, backup_id: str) -> list[str]:
    """Delete the ``files/`` objects under a backup id that has no manifest; returns the deleted keys.
    Anything else under that id (a foreign object) stays. Refuses when the backup is complete."""
    base = backup_dir(store_prefix, backup_id)
    if _exists(target, base + MANIFEST):
        raise CatalogError(f"backup {backup_id} has a manifest: it is complete, not a leftover")
    deleted = []
    for info in list(target.list(base + FILES)):
        target.delete(info.key)
        deleted.append(info.key)
    return deleted


# --- WAL -----------------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(memoryview(b))


def put_wal(
    target: Target, store_prefix: str, path: Path, enc_key: EncryptionKey | None, *, compress: bool = False
) -> SealedObject:
    """Archive one WAL file under its own name. Archiving a file again is allowed when the archived copy has
    the same contents (an archiver that crashed after uploading re-sends it); different contents are a
    :class:`WalConflict` (never overwrite archived WAL)."""
    key = wal_key(store_prefix, path.name)
    if _exists(target, key):
        existing = unseal(target, key, cast(BinaryIO, _Discard()), enc_key)
        if existing.sha256 != _sha256_file(path):
            raise WalConflict(f"{path.name} is already archived in {target.describe()} with different contents")
        return existing
    return seal(target, key, path, enc_key, compress=compress)


def get_wal(
    target: Target, store_prefix: str, name: str, dest: Path | BinaryIO, enc_key: EncryptionKey | None
) -> SealedObject:
    """Fetch one WAL file, verified by the checksum sealed with it. A ``Path`` destination appears only once
    verified (restore_command must never hand PostgreSQL a partial segment)."""
    key = wal_key(store_prefix, name)
    if isinstance(dest, Path):
        return _download_to(dest, partial(_unseal_into, target, key, enc_key, None), None)
    return unseal(target, key, dest, enc_key)


def list_wal(target: Target, store_prefix: str) -> list[str]:
    """Archived WAL file names, sorted (timeline, then position). Names not of PostgreSQL's form are ignored."""
    root = wal_prefix(store_prefix)
    return sorted(name for info in target.list(root) if WAL_NAME.match(name := info.key[len(root) :]))


def delete_wal(target: Target, store_prefix: str, names: Iterable[str]) -> None:
    """Delete archived WAL files by name (only names of PostgreSQL's form: never anything else)."""
    for name in names:
        target.delete(wal_key(store_prefix, name))
