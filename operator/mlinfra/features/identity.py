"""What a FeatureView's watermark describes, so a watermark is never trusted for data it does not describe.

A watermark says "everything ingested up to here is online". That holds only for the Redis the run wrote to,
as long as it kept its data, and for the offline table the run read. Both are recorded with the watermark
(``mlinfra.watermarks``) and checked by every run and by the freshness timer:

- **the online store**: each run leaves a random token (a uuid4: not a secret, only unguessable enough to
  never repeat) in the view's marker key
  (``layout.marker_key``, never expiring) and commits the same token with the watermark. A Redis that lost its
  data (``FLUSHALL``, a restart without persistence, the marker evicted) or another Redis (``online.storeRef``
  changed, or pointing at another server) has no marker or another one;
- **the offline table**: ``schema.table`` and its OID. A changed ``offline.table`` or a table dropped and
  created again is another table: its ``created_at`` values have nothing to do with the recorded
  ``ingested_through``.

On a mismatch the run is a full one (everything within the TTL, the watermark ignored) and the status says
the data is not there (lag unknown, reason :data:`ONLINE_DATA_LOST` or :data:`OFFLINE_TABLE_CHANGED`).

A watermark row without identity (written before these columns existed) is *adopted*: the next run writes a
marker and records both identities without a full re-sync, and until then the status trusts the watermark as
it did before. Forcing a full re-sync of every view at the upgrade would load every Redis at once for no
evidence of loss; from the first run after the upgrade on, a loss is detected.

Pure decisions (:func:`judge`) plus three small reads; no Kopf.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import psycopg
import redis
from psycopg import sql

from mlinfra.api import featureview
from mlinfra.features import layout

ONLINE_DATA_LOST = "OnlineDataLost"  # status reason; the run's reason is ONLINE_STORE_LOST
ONLINE_STORE_LOST = "OnlineStoreLost"
OFFLINE_TABLE_CHANGED = "OfflineTableChanged"

_MARKS = sql.Identifier(layout.BOOKKEEPING_SCHEMA, layout.WATERMARKS_TABLE)


@dataclasses.dataclass(frozen=True)
class TableId:
    """An offline table as it is now: ``schema.table`` and its OID (None when it does not exist)."""

    table: str
    oid: int | None


@dataclasses.dataclass(frozen=True)
class Recorded:
    """The identity committed with the watermark (all None in a row written before it was recorded)."""

    epoch: str | None = None
    offline_table: str | None = None
    offline_oid: int | None = None

    @property
    def known(self) -> bool:
        return self.epoch is not None


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """Why the watermark does not describe the data: the run's reason, the status reason, what was found."""

    run_reason: str
    status_reason: str
    message: str


def new_epoch() -> str:
    """A fresh marker token (unguessable, so no other run or store can hold the same one by chance)."""
    return uuid.uuid4().hex


def judge(recorded: Recorded | None, marker: str | None, table: TableId) -> list[Mismatch]:
    """What no longer holds of the recorded identity (empty: the watermark can be trusted).

    ``recorded`` None: no successful run yet (there is no watermark to distrust). An unknown identity (a row
    from before it was recorded) is trusted once: see the module docstring.
    """
    if recorded is None or not recorded.known:
        return []
    found: list[Mismatch] = []
    if marker != recorded.epoch:
        what = (
            "the online store has no materialization marker: its data was lost (FLUSHALL, restart without "
            "persistence, eviction) or storeRef points at another Redis"
            if marker is None
            else "the online store holds the marker of another materialization: storeRef points at another "
            "Redis, or its data was replaced (restored from another backup)"
        )
        found.append(
            Mismatch(ONLINE_STORE_LOST, ONLINE_DATA_LOST, f"{what}; the next materialization rewrites every key")
        )
    if (recorded.offline_table, recorded.offline_oid) != (table.table, table.oid):
        what = (
            f"the watermark was taken from table {recorded.offline_table}, the spec reads {table.table}"
            if recorded.offline_table != table.table
            else f"table {table.table} was dropped and created again since the last materialization"
        )
        found.append(
            Mismatch(
                OFFLINE_TABLE_CHANGED,
                OFFLINE_TABLE_CHANGED,
                f"{what}; the next materialization re-reads every row within the TTL",
            )
        )
    return found


def offline_table(conn: psycopg.Connection[tuple[Any, ...]], spec: featureview.FeatureViewSpec, view: str) -> TableId:
    schema_name, table = layout.offline_table(view, spec.offline.schema_name, spec.offline.table)
    row = conn.execute("SELECT to_regclass(%s)::oid::bigint", (f'"{schema_name}"."{table}"',)).fetchone()
    return TableId(layout.qualified_name(schema_name, table), int(row[0]) if row and row[0] is not None else None)


def recorded(conn: psycopg.Connection[tuple[Any, ...]], namespace: str, view: str) -> Recorded | None:
    """The identity committed with the view's watermark; None before its first successful run."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (layout.WATERMARKS,)).fetchone()
    if not (exists and exists[0]):
        return None
    query = sql.SQL(
        "SELECT online_epoch, offline_table, offline_oid FROM {marks} WHERE namespace = %s AND view = %s"
    ).format(marks=_MARKS)
    try:
        row = conn.execute(query, (namespace, view)).fetchone()
    except psycopg.errors.UndefinedColumn:  # bookkeeping not upgraded yet (the reconcile adds the columns)
        return Recorded()
    return Recorded(*row) if row else None


def marker(online: redis.Redis, namespace: str, view: str) -> str | None:
    """The token in the view's marker key (None when absent). One GET, under the client's own timeouts."""
    raw = online.get(layout.marker_key(namespace, view))
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)
