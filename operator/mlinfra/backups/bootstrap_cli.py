"""``mlinfra restore pod``: the restore init container of a store that bootstraps from a Backup
(``spec.managed.bootstrap``), in the operator's image, first init container of every pod of the StatefulSet.

The plan is in ``MLINFRA_RESTORE_PLAN`` (:class:`~mlinfra.stores.restoreplan.RestorePlan`, put there by the
operator: the pod has no Kubernetes API access), the Secrets in the read-only directories it names. Only pod 0
restores: the other pods copy pod 0 afterwards, as in any store. A volume that already holds the engine's data
is never restored into: it is the same pod started again after its restore (or a volume that had data before).

Otherwise, on the data volume (the layout is :mod:`mlinfra.stores.restoreplan`'s): the working directory a
killed attempt left is wiped, the backup is downloaded into it and every object verified (with the WAL a
PostgreSQL ``targetTime`` needs), and laid out for the engine:

- postgres: a data directory that recovers (to ``targetTime``, or to the end of the backup) and promotes, built
  beside ``pgdata`` and moved into place last, after the ``pending`` marker: ``start.sh`` sees the marker,
  finishes the recovery on a private socket, sets the new store's passwords, resets the recovery settings and
  removes the working directory (the WAL is replayed from there);
- redis: ``dump.rdb``, or with ``appendonly`` the base of a multi-part AOF, each placed whole; the working
  directory is removed.

Progress goes to stdout, then one JSON line. Exit 0 when the data is in place (or nothing was to be done),
1 when the restore failed (the kubelet runs the container again, which starts over), 2 when it cannot be done
(no plan, a Secret missing, the backup gone or of another engine). A one-line message without secrets goes to
the termination message, where the operator reads it.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic

from mlinfra.backup import catalog, pg_wal, rdb
from mlinfra.backup.sealed import EncryptionKey, SealError
from mlinfra.backup.target import NotFound, Target, TargetError
from mlinfra.problems import ProblemError
from mlinfra.stores import backupaccess as access
from mlinfra.stores import restoreplan, sync_command
from mlinfra.stores.restoreplan import RestorePlan

RESTORED = "Restored"
HOLDS_DATA = "HoldsData"
NOT_POD_ZERO = "NotPodZero"
UNUSABLE = "Unusable"
TARGET_FAILED = "TargetFailed"
RESTORE_FAILED = "RestoreFailed"

PGDATA = "pgdata"  # under the data volume, as the rendered start.sh has it
BACKUP_DIR = "backup"  # under the working directory: the downloaded backup
WAL_DIR = "wal"  # under the working directory: the WAL a postgres recovery replays (restore_command)
PARTIAL_PGDATA = "pgdata.partial"
_WAL_PROGRESS_EVERY = 16

Echo = Callable[[str], None]


class Unusable(Exception):
    """The restore cannot be done as planned; running it again does not help. The message says why."""


def holds_data(engine: str, data_dir: Path) -> Path | None:
    """What on the volume is the engine's data (a restore never overwrites it), or None."""
    if engine == "postgres":
        pgdata = data_dir / PGDATA
        return pgdata if pgdata.is_dir() and any(pgdata.iterdir()) else None
    from mlinfra.backup import redis

    for path in (data_dir / redis.FILE, data_dir / redis.AOF_DIR):
        if path.exists() or path.is_symlink():
            return path
    return None


def restore_into(plan: RestorePlan, read: access.Reader, echo: Echo, reach: access.Reach | None = None) -> str:
    """Restore the plan's backup onto the volume at ``plan.data_dir`` (pod 0's; ordinals are the caller's
    business). Returns :data:`RESTORED`, or :data:`HOLDS_DATA` when the volume has the engine's data already
    (nothing read, nothing written). Raises :class:`Unusable`, ``ProblemError`` (a Secret), ``TargetError``,
    ``CatalogError``, ``RestoreRefused`` or the engine's own errors; a failed attempt leaves only the working
    directory, which the next one wipes."""
    data_dir = Path(plan.data_dir)
    if not data_dir.is_absolute():
        # restore_command names the WAL by this path; the main container sees the volume at the same one.
        raise Unusable(f"dataDir {plan.data_dir!r} is not an absolute path")
    if plan.target_time is not None and plan.engine != "postgres":
        raise Unusable(f"targetTime is for postgres; this store is {plan.engine}")
    if plan.target_time is not None and plan.target_time.tzinfo is None:
        raise Unusable("targetTime has no time zone")
    found = holds_data(plan.engine, data_dir)
    if found is not None:
        echo(f"{found} holds data: not restoring (a restart after the restore, or a volume that had data)")
        return HOLDS_DATA
    # The Secrets and the manifest before the volume: a restore that cannot be done leaves it as it was, and
    # a backup that cannot be restored here is refused before gigabytes move.
    target = access.target(plan.target, read, plan.namespace, reach)
    key = access.key(plan.encryption, read)
    try:
        manifest = catalog.read_manifest(target, plan.source_prefix, plan.backup_id)
    except NotFound:
        raise Unusable(f"backup {plan.backup_id} is not at {plan.location} (deleted?)") from None
    except catalog.ForeignManifest as exc:
        raise Unusable(str(exc)) from None
    if manifest.engine != plan.engine:
        raise Unusable(f"backup {plan.backup_id} is a {manifest.engine} backup; this store is {plan.engine}")
    if manifest.store.uid != plan.source_uid:
        raise Unusable(f"backup {plan.backup_id} was taken from another store (uid {manifest.store.uid})")
    work = data_dir / restoreplan.WORK_DIR
    if work.exists() or work.is_symlink():
        echo(f"removing {work}: a previous attempt was stopped half-way")
        _remove(work)
    work.mkdir(parents=True, mode=0o700)
    files = work / BACKUP_DIR
    echo(
        f"downloading backup {plan.backup_id} of {plan.namespace}/{plan.source_store} from {plan.location}:"
        f" {len(manifest.objects)} files, {manifest.total_size} bytes (every object verified)"
    )
    started = time.monotonic()
    manifest = catalog.download_backup(target, plan.source_prefix, plan.backup_id, files, key)
    seconds = max(time.monotonic() - started, 1e-3)
    echo(f"downloaded {manifest.total_size} bytes in {seconds:.1f} s ({manifest.total_size / seconds / 1e6:.1f} MB/s)")
    if plan.engine == "postgres":
        _postgres(plan, target, key, manifest, work, echo)
    else:
        _redis(plan, files, work, echo)
    return RESTORED


def _postgres(
    plan: RestorePlan,
    target: Target,
    key: EncryptionKey | None,
    manifest: catalog.Manifest,
    work: Path,
    echo: Echo,
) -> None:
    from mlinfra.backup import postgres

    data_dir = Path(plan.data_dir)
    wal = work / WAL_DIR
    wal.mkdir(mode=0o700)
    if plan.target_time is not None:
        # Only the WAL files this target needs, from the source's archive (mlinfra archive wal).
        try:
            wal_plan = pg_wal.plan_restore(
                manifest.meta, catalog.list_wal(target, plan.source_prefix), plan.target_time
            )
        except pg_wal.RestoreRefused as exc:
            raise Unusable(str(exc)) from None
        total = len(wal_plan.files)
        echo(f"downloading {total} WAL files to replay to {plan.target_time.isoformat()}")
        size = 0
        for i, name in enumerate(wal_plan.files, 1):
            catalog.get_wal(target, plan.source_prefix, name, wal / name, key)
            size += (wal / name).stat().st_size
            if i % _WAL_PROGRESS_EVERY == 0 or i == total:
                echo(f"WAL: {i}/{total} files, {size} bytes")
    partial = work / PARTIAL_PGDATA
    to = f"to {plan.target_time.isoformat()}" if plan.target_time else "to the end of the backup"
    echo(f"laying out the data directory: it recovers {to}, then promotes")
    postgres.restore(work / BACKUP_DIR, wal, partial, target_time=plan.target_time)
    shutil.rmtree(work / BACKUP_DIR)  # laid out: the tars would only double the space the volume needs
    _fsync_tree(partial)
    # The marker first, then the data directory: a pgdata without the marker would start as a primary that
    # never finished its recovery settings nor got the new store's passwords.
    marker = work / restoreplan.PENDING
    with open(marker, "w") as f:
        f.write(json.dumps({"backupId": plan.backup_id, "targetTime": _iso(plan.target_time)}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    rdb.fsync_dir(work)
    partial.rename(data_dir / PGDATA)
    rdb.fsync_dir(data_dir)
    echo(f"restored into {data_dir / PGDATA}: the server finishes the recovery at its start")


def _redis(plan: RestorePlan, files: Path, work: Path, echo: Echo) -> None:
    from mlinfra.backup import redis

    data_dir = Path(plan.data_dir)
    # restore() checks the snapshot, then places it whole (a partial file renamed, an AOF directory renamed).
    redis.restore(files, data_dir, appendonly=plan.appendonly)
    shutil.rmtree(work)
    rdb.fsync_dir(data_dir)
    placed = redis.AOF_DIR if plan.appendonly else redis.FILE
    echo(f"restored into {data_dir / placed} (appendonly {'yes' if plan.appendonly else 'no'})")


def _iso(t: datetime.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _fsync_tree(root: Path) -> None:
    """Every file and directory under ``root`` on disk before the data directory is put in place: a node that
    crashes right after must not find it holding files without their contents."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        rdb.fsync_dir(Path(dirpath))


# --- the command ---------------------------------------------------------------------------------------------


def ordinal(hostname: str) -> int:
    """The pod's ordinal from its hostname (``<statefulset>-<ordinal>``), as the start scripts read it."""
    tail = hostname.rpartition("-")[2]
    if not hostname or not tail.isascii() or not tail.isdigit():
        raise Unusable(f"cannot tell this pod's ordinal from HOSTNAME={hostname!r}")
    return int(tail)


class _Remembered:
    """A Secret reader that remembers the values it read, so that no message can carry one."""

    def __init__(self, read: access.Reader) -> None:
        self._read = read
        self.values: set[str] = set()

    def __call__(self, name: str, key: str, what: str) -> bytes:
        value = self._read(name, key, what)
        text = value.decode(errors="replace").strip()
        if len(text) >= 4:
            self.values.add(text)
        return value

    def scrub(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, "***")
        return text


def load_plan() -> tuple[RestorePlan, access.Reader]:
    """The plan from the environment, and a reader of the Secrets mounted where it says."""
    raw = os.environ.get(restoreplan.PLAN_ENV)
    if not raw:
        raise Unusable(f"{restoreplan.PLAN_ENV} is not set: this command runs in a bootstrapped store's pods")
    try:
        plan = RestorePlan.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        # loc and msg only: a message never repeats the input.
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'plan'}: {e['msg']}" for e in exc.errors()[:5])
        raise Unusable(f"{restoreplan.PLAN_ENV} is not a restore plan ({exc.error_count()} errors): {errors}") from None
    dirs: dict[str, Path] = {}
    for secret, env in plan.secret_dirs.items():
        directory = os.environ.get(env)
        if not directory:
            raise Unusable(f"{env} is not set: it names the directory of Secret {secret!r}")
        dirs[secret] = Path(directory)
    missing = [s for s in restoreplan.secret_names(plan.target, plan.encryption) if s not in dirs]
    if missing:
        raise Unusable(f"the plan mounts no directory for Secret(s) {', '.join(missing)}")
    return plan, access.mounted_reader(dirs)


def _print(line: str) -> None:
    print(line, flush=True)


def _emit(summary: dict[str, Any]) -> None:
    _print(json.dumps(summary, sort_keys=True, default=str))


def run(echo: Echo = _print) -> int:
    """``mlinfra restore pod``: the exit code (sync_command.EXIT_*)."""
    store = "?"
    remembered: _Remembered | None = None

    def done(outcome: str, message: str, code: int) -> int:
        message = remembered.scrub(message) if remembered is not None else message
        ok = code == sync_command.EXIT_OK
        _emit({"store": store, "outcome": outcome, "message" if ok else "error": message})
        sync_command.termination_message(outcome, message)
        return code

    try:
        pod = ordinal(os.environ.get("HOSTNAME", ""))
        if pod != 0:
            echo(f"pod {pod}: nothing to restore (pods > 0 copy pod 0)")
            return done(NOT_POD_ZERO, f"pod {pod}: pods > 0 copy pod 0", sync_command.EXIT_OK)
        plan, read = load_plan()
        store = f"{plan.namespace}/{plan.store}"
        remembered = _Remembered(read)
        outcome = restore_into(plan, remembered, echo)
    except (Unusable, pg_wal.RestoreRefused, catalog.ForeignManifest) as exc:
        return done(UNUSABLE, str(exc), sync_command.EXIT_UNUSABLE)
    except (NotFound, SealError) as exc:
        # An object the manifest names is gone, or does not verify (or open with the key): the backup is damaged,
        # and running again reads the same objects.
        return done(UNUSABLE, f"the backup is damaged: {exc}", sync_command.EXIT_UNUSABLE)
    except ProblemError as exc:  # a Secret or its key missing, a key that is not one
        return done(UNUSABLE, exc.problem.message, sync_command.EXIT_UNUSABLE)
    except TargetError as exc:
        return done(TARGET_FAILED, str(exc), sync_command.EXIT_FAILED)
    except Exception as exc:  # the catalog's, the engine's, the volume's: one line, the kubelet runs us again
        return done(RESTORE_FAILED, f"{type(exc).__name__}: {exc}", sync_command.EXIT_FAILED)
    if outcome == HOLDS_DATA:
        return done(HOLDS_DATA, f"{plan.data_dir} holds data: not restoring", sync_command.EXIT_OK)
    return done(RESTORED, f"backup {plan.backup_id} restored into {plan.data_dir}", sync_command.EXIT_OK)
