"""Check a VectorIndex's source table before anything reads it: the table and every named column exist and
have usable types. The answer names what to fix (it becomes ``Stalled=True, reason=InvalidSpec``).

The vector column may be ``real[]`` / ``double precision[]`` or pgvector's ``vector`` (read as ``real[]``
through pgvector's cast, so the rest of the sync sees one shape).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
from psycopg import sql

from mlinfra.api import vectorindex

DEFAULT_SCHEMA = "public"
ARRAY_TYPES = ("_float4", "_float8", "_numeric")
PGVECTOR_TYPES = ("vector", "halfvec")
ID_TYPES = ("int2", "int4", "int8", "uuid")
TIME_TYPES = ("timestamptz", "timestamp", "date")

Conn = psycopg.Connection[tuple[Any, ...]]


class SourceInvalid(Exception):
    """The source table or a column is missing or unusable; the message says which and what to do."""


@dataclasses.dataclass(frozen=True)
class SourceShape:
    vector_type: str  # the column's udt name, e.g. _float4 or vector

    @property
    def pgvector(self) -> bool:
        return self.vector_type in PGVECTOR_TYPES


def qualified(source: vectorindex.Source) -> str:
    return f"{source.schema_name or DEFAULT_SCHEMA}.{source.table}"


def column_problems(source: vectorindex.Source, columns: dict[str, str]) -> list[str]:
    """What is wrong with ``columns`` (name -> udt name) for ``source``; empty when usable. Pure."""
    problems = []
    named = {
        "idColumn": source.id_column,
        "vectorColumn": source.vector_column,
        "updatedAtColumn": source.updated_at_column,
    }
    if source.deleted_column is not None:
        named["deletedColumn"] = source.deleted_column
    for index, column in enumerate(source.payload_columns or ()):
        named[f"payloadColumns[{index}]"] = column
    for field, column in named.items():
        if column not in columns:
            problems.append(f"spec.source.{field}: column {column!r} does not exist in {qualified(source)}")
    expectations = (
        ("idColumn", source.id_column, ID_TYPES, "an integer or uuid"),
        (
            "vectorColumn",
            source.vector_column,
            ARRAY_TYPES + PGVECTOR_TYPES,
            "real[], double precision[] or pgvector's vector",
        ),
        ("updatedAtColumn", source.updated_at_column, TIME_TYPES, "a timestamp"),
    )
    for field, column, allowed, what in expectations:
        udt = columns.get(column)
        if udt is not None and udt not in allowed:
            problems.append(
                f"spec.source.{field}: column {column!r} is {udt.lstrip('_')}"
                f"{'[]' if udt.startswith('_') else ''}, expected {what}"
            )
    if source.deleted_column is not None and columns.get(source.deleted_column) not in (None, "bool"):
        problems.append(
            f"spec.source.deletedColumn: column {source.deleted_column!r} is "
            f"{columns[source.deleted_column]}, expected boolean"
        )
    return problems


def inspect(conn: Conn, source: vectorindex.Source) -> SourceShape:
    """The source's shape, or :class:`SourceInvalid` naming every problem."""
    rows = conn.execute(
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (source.schema_name or DEFAULT_SCHEMA, source.table),
    ).fetchall()
    if not rows:
        raise SourceInvalid(
            f"spec.source.table: table {qualified(source)} does not exist (or has no columns) "
            "in the source database; create it or fix spec.source.schema/table"
        )
    columns = {str(name): str(udt) for name, udt in rows}
    problems = column_problems(source, columns)
    if problems:
        raise SourceInvalid("; ".join(problems))
    return SourceShape(vector_type=columns[source.vector_column])


def vector_expression(source: vectorindex.Source, shape: SourceShape | None) -> sql.Composable:
    """The select expression of the vector column: pgvector values are cast to ``real[]``."""
    column = sql.Identifier(source.vector_column)
    if shape is not None and shape.pgvector:
        return sql.SQL("{}::real[]").format(column)
    return column
