"""Freshness of a FeatureView: how far the online store is behind the offline source, from the real data.

Called by the FeatureView freshness timer (handlers) to fill ``status.freshness`` and
``status.lastMaterialization``, and by the CLI's summary.

- ``sourceWatermark``: the newest ``event_timestamp`` in the offline table;
- ``onlineWatermark``: the newest event time committed by a successful materialization
  (``mlinfra.watermarks.watermark``);
- ``lagSeconds``: ``sourceWatermark - onlineWatermark`` in seconds, ``0`` when caught up (never negative).
  An idle source is not stale: when nothing new arrives offline the lag stays ``0`` however old the data.
  Before any run, the lag is ``None`` (unknown) if the table has rows, ``0`` if it is empty.
  When the watermark does not describe the data (``features.identity``: the online store lost its data or
  is another Redis, the offline table changed), the online watermark and the lag are ``None``
  (:func:`distrusted`): a lag of 0 would say fresh while the data is missing.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import psycopg
from psycopg import sql

from mlinfra.api import common, featureview
from mlinfra.features import layout

_RUNS = sql.Identifier(layout.BOOKKEEPING_SCHEMA, layout.SYNC_RUNS_TABLE)
_MARKS = sql.Identifier(layout.BOOKKEEPING_SCHEMA, layout.WATERMARKS_TABLE)


@dataclasses.dataclass(frozen=True)
class Freshness:
    source_watermark: datetime.datetime | None
    online_watermark: datetime.datetime | None
    lag_seconds: float | None

    def to_status(self) -> featureview.FreshnessStatus:
        return featureview.FreshnessStatus(
            source_watermark=self.source_watermark,
            online_watermark=self.online_watermark,
            lag_seconds=self.lag_seconds,
        )


def lag(source: datetime.datetime | None, online: datetime.datetime | None) -> float | None:
    """``source - online`` in seconds, clamped at 0; 0 for an empty source, None if never materialized."""
    if source is None:
        return 0.0
    if online is None:
        return None
    return max(0.0, (source - online).total_seconds())


def slo_met(value: Freshness, max_lag: datetime.timedelta) -> bool | None:
    """Whether the lag is within ``max_lag`` (None when the lag is unknown)."""
    if value.lag_seconds is None:
        return None
    return value.lag_seconds <= max_lag.total_seconds()


def _relation_exists(conn: psycopg.Connection[tuple[Any, ...]], qualified: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,)).fetchone()
    return bool(row and row[0])


def source_watermark(
    conn: psycopg.Connection[tuple[Any, ...]], spec: featureview.FeatureViewSpec, view: str
) -> datetime.datetime | None:
    """The newest event time in the offline table (None when empty or absent)."""
    schema_name, table = layout.offline_table(view, spec.offline.schema_name, spec.offline.table)
    if not _relation_exists(conn, f'"{schema_name}"."{table}"'):
        return None
    row = conn.execute(
        sql.SQL("SELECT max({}) FROM {}").format(
            sql.Identifier(layout.EVENT_TIMESTAMP), sql.Identifier(schema_name, table)
        )
    ).fetchone()
    return row[0] if row else None


def online_watermark(conn: psycopg.Connection[tuple[Any, ...]], namespace: str, view: str) -> datetime.datetime | None:
    """The committed watermark (None before the first successful run)."""
    if not _relation_exists(conn, layout.WATERMARKS):
        return None
    row = conn.execute(
        sql.SQL("SELECT watermark FROM {marks} WHERE namespace = %s AND view = %s").format(marks=_MARKS),
        (namespace, view),
    ).fetchone()
    return row[0] if row else None


def compute(
    conn: psycopg.Connection[tuple[Any, ...]], spec: featureview.FeatureViewSpec, namespace: str, view: str
) -> Freshness:
    """Source and online watermarks and the lag between them, from the offline store."""
    source = source_watermark(conn, spec, view)
    online = online_watermark(conn, namespace, view)
    return Freshness(source_watermark=source, online_watermark=online, lag_seconds=lag(source, online))


def distrusted(value: Freshness) -> Freshness:
    """``value`` for a watermark that does not describe the online data: only the source watermark stands."""
    return dataclasses.replace(value, online_watermark=None, lag_seconds=None)


def last_run(conn: psycopg.Connection[tuple[Any, ...]], namespace: str, view: str) -> common.SyncRun | None:
    """The latest ``mlinfra.sync_runs`` row of the view, as ``status.lastMaterialization``."""
    if not _relation_exists(conn, layout.SYNC_RUNS):
        return None
    row = conn.execute(
        sql.SQL(
            "SELECT start_time, end_time, rows, watermark, outcome, error FROM {runs} "
            "WHERE namespace = %s AND view = %s ORDER BY id DESC LIMIT 1"
        ).format(runs=_RUNS),
        (namespace, view),
    ).fetchone()
    if row is None:
        return None
    start, end, rows, watermark, outcome, error = row
    return common.SyncRun(
        start_time=start,
        end_time=end,
        rows=rows,
        watermark=watermark,
        outcome=outcome,
        message=(error or None) and str(error)[:1024],
    )
