"""``mlinfra restore NAMESPACE/BACKUP --into DIR``: a complete Backup downloaded, verified and laid out for its
engine, by hand — the runbook's tool until a DataStore can bootstrap from a backup by itself.

The Backup's status says where it is and with which key (the store may be gone); the Secrets are read through
the Kubernetes API with the caller's credentials. Every object's SHA-256 is checked (and its seal, when
encrypted) before anything is written under its name. Then, per engine:

- redis: ``DIR/redis-data/dump.rdb`` (``--appendonly``: the base of a multi-part AOF instead), for a NEW
  redis-server started with ``dir DIR/redis-data``;
- postgres: ``DIR/pgdata``, a data directory that recovers to the end of the base backup — or, with
  ``--target-time``, through the store's WAL archive (``DIR/wal``: only the files that target needs) to exactly
  the transactions committed before it — and promotes, for a NEW server (``pg_ctl -D DIR/pgdata start``);
- neo4j, qdrant: loaded into the (empty) DataStore named by ``--to`` through its published connection Secret
  (reachable from where this runs: in the cluster, or through a port-forward).
"""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Callable
from typing import Any

from mlinfra.backup import catalog, pg_wal
from mlinfra.backup.target import TargetError
from mlinfra.backups.plan import resolve
from mlinfra.k8s import conditions, objects
from mlinfra.problems import ProblemError
from mlinfra.stores import backupaccess as access
from mlinfra.stores import connsecret, sync_command

TIMEOUT = 3600.0


class RestoreError(Exception):
    """The restore cannot be done; the message says why and what to do."""


def run(
    target: str,
    *,
    into: pathlib.Path,
    to: str | None,
    appendonly: bool,
    echo: Callable[[str], None],
    target_time: datetime.datetime | None = None,
) -> dict[str, Any]:
    try:
        namespace, name = sync_command.parse_target(target)
    except sync_command.Unusable as exc:
        raise RestoreError(str(exc)) from None
    kube = objects.Kube()
    body = kube.get_or_none("Backup", namespace, name)
    if body is None:
        raise RestoreError(f"Backup {namespace}/{name} not found")
    if not conditions.is_true((body.get("status") or {}).get("conditions"), "Ready"):
        raise RestoreError(f"Backup {namespace}/{name} is not complete (kubectl get backup -n {namespace} {name})")
    if into.exists() and any(into.iterdir()):
        raise RestoreError(f"{into} is not empty: a restore writes into a new directory")
    if target_time is not None and target_time.tzinfo is None:
        raise RestoreError("--target-time needs a time zone, e.g. 2026-11-30T03:15:00Z")
    read = access.kube_reader(kube, namespace)
    try:
        plan = resolve(body, None)
        store_target = access.target(plan.target, read, namespace)
        enc_key = access.key(plan.encryption, read)
        files = into / "backup"
        echo(f"downloading {plan.location} into {files} (every object verified)")
        manifest = catalog.download_backup(store_target, plan.store_prefix, plan.backup_id, files, enc_key)
        if target_time is not None and manifest.engine != "postgres":
            raise RestoreError(f"--target-time is for postgres backups; this one is {manifest.engine}")
        wal = into / "wal"
        wal.mkdir(parents=True)
        if target_time is not None:
            # The WAL the target needs, from the store's archive (mlinfra archive wal): only those files.
            archived = catalog.list_wal(store_target, plan.store_prefix)
            wal_plan = pg_wal.plan_restore(manifest.meta, archived, target_time)
            echo(f"downloading {len(wal_plan.files)} WAL files to replay to {target_time.isoformat()}")
            for name in wal_plan.files:
                catalog.get_wal(store_target, plan.store_prefix, name, wal / name, enc_key)
    except pg_wal.RestoreRefused as exc:
        raise RestoreError(str(exc)) from None
    except ProblemError as exc:
        raise RestoreError(exc.problem.message) from None
    except (TargetError, catalog.CatalogError) as exc:
        raise RestoreError(str(exc)) from None
    result: dict[str, Any] = {"backup": target, "backupId": plan.backup_id, "engine": manifest.engine}
    if manifest.engine == "redis":
        from mlinfra.backup import redis

        data = into / "redis-data"
        redis.restore(files, data, appendonly=appendonly)
        result["dataDir"] = str(data)
        echo(f"restored: start a new redis-server with `dir {data}` (appendonly {'yes' if appendonly else 'no'})")
    elif manifest.engine == "postgres":
        from mlinfra.backup import postgres

        pgdata = into / "pgdata"
        postgres.restore(files, wal, pgdata, target_time=target_time)
        result["dataDir"] = str(pgdata)
        result["targetTime"] = target_time.isoformat() if target_time else None
        to_where = f"to {target_time.isoformat()}" if target_time else "to the end of the backup"
        echo(f"restored: start a new server with `pg_ctl -D {pgdata} start`; it recovers {to_where}, then promotes")
    else:
        if to is None:
            raise RestoreError(f"a {manifest.engine} backup is loaded into a running store: pass --to DATASTORE")
        conn = connsecret.read_connection(kube, namespace, to)
        if conn is None:
            raise RestoreError(f"DataStore {namespace}/{to} has no connection Secret (is it Ready?)")
        if manifest.engine == "neo4j":
            from mlinfra.backup import neo4j

            result["loaded"] = neo4j.restore(files, conn, TIMEOUT)
        else:
            from mlinfra.backup import qdrant

            result["loaded"] = qdrant.restore(files, conn, TIMEOUT)
        echo(f"restored into DataStore {namespace}/{to}")
    return result
