"""vectors.sync from a real PostgreSQL into Qdrant (local mode here, a real server with QDRANT_URL; recorded per
test as the ``qdrant`` property)."""

from __future__ import annotations

import math
import random
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

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[tuple[Any, ...]]
SIZE = 8


@pytest.fixture
def emb(qdrant_space: devenv_qdrant.QdrantSpace) -> str:
    """The test's alias, also the VectorIndex name its watermark is kept under (unique per test and run)."""
    return qdrant_space.name("emb")


@pytest.fixture
def table(postgres_cluster: PostgresCluster) -> Iterator[tuple[Conn, str]]:
    name = f"emb_{secrets.token_hex(4)}"
    with postgres_cluster.primary.connect() as conn:
        conn.execute(
            f"CREATE TABLE {name} (id bigint PRIMARY KEY, embedding real[], lang text, "
            "updated_at timestamptz NOT NULL DEFAULT clock_timestamp(), deleted boolean DEFAULT false)"
        )
        syncrole.ensure_bookkeeping(conn)  # the operator's, in the reconcile: a sync run creates nothing
        yield conn, name
        conn.execute(f"DROP TABLE {name}")


def make_spec(table: str, alias: str, size: int = SIZE, batch: int = 7) -> vectorindex.VectorIndexSpec:
    return vectorindex.VectorIndexSpec.model_validate(
        {
            "storeRef": {"name": "qdrant"},
            "collection": alias,
            "vectors": {"size": size, "distance": "Cosine"},
            "source": {
                "storeRef": {"name": "pg"},
                "table": table,
                "idColumn": "id",
                "vectorColumn": "embedding",
                "payloadColumns": ["lang"],
                "updatedAtColumn": "updated_at",
                "deletedColumn": "deleted",
            },
            "sync": {"schedule": "*/5 * * * *", "batchSize": batch},
        }
    )


def vec(rng: random.Random, size: int = SIZE) -> list[float]:
    return [rng.uniform(-1, 1) for _ in range(size)]


def insert(conn: Conn, table: str, rows: list[tuple[int, list[float] | None, str]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (id, embedding, lang) VALUES (%s, %s, %s)", rows)


def points(client: QdrantClient, name: str) -> dict[int, tuple[list[float], dict[str, Any]]]:
    records, _ = client.scroll(name, limit=10_000, with_vectors=True, with_payload=True)
    return {int(r.id): (list(r.vector), dict(r.payload or {})) for r in records}  # type: ignore[arg-type]


def normalized(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def test_sync_inserts_updates_soft_and_hard_deletes_and_bad_vectors(
    qdrant: QdrantClient, table: tuple[Conn, str], emb: str
) -> None:
    conn, name = table
    spec = make_spec(name, emb)
    collection.ensure(qdrant, spec, owner="test/vectors")
    rng = random.Random(1)
    source = {i: vec(rng) for i in range(1, 31)}
    insert(conn, name, [(i, v, "en" if i % 2 else "de") for i, v in source.items()])
    insert(conn, name, [(100, [1.0, 2.0, 3.0], "en"), (101, None, "en")])
    first = sync.sync(conn, qdrant, spec, "ns", emb)
    assert (first.rows, first.upserted, first.batches) == (32, 30, 5)
    assert dict(first.bad_rows) == {"100": "vector has 3 components, expected 8", "101": "vector is NULL"}
    got = points(qdrant, emb)
    assert set(got) == set(source) and got[2][1] == {"lang": "de"}
    assert sync.rows_behind(conn, spec, "ns", emb) == 0

    rerun = sync.sync(conn, qdrant, spec, "ns", emb)
    assert (rerun.rows, rerun.upserted, rerun.bad_rows) == (0, 0, ())

    source[3] = vec(rng)
    conn.execute(
        f"UPDATE {name} SET embedding = %s, lang = 'fr', updated_at = clock_timestamp() WHERE id = 3", (source[3],)
    )
    conn.execute(f"UPDATE {name} SET deleted = true, updated_at = clock_timestamp() WHERE id = 4")
    conn.execute(f"DELETE FROM {name} WHERE id = 5")
    insert(conn, name, [(31, vec(rng), "en")])
    assert sync.rows_behind(conn, spec, "ns", emb) == 3
    second = sync.sync(conn, qdrant, spec, "ns", emb)
    assert (second.rows, second.upserted, second.deleted, second.removed) == (3, 2, 1, 0)
    assert 5 in points(qdrant, emb)  # an incremental pass cannot see a hard delete
    full = sync.sync(conn, qdrant, spec, "ns", emb, full=True)
    assert (full.rows, full.removed) == (0, 1)
    got = points(qdrant, emb)
    assert set(got) == (set(source) - {4, 5}) | {31}
    assert got[3][1] == {"lang": "fr"}
    assert got[3][0] == pytest.approx(normalized(source[3]), abs=1e-6)  # Cosine: Qdrant stores normalized


def test_rerun_after_a_kill_is_exact(
    qdrant: QdrantClient, table: tuple[Conn, str], monkeypatch: pytest.MonkeyPatch, emb: str
) -> None:
    conn, name = table
    spec = make_spec(name, emb, batch=5)
    collection.ensure(qdrant, spec, owner="test/vectors")
    rng = random.Random(2)
    insert(conn, name, [(i, vec(rng), "en") for i in range(1, 24)])
    calls = 0
    original = qdrant.upsert

    def dying_upsert(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionError("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(qdrant, "upsert", dying_upsert)
    with pytest.raises(ConnectionError):
        sync.sync(conn, qdrant, spec, "ns", emb)
    assert sync.rows_behind(conn, spec, "ns", emb) == 13  # two batches of 5 acknowledged and committed
    monkeypatch.setattr(qdrant, "upsert", original)
    result = sync.sync(conn, qdrant, spec, "ns", emb)
    assert (result.rows, result.upserted) == (13, 13)
    assert set(points(qdrant, emb)) == set(range(1, 24))


def test_search_through_the_alias_equals_brute_force(qdrant: QdrantClient, table: tuple[Conn, str], emb: str) -> None:
    conn, name = table
    spec = make_spec(name, emb, batch=50)
    collection.ensure(qdrant, spec, owner="test/vectors")
    rng = random.Random(3)
    source = {i: vec(rng) for i in range(1, 201)}
    insert(conn, name, [(i, v, "en") for i, v in source.items()])
    sync.sync(conn, qdrant, spec, "ns", emb)
    for _ in range(5):
        query = vec(rng)
        q = normalized(query)
        expected = sorted(source, key=lambda i: -sum(a * b for a, b in zip(q, normalized(source[i]), strict=True)))
        hits = qdrant.query_points(emb, query=query, limit=10, search_params=None).points
        assert [int(h.id) for h in hits] == expected[:10]


def test_rebuild_backfills_from_the_source(qdrant: QdrantClient, table: tuple[Conn, str], emb: str) -> None:
    conn, name = table
    old_spec = make_spec(name, emb)
    old = collection.ensure(qdrant, old_spec, owner="test/vectors").collection
    rng = random.Random(4)
    insert(conn, name, [(i, vec(rng, 4), "en") for i in range(1, 11)])  # re-embedded at 4 dimensions
    new_spec = make_spec(name, emb, size=4)
    assert collection.ensure(qdrant, new_spec, owner="test/vectors").rebuild_needed
    result = rebuild.rebuild(
        qdrant,
        new_spec,
        lambda target: sync.backfill(conn, qdrant, new_spec, target),
        sync.expected_count(conn, new_spec),
        owner="test/vectors",
    )
    assert (result.previous, result.points) == (old, 10)
    assert collection.alias_target(qdrant, emb) == result.active
