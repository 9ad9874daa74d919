"""Forward-only schema migrations of the registry, shipped in ``migrations/NNNN_name.sql``.

``apply`` brings a database up to a target version: each missing migration runs in its own transaction,
under a transaction-scoped advisory lock (so concurrent appliers serialise and each sees what the other
committed), and is recorded in ``registry.schema_migrations`` with the sha256 of its file. A shipped file
that no longer matches the checksum recorded when it was applied is refused (``MigrationChecksumMismatch``);
a target below the applied version or above the newest shipped one is ``InvalidSpec``.

Called by the ModelRegistry reconcile (with the operator's admin connection) and by the tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal

import psycopg
from psycopg import pq

from mlinfra.engines import connection
from mlinfra.problems import INVALID_SPEC, Problem, ProblemError

SCHEMA = "registry"
MIGRATIONS_TABLE = "registry.schema_migrations"
MIGRATION_CHECKSUM_MISMATCH = "MigrationChecksumMismatch"
SCHEMA_NEWER_THAN_OPERATOR = "SchemaNewerThanOperator"

# One key for every applier of every registry: derived from a name so it does not collide by accident.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"mlinfra.registry.migrate").digest()[:8], "big", signed=True)

# Seconds a migration's statements may wait for a table lock.
DDL_LOCK_TIMEOUT = 5.0

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

Target = int | Literal["latest"]

_BOOTSTRAP = b"""
CREATE SCHEMA IF NOT EXISTS registry;
CREATE TABLE IF NOT EXISTS registry.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclasses.dataclass(frozen=True)
class Migration:
    """One shipped migration file."""

    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def shipped() -> list[Migration]:
    """The migrations in the package, in order; numbered 1..N without gaps (a packaging error otherwise)."""
    found = []
    for entry in resources.files("mlinfra.registry").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    numbers = [m.version for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"registry migrations must be numbered 1..N without gaps, found {numbers}")
    return found


def latest_version() -> int:
    """The newest shipped migration."""
    return len(shipped())


def resolve_target(target: Target, migrations: Sequence[Migration]) -> int:
    """``latest`` -> the newest shipped version; a number must be one of the shipped versions."""
    newest = len(migrations)
    if target == "latest":
        return newest
    if not isinstance(target, int) or target < 1:
        raise ProblemError(
            Problem(INVALID_SPEC, f"spec.schemaVersion must be 'latest' or a number >= 1, got {target!r}", True)
        )
    if target > newest:
        raise ProblemError(
            Problem(
                INVALID_SPEC,
                f"spec.schemaVersion {target} does not exist: this operator ships migrations up to {newest}",
                True,
            )
        )
    return target


def plan(applied: dict[int, str], migrations: Sequence[Migration], target: Target) -> list[Migration]:
    """What to run to reach ``target`` given ``applied`` (version -> recorded checksum). Pure.

    Raises ProblemError for a tampered file, a downgrade, a target that does not exist, or a database
    migrated by a newer operator.
    """
    by_version = {m.version: m for m in migrations}
    for version in sorted(applied):
        shipped_one = by_version.get(version)
        if shipped_one is None:
            raise ProblemError(
                Problem(
                    SCHEMA_NEWER_THAN_OPERATOR,
                    f"the database has migration {version} applied; this operator ships up to {len(migrations)}",
                    True,
                )
            )
        if shipped_one.checksum != applied[version]:
            raise ProblemError(
                Problem(
                    MIGRATION_CHECKSUM_MISMATCH,
                    f"migration {shipped_one.filename} changed after it was applied (checksum "
                    f"{applied[version][:12]}... recorded, {shipped_one.checksum[:12]}... shipped); "
                    "migrations are never edited, add a new one",
                    True,
                )
            )
    wanted = resolve_target(target, migrations)
    current = max(applied, default=0)
    if wanted < current:
        raise ProblemError(
            Problem(
                INVALID_SPEC,
                f"spec.schemaVersion {wanted} is below the applied version {current}: migrations never downgrade",
                True,
            )
        )
    return [m for m in migrations if current < m.version <= wanted]


def applied_checksums(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """version -> checksum of the applied migrations; empty before the first one."""
    exists = conn.execute("SELECT to_regclass('registry.schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, checksum FROM registry.schema_migrations").fetchall()
    return {int(version): str(checksum) for version, checksum in rows}


def applied_version(conn: psycopg.Connection[Any]) -> int:
    """The newest applied migration, 0 for a database without the registry."""
    return max(applied_checksums(conn), default=0)


class ForeignSchema(Exception):
    """The database has a ``registry`` schema the operator did not make (no ``registry.schema_migrations``):
    migrating into it would mix the registry's tables with someone else's. Nothing was changed."""


def _foreign_schema(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'registry') "
        "AND to_regclass('registry.schema_migrations') IS NULL"
    ).fetchone()
    return bool(row and row[0])


def apply(
    conn: psycopg.Connection[Any],
    target: Target = "latest",
    migrations: Sequence[Migration] | None = None,
    lock_timeout_seconds: float = 60.0,
    ddl_lock_timeout_seconds: float = DDL_LOCK_TIMEOUT,
) -> int:
    """Apply the missing migrations up to ``target``, one transaction each; returns the applied version.

    ``conn`` must be outside a transaction (autocommit or idle). Idempotent: with nothing to do it only
    checks the recorded checksums and the target. Appliers wait up to ``lock_timeout_seconds`` for each
    other; a migration's own statements wait at most ``ddl_lock_timeout_seconds`` for a table lock (an
    ALTER queued behind a long transaction would block every writer of the table behind it) and give up
    with :class:`~mlinfra.engines.connection.PostgresDeadlineExceeded`, to be tried again.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("apply() needs a connection outside a transaction")
    migrations = list(shipped() if migrations is None else migrations)
    while True:
        with conn.transaction():
            _lock(conn, lock_timeout_seconds)
            if _foreign_schema(conn):
                db = conn.info.dbname
                raise ForeignSchema(
                    f"database {db!r} already has a schema named registry that the operator did not make (it has "
                    "no registry.schema_migrations table)"
                )
            conn.execute(_BOOTSTRAP)
            applied = applied_checksums(conn)
            todo = plan(applied, migrations, target)
            if not todo:
                return max(applied, default=0)
            step = todo[0]
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(ddl_lock_timeout_seconds * 1000)}ms",))
            try:
                conn.execute(step.sql.encode())
            except psycopg.errors.LockNotAvailable as exc:
                raise connection.PostgresDeadlineExceeded(
                    f"migration {step.filename} waited {ddl_lock_timeout_seconds:g} s for a table lock held by another "
                    "transaction and gave up rather than block the registry's writers; it is tried again later"
                ) from exc
            conn.execute(
                "INSERT INTO registry.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (step.version, step.name, step.checksum),
            )


def _lock(conn: psycopg.Connection[Any], timeout_seconds: float) -> None:
    # SET LOCAL: the timeout ends with the transaction, as does the lock.
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(timeout_seconds * 1000)}ms",))
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
