"""The registry's two login roles, least privilege.

- writer: reads everything in schema ``registry``; INSERT/UPDATE/DELETE on the registry tables; nothing on
  ``audit_log`` and ``outbox`` but SELECT (the SECURITY DEFINER triggers of migration 0001 write them).
- reader: SELECT on the registry schema, nothing else.

Nobody may UPDATE, DELETE or TRUNCATE ``audit_log``: the privileges are revoked here, and a trigger of
migration 0001 raises for every role, the owner included. Passwords are sent as SQL literals (never logged
by this module) and reset on every call, so rotating them is calling ``ensure_roles`` again.

Called by the ModelRegistry reconcile after ``migrate.apply``, with the operator's admin connection; the
grants cover the tables present then, so it runs after every migration.

Roles are server-wide, shared by every tenant of a PostgreSQL server. Each role the operator creates carries
a comment naming the registry it belongs to (``owner``); a role of that name with any other comment (another
registry's, or none: made by someone else) is never altered — :class:`RoleConflict` — so one tenant can
never reset another's password.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from psycopg import pq, sql

from mlinfra.engines import pg_roles

# Tables the writer may only read: written by triggers or by the operator.
APPEND_ONLY_TABLES = ("audit_log",)
TRIGGER_OR_OPERATOR_TABLES = ("audit_log", "outbox", "schema_migrations", "lineage_sync_state")

COMMENT_PREFIX = "mlinfra-operator: role of ModelRegistry "


RoleConflict = pg_roles.RoleConflict  # the shared guard of every role the operator makes (engines.pg_roles)


_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mlinfra.registry.roles").digest()[:8], "big", signed=True)


def registry_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """The tables of schema ``registry`` the writer may change."""
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'registry' ORDER BY tablename").fetchall()
    return [str(name) for (name,) in rows if name not in TRIGGER_OR_OPERATOR_TABLES]


def ensure_roles(
    conn: psycopg.Connection[Any],
    database: str,
    writer_name: str,
    writer_password: str,
    reader_name: str,
    reader_password: str,
    owner: str | None = None,
) -> None:
    """Create or update both roles and their grants on ``database`` (the one ``conn`` is connected to).

    Idempotent, and serialised by an advisory lock (roles are cluster-wide). ``conn`` must be outside a
    transaction; everything happens in one. ``owner`` (``<namespace>/<name>`` of the registry): the roles are
    marked as its own when created, and altered only while they carry that mark (RoleConflict otherwise).
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("ensure_roles() needs a connection outside a transaction")
    if writer_name == reader_name:
        raise ValueError("the writer and reader roles must differ")
    if not writer_password or not reader_password:
        raise ValueError("role passwords must not be empty")
    writer, reader = sql.Identifier(writer_name), sql.Identifier(reader_name)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        pg_roles.lock_grants(conn)  # the database row is granted on by other kinds' roles too
        for name, password in ((writer_name, writer_password), (reader_name, reader_password)):
            _ensure_login_role(conn, name, password, owner)
        db = sql.Identifier(database)
        both = sql.SQL("{}, {}").format(writer, reader)
        statements = [
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, both),
            sql.SQL("GRANT USAGE ON SCHEMA registry TO {}").format(both),
            # Start from nothing, so a privilege granted by hand or by an older version does not linger.
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA registry FROM {}").format(both),
            sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA registry FROM {}").format(both),
            sql.SQL("REVOKE CREATE ON SCHEMA registry FROM PUBLIC, {}").format(both),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA registry TO {}").format(both),
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA registry TO {}").format(writer),
        ]
        tables = registry_tables(conn)
        if tables:
            statements.append(
                sql.SQL("GRANT INSERT, UPDATE, DELETE ON {} TO {}").format(
                    sql.SQL(", ").join(sql.Identifier("registry", t) for t in tables), writer
                )
            )
        for table in APPEND_ONLY_TABLES:
            statements.append(
                sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM PUBLIC, {}").format(
                    sql.Identifier("registry", table), both
                )
            )
        for statement in statements:
            conn.execute(statement)


def _ensure_login_role(conn: psycopg.Connection[Any], name: str, password: str, owner: str | None) -> None:
    mark = f"{COMMENT_PREFIX}{owner}" if owner else None
    pg_roles.ensure_login_role(conn, name, password, mark, COMMENT_PREFIX)
