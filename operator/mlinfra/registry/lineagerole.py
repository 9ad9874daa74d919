"""A ModelRegistry's lineage role: the least-privilege PostgreSQL login its lineage-sync Job connects as.

The Job used to mount the metadata DataStore's connection Secret: the admin (often superuser) credentials of a
server that holds every tenant's registry database. It now gets a login role of its own, made by the
registry's reconcile with the operator's admin connection after the migrations, holding exactly what
``registry.lineage.sync`` does in PostgreSQL:

- ``CONNECT`` on the registry's database (no other database: a grant left on another one is revoked) and
  ``USAGE`` on schema ``registry`` (no other schema);
- ``SELECT`` on ``registry.schema_migrations`` (the registry's history: ``lineage.history``);
- ``SELECT`` and ``UPDATE (processed_at)`` on ``registry.outbox`` (read the pending events, mark them);
- ``SELECT, INSERT`` and ``UPDATE (last_sync_at, last_event_id)`` on ``registry.lineage_sync_state`` (from
  migration 0003; its upsert reads the row back).

Nothing else: no registry table, no DDL. The sync's advisory lock needs no grant and ``set_config`` is every
role's. A registry database holds one registry (``registry.claim``), so no row level security is needed.
What PostgreSQL gives every role through ``PUBLIC`` is left alone (``TEMP``; ``CONNECT`` on databases that
did not revoke it: the role has no privilege in another registry's schema there, and a database the operator
creates for a registry does revoke it, ``registry.reconcile``).

Name and ownership as the writer and reader roles (``registry.roles``): :func:`role_name` (``engines.pg_roles``,
kind ``lineage``: no other kind's name ends so), marked with the registry's ``<namespace>/<name>`` in the same
comment; a role of that name without the mark is never altered nor dropped (``RoleConflict``). The password
is generated once and kept only in the registry's Secret :func:`secret_name` (the connection-Secret format:
``stores.credentials.login_secret``), which the Job mounts. The role is dropped when the registry is deleted
(:func:`drop`), only while it carries the registry's mark.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq, sql

from mlinfra.engines import pg_roles
from mlinfra.k8s import syncjobs
from mlinfra.registry import roles

KIND = "lineage"  # the role name's ending: none of writer, reader, fv ends another
SECRET_SUFFIX = "lineage-sync"  # noqa: S105 - a name suffix. No other Secret of the operator ends so
_MAX_SECRET_NAME = 253
SCHEMA = "registry"
# The columns of the sync's UPDATEs (lineage.prepare, lineage.sync).
OUTBOX_UPDATES = ("processed_at",)
STATE_UPDATES = ("last_sync_at", "last_event_id")
STATE_TABLE = "lineage_sync_state"
_CONNECT, _USAGE = frozenset({"CONNECT"}), frozenset({"USAGE"})

RoleConflict = pg_roles.RoleConflict

Conn = psycopg.Connection[Any]


def role_name(namespace: str, name: str) -> str:
    return pg_roles.role_name(namespace, name, KIND)


def mark(namespace: str, name: str) -> str:
    """The comment that makes the role this registry's: the writer's and reader's own."""
    return f"{roles.COMMENT_PREFIX}{namespace}/{name}"


def secret_name(name: str) -> str:
    """``<registry>-lineage-sync``: the Secret the Job mounts for the metadata store."""
    return syncjobs.bounded_name(name, SECRET_SUFFIX, _MAX_SECRET_NAME)


def wanted(conn: Conn) -> dict[pg_roles.Relation, pg_roles.Privileges]:
    """The role's privileges per relation, for the tables the applied migrations made."""
    out: dict[pg_roles.Relation, pg_roles.Privileges] = {
        (SCHEMA, "schema_migrations"): frozenset({("SELECT", None)}),
        (SCHEMA, "outbox"): frozenset({("SELECT", None), *(("UPDATE", c) for c in OUTBOX_UPDATES)}),
    }
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{STATE_TABLE}",)).fetchone() == (True,):
        out[(SCHEMA, STATE_TABLE)] = frozenset(
            {("SELECT", None), ("INSERT", None), *(("UPDATE", c) for c in STATE_UPDATES)}
        )
    return out


def ensure(conn: Conn, database: str, namespace: str, name: str, password: str) -> str:
    """Create or update the registry's lineage role and make its privileges exactly the module docstring's;
    its name. ``conn``: the operator's admin connection to ``database`` (migrated), outside a transaction;
    everything happens in one, under the database's grants lock (``pg_roles.lock_grants``). RoleConflict
    (nothing changed) for a role of the name that is not this registry's. Privileges already as wanted are not
    granted again."""
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("lineagerole.ensure() needs a connection outside a transaction")
    if not password:
        raise ValueError("the role password must not be empty")
    role_ = role_name(namespace, name)
    role = sql.Identifier(role_)
    with conn.transaction():
        # The database row and the schema are granted on by other objects' roles too (a FeatureView's on the
        # store's own database): concurrent grants on one object fail each other.
        pg_roles.lock_grants(conn)
        pg_roles.ensure_login_role(conn, role_, password, mark(namespace, name), roles.COMMENT_PREFIX)
        for db, held in pg_roles.granted_databases(conn, role_).items():
            if db != database or held != _CONNECT:  # a database of an earlier spec.database, or by hand
                conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(db), role))
        if pg_roles.granted_databases(conn, role_).get(database) != _CONNECT:
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), role))
        for nsp, held in pg_roles.granted_schemas(conn, role_).items():
            if nsp != SCHEMA or held != _USAGE:
                conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(sql.Identifier(nsp), role))
        if pg_roles.granted_schemas(conn, role_).get(SCHEMA) != _USAGE:
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SCHEMA), role))
        want = wanted(conn)
        for relation in sorted(set(want) | set(pg_roles.granted_relations(conn, role_))):
            pg_roles.set_privileges(conn, relation, role_, want.get(relation, frozenset()))
    return role_


def present(conn: Conn, namespace: str, name: str) -> bool:
    """Whether the registry's lineage role exists and carries its mark (on any database of the server: roles
    are server-wide)."""
    exists, comment = pg_roles.comment_of(conn, role_name(namespace, name))
    return exists and comment == mark(namespace, name)


def drop(conn: Conn, namespace: str, name: str) -> bool:
    """Drop the registry's lineage role (its privileges in this database, ``conn``'s, first); True when
    dropped. A role of the name without the registry's mark is someone else's: left alone (False), as is an
    absent one. A role still holding privileges in another database raises (psycopg's
    DependentObjectsStillExist), nothing changed."""
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("lineagerole.drop() needs a connection outside a transaction")
    role_ = role_name(namespace, name)
    with conn.transaction():
        pg_roles.lock_grants(conn)
        # DROP OWNED revokes its privileges here and on shared objects (its database's CONNECT); it owns nothing.
        return pg_roles.drop_marked(conn, role_, mark(namespace, name))
