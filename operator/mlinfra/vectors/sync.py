"""Copy a VectorIndex's source table (PostgreSQL, ``real[]`` vectors) into its Qdrant collection.

Called by the sync job (``mlinfra sync vectorindex NS/NAME``, :mod:`mlinfra.vectors.sync_cli`) and by a
rebuild's backfill (:func:`snapshot_backfill`).

- **What is read.** Rows after the committed watermark in ``(updatedAt, id::text)`` order, ``batchSize`` at a
  time (keyset pagination: ties on ``updatedAt`` never split or skip rows).
- **What is written.** Per batch: live rows with a vector of ``spec.vectors.size`` components are upserted
  (point id = the id column, payload = the payload columns); soft-deleted rows (``deletedColumn`` true) are
  deleted; rows whose vector is NULL, of another length or not finite (NaN, Infinity) are reported by id in
  :attr:`SyncResult.bad_rows` and skipped (their existing point, if any, is left as it was). Both calls wait
  for Qdrant's acknowledgement.
- **Rows that cannot be ordered** (a NULL or infinite ``updatedAt``, a NULL id) have no place in the watermark
  order: paging over them would re-read the same page forever. They are left out of every pass, counted and
  reported by id on every run until the table is fixed, and never stop the others.
- **Bounded memory.** A batch at a time is held; a run keeps at most :data:`BAD_ROWS_KEPT` bad row ids (the
  count is exact); a full pass finds orphans a Qdrant page at a time.
- **What is committed.** The batch's last ``(updatedAt, id)`` in ``mlinfra.vector_watermarks``, only after
  Qdrant acknowledged the batch. A run killed half way resumes after the last acknowledged batch; replaying
  a batch is idempotent (upsert/delete by id).
- **Hard deletes.** Rows that are gone leave no trace an incremental pass could read: a ``full`` pass also
  deletes every point whose id is no longer a live row.
- **Caveat.** A transaction committing rows whose ``updatedAt`` is older than a committed watermark is missed
  by incremental passes (a full pass or a rebuild picks it up).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from qdrant_client import QdrantClient
from qdrant_client.http import models

from mlinfra.api import vectorindex
from mlinfra.vectors import source as source_mod
from mlinfra.vectors import syncrole

BOOKKEEPING_SCHEMA = syncrole.BOOKKEEPING_SCHEMA
# Made by the operator (syncrole.ensure_bookkeeping), never here: the Jobs' role may run no DDL.
WATERMARKS = sql.Identifier(*syncrole.WATERMARKS)
DEFAULT_SCHEMA = "public"
BAD_ROWS_KEPT = 1000

Conn = psycopg.Connection[tuple[Any, ...]]
PointId = int | str


@dataclasses.dataclass(frozen=True)
class Watermark:
    updated_at: datetime.datetime | None = None
    last_id: str | None = None


@dataclasses.dataclass(frozen=True)
class SyncResult:
    rows: int = 0  # source rows read
    upserted: int = 0
    deleted: int = 0  # soft-deleted rows removed from the collection
    removed: int = 0  # points whose row is gone (full pass only)
    batches: int = 0
    bad_rows: tuple[tuple[str, str], ...] = ()  # (id, why), e.g. ("42", "vector has 3 components, expected 4")
    watermark: Watermark = Watermark()
    bad_count: int = -1  # every bad row of the run; bad_rows keeps the first BAD_ROWS_KEPT (-1: len(bad_rows))

    @property
    def bad(self) -> int:
        return len(self.bad_rows) if self.bad_count < 0 else self.bad_count


class BadRows:
    """The bad rows of one run: an exact count, the first :data:`BAD_ROWS_KEPT` (id, why) kept."""

    def __init__(self) -> None:
        self.count = 0
        self.kept: list[tuple[str, str]] = []

    def add(self, found: Sequence[tuple[str, str]], total: int | None = None) -> None:
        self.count += len(found) if total is None else total
        self.kept += found[: max(0, BAD_ROWS_KEPT - len(self.kept))]


def read_watermark(conn: Conn, namespace: str, name: str) -> Watermark:
    row = conn.execute(
        sql.SQL("SELECT updated_at_mark, last_id FROM {} WHERE namespace = %s AND name = %s").format(WATERMARKS),
        (namespace, name),
    ).fetchone()
    return Watermark(row[0], row[1]) if row else Watermark()


def _commit_watermark(conn: Conn, namespace: str, name: str, mark: Watermark) -> None:
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (namespace, name, updated_at_mark, last_id) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (namespace, name) DO UPDATE SET updated_at_mark = EXCLUDED.updated_at_mark, "
                "last_id = EXCLUDED.last_id, updated_at = now()"
            ).format(WATERMARKS),
            (namespace, name, mark.updated_at, mark.last_id),
        )


def _table(source: vectorindex.Source) -> sql.Identifier:
    return sql.Identifier(source.schema_name or DEFAULT_SCHEMA, source.table)


def _deleted(source: vectorindex.Source) -> sql.Composable:
    if source.deleted_column is None:
        return sql.SQL("false")
    return sql.SQL("coalesce({}, false)").format(sql.Identifier(source.deleted_column))


def orderable(source: vectorindex.Source) -> sql.Composed:
    """Rows with a place in the watermark order ``(updatedAt, id::text)``."""
    updated = sql.Identifier(source.updated_at_column)
    return sql.SQL("({} IS NOT NULL AND isfinite({}) AND {} IS NOT NULL)").format(
        updated, updated, sql.Identifier(source.id_column)
    )


def unorderable(
    conn: Conn, source: vectorindex.Source, limit: int = BAD_ROWS_KEPT
) -> tuple[int, list[tuple[str, str]]]:
    """Live rows without a place in the watermark order: how many, and the first ``limit`` as (id, why)."""
    ident, updated = sql.Identifier(source.id_column), sql.Identifier(source.updated_at_column)
    where = sql.SQL("WHERE NOT {} AND NOT {}").format(orderable(source), _deleted(source))
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} {}").format(_table(source), where)).fetchone()
    total = int(row[0]) if row else 0
    if not total:
        return 0, []
    found = conn.execute(
        sql.SQL("SELECT {}::text, {} IS NULL FROM {} {} ORDER BY 1 LIMIT %s").format(
            ident, updated, _table(source), where
        ),
        (limit,),
    ).fetchall()
    column = source.updated_at_column
    return total, [
        (
            key if key is not None else "NULL",
            f"id column {source.id_column!r} is NULL: the row cannot be a point"
            if key is None
            else f"{column} is {'NULL' if null else 'infinite'}: the row has no place in the sync order, set it",
        )
        for key, null in found
    ]


def select_changed(
    source: vectorindex.Source, after: bool, shape: source_mod.SourceShape | None = None
) -> sql.Composed:
    """Orderable rows ``(id, id::text, vector, updated_at, deleted, *payload)`` after ``(%(ts)s, %(id)s)`` when
    ``after``, in watermark order, at most ``%(limit)s``."""
    ident, updated = sql.Identifier(source.id_column), sql.Identifier(source.updated_at_column)
    columns = [
        ident,
        sql.SQL("{}::text").format(ident),
        source_mod.vector_expression(source, shape),
        updated,
        _deleted(source),
    ] + [sql.Identifier(c) for c in source.payload_columns or ()]
    where = sql.SQL("WHERE {}").format(orderable(source))
    if after:
        where = sql.SQL("{} AND ({}, {}::text) > (%(ts)s, %(id)s)").format(where, updated, ident)
    return sql.SQL("SELECT {} FROM {} {} ORDER BY {}, {}::text LIMIT %(limit)s").format(
        sql.SQL(", ").join(columns), _table(source), where, updated, ident
    )


def point_id(value: Any) -> PointId:
    """Qdrant point ids are unsigned integers or UUIDs."""
    if isinstance(value, bool) or not isinstance(value, int | uuid.UUID | str):
        raise ValueError(f"id {value!r} is neither an integer nor a uuid")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"id {value} is negative: Qdrant point ids are unsigned")
        return value
    return str(uuid.UUID(str(value)))


def payload_value(value: Any) -> Any:
    """A column value as Qdrant's JSON payload carries it; NaN and Infinity (JSON has neither) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [payload_value(v) for v in value]
    return value


def vector_problem(vector: Any, size: int) -> str | None:
    if vector is None:
        return "vector is NULL"
    if len(vector) != size:
        return f"vector has {len(vector)} components, expected {size}"
    if any(v is None for v in vector):
        return "vector has NULL components"
    if not all(math.isfinite(v) for v in vector):
        return "vector has a NaN or infinite component"
    return None


def payload_problem(columns: Sequence[str], values: Sequence[Any]) -> str | None:
    """Payload values Qdrant's JSON cannot carry (stored as null; the row is reported, not skipped)."""
    bad = [c for c, v in zip(columns, values, strict=True) if _non_finite(v)]
    return f"payload {', '.join(bad)}: NaN or infinite, stored as null" if bad else None


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, decimal.Decimal):
        return not value.is_finite()
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


def _batches(
    conn: Conn, source: vectorindex.Source, start: Watermark, size: int, shape: source_mod.SourceShape | None = None
) -> Iterator[list[tuple[Any, ...]]]:
    mark = start
    while True:
        query = select_changed(source, after=mark.updated_at is not None, shape=shape)
        # Binary results: real[] arrive as floats without a text round trip (half the read time).
        rows = conn.execute(
            query, {"ts": mark.updated_at, "id": mark.last_id or "", "limit": size}, binary=True
        ).fetchall()
        if not rows:
            return
        yield rows
        mark = Watermark(rows[-1][3], rows[-1][1])


def _write(
    client: QdrantClient, collection: str, spec: vectorindex.VectorIndexSpec, rows: Sequence[tuple[Any, ...]]
) -> tuple[int, int, list[tuple[str, str]]]:
    assert spec.source is not None
    payload_columns = spec.source.payload_columns or []
    points, gone, bad = [], [], []
    for row in rows:
        key, key_text, vector, _, deleted = row[:5]
        try:
            pid = point_id(key)
        except ValueError as exc:
            bad.append((key_text, str(exc)))
            continue
        if deleted:
            gone.append(pid)
            continue
        problem = vector_problem(vector, spec.vectors.size)
        if problem is not None:
            bad.append((key_text, problem))
            continue
        payload = {column: payload_value(value) for column, value in zip(payload_columns, row[5:], strict=True)}
        problem = payload_problem(payload_columns, row[5:])
        if problem is not None:
            bad.append((key_text, problem))
        points.append(models.PointStruct(id=pid, vector=[float(v) for v in vector], payload=payload))
    if points:
        client.upsert(collection, points=points, wait=True)
    if gone:
        client.delete(collection, points_selector=models.PointIdsList(points=gone), wait=True)
    return len(points), len(gone), bad


def sync(
    conn: Conn,
    client: QdrantClient,
    spec: vectorindex.VectorIndexSpec,
    namespace: str,
    name: str,
    *,
    full: bool = False,
    collection: str | None = None,
    shape: source_mod.SourceShape | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> SyncResult:
    """One sync run into ``collection`` (default: the alias). ``conn`` must be in autocommit mode.

    ``on_batch(batches, rows)`` is called after each committed batch (progress, and the tests' kill hook).
    """
    if spec.source is None:
        raise ValueError("spec.source is not set: there is nothing to sync from")
    target = collection or spec.collection
    batch_size = spec.sync.batch_size if spec.sync else 500
    mark = read_watermark(conn, namespace, name)
    rows = upserted = deleted = batches = 0
    bad = BadRows()
    total, found = unorderable(conn, spec.source)
    bad.add(found, total)
    for batch in _batches(conn, spec.source, mark, batch_size, shape):
        written, gone, problems = _write(client, target, spec, batch)
        mark = Watermark(batch[-1][3], batch[-1][1])
        _commit_watermark(conn, namespace, name, mark)  # only after Qdrant acknowledged (wait=True)
        rows, upserted, deleted, batches = rows + len(batch), upserted + written, deleted + gone, batches + 1
        bad.add(problems)
        if on_batch is not None:
            on_batch(batches, rows)
    removed = remove_orphans(conn, client, spec, target) if full else 0
    return SyncResult(
        rows=rows,
        upserted=upserted,
        deleted=deleted,
        removed=removed,
        batches=batches,
        bad_rows=tuple(bad.kept),
        bad_count=bad.count,
        watermark=mark,
    )


def live_among(conn: Conn, source: vectorindex.Source, ids: Sequence[PointId]) -> set[PointId]:
    """Which of ``ids`` are live rows: one page of points at a time, through the id column's index."""
    ident = sql.Identifier(source.id_column)
    live: set[PointId] = set()
    # Integer ids compare with any integer column through its index (cross-type btree operators); the
    # other ids are uuids.
    for values, array in (
        ([i for i in ids if isinstance(i, int)], "bigint[]"),
        ([str(i) for i in ids if not isinstance(i, int)], "uuid[]"),
    ):
        if not values:
            continue
        query = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s::{}) AND NOT {}").format(
            ident, _table(source), ident, sql.SQL(array), _deleted(source)
        )
        try:
            found = conn.execute(query, (values,)).fetchall()
        except psycopg.errors.UndefinedFunction:  # ids of the other kind: points left from another id column
            continue
        for (key,) in found:
            with contextlib.suppress(ValueError):
                live.add(point_id(key))
    return live


def remove_orphans(
    conn: Conn, client: QdrantClient, spec: vectorindex.VectorIndexSpec, collection: str, page: int = 1000
) -> int:
    """Delete points whose row is gone or soft-deleted; returns how many."""
    assert spec.source is not None
    removed, offset = 0, None
    while True:
        records, offset = client.scroll(collection, limit=page, offset=offset, with_payload=False, with_vectors=False)
        ids = [_normalize(r.id) for r in records]
        live = live_among(conn, spec.source, ids)
        orphans = [i for i in ids if i not in live]
        if orphans:
            client.delete(collection, points_selector=models.PointIdsList(points=orphans), wait=True)
            removed += len(orphans)
        if offset is None:
            return removed


def _normalize(value: Any) -> PointId:
    return value if isinstance(value, int) else str(uuid.UUID(str(value)))


def backfill(conn: Conn, client: QdrantClient, spec: vectorindex.VectorIndexSpec, collection: str) -> int:
    """Copy every live row into ``collection`` (a rebuild's new one); no watermark is read or committed."""
    if spec.source is None:
        raise ValueError("spec.source is not set: there is nothing to backfill from")
    written = 0
    for batch in _batches(conn, spec.source, Watermark(), spec.sync.batch_size if spec.sync else 500):
        written += _write(client, collection, spec, batch)[0]
    return written


@dataclasses.dataclass(frozen=True)
class Backfill:
    written: int  # points written
    expected: int  # live rows with a usable vector in the same snapshot: what the collection must hold
    watermark: Watermark  # the last row read: incremental syncs continue after it


def snapshot_backfill(
    conn: Conn,
    client: QdrantClient,
    spec: vectorindex.VectorIndexSpec,
    collection: str,
    shape: source_mod.SourceShape | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Backfill:
    """Copy every live row into ``collection`` and count the expected points, both in one REPEATABLE READ
    snapshot: rows written meanwhile change neither, so the count check stays exact under writes (the
    incremental sync picks those rows up after the returned watermark). ``on_batch(batches, rows)`` after
    each batch written (the test hook of :func:`mlinfra.stores.sync_command.pause_hook`)."""
    if spec.source is None:
        raise ValueError("spec.source is not set: there is nothing to backfill from")
    previous = conn.isolation_level
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            written, mark, batches, rows = 0, Watermark(), 0, 0
            for batch in _batches(conn, spec.source, Watermark(), spec.sync.batch_size if spec.sync else 500, shape):
                written += _write(client, collection, spec, batch)[0]
                mark = Watermark(batch[-1][3], batch[-1][1])
                batches, rows = batches + 1, rows + len(batch)
                if on_batch is not None:
                    on_batch(batches, rows)
            expected = expected_count(conn, spec, shape)
    finally:
        conn.isolation_level = previous
    return Backfill(written=written, expected=expected, watermark=mark)


def commit_watermark(conn: Conn, namespace: str, name: str, mark: Watermark) -> None:
    """Set the index's watermark (after a rebuild swapped in a collection filled up to ``mark``)."""
    _commit_watermark(conn, namespace, name, mark)


def expected_count(conn: Conn, spec: vectorindex.VectorIndexSpec, shape: source_mod.SourceShape | None = None) -> int:
    """Live rows with a vector of the right size: the points a complete collection holds."""
    if spec.source is None:
        raise ValueError("spec.source is not set")
    source = spec.source
    vector = source_mod.vector_expression(source, shape)
    # The writer's rules, in SQL: an orderable row, an id Qdrant takes (not negative), a vector of the right
    # size with no NULL, NaN or infinite component (PostgreSQL's NaN equals NaN, so && finds it).
    query = sql.SQL(
        "SELECT count(*) FROM {} WHERE {} AND NOT {} AND {}::text NOT LIKE '-%%' AND cardinality({}) = %s "
        "AND array_position({}, NULL) IS NULL "
        "AND NOT ({}::float8[] && ARRAY['NaN', 'Infinity', '-Infinity']::float8[])"
    ).format(
        _table(source),
        orderable(source),
        _deleted(source),
        sql.Identifier(source.id_column),
        vector,
        vector,
        vector,
    )
    row = conn.execute(query, (spec.vectors.size,)).fetchone()
    return int(row[0]) if row else 0


def rows_behind(conn: Conn, spec: vectorindex.VectorIndexSpec, namespace: str, name: str) -> int:
    """Source rows after the committed watermark."""
    if spec.source is None:
        raise ValueError("spec.source is not set")
    mark = read_watermark(conn, namespace, name)
    source = spec.source
    ident, updated = sql.Identifier(source.id_column), sql.Identifier(source.updated_at_column)
    if mark.updated_at is None:
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(_table(source), orderable(source))
        row = conn.execute(query).fetchone()
    else:
        query = sql.SQL("SELECT count(*) FROM {} WHERE {} AND ({}, {}::text) > (%s, %s)").format(
            _table(source), orderable(source), updated, ident
        )
        row = conn.execute(query, (mark.updated_at, mark.last_id or "")).fetchone()
    return int(row[0]) if row else 0


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far the collection is behind its source table (``status.sync``)."""

    source_watermark: datetime.datetime | None  # newest change time in the source table
    index_watermark: datetime.datetime | None  # newest change time committed into the collection
    rows_behind: int

    @property
    def lag_seconds(self) -> float | None:
        """sourceWatermark - indexWatermark; 0 when nothing is behind (an idle table is not late)."""
        if self.rows_behind == 0:
            return 0.0
        if self.source_watermark is None:
            return None
        if self.index_watermark is None:
            return None  # never synced: no meaningful lag figure, rowsBehind says it
        return max(0.0, (self.source_watermark - self.index_watermark).total_seconds())


def progress(conn: Conn, spec: vectorindex.VectorIndexSpec, namespace: str, name: str) -> Progress:
    if spec.source is None:
        raise ValueError("spec.source is not set")
    row = conn.execute(
        sql.SQL("SELECT max({}) FROM {} WHERE {}").format(
            sql.Identifier(spec.source.updated_at_column), _table(spec.source), orderable(spec.source)
        )
    ).fetchone()
    newest = row[0] if row else None
    if isinstance(newest, datetime.datetime) and newest.tzinfo is None:
        newest = newest.replace(tzinfo=datetime.UTC)
    behind = rows_behind(conn, spec, namespace, name)
    mark = read_watermark(conn, namespace, name)
    return Progress(source_watermark=newest, index_watermark=mark.updated_at, rows_behind=behind)
