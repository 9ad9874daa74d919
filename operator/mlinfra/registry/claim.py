"""Which registry a database holds: the first registry to reconcile on one claims it, and every other one
is refused. Two ModelRegistries on one PostgreSQL database (the same DataStore, or two DataStores in
different namespaces pointing at one server, with the same or no ``spec.database``) would otherwise share one
``registry`` schema: each would read, migrate and grant the other's data.

The claim is a one-row table in the database's ``public`` schema, keyed by ``<namespace>/<name>`` (not the
uid: a registry deleted and created again with the same name finds its data again).
"""

from __future__ import annotations

from typing import Any

import psycopg

from mlinfra.engines import claims

TABLE = ("public", "mlinfra_registry_owner")


class DatabaseInUse(Exception):
    """The database holds another registry; nothing was changed."""

    def __init__(self, database: str, holder: str) -> None:
        super().__init__(f"database {database!r} holds the registry of ModelRegistry {holder}")
        self.database, self.holder = database, holder


def claim(conn: psycopg.Connection[Any], database: str, owner: str) -> None:
    """Claim the database ``conn`` is connected to for ``owner`` (``<namespace>/<name>``), or raise
    DatabaseInUse naming the registry that holds it. Idempotent; ``conn`` must be outside a transaction."""
    holder = claims.claim(conn, TABLE, {"claim": "registry"}, owner)
    if holder != owner:
        raise DatabaseInUse(database, holder)
