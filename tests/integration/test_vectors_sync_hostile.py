"""vectors.sync on hostile source rows (real PostgreSQL, Qdrant as the ``qdrant_space`` gives it): rows that
cannot be ordered, vectors and payloads JSON cannot carry, ids Qdrant refuses. Each is reported by id, never
stops the other rows, and the count check of a rebuild agrees with what the writer wrote."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from qdrant_client import QdrantClient

from mlinfra.api import vectorindex
from mlinfra.devenv import qdrant as devenv_qdrant
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.vectors import collection, rebuild, sync, syncrole

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]  # the old failure mode was an endless loop

Conn = psycopg.Connection[tuple[Any, ...]]
SIZE = 3
GOOD = [1.0, 0.5, 0.25]


@pytest.fixture
def table(postgres_cluster: PostgresCluster) -> Iterator[tuple[Conn, str]]:
    name = f"hostile_{secrets.token_hex(4)}"
    with postgres_cluster.primary.connect() as conn:
        # No NOT NULL anywhere: what a user's table may well allow.
        conn.execute(
            f"CREATE TABLE {name} (id bigint, embedding double precision[], score double precision, "
            "updated_at timestamptz DEFAULT clock_timestamp(), deleted boolean)"
        )
        syncrole.ensure_bookkeeping(conn)  # the operator's, in the reconcile: a sync run creates nothing
        yield conn, name
        conn.execute(f"DROP TABLE {name}")


@pytest.fixture
def alias(qdrant_space: devenv_qdrant.QdrantSpace) -> str:
    return qdrant_space.name("hostile")


def make_spec(table: str, alias: str, batch: int = 2) -> vectorindex.VectorIndexSpec:
    return vectorindex.VectorIndexSpec.model_validate(
        {
            "storeRef": {"name": "qdrant"},
            "collection": alias,
            "vectors": {"size": SIZE, "distance": "Dot"},
            "source": {
                "storeRef": {"name": "pg"},
                "table": table,
                "idColumn": "id",
                "vectorColumn": "embedding",
                "payloadColumns": ["score"],
                "updatedAtColumn": "updated_at",
                "deletedColumn": "deleted",
            },
            "sync": {"schedule": "*/5 * * * *", "batchSize": batch},
        }
    )


def rows(conn: Conn, table: str, values: list[tuple[Any, ...]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (id, embedding, score, updated_at) VALUES (%s, %s, %s, %s)", values)


def ids(client: QdrantClient, name: str) -> set[int]:
    records, _ = client.scroll(name, limit=1000)
    return {int(r.id) for r in records}


NOW = "now"


def test_rows_without_a_place_in_the_order_are_reported_and_never_loop(
    qdrant: QdrantClient, table: tuple[Conn, str], alias: str
) -> None:
    conn, name = table
    spec = make_spec(name, alias)
    collection.ensure(qdrant, spec, owner="test/hostile")
    rows(
        conn,
        name,
        [
            (1, GOOD, 1.0, None),  # NULL updated_at: the old paging re-read the first page forever
            (2, GOOD, 1.0, "infinity"),
            (3, GOOD, 1.0, "-infinity"),
            (None, GOOD, 1.0, NOW),
            *[(i, GOOD, 1.0, NOW) for i in range(10, 15)],
        ],
    )
    result = sync.sync(conn, qdrant, spec, "ns", alias)
    assert (result.rows, result.upserted, result.batches, result.bad) == (5, 5, 3, 4)
    assert dict(result.bad_rows) == {
        "1": "updated_at is NULL: the row has no place in the sync order, set it",
        "2": "updated_at is infinite: the row has no place in the sync order, set it",
        "3": "updated_at is infinite: the row has no place in the sync order, set it",
        "NULL": "id column 'id' is NULL: the row cannot be a point",
    }
    assert ids(qdrant, alias) == set(range(10, 15))
    assert sync.rows_behind(conn, spec, "ns", alias) == 0  # caught up on everything that can be synced
    again = sync.sync(conn, qdrant, spec, "ns", alias)
    assert (again.rows, again.bad) == (0, 4)  # still reported while the table still has them
    # Fixed in the table: picked up by the next incremental run.
    conn.execute(f"UPDATE {name} SET updated_at = clock_timestamp() WHERE id IN (1, 2, 3)")
    fixed = sync.sync(conn, qdrant, spec, "ns", alias)
    assert (fixed.upserted, fixed.bad) == (3, 1)
    assert ids(qdrant, alias) == {1, 2, 3, *range(10, 15)}


def test_values_qdrant_cannot_take_are_reported_per_row_and_the_rest_goes_on(
    qdrant: QdrantClient, table: tuple[Conn, str], alias: str
) -> None:
    conn, name = table
    spec = make_spec(name, alias)
    collection.ensure(qdrant, spec, owner="test/hostile")
    rows(
        conn,
        name,
        [
            (1, [float("nan"), 1.0, 1.0], 1.0, NOW),
            (2, [float("inf"), 1.0, 1.0], 1.0, NOW),
            (3, [1.0, float("-inf"), 1.0], 1.0, NOW),
            (-4, GOOD, 1.0, NOW),
            (5, GOOD, float("nan"), NOW),  # a payload JSON cannot carry: stored as null, reported
            (6, GOOD, float("inf"), NOW),
            (7, GOOD, 0.5, NOW),
        ],
    )
    result = sync.sync(conn, qdrant, spec, "ns", alias)
    assert result.rows == 7 and result.upserted == 3
    assert dict(result.bad_rows) == {
        "1": "vector has a NaN or infinite component",
        "2": "vector has a NaN or infinite component",
        "3": "vector has a NaN or infinite component",
        "-4": "id -4 is negative: Qdrant point ids are unsigned",
        "5": "payload score: NaN or infinite, stored as null",
        "6": "payload score: NaN or infinite, stored as null",
    }
    records = {int(r.id): r.payload for r in qdrant.scroll(alias, limit=100)[0]}
    assert records == {5: {"score": None}, 6: {"score": None}, 7: {"score": 0.5}}


def test_the_rebuild_count_check_agrees_with_the_writer_on_every_hostile_row(
    qdrant: QdrantClient, table: tuple[Conn, str], alias: str
) -> None:
    conn, name = table
    spec = make_spec(name, alias)
    old = collection.ensure(qdrant, spec, owner="test/hostile").collection
    rows(
        conn,
        name,
        [
            (1, [float("nan"), 1.0, 1.0], 1.0, NOW),
            (-2, GOOD, 1.0, NOW),
            (3, GOOD, 1.0, None),
            (None, GOOD, 1.0, NOW),
            (5, [1.0, None, 1.0], 1.0, NOW),
            (6, [1.0, 1.0], 1.0, NOW),
            (7, None, 1.0, NOW),
            *[(i, GOOD, float(i), NOW) for i in range(10, 17)],
        ],
    )
    conn.execute(f"UPDATE {name} SET deleted = true WHERE id = 16")
    bigger = make_spec(name, alias)
    bigger.hnsw = None
    bigger.shards = 2  # an immutable change: a rebuild, whose backfill is checked against the table's count
    expected = sync.expected_count(conn, bigger)
    assert expected == 6  # ids 10..15: the only rows the writer takes
    result = rebuild.rebuild(
        qdrant,
        bigger,
        lambda target: sync.snapshot_backfill(conn, qdrant, bigger, target).written,
        expected,
        owner="test/hostile",
    )
    assert (result.previous, result.points) == (old, 6)
    assert ids(qdrant, alias) == set(range(10, 16))


def test_a_full_pass_finds_orphans_a_page_at_a_time(qdrant: QdrantClient, table: tuple[Conn, str], alias: str) -> None:
    conn, name = table
    spec = make_spec(name, alias, batch=50)
    collection.ensure(qdrant, spec, owner="test/hostile")
    rows(conn, name, [(i, GOOD, 1.0, NOW) for i in range(1, 21)])
    sync.sync(conn, qdrant, spec, "ns", alias)
    conn.execute(f"DELETE FROM {name} WHERE id % 3 = 0")
    conn.execute(f"UPDATE {name} SET deleted = true WHERE id = 20")
    assert sync.remove_orphans(conn, qdrant, spec, alias, page=4) == 7
    assert ids(qdrant, alias) == {i for i in range(1, 20) if i % 3}


def test_a_run_keeps_a_bounded_list_of_bad_rows_with_an_exact_count(
    qdrant: QdrantClient, table: tuple[Conn, str], alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, name = table
    monkeypatch.setattr(sync, "BAD_ROWS_KEPT", 5)
    spec = make_spec(name, alias, batch=4)
    collection.ensure(qdrant, spec, owner="test/hostile")
    rows(conn, name, [(i, [1.0], 1.0, NOW) for i in range(1, 13)])
    result = sync.sync(conn, qdrant, spec, "ns", alias)
    assert (result.rows, result.bad, len(result.bad_rows)) == (12, 12, 5)
