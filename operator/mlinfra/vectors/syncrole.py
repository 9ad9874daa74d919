"""A VectorIndex's sync role: the least-privilege PostgreSQL login its sync and rebuild Jobs connect as.

The Jobs used to mount the source DataStore's connection Secret: the store's admin (often superuser)
credentials, i.e. every other tenant's data on the server to whoever could read the Job's Secret or exec into
its pod. They get a login role of their own instead, made by the VectorIndex reconcile with the operator's
admin connection (after the source table was checked and the bookkeeping made, :func:`ensure_bookkeeping`),
holding exactly what ``mlinfra sync vectorindex`` and ``mlinfra rebuild vectorindex`` do in PostgreSQL
(``vectors.sync``, ``vectors.runs``, ``vectors.source``):

- ``CONNECT`` on the database, ``USAGE`` on the source table's schema and on ``mlinfra``;
- ``SELECT`` on the source table's columns a run reads (id, vector, updatedAt, deleted and payload columns) —
  not the table's other columns, not any other table (the shape check reads the catalogs, open to all);
- on ``mlinfra.vector_sync_runs``: ``SELECT, INSERT``, ``UPDATE`` of the outcome columns, ``USAGE`` of its id
  sequence; on ``mlinfra.vector_watermarks``: ``SELECT, INSERT``, ``UPDATE`` of the progress columns. Both
  tables have row level security (:func:`ensure_bookkeeping`) and the role one policy on each, naming its own
  ``(namespace, name)`` literally (``USING`` and ``WITH CHECK``): it can neither read nor write another
  index's runs or watermarks. The owner (the operator's admin) is not subject to it.

The sync and rebuild locks are advisory locks: they need no grant. Every privilege the role holds on another
relation or schema of the database (granted by hand, or for a previous ``spec.source.table``) is revoked. What
PostgreSQL gives every role through ``PUBLIC`` is left alone: ``TEMP`` on the database and, on servers before
15 only, ``CREATE`` on schema ``public`` (the server's default, which its DBA revokes for everyone).

The Jobs run no DDL: they :func:`require` the bookkeeping, which the operator creates (:func:`ensure_bookkeeping`).

Name and ownership as the FeatureView's role (``features.syncrole``): :func:`role_name` (``engines.pg_roles``:
injective over (namespace, name), at most 63 bytes, ending ``_vi``, which ends no other kind's role name:
``_fv``, ``_writer``, ``_reader``, ``_lineage``), marked with the index's ``<namespace>/<name>`` in its comment.
A role of that name made by someone else is never altered nor dropped (``pg_roles.RoleConflict``). The
password lives only in the index's Secret :func:`secret_name`, in the connection-Secret format of the source
store, which the Jobs mount. The role is dropped with the index (:func:`drop`), only while it carries its mark.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq, sql

from mlinfra.api import vectorindex
from mlinfra.engines import connection, pg_roles
from mlinfra.k8s import syncjobs

KIND = "vi"  # the role name's ending: ends none of _fv, _writer, _reader, _lineage, nor do they end it
COMMENT_PREFIX = "mlinfra-operator: sync role of VectorIndex "
SECRET_SUFFIX = "sync-source"  # noqa: S105 - a name suffix. No other kind's Secret ends so, nor does it end theirs
_MAX_SECRET_NAME = 253
DEFAULT_SCHEMA = "public"
BOOKKEEPING_SCHEMA = "mlinfra"
RUNS: pg_roles.Relation = (BOOKKEEPING_SCHEMA, "vector_sync_runs")
WATERMARKS: pg_roles.Relation = (BOOKKEEPING_SCHEMA, "vector_watermarks")
RUNS_INDEX = "vector_sync_runs_name_idx"
# The columns a run updates: runs.start (a dead run marked Failed) and runs.finish; sync._commit_watermark.
RUN_UPDATES = ("end_time", "rows", "upserted", "deleted", "bad_rows", "watermark", "outcome", "error")
WATERMARK_UPDATES = ("updated_at_mark", "last_id", "updated_at")
# Seconds a DDL statement (RLS on, a policy) may wait for its table lock: a long holder is waited for next time.
DDL_LOCK_TIMEOUT = 3.0
# The FeatureView bookkeeping's key (features.schema): both create schema mlinfra, one at a time.
_BOOKKEEPING_LOCK = "mlinfra:bookkeeping"

RoleConflict = pg_roles.RoleConflict
Conn = psycopg.Connection[Any]


class NotReady(RuntimeError):
    """What a Job needs in PostgreSQL is not in place (the operator's reconcile makes it); nothing was done."""


def role_name(namespace: str, name: str) -> str:
    return pg_roles.role_name(namespace, name, KIND)


def mark(namespace: str, name: str) -> str:
    """The comment that makes the role this index's."""
    return f"{COMMENT_PREFIX}{namespace}/{name}"


def secret_name(index: str) -> str:
    """``<index>-sync-source``: the Secret the sync and rebuild Jobs mount for the source store."""
    return syncjobs.bounded_name(index, SECRET_SUFFIX, _MAX_SECRET_NAME)


def source_table(source: vectorindex.Source) -> pg_roles.Relation:
    return (source.schema_name or DEFAULT_SCHEMA, source.table)


def read_columns(source: vectorindex.Source) -> tuple[str, ...]:
    """The source table's columns a run reads (``sync.select_changed``, ``sync.expected_count``,
    ``sync.live_among``), each once."""
    named = (
        source.id_column,
        source.vector_column,
        source.updated_at_column,
        *((source.deleted_column,) if source.deleted_column else ()),
        *(source.payload_columns or ()),
    )
    return tuple(dict.fromkeys(named))


def wanted_privileges(
    source: vectorindex.Source, runs_sequence: pg_roles.Relation | None
) -> dict[pg_roles.Relation, pg_roles.Privileges]:
    """Relation -> the role's privileges on it (the module docstring's list). Pure."""
    wanted: dict[pg_roles.Relation, pg_roles.Privileges] = {
        source_table(source): frozenset(("SELECT", c) for c in read_columns(source)),
        RUNS: frozenset({("SELECT", None), ("INSERT", None), *(("UPDATE", c) for c in RUN_UPDATES)}),
        WATERMARKS: frozenset({("SELECT", None), ("INSERT", None), *(("UPDATE", c) for c in WATERMARK_UPDATES)}),
    }
    if runs_sequence is not None:
        wanted[runs_sequence] = frozenset({("USAGE", None)})
    return wanted


def own_rows(namespace: str, name: str) -> sql.Composed:
    """The policy's condition: the index's own bookkeeping rows, its (namespace, name) as literals."""
    return sql.SQL("namespace = {} AND name = {}").format(sql.Literal(namespace), sql.Literal(name))


# --- the bookkeeping: made by the operator, checked by the Jobs ----------------------------------------------


def ensure_bookkeeping(conn: Conn) -> None:
    """Create schema ``mlinfra`` with ``vector_sync_runs`` and ``vector_watermarks`` if absent and turn row
    level security on for both (the operator's admin connection, outside a transaction; idempotent). Each
    statement that locks a table runs only when needed and waits at most :data:`DDL_LOCK_TIMEOUT`
    (``PostgresDeadlineExceeded`` then, nothing changed)."""
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("syncrole.ensure_bookkeeping() needs a connection outside a transaction")
    if _bookkeeping_in_place(conn):  # the usual case: one catalog read, no transaction, no lock
        return
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_BOOKKEEPING_LOCK,))
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(DDL_LOCK_TIMEOUT * 1000)}ms",))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(BOOKKEEPING_SCHEMA)))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, namespace text NOT NULL, "
                    "name text NOT NULL, start_time timestamptz NOT NULL DEFAULT now(), end_time timestamptz, "
                    "rows bigint, upserted bigint, deleted bigint, bad_rows bigint, watermark timestamptz, "
                    "outcome text NOT NULL, error text)"
                ).format(sql.Identifier(*RUNS))
            )
            if not _exists(conn, (BOOKKEEPING_SCHEMA, RUNS_INDEX)):  # CREATE INDEX IF NOT EXISTS locks the table
                conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (namespace, name, id DESC)").format(
                        sql.Identifier(RUNS_INDEX), sql.Identifier(*RUNS)
                    )
                )
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (namespace text NOT NULL, name text NOT NULL, "
                    "updated_at_mark timestamptz, last_id text, updated_at timestamptz NOT NULL DEFAULT now(), "
                    "PRIMARY KEY (namespace, name))"
                ).format(sql.Identifier(*WATERMARKS))
            )
            # Each index's role sees only its own rows (its policy, ensure()); the owner bypasses them. Turned on
            # once: ALTER TABLE locks the table.
            for table in (RUNS, WATERMARKS):
                if not _row_security(conn, table):
                    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(sql.Identifier(*table)))
    except psycopg.errors.LockNotAvailable as exc:
        raise connection.PostgresDeadlineExceeded(
            f"the VectorIndex bookkeeping tables in schema {BOOKKEEPING_SCHEMA} are locked by another transaction: "
            f"the schema change waited {DDL_LOCK_TIMEOUT:g} s and gave up rather than block their readers and "
            "writers; it is tried again later"
        ) from exc


def require(conn: Conn, source: vectorindex.Source) -> None:
    """Check, changing nothing, that the bookkeeping tables are there and usable by this connection's role and
    that it may read every source column a run reads; :class:`NotReady` saying what is missing. The Jobs call
    this instead of creating anything: their role may run no DDL. A missing table or column is
    ``source.inspect``'s to say (a failed run, recorded), as are the columns' types."""
    rows = conn.execute(
        "SELECT c.relname, has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT') "
        "AND has_table_privilege(c.oid, 'INSERT') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s)",
        (BOOKKEEPING_SCHEMA, [RUNS[1], WATERMARKS[1]]),
    ).fetchall()
    usable = {str(table) for table, ok in rows if ok}
    missing = [".".join(t) for t in (RUNS, WATERMARKS) if t[1] not in usable]
    if missing:
        raise NotReady(
            f"the bookkeeping table(s) {', '.join(missing)} do not exist or this role may not use them: the "
            "VectorIndex's reconcile creates them and grants them to its sync role (is the index Ready?)"
        )
    schema_name, table = source_table(source)
    columns = conn.execute(
        "SELECT a.attname, has_schema_privilege(n.oid, 'USAGE') AND has_column_privilege(c.oid, a.attnum, 'SELECT') "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (schema_name, table),
    ).fetchall()
    readable = {str(column): bool(ok) for column, ok in columns}
    lacking = [c for c in read_columns(source) if readable.get(c) is False]
    if lacking:
        raise NotReady(
            f"table {schema_name}.{table}: column(s) {', '.join(lacking)} not readable by this role: the "
            "VectorIndex's reconcile grants its sync role the columns the spec names (is the index Ready?)"
        )


# --- the role --------------------------------------------------------------------------------------------------


def ensure(conn: Conn, database: str, source: vectorindex.Source, namespace: str, name: str, password: str) -> str:
    """Create or update the index's role and make its privileges exactly the module docstring's; its name.

    ``conn``: the operator's admin connection to ``database`` (the source store's), outside a transaction,
    after :func:`ensure_bookkeeping` and with the source table in place (everything happens in one transaction,
    under the database's grants lock, ``pg_roles.lock_grants``). Raises RoleConflict (nothing changed) for a
    role of the name that is not this index's, ``PostgresDeadlineExceeded`` when a policy could not lock its
    table in time (nothing changed). Privileges already as wanted are not granted again (no catalog write).
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("syncrole.ensure() needs a connection outside a transaction")
    if not password:
        raise ValueError("the role password must not be empty")
    role = role_name(namespace, name)
    try:
        with conn.transaction():
            pg_roles.lock_grants(conn)
            pg_roles.ensure_login_role(conn, role, password, mark(namespace, name), COMMENT_PREFIX, "VectorIndex")
            wanted = wanted_privileges(source, pg_roles.serial_sequence(conn, RUNS))
            pg_roles.grant_exactly(conn, role, database, {BOOKKEEPING_SCHEMA, source_table(source)[0]}, wanted)
            # CREATE SCHEMA gives PUBLIC nothing; this only undoes a grant made by hand on the operator's schema.
            if pg_roles.public_holds(conn, BOOKKEEPING_SCHEMA, "CREATE"):
                conn.execute(
                    sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(BOOKKEEPING_SCHEMA))
                )
            for table in (RUNS, WATERMARKS):
                pg_roles.ensure_row_policy(conn, table, role, own_rows(namespace, name), DDL_LOCK_TIMEOUT)
    except psycopg.errors.LockNotAvailable as exc:
        raise connection.PostgresDeadlineExceeded(
            f"a VectorIndex bookkeeping table is locked by another transaction: the sync role's row policy waited "
            f"{DDL_LOCK_TIMEOUT:g} s and gave up; it is tried again later"
        ) from exc
    return role


def in_place(conn: Conn, source: vectorindex.Source, namespace: str, name: str) -> bool:
    """Whether the index's role exists, is the index's, and holds on the source table and the bookkeeping what
    :func:`ensure` gave it (a table dropped and created again by hand has lost its grants). Catalog reads only."""
    role = role_name(namespace, name)
    exists, comment = pg_roles.comment_of(conn, role)
    if not exists or comment != mark(namespace, name):
        return False
    wanted = wanted_privileges(source, pg_roles.serial_sequence(conn, RUNS) if _exists(conn, RUNS) else None)
    return all(pg_roles.held(conn, relation, role) == privileges for relation, privileges in wanted.items())


def drop(conn: Conn, namespace: str, name: str) -> bool:
    """Drop the index's role (its privileges and policies in this database first); True when dropped. A role
    of the name without the index's mark is someone else's: left alone (False), as is an absent one. The
    bookkeeping rows stay (the operator's admin owns them)."""
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("syncrole.drop() needs a connection outside a transaction")
    role = role_name(namespace, name)
    with conn.transaction():
        pg_roles.lock_grants(conn)
        return pg_roles.drop_marked(conn, role, mark(namespace, name))


def _bookkeeping_in_place(conn: Conn) -> bool:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE c.relkind = 'i' OR c.relrowsecurity) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)",
        (BOOKKEEPING_SCHEMA, [RUNS[1], WATERMARKS[1], RUNS_INDEX]),
    ).fetchone()
    return bool(row and row[0] == 3)


def _exists(conn: Conn, relation: pg_roles.Relation) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (pg_roles.regclass_text(relation),)).fetchone()
    return bool(row and row[0])


def _row_security(conn: Conn, relation: pg_roles.Relation) -> bool:
    row = conn.execute(
        "SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass(%s)", (pg_roles.regclass_text(relation),)
    ).fetchone()
    return bool(row and row[0])
