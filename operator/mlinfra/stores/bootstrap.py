"""A managed store that starts from a Backup (``spec.managed.bootstrap``): the source is checked and fixed once
in ``status.restoredFrom`` before the store's children are first created, and the restore init container of its
pods is built from that record alone (``stores.restoreplan`` is the contract with the container).

The record is written before the StatefulSet exists (an operator killed in between finds it and creates the
same pods) and never again: a store already restored is not looked at against its Backup any more, so the
Backup may be deleted by its retention without the pods changing or rolling. A record lost with the status
(an object restored without it) is read back from the StatefulSet's own restore container.

What is checked, each a Problem the store's status shows (none of them creates anything):

- the Backup exists in the store's namespace (``BackupNotFound``) and is complete (``BackupNotReady``: only
  Reconciling while it is still being taken; Stalled when it failed), of the store's engine (``WrongEngine``);
- the Secrets its target and key need exist and the key is well-formed (``SecretNotFound``,
  ``InvalidEncryptionKey``), and the target answers with the backup's manifest (``TargetUnreachable``,
  ``BackupMissing``); a PostgreSQL backup is of the store's major version (``VersionMismatch``: a data
  directory starts only under its own major);
- a ``targetTime`` lies between the backup's end and the last recoverability point of the source's WAL
  archive, without a gap on the way (``TargetTimeUnreachable``, naming the reachable window or the missing
  segment; looked at again every minute: the archive grows).
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pydantic

from mlinfra.api import backup as backup_api
from mlinfra.api import datastore as api
from mlinfra.backup import catalog, configured, pg_wal
from mlinfra.backup.target import NotFound, Target, TargetError
from mlinfra.context import Context, Obj
from mlinfra.engines import names, render
from mlinfra.k8s import conditions
from mlinfra.problems import WRONG_ENGINE, Problem, ProblemError
from mlinfra.stores import backupaccess, restoreplan, versions, volumeserver

BACKUP_NOT_FOUND = "BackupNotFound"
BACKUP_NOT_READY = "BackupNotReady"
BACKUP_MISSING = "BackupMissing"
TARGET_UNREACHABLE = "TargetUnreachable"
TARGET_TIME_UNREACHABLE = "TargetTimeUnreachable"
VERSION_MISMATCH = "VersionMismatch"
RECORD_INCOMPLETE = "RestoredFromIncomplete"
INVALID_SECRET = "InvalidSecret"  # noqa: S105 - a reason, not a secret
RECHECK = 30.0  # seconds: a Backup being taken, a Secret being created
TARGET_RECHECK = 60.0  # seconds: a target that refused, an archive that has not reached the target time yet

FIELD = "restoredFrom"
SECRET_VOLUME = "restore-secret"  # noqa: S105 - a volume name: restore-secret-<n>
TMP_VOLUME = "restore-tmp"
# What the restore container may use: downloads go to the data volume, not memory; /tmp only for small files.
RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
TMP_SIZE = "64Mi"

# (the target as a Backup's status says, how to read its Secrets) -> the target: the S3 target in the operator;
# a test passes a volume target opened after the same Secret reads.
Opener = Callable[[backup_api.Target, backupaccess.Reader, str], Target]
OPEN_TARGET: Opener = backupaccess.target


def _problem(reason: str, message: str, stalled: bool = True, recheck: float | None = RECHECK) -> ProblemError:
    return ProblemError(Problem(reason, message[:1024], stalled=stalled, recheck=recheck))


def _complete(found: backup_api.RestoredFrom) -> bool:
    return all(
        (found.backup, found.backup_id, found.engine in restoreplan.BOOTSTRAP_ENGINES, found.source_store)
    ) and bool(found.source_uid and found.target)


def _record(status: Mapping[str, Any] | None) -> backup_api.RestoredFrom | None:
    raw = (status or {}).get(FIELD)
    if not raw:
        return None
    try:
        found = backup_api.RestoredFrom.model_validate(raw)
    except pydantic.ValidationError:
        found = None
    if found is None or not _complete(found):
        raise _problem(
            RECORD_INCOMPLETE,
            "status.restoredFrom is incomplete (edited by hand?): the restore of this store's pods is built from "
            "it alone; put it back as the operator wrote it, or create a new DataStore",
            recheck=None,
        )
    return found


def _from_statefulset(ds: api.DataStore, sts: Mapping[str, Any]) -> backup_api.RestoredFrom | None:
    """The record, read back from the restore container of a StatefulSet made from it."""
    plan = restoreplan.plan_in(sts)
    if plan is None:
        return None
    bootstrap = ds.spec.managed.bootstrap if ds.spec.managed is not None else None
    return backup_api.RestoredFrom(
        backup=plan.backup,
        backup_id=plan.backup_id,
        engine=plan.engine,
        source_store=plan.source_store,
        source_uid=plan.source_uid,
        target=plan.target,
        encryption=plan.encryption,
        target_time=bootstrap.target_time if bootstrap is not None and plan.target_time is not None else None,
        location=plan.location,
    )


def _status_of(found: backup_api.RestoredFrom) -> dict[str, Any]:
    out = found.model_dump(mode="json", by_alias=True, exclude_none=True)
    if found.target is not None:  # as a Backup's status shows it: what was written, defaults left out
        out["target"] = found.target.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return out


def restored_from(
    ctx: Context,
    obj: Obj[api.DataStore],
    ds: api.DataStore,
    sts: Mapping[str, Any] | None,
    open_target: Opener | None = None,
) -> backup_api.RestoredFrom | None:
    """Where the store's data comes from: None for a store without ``spec.managed.bootstrap``; else the record
    in ``status.restoredFrom``, checked and written the first time (ProblemError when the source is not
    usable). ``ds`` is the store as it will be rendered (its version pinned); ``sts`` its StatefulSet, when one
    of this store exists."""
    found = _record(obj.status)
    if found is not None:
        return found
    bootstrap = ds.spec.managed.bootstrap if ds.spec.managed is not None else None
    if bootstrap is None:
        return None
    if sts is not None:
        # Made before: by a record this status no longer holds, or (bootstrap added to a running store, which
        # the API server refuses) without one: such a store already has its data and is never restored into.
        found = _from_statefulset(ds, sts)
        if found is None:
            return None
    else:
        # The handler's body may predate the record an earlier run wrote a moment ago: ask the API server.
        live = ctx.kube.get_or_none("DataStore", obj.namespace, obj.name)
        if live is not None and live["metadata"].get("uid") == obj.body["metadata"].get("uid"):
            found = _record(live.get("status"))
            if found is not None:
                return found
        found = check(ctx, obj.namespace, ds, bootstrap, open_target or OPEN_TARGET)
    # Written now, before any child exists: the StatefulSet is rendered from this record only.
    obj.report.status_now({**obj.status, FIELD: _status_of(found)})
    return found


# --- the checks --------------------------------------------------------------------------------------------


def _backup(ctx: Context, namespace: str, name: str, engine: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The complete Backup ``name`` of an ``engine`` store, and its status."""
    what = f"spec.managed.bootstrap.backup: Backup {name!r}"
    body = ctx.kube.get_or_none("Backup", namespace, name)
    if body is None:
        raise _problem(BACKUP_NOT_FOUND, f"{what} not found in namespace {namespace!r}")
    status: Mapping[str, Any] = body.get("status") or {}
    conds = status.get("conditions")
    if not conditions.is_true(conds, "Ready"):
        failed = conditions.is_true(conds, "Stalled")
        ready = conditions.get(conds, "Ready") or {}
        why = f"{ready.get('reason')}: {ready.get('message')}" if ready else "it has no status yet"
        hint = "name a complete Backup (create a new DataStore)" if failed else "the store starts once it is"
        raise _problem(BACKUP_NOT_READY, f"{what} is not complete ({why}); {hint}", stalled=failed)
    got = status.get("engine")
    if got != engine:
        raise _problem(
            WRONG_ENGINE,
            f"{what} is a backup of a {got} store, not {engine}: create a new DataStore naming a {engine} Backup",
            recheck=None,
        )
    if not (status.get("target") and status.get("storeUid") and status.get("backupId")):
        raise _problem(BACKUP_NOT_READY, f"{what}: its status does not say where the backup is (target, storeUid)")
    return body, status


def source_claims(ctx: Context, obj: Obj[api.DataStore]) -> list[str]:
    """The volume claim a bootstrapping store reads its backup from (its record's target once written, the
    Backup's before); none for other stores. The store keeps that claim served while it exists: the restore
    container of a pod 0 that lost its volume needs it again."""
    managed = obj.model.spec.managed
    if managed is None or managed.bootstrap is None:
        return []
    record = (obj.status or {}).get("restoredFrom") or {}
    target = record.get("target")
    if target is None:
        backup = ctx.kube.get_or_none("Backup", obj.namespace, managed.bootstrap.backup.name)
        target = ((backup or {}).get("status") or {}).get("target")
    claim = volumeserver.claim_of(target)
    return [claim] if claim else []


def check(
    ctx: Context, namespace: str, ds: api.DataStore, bootstrap: backup_api.Bootstrap, open_target: Opener
) -> backup_api.RestoredFrom:
    """The record for ``bootstrap``, once everything a restore needs was found usable; ProblemError otherwise."""
    engine = ds.spec.engine
    name = bootstrap.backup.name
    what = f"spec.managed.bootstrap.backup: Backup {name!r}"
    body, status = _backup(ctx, namespace, name, engine)
    try:
        spec = backup_api.Target.model_validate(status["target"])
        encryption = backup_api.Encryption.model_validate(status["encryption"]) if status.get("encryption") else None
    except pydantic.ValidationError as exc:
        raise _problem(
            BACKUP_NOT_READY, f"{what}: its status.target is not readable ({exc.error_count()} errors)"
        ) from None
    source, source_uid, backup_id = (
        str(body["spec"]["dataStoreRef"]["name"]),
        str(status["storeUid"]),
        str(status["backupId"]),
    )
    prefix = configured.store_prefix(namespace, source, source_uid)
    location = configured.location(spec, prefix, backup_id)
    if spec.volume is not None:
        volumeserver.wait_ready(ctx, namespace, spec.volume.claim_name)
    read = backupaccess.api_reader(ctx, namespace)
    try:
        backupaccess.key(encryption, read)
        target = open_target(spec, read, namespace)
    except ProblemError as exc:
        # A Secret created or fixed later heals the store: looked at again, with the Backup named.
        raise _problem(exc.problem.reason, f"{what}: {exc.problem.message}") from None
    except ValueError as exc:  # a Secret value that is not text (the message names the key, never the value)
        raise _problem(INVALID_SECRET, f"{what}: {exc}") from None
    except TargetError as exc:
        raise _problem(TARGET_UNREACHABLE, f"{what}: {exc}", recheck=TARGET_RECHECK) from None
    target_time = bootstrap.target_datetime
    try:
        manifest = catalog.read_manifest(target, prefix, backup_id)
        archived = catalog.list_wal(target, prefix) if target_time is not None else []
    except NotFound:
        raise _problem(
            BACKUP_MISSING, f"{what}: its manifest is no longer at {location} (deleted from the target)"
        ) from None
    except (TargetError, catalog.CatalogError) as exc:
        raise _problem(TARGET_UNREACHABLE, f"{what}: {exc}", recheck=TARGET_RECHECK) from None
    if manifest.engine != engine:
        raise _problem(WRONG_ENGINE, f"{what}: the backup at {location} is of a {manifest.engine} store", recheck=None)
    if engine == "postgres":
        _same_major(ds, manifest.meta, what)
    if target_time is not None:
        try:
            pg_wal.plan_restore(manifest.meta, archived, target_time)
        except (pg_wal.RestoreRefused, pg_wal.WalError) as exc:
            raise _problem(
                TARGET_TIME_UNREACHABLE,
                f"spec.managed.bootstrap.targetTime {bootstrap.target_time}: {exc} (source store {source!r}'s "
                f"archive with {what})",
                recheck=TARGET_RECHECK,
            ) from None
    return backup_api.RestoredFrom(
        backup=name,
        backup_id=backup_id,
        engine=engine,
        source_store=source,
        source_uid=source_uid,
        target=spec,
        encryption=encryption,
        target_time=bootstrap.target_time,
        location=location,
        restored_at=conditions.now(),
    )


def _same_major(ds: api.DataStore, meta: Mapping[str, Any], what: str) -> None:
    number = meta.get("server_version_num")
    if not isinstance(number, int) or number <= 0:
        return  # an older manifest without it: the restore itself finds out
    source = str(number // 10000) if number >= 100000 else f"{number // 10000}.{number // 100 % 100}"
    running = versions.major(render.version(ds))
    if source != running:
        raise _problem(
            VERSION_MISMATCH,
            f"{what} is of PostgreSQL {source}, this store would run {running}: a data directory starts only under "
            f"its own major version; create the DataStore with spec.managed.version {source}",
            recheck=None,
        )


# --- the restore init container ----------------------------------------------------------------------------


def plan(ds: api.DataStore, namespace: str, found: backup_api.RestoredFrom) -> restoreplan.RestorePlan:
    """What pod 0's restore does, from the record (and where the engine keeps its data)."""
    assert found.backup and found.backup_id and found.source_store and found.source_uid and found.target
    managed = ds.spec.managed
    config = (managed.config if managed is not None else None) or {}
    secrets = restoreplan.secret_names(found.target, found.encryption)
    return restoreplan.RestorePlan(
        namespace=namespace,
        store=ds.metadata.name,
        backup=found.backup,
        backup_id=found.backup_id,
        engine=ds.spec.engine,  # the API allows bootstrap for redis and postgres only: pydantic refuses others
        source_store=found.source_store,
        source_uid=found.source_uid,
        target=found.target,
        encryption=found.encryption,
        target_time=datetime.datetime.fromisoformat(found.target_time) if found.target_time else None,
        data_dir=render.PROFILES[ds.spec.engine].data_dir,
        appendonly=ds.spec.engine == "redis" and config.get("appendonly") == "yes",
        secret_dirs={secret: f"{restoreplan.SECRET_DIR_ENV}_{i}" for i, secret in enumerate(secrets)},
    )


def first_init(ds: api.DataStore, namespace: str, found: backup_api.RestoredFrom, image: str) -> render.FirstInit:
    """The restore container (first in every pod: pods > 0 skip it at once) and the volumes only it mounts.
    The plan is plain JSON in its environment; the Secrets are mounted, never copied into the spec."""
    restore = plan(ds, namespace, found)
    secrets = list(restore.secret_dirs)
    env = [{"name": restoreplan.PLAN_ENV, "value": restore.model_dump_json(by_alias=True)}]
    env += [
        {"name": f"{restoreplan.SECRET_DIR_ENV}_{i}", "value": f"{restoreplan.SECRETS_ROOT}/{i}"}
        for i in range(len(secrets))
    ]
    env.append({"name": "MLINFRA_LOG_FORMAT", "value": "json"})
    mounts: list[dict[str, Any]] = [{"name": names.DATA_VOLUME, "mountPath": restore.data_dir}]
    mounts += [
        {"name": f"{SECRET_VOLUME}-{i}", "mountPath": f"{restoreplan.SECRETS_ROOT}/{i}", "readOnly": True}
        for i in range(len(secrets))
    ]
    mounts.append({"name": TMP_VOLUME, "mountPath": "/tmp"})  # noqa: S108 - an emptyDir: the root is read-only
    container = {
        "name": restoreplan.CONTAINER,
        "image": image,
        "args": ["restore", "pod"],  # after the image's entrypoint (`mlinfra`)
        "env": env,
        "resources": copy.deepcopy(RESOURCES),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    # Optional: once the data is on the volume the restore is skipped, and a pod restarted after the Secrets
    # were deleted (the old store's, rotated) must still start. Their presence was checked before the record.
    volumes: list[dict[str, Any]] = [
        {"name": f"{SECRET_VOLUME}-{i}", "secret": {"secretName": secret, "optional": True}}
        for i, secret in enumerate(secrets)
    ]
    volumes.append({"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE}})
    return render.FirstInit(container=container, volumes=volumes)


# --- what the restore container said --------------------------------------------------------------------------

RESTORE_FAILED = "RestoreFailed"
UNUSABLE_EXIT = 2  # backups.bootstrap_cli: the plan, a Secret or the backup cannot be used; retrying cannot help


def restore_failure(store: str, pods: Sequence[Mapping[str, Any]]) -> Problem | None:
    """Pod 0's restore container failed its last run: a Problem with the line it left (its termination message,
    one line, no secret: ``mlinfra restore pod`` scrubs it), else None. Exit 2 (unusable: a Secret's value,
    the backup gone or not this store's) is Stalled — the kubelet runs it again and again for nothing; any other
    failure (the target for a while, the volume full) is retried by the kubelet and reported as Reconciling."""
    pod0 = next((p for p in pods if p.get("metadata", {}).get("name") == names.pod(store, 0)), None)
    statuses = ((pod0 or {}).get("status") or {}).get("initContainerStatuses") or []
    state = next((s for s in statuses if s.get("name") == restoreplan.CONTAINER), None)
    if state is None:
        return None
    done = (state.get("state") or {}).get("terminated")
    if done is not None and done.get("exitCode") == 0:
        return None
    # Waiting out the kubelet's back-off, or running again: what the last failed run said stands until one ends well.
    ended = done or (state.get("lastState") or {}).get("terminated")
    if not ended:
        return None
    code = ended.get("exitCode")
    said = " ".join(str(ended.get("message") or ended.get("reason") or "").split())[:512]
    unusable = code == UNUSABLE_EXIT
    return Problem(
        RESTORE_FAILED,
        f"pod {names.pod(store, 0)}: the restore from status.restoredFrom failed (exit {code}, "
        f"{'it cannot succeed as things are: fix what it says and it runs again' if unusable else 'retried'}): "
        f"{said or 'no message'}",
        stalled=unusable,
        recheck=RECHECK,
    )
