"""One backup of one store, start to end: the engine writes its files into a staging directory, the catalog
seals and uploads them and writes the manifest last. What a backup Job runs (``mlinfra take backup``).

The staging directory is emptied afterwards whatever happened; a run killed half-way leaves objects without a
manifest on the target, which the catalog never counts as a backup and retention removes as a leftover.
"""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlinfra.backup import catalog
from mlinfra.backup.sealed import EncryptionKey
from mlinfra.backup.target import Target
from mlinfra.engines import connection

# (connection, staging directory, timeout, backup id) -> the engine's metadata
Taker = Callable[[connection.ConnectionInfo, Path, float, str], dict[str, Any]]


def _postgres(conn: connection.ConnectionInfo, staging: Path, timeout: float, backup_id: str) -> dict[str, Any]:
    from mlinfra.backup import postgres  # each engine's tools load only where that engine is backed up

    return postgres.take_base(conn, staging, timeout, backup_id)


def _redis(conn: connection.ConnectionInfo, staging: Path, timeout: float, backup_id: str) -> dict[str, Any]:
    from mlinfra.backup import redis

    return redis.take(conn, staging, timeout)


def _neo4j(conn: connection.ConnectionInfo, staging: Path, timeout: float, backup_id: str) -> dict[str, Any]:
    from mlinfra.backup import neo4j

    return neo4j.take(conn, staging, timeout)


def _qdrant(conn: connection.ConnectionInfo, staging: Path, timeout: float, backup_id: str) -> dict[str, Any]:
    from mlinfra.backup import qdrant

    return qdrant.take(conn, staging, timeout)


TAKERS: dict[str, Taker] = {"postgres": _postgres, "redis": _redis, "neo4j": _neo4j, "qdrant": _qdrant}


def take_backup(
    *,
    engine: str,
    conn: connection.ConnectionInfo,
    target: Target,
    store_prefix: str,
    store: catalog.StoreRef,
    backup_id: str,
    enc_key: EncryptionKey | None,
    staging: Path,
    timeout: float,
) -> catalog.Manifest:
    """Take the backup ``backup_id`` of the store behind ``conn`` into ``target``; its manifest when complete."""
    started = datetime.datetime.now(datetime.UTC)
    work = staging / backup_id
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        meta = TAKERS[engine](conn, work, timeout, backup_id)
        return catalog.upload_backup(
            target, store_prefix, backup_id, work, enc_key, meta, engine=engine, store=store, started=started
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
