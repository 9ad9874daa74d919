"""Which FeatureView an offline table belongs to. Tables are per database, not per namespace: two
FeatureViews of the same name in two namespaces on one PostgreSQL server (two DataStores pointing at one
server), or two views naming the same ``spec.offline.table``, would otherwise write into one table and serve
each other's rows. The first view to reconcile claims the table; another is refused and nothing is changed.

Claims live in the bookkeeping schema (``mlinfra.offline_tables``), keyed by the table and naming the view
by ``<namespace>/<name>`` (not its uid: a view deleted and created again finds its table again). A table
made before claims were recorded is claimed by the first view that reconciles it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from mlinfra.engines import claims
from mlinfra.features import layout

TABLE = (layout.BOOKKEEPING_SCHEMA, "offline_tables")


class TableInUse(Exception):
    """The table belongs to another FeatureView; nothing was changed."""

    def __init__(self, table: str, holder: str) -> None:
        super().__init__(f"table {table} holds the offline data of FeatureView {holder}")
        self.table, self.holder = table, holder


class NotAnOfflineTable(TableInUse):
    """The table exists, nobody claimed it, and it is not shaped like an offline table: someone else's."""

    def __init__(self, table: str) -> None:
        Exception.__init__(
            self,
            f"table {table} exists and is not the offline table of any FeatureView (it has no "
            f"{layout.EVENT_TIMESTAMP} column): the operator does not take over a table it did not make",
        )
        self.table, self.holder = table, ""


def claim(conn: psycopg.Connection[Any], schema: str, table: str, owner: str) -> None:
    """Claim ``schema.table`` for the view ``owner`` (``<namespace>/<name>``) or raise TableInUse. Idempotent;
    ``conn`` must be outside a transaction (the bookkeeping schema exists: ``schema.ensure_bookkeeping``).

    An unclaimed table that exists is adopted only when it has the offline table's event time column (a
    table a user prepared for the view, or one made before claims were recorded); any other table is a
    user's own, and is left alone (NotAnOfflineTable)."""
    key = {"schema_name": schema, "table_name": table}
    if not _shaped_for_features(conn, schema, table) and claims.holder(conn, TABLE, key) != owner:
        raise NotAnOfflineTable(layout.qualified_name(schema, table))
    holder = claims.claim(conn, TABLE, key, owner)
    if holder != owner:
        raise TableInUse(layout.qualified_name(schema, table), holder)


def _shaped_for_features(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    """The table is absent (the view creates it) or has the offline table's event time column."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NULL OR EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attname = %s AND attnum > 0 AND NOT attisdropped)",
        (f'"{schema}"."{table}"', f'"{schema}"."{table}"', layout.EVENT_TIMESTAMP),
    ).fetchone()
    return bool(row and row[0])
