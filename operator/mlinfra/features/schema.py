"""The offline table of a FeatureView and the operator's bookkeeping schema, created and evolved idempotently.

Called by the FeatureView reconcile (handlers), with the operator's admin connection. The materialization Job
runs no DDL: its role may only read the table and write its own bookkeeping rows (``features.syncrole``), so it
only checks that both are in place (:func:`require`). Evolution rules:

- an added feature adds a nullable column (with the feature's description as the column comment);
- a removed feature keeps its column: data users wrote is never dropped, it just stops being served;
- a changed feature type, a changed entity (name, type or order) or an operator column of the wrong type is
  refused with :class:`ImmutableFieldChange` and nothing is changed.

Entities are read back from the operator's index on ``(entities..., event_timestamp DESC)``; a pre-existing
table without that index is accepted when its entity columns have the right types (the index is then added).
Every change runs in one transaction under an advisory lock per table, so concurrent reconciles and sync jobs
cannot race on ``CREATE``/``ALTER``. DDL waits at most :data:`DDL_LOCK_TIMEOUT` for its table lock: an
``ALTER TABLE`` queued behind a long transaction would block every reader and writer of the table behind it,
so it gives up (:class:`~mlinfra.engines.connection.PostgresDeadlineExceeded`, retried later) instead, and
nothing is locked at all when there is nothing to change (existing indexes and comments are left alone).

The operator's indexes are built with the table when it creates it. An existing table that lacks one (a
pre-existing table adopted, a table of an older operator, a build that failed) gets it ``CONCURRENTLY``: a
plain ``CREATE INDEX`` holds a SHARE lock that stops every writer for the whole build. The reconcile builds
them for tables up to :data:`IN_OPERATOR`'s size, inside its statement timeout; a larger table
(``SchemaResult.large``) is indexed by the operator in the background (``features.indexbuild``,
:data:`IN_BACKGROUND`, no statement timeout, on a connection of its own) — not by the sync Job: building an
index needs the table's ownership, and the Job's role may only read it. A build that cannot start (a long
transaction in the way) gives up after its lock timeout, drops the invalid index it leaves, and is tried
again later; the indexes still missing are reported (``SchemaResult.indexes_pending``).

The bookkeeping tables have row level security on: a sync role sees and writes only its own view's rows
(the policies are ``features.syncrole``'s); the operator owns the tables and is not subject to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence

import psycopg
from psycopg import sql

from mlinfra.api import featureview
from mlinfra.engines import connection
from mlinfra.features import layout

REASON = "ImmutableFieldChange"
# The offline table as observed is not what the spec asks for (dropped or altered by hand): the reconcile
# applies it again.
TABLE_MISSING = "TableMissing"
COLUMNS_MISSING = "ColumnsMissing"
_BOOKKEEPING_LOCK = "mlinfra:bookkeeping"
# Seconds a DDL statement may wait for its table lock (SET LOCAL: the transaction's statements only).
DDL_LOCK_TIMEOUT = 3.0


@dataclasses.dataclass(frozen=True)
class IndexBuild:
    """Where the missing indexes of an existing table are built (always CONCURRENTLY)."""

    max_bytes: int | None  # a larger table is left to the sync Job (None: any size)
    lock_timeout: float  # seconds a build may wait for the transactions it must outlive


# A table up to 256 MiB is indexed in seconds, well inside the operator's statement timeout.
IN_OPERATOR = IndexBuild(max_bytes=256 * 2**20, lock_timeout=DDL_LOCK_TIMEOUT)
# The operator's background build (features.indexbuild) has no statement timeout; a build blocked longer than
# this is left for the next reconcile.
IN_BACKGROUND = IndexBuild(max_bytes=None, lock_timeout=30.0)
# Why the indexes of a large table are not built by the reconcile itself.
LARGE_TABLE = "the table is larger than {mib} MiB: the operator builds them in the background"
# mlinfra.watermarks columns added after its first release: the online store's materialization token and the
# offline table (schema.table and its OID) the watermark was taken from.
WATERMARK_IDENTITY_COLUMNS = {"online_epoch": "text", "offline_table": "text", "offline_oid": "bigint"}
_OPERATOR_COLUMNS = {layout.EVENT_TIMESTAMP: "timestamp with time zone", layout.CREATED_AT: "timestamp with time zone"}
log = logging.getLogger(__name__)


class ImmutableFieldChange(Exception):
    """The spec changes what cannot change in place: a column's type or the entities. Nothing was changed."""

    reason = REASON

    def __init__(self, changes: Sequence[str]) -> None:
        self.changes = tuple(changes)
        super().__init__("; ".join(self.changes))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided for an existing table: columns to add, columns kept, refusals."""

    add: tuple[tuple[str, str], ...]  # (column, SQL type)
    retained: tuple[str, ...]  # columns of removed features, kept
    refusals: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SchemaResult:
    """The outcome of :func:`ensure_offline_table`."""

    table: str  # schema.table
    created: bool
    added: tuple[str, ...]
    retained: tuple[str, ...]
    indexes_built: tuple[str, ...] = ()  # built CONCURRENTLY on the existing table
    indexes_pending: tuple[str, ...] = ()  # still missing (a table too large here, a long transaction in the way)
    pending_why: str = ""
    large: bool = False  # pending only because the table is too large for a reconcile (features.indexbuild)


@dataclasses.dataclass(frozen=True)
class TableState:
    """The offline table as it is (:func:`inspect_offline_table`), compared with the spec."""

    table: str  # schema.table
    exists: bool
    missing: tuple[str, ...]  # columns the spec (or the operator) needs that the table lacks
    retained: tuple[str, ...]  # columns of removed features, kept (not served)


def index_name(table: str, suffix: str) -> str:
    """``{table}_{suffix}`` within PostgreSQL's 63-byte identifier limit."""
    return f"{table[: 63 - len(suffix) - 1]}_{suffix}"


def plan(
    spec: featureview.FeatureViewSpec, existing: Mapping[str, str], indexed_entities: Sequence[str] | None
) -> Plan:
    """Compare the spec with the table's columns (``name -> SQL type``) and its entity index (if any).

    Pure: the decision of :func:`ensure_offline_table`, unit-tested without a database.
    """
    refusals: list[str] = []
    wanted_entities = [entity.name for entity in spec.entities]
    if indexed_entities is not None and list(indexed_entities) != wanted_entities:
        refusals.append(
            f"entities changed: the table is keyed by ({', '.join(indexed_entities)}), "
            f"the spec asks for ({', '.join(wanted_entities)})"
        )
    for entity in spec.entities:
        want = layout.sql_type(entity.type)
        have = existing.get(entity.name)
        if have is None:
            if indexed_entities is None:
                refusals.append(f"entity column {entity.name} ({want}) is missing from the existing table")
        elif have != want:
            refusals.append(f"entity column {entity.name}: type {have} in the table, {want} in the spec")
    for name, want in _OPERATOR_COLUMNS.items():
        have = existing.get(name)
        if have is not None and have != want:
            refusals.append(f"column {name}: type {have} in the table, {want} expected")
    add: list[tuple[str, str]] = [(n, t) for n, t in _OPERATOR_COLUMNS.items() if n not in existing]
    for feature in spec.features:
        want = layout.sql_type(feature.type)
        have = existing.get(feature.name)
        if have is None:
            add.append((feature.name, want))
        elif have != want:
            refusals.append(f"feature column {feature.name}: type {have} in the table, {want} in the spec")
    known = {e.name for e in spec.entities} | {f.name for f in spec.features} | set(_OPERATOR_COLUMNS)
    retained = tuple(sorted(name for name in existing if name not in known))
    return Plan(add=tuple(add), retained=retained, refusals=tuple(refusals))


def _lock(conn: psycopg.Connection[tuple[object, ...]], key: str) -> None:
    """The advisory lock of ``key`` (waited for under the connection's own lock_timeout: its holders are
    DDL bounded by DDL_LOCK_TIMEOUT), then the short lock_timeout for the DDL that follows."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(DDL_LOCK_TIMEOUT * 1000)}ms",))


@contextlib.contextmanager
def _ddl_gives_way(table: str) -> Iterator[None]:
    """A DDL lock wait that timed out, as a deadline error saying which table and why (retried later)."""
    try:
        yield
    except psycopg.errors.LockNotAvailable as exc:
        raise connection.PostgresDeadlineExceeded(
            f"table {table} is locked by another transaction (a long sync run, a migration, a user's session): "
            f"the schema change waited {DDL_LOCK_TIMEOUT:g} s and gave up rather than block the table's readers "
            "and writers behind it; it is tried again later"
        ) from exc


def _index_exists(conn: psycopg.Connection[tuple[object, ...]], schema: str, index: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}"."{index}"',)).fetchone()
    return bool(row and row[0])


def ensure_bookkeeping(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Create the ``mlinfra`` schema with ``sync_runs`` and ``watermarks`` if absent."""
    with _ddl_gives_way(f"{layout.BOOKKEEPING_SCHEMA} bookkeeping"), conn.transaction():
        _lock(conn, _BOOKKEEPING_LOCK)
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {layout.BOOKKEEPING_SCHEMA}")
        conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {layout.SYNC_RUNS} (
                id bigserial PRIMARY KEY,
                namespace text NOT NULL,
                view text NOT NULL,
                start_time timestamptz NOT NULL,
                end_time timestamptz,
                rows bigint,
                watermark timestamptz,
                outcome text NOT NULL,
                error text)"""
        )
        if not _index_exists(conn, layout.BOOKKEEPING_SCHEMA, "sync_runs_view_idx"):  # takes a SHARE lock
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS sync_runs_view_idx ON {layout.SYNC_RUNS} (namespace, view, id DESC)"
            )
        # watermark: newest event time materialized (status onlineWatermark); ingested_through: the
        # created_at high-water mark the next run reads from (see materialize.py for the semantics).
        conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {layout.WATERMARKS} (
                namespace text NOT NULL,
                view text NOT NULL,
                watermark timestamptz,
                ingested_through timestamptz,
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (namespace, view))"""
        )
        # What the watermark describes (features.identity): installations made before these columns have the
        # table without them. Added only when missing: ALTER TABLE takes an ACCESS EXCLUSIVE lock even when
        # IF NOT EXISTS finds the column there, and this runs before every sync and reconcile.
        have = _columns(conn, layout.BOOKKEEPING_SCHEMA, layout.WATERMARKS_TABLE) or {}
        for column, type_ in WATERMARK_IDENTITY_COLUMNS.items():
            if column not in have:
                conn.execute(f"ALTER TABLE {layout.WATERMARKS} ADD COLUMN IF NOT EXISTS {column} {type_}")
        # Each view's sync role sees only its own rows (features.syncrole adds its policy); the operator owns
        # the tables and bypasses it. Turned on only once: ALTER TABLE locks the table.
        for table in RLS_TABLES:
            if not _row_security(conn, table):
                conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")


# The bookkeeping tables a sync role writes: one view's rows each, under row level security.
RLS_TABLES = (layout.SYNC_RUNS, layout.WATERMARKS)


def _row_security(conn: psycopg.Connection[tuple[object, ...]], table: str) -> bool:
    row = conn.execute("SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass(%s)", (table,)).fetchone()
    return bool(row and row[0])


class NotReady(RuntimeError):
    """What a materialization needs is not in place (the operator's reconcile makes it); nothing was done."""


def require(conn: psycopg.Connection[tuple[object, ...]], spec: featureview.FeatureViewSpec, view: str) -> None:
    """Check, without changing anything, that the bookkeeping tables and the offline table with every column
    the run reads are there and readable by this connection's role; raise :class:`NotReady` saying what is
    missing. The sync Job calls this instead of creating them: its role may run no DDL."""
    missing = [t for t in (layout.SYNC_RUNS, layout.WATERMARKS) if _columns(conn, *t.split(".")) is None]
    if missing:
        raise NotReady(
            f"the bookkeeping table(s) {', '.join(missing)} do not exist or this role may not use them: the "
            "FeatureView's reconcile creates them (is the view Ready?)"
        )
    marks = _columns(conn, layout.BOOKKEEPING_SCHEMA, layout.WATERMARKS_TABLE) or {}
    lacking = [c for c in WATERMARK_IDENTITY_COLUMNS if c not in marks]
    if lacking:
        raise NotReady(
            f"{layout.WATERMARKS} lacks the column(s) {', '.join(lacking)}: the FeatureView's reconcile adds them "
            "(an operator older than this Job's image?)"
        )
    state = inspect_offline_table(conn, spec, view)
    if not state.exists:
        raise NotReady(
            f"table {state.table} does not exist or this role may not read it: the FeatureView's reconcile "
            "creates it and grants the sync role its columns (is the view Ready?)"
        )
    if state.missing:
        raise NotReady(
            f"table {state.table}: column(s) {', '.join(state.missing)} missing or not readable by this role: the "
            "FeatureView's reconcile adds them and grants them to the sync role (is the view Ready?)"
        )


def _columns(conn: psycopg.Connection[tuple[object, ...]], schema: str, table: str) -> dict[str, str] | None:
    rows = conn.execute(
        "SELECT column_name, data_type, udt_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, table),
    ).fetchall()
    if not rows:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}"."{table}"',)).fetchone()
        return {} if exists and exists[0] else None
    return {str(name): layout.sql_type_from_information_schema(str(dt), str(udt)) for name, dt, udt in rows}


def _comments(conn: psycopg.Connection[tuple[object, ...]], schema: str, table: str) -> dict[str, str | None]:
    """Column -> comment of the table (COMMENT takes a lock: only changed comments are written)."""
    rows = conn.execute(
        "SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (f'"{schema}"."{table}"',),
    ).fetchall()
    return {str(name): (str(comment) if comment is not None else None) for name, comment in rows}


def _indexed_entities(conn: psycopg.Connection[tuple[object, ...]], schema: str, table: str) -> list[str] | None:
    rows = conn.execute(
        """SELECT a.attname
           FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE n.nspname = %s AND c.relname = %s
           ORDER BY k.ord""",
        (schema, index_name(table, "entity_event_idx")),
    ).fetchall()
    if not rows:
        return None
    names = [str(row[0]) for row in rows]
    return names[:-1] if names[-1] == layout.EVENT_TIMESTAMP else names


def inspect_offline_table(
    conn: psycopg.Connection[tuple[object, ...]], spec: featureview.FeatureViewSpec, view: str
) -> TableState:
    """The offline table of ``spec`` as it is, read only: whether it exists, the columns it lacks, and the
    columns of removed features it keeps (by the same rules as :func:`ensure_offline_table`)."""
    schema, table = layout.offline_table(view, spec.offline.schema_name, spec.offline.table)
    name = layout.qualified_name(schema, table)
    existing = _columns(conn, schema, table)
    if existing is None:
        return TableState(table=name, exists=False, missing=(), retained=())
    wanted = [e.name for e in spec.entities] + [f.name for f in spec.features] + list(_OPERATOR_COLUMNS)
    return TableState(
        table=name,
        exists=True,
        missing=tuple(n for n in wanted if n not in existing),
        retained=plan(spec, existing, None).retained,
    )


def ensure_offline_table(
    conn: psycopg.Connection[tuple[object, ...]],
    spec: featureview.FeatureViewSpec,
    view: str,
    indexes: IndexBuild = IN_OPERATOR,
) -> SchemaResult:
    """Create or evolve the offline table of ``spec``; raise :class:`ImmutableFieldChange` (nothing changed).

    ``conn`` must be in autocommit mode (each step is its own transaction).
    """
    schema, table = layout.offline_table(view, spec.offline.schema_name, spec.offline.table)
    ident = sql.Identifier(schema, table)
    created = False
    with _ddl_gives_way(layout.qualified_name(schema, table)), conn.transaction():
        _lock(conn, f"mlinfra:table:{schema}.{table}")
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        existing = _columns(conn, schema, table)
        if existing is None:
            columns = (
                [
                    sql.SQL("{} {} NOT NULL").format(sql.Identifier(e.name), sql.SQL(layout.sql_type(e.type)))
                    for e in spec.entities
                ]
                + [
                    sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(layout.sql_type(f.type)))
                    for f in spec.features
                ]
                + [
                    sql.SQL("{} timestamptz NOT NULL").format(sql.Identifier(layout.EVENT_TIMESTAMP)),
                    sql.SQL("{} timestamptz NOT NULL DEFAULT now()").format(sql.Identifier(layout.CREATED_AT)),
                ]
            )
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(columns)))
            created = True
            decision = Plan(add=(), retained=(), refusals=())
        else:
            decision = plan(spec, existing, _indexed_entities(conn, schema, table))
            if decision.refusals:
                raise ImmutableFieldChange([f"{schema}.{table}: {r}" for r in decision.refusals])
            for name, type_ in decision.add:
                default = sql.SQL(" NOT NULL DEFAULT now()") if name == layout.CREATED_AT else sql.SQL("")
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}{}").format(
                        ident, sql.Identifier(name), sql.SQL(type_), default
                    )
                )
        if created:  # an empty table: its indexes cost nothing now
            for index, keys in _wanted_indexes(spec, table):
                conn.execute(sql.SQL("CREATE INDEX {} ON {} ({})").format(sql.Identifier(index), ident, keys))
        comments = _comments(conn, schema, table)
        for feature in spec.features:
            if feature.description is not None and comments.get(feature.name) != feature.description:
                conn.execute(
                    sql.SQL("COMMENT ON COLUMN {} IS {}").format(
                        sql.Identifier(schema, table, feature.name), sql.Literal(feature.description)
                    )
                )
    built: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    why = ""
    if not created:
        built, pending, why = build_indexes(conn, spec, view, indexes)
    return SchemaResult(
        table=layout.qualified_name(schema, table),
        created=created,
        added=tuple(name for name, _ in decision.add),
        retained=decision.retained,
        indexes_built=built,
        indexes_pending=pending,
        pending_why=why,
        large=bool(pending)
        and indexes.max_bytes is not None
        and why == LARGE_TABLE.format(mib=indexes.max_bytes // 2**20),
    )


def _wanted_indexes(spec: featureview.FeatureViewSpec, table: str) -> list[tuple[str, sql.Composable]]:
    """The operator's indexes of the offline table: (name, key columns)."""
    entities = sql.SQL(", ").join(sql.Identifier(e.name) for e in spec.entities)
    return [
        # Point-in-time reads per entity; also where the entities are read back from (plan()).
        (
            index_name(table, "entity_event_idx"),
            sql.SQL("{}, {} DESC").format(entities, sql.Identifier(layout.EVENT_TIMESTAMP)),
        ),
        # Incremental runs select by ingestion time (materialize.py).
        (index_name(table, "created_at_idx"), sql.Identifier(layout.CREATED_AT)),
        # The freshness timer's max(event_timestamp) (freshness.py): one index entry, not a scan of the table.
        (index_name(table, "event_idx"), sql.Identifier(layout.EVENT_TIMESTAMP)),
    ]


def _index_valid(conn: psycopg.Connection[tuple[object, ...]], schema: str, index: str) -> bool | None:
    """True for a usable index, False for one a failed CONCURRENTLY build left behind, None when absent."""
    row = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (f'"{schema}"."{index}"',)
    ).fetchone()
    return None if row is None else bool(row[0])


def build_indexes(
    conn: psycopg.Connection[tuple[object, ...]],
    spec: featureview.FeatureViewSpec,
    view: str,
    how: IndexBuild = IN_OPERATOR,
) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """Build the operator's missing indexes of the existing offline table CONCURRENTLY (writers go on).

    Returns (built, still missing, why they are missing). ``conn`` must be in autocommit mode, outside a
    transaction. One builder per table at a time (a session advisory lock; the others leave it to it).
    """
    schema, table = layout.offline_table(view, spec.offline.schema_name, spec.offline.table)
    ident = sql.Identifier(schema, table)
    missing = [(i, keys) for i, keys in _wanted_indexes(spec, table) if _index_valid(conn, schema, i) is not True]
    if not missing:
        return (), (), ""
    names = tuple(i for i, _ in missing)
    if how.max_bytes is not None:
        size = conn.execute("SELECT pg_table_size(to_regclass(%s))", (f'"{schema}"."{table}"',)).fetchone()
        if size and isinstance(size[0], int) and size[0] > how.max_bytes:
            return (), names, LARGE_TABLE.format(mib=how.max_bytes // 2**20)
    # A build would first wait for every open writer of the table: with one there, it is not started at all
    # (nothing left behind); the build's own lock timeout covers a writer that comes in after this look.
    if _has_writers(conn, schema, table):
        return (), names, BUSY
    key = f"mlinfra:index:{schema}.{table}"
    got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()
    if not (got and got[0]):
        return (), names, "another reconcile or sync Job is building them"
    previous = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(how.lock_timeout * 1000)}ms",))
    built: list[str] = []
    try:
        for index, keys in missing:
            target = sql.Identifier(schema, index)
            try:
                if _index_valid(conn, schema, index) is False:  # what a failed build left
                    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(target))
                conn.execute(
                    sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
                        sql.Identifier(index), ident, keys
                    )
                )
                built.append(index)
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
                log.info("index %s.%s not built: %s", schema, index, (str(exc).splitlines() or [""])[0])
                # A build that got past its first phase leaves an index maintained on every write: dropped
                # now if it can be, else before the next build. The others would wait for the same thing.
                with contextlib.suppress(psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
                    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(target))
                break
    finally:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (previous[0] if previous else "0",))
        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
    pending = tuple(name for name in names if name not in built)
    return tuple(built), pending, BUSY if pending else ""


# Why an index build gave way (the next reconcile or sync run tries again).
BUSY = "a transaction that writes to the table or reads it since before the build is still open (tried again later)"
# What a CREATE INDEX CONCURRENTLY waits for first: holders of locks that conflict with SHARE.
_WRITER_LOCKS = (
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)


def _has_writers(conn: psycopg.Connection[tuple[object, ...]], schema: str, table: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = to_regclass(%s) AND granted "
        "AND pid <> pg_backend_pid() AND mode = ANY(%s))",
        (f'"{schema}"."{table}"', list(_WRITER_LOCKS)),
    ).fetchone()
    return bool(row and row[0])
