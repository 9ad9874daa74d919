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


def claim(conn: psycopg.Connection[Any], schema: str, table: str, owner: str) -> None:
    """Claim ``schema.table`` for the view ``owner`` (``<namespace>/<name>``) or raise TableInUse. Idempotent;
    ``conn`` must be outside a transaction (the bookkeeping schema exists: ``schema.ensure_bookkeeping``)."""
    holder = claims.claim(conn, TABLE, {"schema_name": schema, "table_name": table}, owner)
    if holder != owner:
        raise TableInUse(layout.qualified_name(schema, table), holder)
