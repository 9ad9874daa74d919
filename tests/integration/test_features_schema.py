"""features.schema on a real PostgreSQL: creation, evolution, refusals that change nothing, concurrency."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from mlinfra.api import featureview
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.features import layout, schema

pytestmark = pytest.mark.integration


def make_spec(
    features: list[dict[str, Any]], entities: list[dict[str, str]] | None = None
) -> featureview.FeatureViewSpec:
    return featureview.FeatureViewSpec.model_validate(
        {
            "entities": entities or [{"name": "user_id", "type": "int64"}],
            "features": features,
            "offline": {"storeRef": {"name": "pg"}},
            "online": {"storeRef": {"name": "redis"}},
        }
    )


@pytest.fixture
def pg(postgres_cluster: PostgresCluster) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with postgres_cluster.primary.connect() as conn:
        yield conn


def columns(conn: psycopg.Connection[tuple[Any, ...]], table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type, udt_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    ).fetchall()
    return {n: layout.sql_type_from_information_schema(dt, udt) for n, dt, udt in rows}


def view_name() -> str:
    return f"fv-{secrets.token_hex(4)}"


def test_creates_table_index_and_bookkeeping(pg: psycopg.Connection[tuple[Any, ...]]) -> None:
    view = view_name()
    spec = make_spec(
        [{"name": t, "type": t, "description": f"a {t}"} for t in layout.feature_types()],
        [{"name": "user_id", "type": "int64"}, {"name": "country", "type": "string"}],
    )
    schema.ensure_bookkeeping(pg)
    result = schema.ensure_offline_table(pg, spec, view)
    table = view.replace("-", "_")
    assert result == schema.SchemaResult(table=f"public.{table}", created=True, added=(), retained=())
    cols = columns(pg, table)
    assert cols == {
        "user_id": "bigint",
        "country": "text",
        **{t: layout.sql_type(t) for t in layout.feature_types()},
        "event_timestamp": "timestamp with time zone",
        "created_at": "timestamp with time zone",
    }
    indexdef = pg.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexname LIKE %s", (table, "%entity_event%")
    ).fetchone()
    assert indexdef is not None and "(user_id, country, event_timestamp DESC)" in indexdef[0]
    comment = pg.execute("SELECT col_description(%s::regclass, 3)", (f"public.{table}",)).fetchone()
    assert comment == ("a string",)
    for name in ("sync_runs", "watermarks"):
        assert pg.execute("SELECT to_regclass(%s)", (f"mlinfra.{name}",)).fetchone() != (None,)
    # Idempotent.
    again = schema.ensure_offline_table(pg, spec, view)
    assert again == schema.SchemaResult(table=f"public.{table}", created=False, added=(), retained=())


def test_added_feature_adds_a_column_removed_one_is_kept(pg: psycopg.Connection[tuple[Any, ...]]) -> None:
    view = view_name()
    table = view.replace("-", "_")
    schema.ensure_offline_table(pg, make_spec([{"name": "a", "type": "int64"}, {"name": "b", "type": "string"}]), view)
    pg.execute(f"INSERT INTO {table} (user_id, a, b, event_timestamp) VALUES (1, 1, 'kept', now())")
    evolved = make_spec([{"name": "a", "type": "int64"}, {"name": "c", "type": "float32_list"}])
    result = schema.ensure_offline_table(pg, evolved, view)
    assert result.added == ("c",)
    assert result.retained == ("b",)
    assert columns(pg, table)["c"] == "real[]"
    assert pg.execute(f"SELECT b FROM {table}").fetchone() == ("kept",)


def test_type_change_is_refused_and_nothing_changes(pg: psycopg.Connection[tuple[Any, ...]]) -> None:
    view = view_name()
    table = view.replace("-", "_")
    schema.ensure_offline_table(pg, make_spec([{"name": "score", "type": "float32"}]), view)
    before = columns(pg, table)
    changed = make_spec([{"name": "score", "type": "float64"}, {"name": "new_one", "type": "int64"}])
    with pytest.raises(schema.ImmutableFieldChange) as info:
        schema.ensure_offline_table(pg, changed, view)
    assert info.value.reason == "ImmutableFieldChange"
    assert "score" in str(info.value) and "real" in str(info.value) and "double precision" in str(info.value)
    assert columns(pg, table) == before  # new_one was not added either


@pytest.mark.parametrize(
    "entities",
    [
        [{"name": "user_id", "type": "string"}],
        [{"name": "user_id", "type": "int64"}, {"name": "country", "type": "string"}],
        [{"name": "account", "type": "int64"}],
    ],
)
def test_entity_change_is_refused(pg: psycopg.Connection[tuple[Any, ...]], entities: list[dict[str, str]]) -> None:
    view = view_name()
    table = view.replace("-", "_")
    schema.ensure_offline_table(pg, make_spec([{"name": "a", "type": "int64"}]), view)
    before = columns(pg, table)
    with pytest.raises(schema.ImmutableFieldChange, match="entit"):
        schema.ensure_offline_table(pg, make_spec([{"name": "a", "type": "int64"}], entities), view)
    assert columns(pg, table) == before


def test_entity_order_change_is_refused(pg: psycopg.Connection[tuple[Any, ...]]) -> None:
    view = view_name()
    two = [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}]
    schema.ensure_offline_table(pg, make_spec([{"name": "f", "type": "int64"}], two), view)
    with pytest.raises(schema.ImmutableFieldChange, match=r"keyed by \(a, b\)"):
        schema.ensure_offline_table(pg, make_spec([{"name": "f", "type": "int64"}], two[::-1]), view)


def test_concurrent_reconciles_do_not_race(postgres_cluster: PostgresCluster) -> None:
    view = view_name()
    spec = make_spec([{"name": "a", "type": "int64"}])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with postgres_cluster.primary.connect() as conn:
                schema.ensure_bookkeeping(conn)
                schema.ensure_offline_table(conn, spec, view)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_custom_schema_and_table(pg: psycopg.Connection[tuple[Any, ...]]) -> None:
    spec = featureview.FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "id", "type": "string"}],
            "features": [{"name": "x", "type": "bool"}],
            "offline": {"storeRef": {"name": "pg"}, "schema": "feats", "table": f"t_{secrets.token_hex(3)}"},
            "online": {"storeRef": {"name": "redis"}},
        }
    )
    result = schema.ensure_offline_table(pg, spec, "whatever")
    assert result.table == f"feats.{spec.offline.table}" and result.created
