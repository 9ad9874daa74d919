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

from collections.abc import Iterable, Sequence
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
        role = sql.Identifier(name)
        if not _holds(conn, "datacl", "pg_database", "datname", database, name, "CONNECT"):
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), role))
        wanted_schemas = {layout.BOOKKEEPING_SCHEMA, schema_name}
        for nsp in sorted(wanted_schemas):
            if not _holds(conn, "nspacl", "pg_namespace", "nspname", nsp, name, "USAGE"):
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(nsp), role))
        sequence = _serial_sequence(conn, runs)
        wanted: dict[tuple[str, str], Privileges] = {
            (schema_name, table): frozenset(("SELECT", c) for c in read_columns(spec)),
            runs: frozenset({("SELECT", None), ("INSERT", None), *(("UPDATE", c) for c in RUN_UPDATES)}),
            marks: frozenset({("SELECT", None), ("INSERT", None), *(("UPDATE", c) for c in WATERMARK_UPDATES)}),
        }
        if sequence is not None:
            wanted[sequence] = frozenset({("USAGE", None)})
        for relation in sorted(set(wanted) | set(_granted_relations(conn, name))):
            _set_privileges(conn, relation, name, wanted.get(relation, frozenset()))
        for nsp in _granted_schemas(conn, name):
            if nsp not in wanted_schemas:
                conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(sql.Identifier(nsp), role))
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
    return _held(conn, (schema_name, table), name) == frozenset(("SELECT", c) for c in read_columns(spec))


def drop(conn: Conn, namespace: str, view: str) -> bool:
    """Drop the view's role (its privileges and policies in this database first); True when dropped. A role
    of the name without the view's mark is someone else's: left alone (False), as is an absent one."""
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("syncrole.drop() needs a connection outside a transaction")
    name = role_name(namespace, view)
    with conn.transaction():
        pg_roles.lock_grants(conn)
        exists, comment = pg_roles.comment_of(conn, name)
        if not exists or comment != mark(namespace, view):
            return False
        role = sql.Identifier(name)
        # Revokes its privileges here (database, schemas, tables) and drops the policies naming only it.
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))
    return True


# --- privileges, exactly ----------------------------------------------------------------------------------


def _holds(conn: Conn, acl: str, catalog: str, key: str, value: str, role: str, privilege: str) -> bool:
    """Whether ``role`` holds ``privilege`` by a grant of its own (not through PUBLIC) on a database or schema."""
    row = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {catalog} o, aclexplode(o.{acl}) x JOIN pg_roles r ON r.oid = x.grantee "
            "WHERE o.{key} = %s AND r.rolname = %s AND x.privilege_type = %s)"
        ).format(catalog=sql.Identifier(catalog), acl=sql.Identifier(acl), key=sql.Identifier(key)),
        (value, role, privilege),
    ).fetchone()
    return bool(row and row[0])


def _serial_sequence(conn: Conn, relation: tuple[str, str]) -> tuple[str, str] | None:
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = pg_get_serial_sequence(%s, 'id')::regclass",
        (_regclass_text(relation),),
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def _regclass_text(relation: tuple[str, str]) -> str:
    return '"{}"."{}"'.format(*(part.replace('"', '""') for part in relation))


def _granted_relations(conn: Conn, role: str) -> list[tuple[str, str]]:
    """Every relation (table, view, sequence...) on which ``role`` holds a privilege of its own, or one on
    some column of it."""
    rows = conn.execute(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE EXISTS (SELECT 1 FROM aclexplode(c.relacl) x
                         WHERE x.grantee = (SELECT oid FROM pg_roles WHERE rolname = %(r)s))
              OR EXISTS (SELECT 1 FROM pg_attribute a, aclexplode(a.attacl) x WHERE a.attrelid = c.oid
                         AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = %(r)s))""",
        {"r": role},
    ).fetchall()
    return [(str(s), str(t)) for s, t in rows]


def _granted_schemas(conn: Conn, role: str) -> list[str]:
    rows = conn.execute(
        "SELECT o.nspname FROM pg_namespace o, aclexplode(o.nspacl) x JOIN pg_roles r ON r.oid = x.grantee "
        "WHERE r.rolname = %s",
        (role,),
    ).fetchall()
    return sorted({str(r[0]) for r in rows})


def _held(conn: Conn, relation: tuple[str, str], role: str) -> Privileges:
    """What ``role`` holds on ``relation`` by grants of its own: table-wide and per column."""
    rows = conn.execute(
        """SELECT x.privilege_type, NULL FROM pg_class c, aclexplode(c.relacl) x
             WHERE c.oid = to_regclass(%(rel)s) AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = %(r)s)
           UNION ALL
           SELECT x.privilege_type, a.attname FROM pg_attribute a, aclexplode(a.attacl) x
             WHERE a.attrelid = to_regclass(%(rel)s) AND a.attnum > 0 AND NOT a.attisdropped
               AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = %(r)s)""",
        {"rel": _regclass_text(relation), "r": role},
    ).fetchall()
    return frozenset((str(p), str(c) if c is not None else None) for p, c in rows)


def _set_privileges(conn: Conn, relation: tuple[str, str], role: str, wanted: Privileges) -> None:
    """Make ``role``'s own privileges on ``relation`` exactly ``wanted`` (nothing written when they are).
    GRANT and REVOKE wait for no lock of the table's readers and writers."""
    if _held(conn, relation, role) == wanted:
        return
    target, grantee = sql.Identifier(*relation), sql.Identifier(role)
    is_sequence = conn.execute(
        "SELECT relkind = 'S' FROM pg_class WHERE oid = to_regclass(%s)", (_regclass_text(relation),)
    ).fetchone()
    kind = sql.SQL("SEQUENCE" if is_sequence and is_sequence[0] else "TABLE")
    # Revoking table-wide privileges revokes them on every column too: start from nothing.
    conn.execute(sql.SQL("REVOKE ALL ON {} {} FROM {}").format(kind, target, grantee))
    for privilege, columns in _grouped(wanted):
        cols = sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, columns))) if columns else sql.SQL("")
        conn.execute(sql.SQL("GRANT {}{} ON {} {} TO {}").format(sql.SQL(privilege), cols, kind, target, grantee))


def _grouped(wanted: Iterable[tuple[str, str | None]]) -> list[tuple[str, Sequence[str]]]:
    """(privilege, columns) per privilege; no columns for a table-wide one."""
    by: dict[str, list[str]] = {}
    whole: set[str] = set()
    for privilege, column in wanted:
        if column is None:
            whole.add(privilege)
        else:
            by.setdefault(privilege, []).append(column)
    out: list[tuple[str, Sequence[str]]] = [(p, ()) for p in sorted(whole)]
    out += [(p, sorted(cols)) for p, cols in sorted(by.items()) if p not in whole]
    return out


def _ensure_policy(conn: Conn, relation: tuple[str, str], role: str, namespace: str, view: str) -> None:
    """The role's policy on a bookkeeping table (named after the role): its own view's rows only. Created once
    (CREATE POLICY locks the table, briefly: a short lock timeout gives way to a long holder)."""
    found = conn.execute(
        "SELECT 1 FROM pg_policies WHERE schemaname = %s AND tablename = %s AND policyname = %s", (*relation, role)
    ).fetchone()
    if found:
        return
    own = sql.SQL("namespace = {} AND view = {}").format(sql.Literal(namespace), sql.Literal(view))
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(schema.DDL_LOCK_TIMEOUT * 1000)}ms",))
    try:
        conn.execute(
            sql.SQL("CREATE POLICY {} ON {} FOR ALL TO {} USING ({}) WITH CHECK ({})").format(
                sql.Identifier(role), sql.Identifier(*relation), sql.Identifier(role), own, own
            )
        )
    except psycopg.errors.LockNotAvailable as exc:
        raise connection.PostgresDeadlineExceeded(
            f"table {'.'.join(relation)} is locked by another transaction: the sync role's row policy waited "
            f"{schema.DDL_LOCK_TIMEOUT:g} s and gave up; it is tried again later"
        ) from exc
