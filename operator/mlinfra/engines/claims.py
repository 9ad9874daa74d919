"""Claims in PostgreSQL: which object holds a name shared by every tenant of a server (a database, a
table). A claim table maps a key to the holder (``<namespace>/<name>`` of the object, not its uid: an object
deleted and created again with the same name finds its data again); the first to claim a key holds it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql


def claim(conn: psycopg.Connection[Any], table: tuple[str, str], key: Mapping[str, str], holder: str) -> str:
    """Claim ``key`` (column -> value) in the claim table ``(schema, name)`` for ``holder``; who holds it now
    (``holder`` unless someone else claimed it first). Creates the table if needed; idempotent; ``conn`` must
    be outside a transaction and the schema must exist."""
    ident = sql.Identifier(*table)
    columns = [sql.Identifier(c) for c in key]
    lock = int.from_bytes(hashlib.sha256(".".join(table).encode()).digest()[:8], "big", signed=True)
    with conn.transaction():
        # CREATE TABLE IF NOT EXISTS is not safe against itself running concurrently: serialise.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ({}, holder text NOT NULL, claimed_at timestamptz NOT NULL "
                "DEFAULT now(), PRIMARY KEY ({}))"
            ).format(
                ident,
                sql.SQL(", ").join(sql.SQL("{} text NOT NULL").format(c) for c in columns),
                sql.SQL(", ").join(columns),
            )
        )
        conn.execute(
            sql.SQL("INSERT INTO {} ({}, holder) VALUES ({}, %s) ON CONFLICT DO NOTHING").format(
                ident, sql.SQL(", ").join(columns), sql.SQL(", ").join(sql.Placeholder() * len(columns))
            ),
            (*key.values(), holder),
        )
        row = conn.execute(
            sql.SQL("SELECT holder FROM {} WHERE {}").format(
                ident, sql.SQL(" AND ").join(sql.SQL("{} = %s").format(c) for c in columns)
            ),
            tuple(key.values()),
        ).fetchone()
    return str(row[0]) if row else holder


def holder(conn: psycopg.Connection[Any], table: tuple[str, str], key: Mapping[str, str]) -> str | None:
    """Who holds ``key`` in the claim table ``(schema, name)``: None when nobody (or no claim table yet)."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (".".join(f'"{part}"' for part in table),)).fetchone()
    if not (exists and exists[0]):
        return None
    columns = [sql.Identifier(c) for c in key]
    row = conn.execute(
        sql.SQL("SELECT holder FROM {} WHERE {}").format(
            sql.Identifier(*table), sql.SQL(" AND ").join(sql.SQL("{} = %s").format(c) for c in columns)
        ),
        tuple(key.values()),
    ).fetchone()
    return str(row[0]) if row else None
