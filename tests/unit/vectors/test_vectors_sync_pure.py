"""Pure parts of vectors.sync: point ids, payload values, vector checks, the keyset query."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest

from mlinfra.api import vectorindex
from mlinfra.vectors import sync

pytestmark = pytest.mark.unit


def test_point_ids() -> None:
    assert sync.point_id(7) == 7
    u = uuid.uuid4()
    assert sync.point_id(u) == str(u) == sync.point_id(str(u).upper())
    for bad in (-1, "abc", True, 1.5):
        with pytest.raises(ValueError):
            sync.point_id(bad)


def test_payload_values_are_json() -> None:
    ts = datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC)
    assert sync.payload_value([ts, decimal.Decimal("1.5")]) == ["2024-05-01T00:00:00+00:00", 1.5]


def test_vector_problems() -> None:
    assert sync.vector_problem([1.0, 2.0], 2) is None
    assert sync.vector_problem(None, 2) == "vector is NULL"
    assert sync.vector_problem([1.0], 2) == "vector has 1 components, expected 2"
    assert sync.vector_problem([1.0, None], 2) == "vector has NULL components"
    assert sync.vector_problem([1.0, float("nan")], 2) == "vector has a NaN or infinite component"
    assert sync.vector_problem([float("-inf"), 1.0], 2) == "vector has a NaN or infinite component"


def test_keyset_query_orders_by_watermark_then_id() -> None:
    source = vectorindex.Source.model_validate(
        {"storeRef": {"name": "pg"}, "table": "t", "idColumn": "id", "vectorColumn": "v", "updatedAtColumn": "u"}
    )
    text = sync.select_changed(source, after=True).as_string(None)
    orderable = 'WHERE ("u" IS NOT NULL AND isfinite("u") AND "id" IS NOT NULL)'
    assert f'{orderable} AND ("u", "id"::text) > (%(ts)s, %(id)s)' in text
    assert text.endswith('ORDER BY "u", "id"::text LIMIT %(limit)s')
    first = sync.select_changed(source, after=False).as_string(None)
    assert f"{orderable} ORDER BY" in first and "%(ts)s" not in first
