"""The run history and the one-run-at-a-time lock of VectorIndex syncs, in the source database.

``mlinfra.vector_sync_runs`` keeps one row per run (Running -> Succeeded | Failed); the operator's timer reads
the newest as ``status.sync.lastRun``. A session advisory lock per index makes a second concurrent run (a
CronJob tick while an on-demand Job runs) exit instead of doing the same work twice. A run that was killed
leaves a Running row: the next run, holding the lock, marks it Failed.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from mlinfra.api import common
from mlinfra.vectors import syncrole

# Made by the operator (syncrole.ensure_bookkeeping), never here: the Jobs' role may run no DDL.
RUNS = sql.Identifier(*syncrole.RUNS)
KILLED = "the run stopped before finishing (killed or crashed); the next run resumed from its last batch"

Conn = psycopg.Connection[tuple[Any, ...]]


class RunInProgress(Exception):
    """Another sync (or rebuild) of the same index holds the lock."""


def _lock_key(namespace: str, name: str) -> str:
    return f"mlinfra.vectorindex/{namespace}/{name}"


@contextlib.contextmanager
def exclusive(conn: Conn, namespace: str, name: str) -> Iterator[None]:
    """Hold the index's advisory lock (session level) for the block, or raise :class:`RunInProgress`."""
    key = _lock_key(namespace, name)
    row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()
    if not row or not row[0]:
        raise RunInProgress(f"another sync of VectorIndex {namespace}/{name} is running")
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def _rebuild_key(namespace: str, name: str) -> str:
    return f"mlinfra.vectorindex-rebuild/{namespace}/{name}"


@contextlib.contextmanager
def rebuilding(conn: Conn, namespace: str, name: str) -> Iterator[None]:
    """Hold the index's rebuild lock (session level) for the block, or raise :class:`RunInProgress`. The
    operator looks for it in ``pg_locks`` (:func:`rebuild_running`): held, a rebuild process is alive, whatever
    its Job's state says (on kwok a Job is Complete before anything ran; a pod may outlive its deleted Job)."""
    key = _rebuild_key(namespace, name)
    row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()
    if not row or not row[0]:
        raise RunInProgress(f"another rebuild of VectorIndex {namespace}/{name} is running")
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def rebuild_running(conn: Conn, namespace: str, name: str) -> bool:
    """Whether a session holds the index's rebuild lock (read from ``pg_locks``: taking the lock to find out
    would make a rebuild starting at that moment give up). A bigint advisory key shows as its high half in
    ``classid`` and its low half in ``objid`` (``objsubid`` 1)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted AND d.datname = current_database() "
        "AND l.classid::bigint = (k.key >> 32) & 4294967295 AND l.objid::bigint = k.key & 4294967295) "
        "FROM (SELECT hashtextextended(%s, 0) AS key) k",
        (_rebuild_key(namespace, name),),
    ).fetchone()
    return bool(row and row[0])


def start(conn: Conn, namespace: str, name: str) -> int:
    """Mark dead runs Failed and record a new Running one (call while holding :func:`exclusive`)."""
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "UPDATE {} SET outcome = 'Failed', end_time = now(), error = %s "
                "WHERE namespace = %s AND name = %s AND outcome = 'Running'"
            ).format(RUNS),
            (KILLED, namespace, name),
        )
        row = conn.execute(
            sql.SQL("INSERT INTO {} (namespace, name, outcome) VALUES (%s, %s, 'Running') RETURNING id").format(RUNS),
            (namespace, name),
        ).fetchone()
    assert row is not None
    return int(row[0])


def finish(
    conn: Conn,
    run_id: int,
    *,
    rows: int,
    upserted: int,
    deleted: int,
    bad_rows: int,
    watermark: datetime.datetime | None,
    error: str | None = None,
) -> None:
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "UPDATE {} SET end_time = now(), rows = %s, upserted = %s, deleted = %s, bad_rows = %s, "
                "watermark = %s, outcome = %s, error = %s WHERE id = %s"
            ).format(RUNS),
            (
                rows,
                upserted,
                deleted,
                bad_rows,
                watermark,
                "Failed" if error else "Succeeded",
                (error or None) and error[:1024],
                run_id,
            ),
        )


def last(conn: Conn, namespace: str, name: str) -> common.SyncRun | None:
    """The newest run, as ``status.sync.lastRun`` (None when there is none or no table yet)."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (".".join(syncrole.RUNS),)).fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute(
        sql.SQL(
            "SELECT start_time, end_time, upserted, deleted, watermark, outcome, error "
            "FROM {} WHERE namespace = %s AND name = %s ORDER BY id DESC LIMIT 1"
        ).format(RUNS),
        (namespace, name),
    ).fetchone()
    if row is None:
        return None
    start_time, end_time, upserted, deleted, watermark, outcome, error = row
    rows = None if upserted is None else int(upserted) + int(deleted or 0)
    return common.SyncRun(
        start_time=start_time,
        end_time=end_time,
        rows=rows,
        watermark=watermark,
        outcome=outcome,
        message=(error or None) and str(error)[:1024],
    )
