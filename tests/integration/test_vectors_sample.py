"""The sample VectorIndex end to end: the sample table in a real PostgreSQL, synced into Qdrant with
vectors.sync, searched through the alias; the hits must be the brute-force nearest neighbours of the source
rows. Qdrant is the local mode here (its search is exact) and a real server when QDRANT_URL is set (recorded
per test as the ``qdrant`` property); there the comparison uses ``exact=True`` and the HNSW index is also
checked for overlap >= 0.9."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from qdrant_client import QdrantClient, models

from mlinfra.api import vectorindex
from mlinfra.devenv import qdrant as devenv_qdrant
from mlinfra.devenv import vector_sample as sample
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.vectors import collection, sync, syncrole

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact"),
]

Conn = psycopg.Connection[tuple[Any, ...]]
K = 10
SEED = 7
QUERIES = [
    *sample.TOPICS,
    "hnsw quantization",
    "sourdough bread",
    "postgres replication lag alerts",
    "helm operators on kubernetes",
    "an unrelated sentence about nothing in particular",
]


@pytest.fixture
def table(postgres_cluster: PostgresCluster) -> Iterator[tuple[Conn, str]]:
    name = f"docs_{secrets.token_hex(4)}"
    with postgres_cluster.primary.connect() as conn:
        sample.create_table(conn, "public", name)
        assert sample.load(conn, name, sample.DEFAULT_ROWS, SEED) == sample.DEFAULT_ROWS
        syncrole.ensure_bookkeeping(conn)  # the operator's, in the reconcile: a sync run creates nothing
        yield conn, name
        conn.execute(f"DROP TABLE {name}")
        conn.execute(f"DROP FUNCTION {name}_touch()")


@pytest.fixture
def alias(qdrant_space: devenv_qdrant.QdrantSpace) -> str:
    return qdrant_space.name("docs")


def make_spec(table: str, alias: str) -> vectorindex.VectorIndexSpec:
    """The spec of manifests/samples/vectorindex-docs.yaml on this table; a tiny indexing threshold so that a
    real server builds the HNSW graph for 2,000 points (it would search them exhaustively otherwise)."""
    return vectorindex.VectorIndexSpec.model_validate(
        {
            "storeRef": {"name": "vectors"},
            "collection": alias,
            "vectors": {"size": sample.DIM, "distance": "Cosine"},
            "hnsw": {"m": 16},
            "optimizers": {"indexingThreshold": 10},
            "payloadIndexes": [{"field": "lang", "type": "keyword"}],
            "source": {
                "storeRef": {"name": "offline-store"},
                "table": table,
                "idColumn": "id",
                "vectorColumn": "embedding",
                "payloadColumns": ["title", "lang"],
                "updatedAtColumn": "updated_at",
                "deletedColumn": "deleted",
            },
            "sync": {"schedule": "*/10 * * * *", "maxLag": "30m"},
        }
    )


def search(
    client: QdrantClient, alias: str, query: list[float], *, exact: bool, lang: str | None = None
) -> list[models.ScoredPoint]:
    where = (
        None
        if lang is None
        else models.Filter(must=[models.FieldCondition(key="lang", match=models.MatchValue(value=lang))])
    )
    return client.query_points(
        alias, query=query, limit=K, query_filter=where, search_params=models.SearchParams(exact=exact)
    ).points


def assert_same_neighbours(hits: list[models.ScoredPoint], expected: list[tuple[int, float]]) -> None:
    assert [int(h.id) for h in hits] == [i for i, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected], abs=1e-5)


def wait_indexed(client: QdrantClient, alias: str, points: int, deadline: float = 120) -> None:
    end = time.monotonic() + deadline
    while True:
        info = client.get_collection(alias)
        if info.status == models.CollectionStatus.GREEN and (info.indexed_vectors_count or 0) >= points:
            return
        assert time.monotonic() < end, (
            f"HNSW index not built within {deadline}s: {info.status}, "
            f"{info.indexed_vectors_count} of {points} vectors indexed"
        )
        time.sleep(0.5)


def test_search_through_the_alias_equals_brute_force_on_the_source(
    qdrant: QdrantClient, table: tuple[Conn, str], alias: str
) -> None:
    conn, name = table
    spec = make_spec(name, alias)
    collection.ensure(qdrant, spec, owner="test/vectors")
    result = sync.sync(conn, qdrant, spec, "mlinfra-demo", alias)
    assert (result.rows, result.upserted, result.bad_rows) == (sample.DEFAULT_ROWS, sample.DEFAULT_ROWS, ())
    assert qdrant.count(alias, exact=True).count == sample.DEFAULT_ROWS

    for text in QUERIES:
        query = sample.embed_query(text)
        assert_same_neighbours(
            search(qdrant, alias, query, exact=True), sample.brute_force_top_k(conn, name, query, K, "Cosine")
        )
    query = sample.embed_query("vector-search")
    assert_same_neighbours(
        search(qdrant, alias, query, exact=True, lang="de"),
        sample.brute_force_top_k(conn, name, query, K, "Cosine", lang="de"),
    )

    hit = search(qdrant, alias, sample.embed_query("hnsw quantization"), exact=True)[0]
    row = conn.execute(f"SELECT title, lang FROM {name} WHERE id = %s", (int(hit.id),)).fetchone()
    assert row is not None and hit.payload == {"title": row[0], "lang": row[1]}

    if devenv_qdrant.is_real_server():
        wait_indexed(qdrant, alias, sample.DEFAULT_ROWS)
        found = expected = 0
        for text in QUERIES:
            query = sample.embed_query(text)
            approx = {int(h.id) for h in search(qdrant, alias, query, exact=False)}
            found += len(approx & {i for i, _ in sample.brute_force_top_k(conn, name, query, K, "Cosine")})
            expected += K
        assert found / expected >= 0.9, f"HNSW recall@{K} {found / expected:.2f}"


def test_the_sample_topics_are_real_structure(table: tuple[Conn, str]) -> None:
    """Queries by topic find documents of that topic: the synthetic vectors are clustered, not noise."""
    conn, name = table
    for topic, words in sample.TOPICS.items():
        top = sample.brute_force_top_k(conn, name, sample.embed_query(topic), K, "Cosine")
        titles = [
            r[0]
            for r in conn.execute(f"SELECT title FROM {name} WHERE id = ANY(%s)", ([i for i, _ in top],)).fetchall()
        ]
        on_topic = sum(any(w in sample.tokens(t) for w in words) for t in titles)
        assert on_topic == K, f"{topic}: {on_topic} of {K} nearest titles use its words: {titles}"


def test_soft_deleted_rows_leave_the_index_and_the_neighbours(
    qdrant: QdrantClient, table: tuple[Conn, str], alias: str
) -> None:
    conn, name = table
    spec = make_spec(name, alias)
    collection.ensure(qdrant, spec, owner="test/vectors")
    sync.sync(conn, qdrant, spec, "mlinfra-demo", alias)
    query = sample.embed_query("sourdough bread")
    nearest = [i for i, _ in sample.brute_force_top_k(conn, name, query, 3, "Cosine")]
    conn.execute(f"UPDATE {name} SET deleted = true WHERE id = ANY(%s)", (nearest,))  # the trigger stamps it
    assert sync.rows_behind(conn, spec, "mlinfra-demo", alias) == 3
    result = sync.sync(conn, qdrant, spec, "mlinfra-demo", alias)
    assert (result.rows, result.deleted) == (3, 3)
    hits = search(qdrant, alias, query, exact=True)
    assert not {int(h.id) for h in hits} & set(nearest)
    assert_same_neighbours(hits, sample.brute_force_top_k(conn, name, query, K, "Cosine"))
