"""A FeatureView's sync role: the least-privilege PostgreSQL login its materialization Job connects as.

The Job used to mount the offline DataStore's connection Secret: the store's admin (often superuser)
credentials, i.e. every other tenant's data on the server to whoever could read the Job's Secret or exec into
its pod. It now gets a login role of its own, made by the FeatureView reconcile with the operator's admin
connection (after the offline table and the bookkeeping exist), holding exactly what ``materialize()`` uses:

- ``CONNECT`` on the database, ``USAGE`` on the offline table's schema and on ``mlinfra``;
- ``SELECT`` on the offline table's columns the run reads (entities, features, ``event_timestamp``,
  ``created_at``) — not the columns of removed features, not any other table;
- on ``mlinfra.sync_runs``: ``SELECT, INSERT``, ``UPDATE`` of the outcome columns, ``USAGE`` of its id
  sequence; on ``mlinfra.watermarks``: ``SELECT, INSERT``, ``UPDATE`` of the progress columns. Both tables
  have row level security (``schema.ensure_bookkeeping``) and the role one policy on each, naming its own
  ``(namespace, view)`` literally (``USING`` and ``WITH CHECK``): it can neither read nor write another view's
  runs or watermarks. The owner (the operator's admin) is not subject to it.

Every privilege the role holds on another relation or schema of the database (granted by hand, or for a
previous ``spec.offline.table``) is revoked; the advisory lock the run takes needs no grant. What PostgreSQL
gives every role through ``PUBLIC`` is left alone: ``TEMP`` on the database (session-private tables) and, on
servers before 15 only, ``CREATE`` on schema ``public`` (the server's own default, which its DBA revokes for
everyone; changing it here would change it for every application of the database).

Name and ownership: :func:`role_name` (``engines.pg_roles``: injective over (namespace, name), at most 63
bytes), marked with the view's ``<namespace>/<name>`` in its comment. A role of that name made by someone else
is never altered nor dropped (``pg_roles.RoleConflict``; the view is Stalled ``RoleConflict``). The password is
generated once (``stores.credentials``) and kept only in the view's Secret :func:`secret_name` — the full
connection-Secret format of the offline store (host, port, TLS and CA copied from the store's published
connection) with the role's user name and password — which the Job mounts. The role is dropped when the view
is deleted (:func:`drop`), only while it carries the view's mark.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq, sql

from mlinfra.api import featureview
from mlinfra.engines import connection, pg_roles
from mlinfra.features import layout, schema
from mlinfra.k8s import syncjobs

KIND = "fv"  # the role name's ending (the registry's are _writer and _reader: none ends another)
COMMENT_PREFIX = "mlinfra-operator: sync role of FeatureView "
SECRET_SUFFIX = "sync-offline"  # noqa: S105 - a name suffix. No other kind's Secret ends so (-conn, -credentials, -writer, -reader)
_MAX_SECRET_NAME = 253
# The columns a run updates (materialize._start_run, _fail_run, _run).
RUN_UPDATES = ("end_time", "rows", "watermark", "outcome", "error")
WATERMARK_UPDATES = ("watermark", "ingested_through", "online_epoch", "offline_table", "offline_oid", "updated_at")

RoleConflict = pg_roles.RoleConflict

Conn = psycopg.Connection[Any]
Privileges = frozenset[tuple[str, str | None]]  # (privilege, column or None for the whole relation)


def role_name(namespace: str, view: str) -> str:
    return pg_roles.role_name(namespace, view, KIND)


def mark(namespace: str, view: str) -> str:
    """The comment that makes the role this view's."""
    return f"{COMMENT_PREFIX}{namespace}/{view}"


def secret_name(view: str) -> str:
    """``<view>-sync-offline``: the Secret the Job mounts for the offline store."""
    return syncjobs.bounded_name(view, SECRET_SUFFIX, _MAX_SECRET_NAME)


def read_columns(spec: featureview.FeatureViewSpec) -> tuple[str, ...]:
    """The offline table's columns a run reads (``materialize.select_latest``)."""
    return (
        *(e.name for e in spec.entities),
        *(f.name for f in spec.features),
        layout.EVENT_TIMESTAMP,
        layout.CREATED_AT,
    )


def ensure(
    conn: Conn, database: str, spec: featureview.FeatureViewSpec, namespace: str, view: str, password: str
) -> str:
    """Create or update the view's role and make its privileges exactly the module docstring's; its name.

    ``conn``: the operator's admin connection to ``database``, outside a transaction (everything happens in
    one, under the database's grants lock: ``pg_roles.lock_grants``). Raises RoleConflict (nothing changed)
    for a role of the name that is not this view's. Privileges already as wanted are not granted again (no
    catalog write).
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("syncrole.ensure() needs a connection outside a transaction")
    if not password:
        raise ValueError("the role password must not be empty")
    name = role_name(namespace, view)
    schema_name, table = layout.offline_table(view, spec.offline.schema_name, spec.offline.table)
    runs, marks = (
        (layout.BOOKKEEPING_SCHEMA, layout.SYNC_RUNS_TABLE),
        (layout.BOOKKEEPING_SCHEMA, layout.WATERMARKS_TABLE),
    )
    with conn.transaction():
        pg_roles.lock_grants(conn)
        pg_roles.ensure_login_role(conn, name, password, mark(namespace, view), COMMENT_PREFIX, "FeatureView")
        sequence = pg_roles.serial_sequence(conn, runs)
        wanted: dict[tuple[str, str], Privileges] = {
            (schema_name, table): frozenset(("SELECT", c) for c in read_columns(spec)),
            runs: frozenset({("SELECT", None), ("INSERT", None), *(("UPDATE", c) for c in RUN_UPDATES)}),
            marks: frozenset({("SELECT", None), ("INSERT", None), *(("UPDATE", c) for c in WATERMARK_UPDATES)}),
        }
        if sequence is not None:
            wanted[sequence] = frozenset({("USAGE", None)})
        pg_roles.grant_exactly(conn, name, database, {layout.BOOKKEEPING_SCHEMA, schema_name}, wanted)
        # CREATE SCHEMA gives PUBLIC nothing; this only undoes a grant made by hand on the operator's schema.
        if pg_roles.public_holds(conn, layout.BOOKKEEPING_SCHEMA, "CREATE"):
            conn.execute(
                sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(layout.BOOKKEEPING_SCHEMA))
            )
        for relation in (runs, marks):
            _ensure_policy(conn, relation, name, namespace, view)
    return name


def in_place(conn: Conn, spec: featureview.FeatureViewSpec, namespace: str, view: str) -> bool:
    """Whether the view's role exists, is the view's, and may read its offline table as :func:`ensure` left
    it (a table dropped and created again by hand has lost its grants). Two catalog reads, no change."""
    name = role_name(namespace, view)
    exists, comment = pg_roles.comment_of(conn, name)
    if not exists or comment != mark(namespace, view):
        return False
    schema_name, table = layout.offline_table(view, spec.offline.schema_name, spec.offline.table)
    return pg_roles.held(conn, (schema_name, table), name) == frozenset(("SELECT", c) for c in read_columns(spec))


def drop(conn: Conn, namespace: str, view: str) -> bool:
    """Drop the view's role (its privileges and policies in this database first); True when dropped. A role
    of the name without the view's mark is someone else's: left alone (False), as is an absent one."""
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("syncrole.drop() needs a connection outside a transaction")
    name = role_name(namespace, view)
    with conn.transaction():
        pg_roles.lock_grants(conn)
        return pg_roles.drop_marked(conn, name, mark(namespace, view))


# --- the bookkeeping rows' policy ------------------------------------------------------------------------


def _ensure_policy(conn: Conn, relation: tuple[str, str], role: str, namespace: str, view: str) -> None:
    """The role's policy on a bookkeeping table: its own view's rows only (``pg_roles.ensure_row_policy``; a
    long holder of the table's lock makes it give way, and it is tried again later)."""
    own = sql.SQL("namespace = {} AND view = {}").format(sql.Literal(namespace), sql.Literal(view))
    try:
        pg_roles.ensure_row_policy(conn, relation, role, own, schema.DDL_LOCK_TIMEOUT)
    except psycopg.errors.LockNotAvailable as exc:
        raise connection.PostgresDeadlineExceeded(
            f"table {'.'.join(relation)} is locked by another transaction: the sync role's row policy waited "
            f"{schema.DDL_LOCK_TIMEOUT:g} s and gave up; it is tried again later"
        ) from exc
