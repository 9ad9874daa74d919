"""How far a PostgreSQL store with spec.backup can be restored: the first and last recoverability point and the
gaps in its WAL archive, read from the target itself (the manifests of its base backups and the names in its
archive: ``mlinfra.backup.recoverability``) for ``status.backup``.

Looked at no more often than every :data:`INTERVAL` seconds per store (a listing of the archive and one GET
per base backup's manifest): the last point moves with each archived mark, about once a minute, so a faster
look would only cost requests. A target that cannot be read leaves the fields as they were and says why in
``recoverabilityError`` (no secret: the target's messages name the bucket and the S3 error).

The same look, for a store of any engine, prunes what no backup needs (``stores.backupprune``) from the
listings it made: the once-a-minute look at the target is this one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from mlinfra.api import backup as backup_api
from mlinfra.backup import catalog, configured, pg_wal, recoverability
from mlinfra.backup.target import Target, TargetError
from mlinfra.context import Context
from mlinfra.k8s import objects
from mlinfra.problems import ProblemError
from mlinfra.stores import backupaccess, backupprune

log = logging.getLogger(__name__)

INTERVAL = 60.0
FIELDS = ("firstRecoverabilityPoint", "lastRecoverabilityPoint", "walGaps", "recoverabilityError")

_lock = threading.Lock()
_seen: dict[str, tuple[float, dict[str, Any]]] = {}  # store uid -> (when looked, the fields)


def fields(window: pg_wal.Recoverability) -> dict[str, Any]:
    """The status fields of a recoverability window: times (or, without a mark vouching for one, nothing)."""
    full = recoverability.to_status(window)
    first, last = full["firstRecoverabilityPoint"], full["lastRecoverabilityPoint"]
    out: dict[str, Any] = {"walGaps": full["walGapCount"]}
    if first is not None and first.get("time"):
        out["firstRecoverabilityPoint"] = first["time"]
    if last is not None and last.get("time"):
        out["lastRecoverabilityPoint"] = last["time"]
    return out


def look(
    ctx: Context, body: Mapping[str, Any], policy: backup_api.BackupPolicy, previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The recoverability fields of a PostgreSQL store (the previous ones until :data:`INTERVAL` has passed;
    none for other engines), pruning the target on the way (not while ``spec.backup.suspend``)."""
    meta = body["metadata"]
    uid = str(meta["uid"])
    postgres = (body.get("spec") or {}).get("engine") == "postgres"
    now = time.monotonic()
    with _lock:
        seen = _seen.get(uid)
    if seen is not None and now - seen[0] < INTERVAL:
        return seen[1]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    prefix = configured.store_prefix(namespace, name, uid)
    found: dict[str, Any] = {}
    try:
        reader = backupaccess.api_reader(ctx, namespace)
        target = backupaccess.target(policy.target, reader, namespace)
        listed = catalog.survey(target, prefix, grace=backupprune.LEFTOVER_GRACE)
        names: list[str] | None = None
        if postgres:
            names = catalog.list_wal(target, prefix)
            histories = recoverability.histories(target, prefix, names, backupaccess.key(policy.encryption, reader))
            bases = recoverability.postgres_bases(listed.complete, uid)
            found = fields(recoverability.compute(bases, names, histories))
    except (ProblemError, TargetError, catalog.CatalogError, pg_wal.WalError, TimeoutError) as exc:
        why = exc.problem.message if isinstance(exc, ProblemError) else str(exc)
        log.warning("backup target of DataStore %s/%s: %s", namespace, name, why)
        if postgres:
            found = {k: v for k, v in (previous or {}).items() if k in FIELDS and k != "recoverabilityError"}
            found["recoverabilityError"] = why[:1024]
    else:
        if not policy.suspend:
            _prune(
                ctx, namespace, name, uid, target, prefix, listed, names if backupprune.wal_enabled(policy) else None
            )
    with _lock:
        _seen[uid] = (now, found)
    return found


def _prune(
    ctx: Context,
    namespace: str,
    name: str,
    uid: str,
    target: Target,
    prefix: str,
    listed: catalog.Survey,
    names: list[str] | None,
) -> None:
    """Prune what the listings show no backup needs; a failure is logged (the status fields stay good)."""

    def writing() -> set[str]:
        return backupprune.writing_ids(ctx.kube.list_("Backup", namespace), name, uid)

    try:
        done = backupprune.prune(target, prefix, listed, names, writing=writing)
    except (TargetError, catalog.CatalogError, objects.ApiError, TimeoutError) as exc:
        log.warning("pruning the backup target of DataStore %s/%s: %s", namespace, name, exc)
        return
    backupprune.report(namespace, name, done)


def forget(uid: str) -> None:
    with _lock:
        _seen.pop(uid, None)
