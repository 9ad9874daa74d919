"""The client SDK against real Redis and PostgreSQL: typed online reads and point-in-time historical joins.

The offline table is created here from the layout's column types and the online hashes are written with the
layout's encoding, as the operator and the materializer do; then the sync and asyncio clients must read
them back exactly, and agree with each other.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql

from mlinfra.api import featureview
from mlinfra.client import connections
from mlinfra.client.features import FeatureStore, View
from mlinfra.client.features_async import AsyncFeatureStore
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster
from mlinfra.features import layout

UTC = datetime.UTC
T0 = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

FEATURES = [
    ("clicks", "int64"),
    ("ctr", "float32"),
    ("score", "float64"),
    ("country", "string"),
    ("vip", "bool"),
    ("last_seen", "timestamp"),
    ("blob", "bytes"),
    ("embedding", "float32_list"),
    ("age", "int32"),
]


def t(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def make_view(
    name: str, schema: str, entities: list[tuple[str, str]], ttl: str | None = None
) -> featureview.FeatureView:
    return featureview.FeatureView.model_validate(
        {
            "metadata": {"name": name, "namespace": "ml"},
            "spec": {
                "entities": [{"name": n, "type": ty} for n, ty in entities],
                "features": [{"name": n, "type": ty} for n, ty in FEATURES],
                "offline": {"storeRef": {"name": "pg"}, "schema": schema},
                "online": {"storeRef": {"name": "redis"}, **({"ttl": ttl} if ttl else {})},
            },
        }
    )


def create_table(pg: PostgresCluster, view: View) -> None:
    columns = [
        sql.SQL("{} {} NOT NULL").format(sql.Identifier(n), sql.SQL(layout.sql_type(ty))) for n, ty in view.entities
    ]
    columns += [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(layout.sql_type(ty))) for n, ty in view.features]
    columns += [
        sql.SQL("{} timestamptz NOT NULL").format(sql.Identifier(layout.EVENT_TIMESTAMP)),
        sql.SQL("{} timestamptz NOT NULL DEFAULT clock_timestamp()").format(sql.Identifier(layout.CREATED_AT)),
    ]
    with pg.primary.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(view.schema)))
        conn.execute(
            sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(view.schema, view.table), sql.SQL(", ").join(columns))
        )


def insert(pg: PostgresCluster, view: View, rows: list[dict[str, Any]]) -> None:
    names = [*view.entity_names, *(n for n, _ in view.features), layout.EVENT_TIMESTAMP]
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(view.schema, view.table),
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    with pg.primary.connect() as conn, conn.cursor() as cur:
        for row in rows:  # one statement each: created_at (clock_timestamp) increases with insertion order
            cur.execute(query, [row.get(name) for name in names])


def values(i: int) -> dict[str, Any]:
    """A full set of feature values, distinct per i."""
    return {
        "clicks": 10**12 + i,
        "ctr": 0.25 + i,
        "score": 1 / 3 + i,
        "country": f"de-{i}:ä",
        "vip": i % 2 == 0,
        "last_seen": t(i) + datetime.timedelta(microseconds=250),
        "blob": bytes([i, 0, 255]),
        "embedding": [0.5, -1.0, float(i)],
        "age": 30 + i,
    }


def write_online(
    redis_cluster: RedisCluster,
    view: View,
    key: tuple[Any, ...],
    row: dict[str, Any],
    event_ts: datetime.datetime,
    ttl_ms: int | None = None,
) -> None:
    """What the materializer writes for one entity, through the layout's encoding."""
    client = redis_cluster.primary.client()
    name = layout.online_key(view.namespace, view.name, key)
    client.delete(name)
    client.hset(name, mapping=layout.encode_features(view.features, [row.get(n) for n, _ in view.features], event_ts))
    if ttl_ms is not None:
        client.pexpire(name, ttl_ms)


@pytest.fixture(scope="module")
def stores(postgres_cluster: PostgresCluster, redis_cluster: RedisCluster) -> dict[str, connections.ConnectionInfo]:
    return {
        "online": connections.from_url(
            f"redis://127.0.0.1:{redis_cluster.primary.port}/0", password=redis_cluster.password
        ),
        "offline": connections.from_url(
            f"postgresql://postgres@127.0.0.1:{postgres_cluster.primary.port}/postgres",
            password=postgres_cluster.password,
        ),
    }


@pytest.fixture
def schema() -> str:
    return f"client_{secrets.token_hex(4)}"


@pytest.fixture
def sync_store(stores: dict[str, connections.ConnectionInfo]) -> Iterator[FeatureStore]:
    with FeatureStore(online=stores["online"], offline=stores["offline"]) as store:
        yield store


async def both_online(
    stores: dict[str, connections.ConnectionInfo],
    fv: featureview.FeatureView,
    keys: list[Any],
    features: list[str] | None = None,
) -> list[Any]:
    """The sync answer, after checking the async client gives the same one."""
    with FeatureStore([fv], **stores) as store:
        expected = store.get_online_features(fv.metadata.name, keys, features)
    async with AsyncFeatureStore([fv], **stores) as astore:
        assert equal(await astore.get_online_features(fv.metadata.name, keys, features), expected)
    return expected


async def both_historical(
    stores: dict[str, connections.ConnectionInfo],
    fv: featureview.FeatureView,
    rows: list[dict[str, Any]],
    features: list[str] | None = None,
) -> list[dict[str, Any]]:
    with FeatureStore([fv], **stores) as store:
        expected = store.get_historical_features(fv.metadata.name, rows, features)
    async with AsyncFeatureStore([fv], **stores) as astore:
        assert equal(await astore.get_historical_features(fv.metadata.name, rows, features), expected)
    return expected


def equal(a: Any, b: Any) -> bool:
    """== with NaN equal to NaN (float32_list NULL elements)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


# -- online ----------------------------------------------------------------------------------------------


async def test_online_reads_typed_values_and_none_for_missing_keys(
    stores: dict[str, connections.ConnectionInfo], redis_cluster: RedisCluster, schema: str
) -> None:
    fv = make_view(f"users-{secrets.token_hex(3)}", schema, [("user_id", "int64")])
    view = View.from_featureview(fv)
    write_online(redis_cluster, view, (1,), values(1), t(1))
    with_nulls = {**values(2), "country": None, "blob": None}
    write_online(redis_cluster, view, (2,), with_nulls, t(2))

    got = await both_online(stores, fv, [1, 404, 2, 1])
    assert got[1] is None  # never materialized
    assert got[0] == got[3]
    one = got[0]
    assert one is not None
    assert one["clicks"] == 10**12 + 1 and type(one["clicks"]) is int
    assert one["ctr"] == 1.25 and one["score"] == 1 / 3 + 1 and one["age"] == 31
    assert one["country"] == "de-1:ä" and one["vip"] is False
    assert one["last_seen"] == t(1) + datetime.timedelta(microseconds=250)
    assert one["last_seen"].tzinfo is not None
    assert one["blob"] == b"\x01\x00\xff"
    assert one["embedding"] == [0.5, -1.0, 1.0]
    assert list(one) == [name for name, _ in FEATURES]
    two = got[2]
    assert two is not None and two["country"] is None and two["blob"] is None and two["vip"] is True


async def test_online_feature_subset_and_unknown_feature(
    stores: dict[str, connections.ConnectionInfo], redis_cluster: RedisCluster, schema: str
) -> None:
    fv = make_view(f"users-{secrets.token_hex(3)}", schema, [("user_id", "string")])
    view = View.from_featureview(fv)
    write_online(redis_cluster, view, ("u:1",), values(7), t(7))
    assert await both_online(stores, fv, ["u:1", "u"], ["score", "clicks"]) == [
        {"score": 1 / 3 + 7, "clicks": 10**12 + 7},
        None,
    ]
    with FeatureStore([fv], **stores) as store, pytest.raises(ValueError, match="no feature 'nope'"):
        store.get_online_features(fv.metadata.name, ["u:1"], ["score", "nope"])
    async with AsyncFeatureStore([fv], **stores) as astore:
        with pytest.raises(ValueError, match="no feature 'nope'"):
            await astore.get_online_features(fv.metadata.name, ["u:1"], ["nope"])


async def test_online_composite_keys(
    stores: dict[str, connections.ConnectionInfo], redis_cluster: RedisCluster, schema: str
) -> None:
    fv = make_view(f"pairs-{secrets.token_hex(3)}", schema, [("shop", "string"), ("item", "int32")])
    view = View.from_featureview(fv)
    write_online(redis_cluster, view, ("a:b", 1), values(1), t(1))
    write_online(redis_cluster, view, ("a", 1), values(2), t(2))
    got = await both_online(stores, fv, [("a:b", 1), ("a", 1), ("a:b", 2)], ["clicks"])
    assert got == [{"clicks": 10**12 + 1}, {"clicks": 10**12 + 2}, None]
    with FeatureStore([fv], **stores) as store:
        with pytest.raises(ValueError, match="2 entities"):
            store.get_online_features(fv.metadata.name, ["a:b"])
        with pytest.raises(TypeError, match="item is int32"):
            store.get_online_features(fv.metadata.name, [("a", "1")])


async def test_online_expired_keys_read_as_none(
    stores: dict[str, connections.ConnectionInfo], redis_cluster: RedisCluster, schema: str
) -> None:
    fv = make_view(f"users-{secrets.token_hex(3)}", schema, [("user_id", "int64")], ttl="1h")
    view = View.from_featureview(fv)
    write_online(redis_cluster, view, (1,), values(1), t(1), ttl_ms=150)
    write_online(redis_cluster, view, (2,), values(2), t(2), ttl_ms=60_000)
    assert (await both_online(stores, fv, [1], ["age"]))[0] == {"age": 31}
    deadline = time.monotonic() + 10
    while redis_cluster.primary.client().exists(view.online_key(1)):
        assert time.monotonic() < deadline, "the key did not expire"
        await asyncio.sleep(0.05)
    assert await both_online(stores, fv, [1, 2], ["age"]) == [None, {"age": 32}]


def test_online_reads_in_batches(
    stores: dict[str, connections.ConnectionInfo], redis_cluster: RedisCluster, schema: str
) -> None:
    fv = make_view(f"users-{secrets.token_hex(3)}", schema, [("user_id", "int64")])
    view = View.from_featureview(fv)
    for i in range(0, 25, 2):
        write_online(redis_cluster, view, (i,), values(i), t(i))
    with FeatureStore([fv], batch_size=4, **stores) as store:
        got = store.get_online_features(fv.metadata.name, list(range(25)), ["age"])
    assert got == [{"age": 30 + i} if i % 2 == 0 else None for i in range(25)]


# -- historical ------------------------------------------------------------------------------------------


async def test_point_in_time_join_against_a_hand_computed_table(
    stores: dict[str, connections.ConnectionInfo], postgres_cluster: PostgresCluster, schema: str
) -> None:
    fv = make_view("user-stats", schema, [("user_id", "int64")])
    view = View.from_featureview(fv)
    assert (view.schema, view.table) == (schema, "user_stats")
    create_table(postgres_cluster, view)
    insert(
        postgres_cluster,
        view,
        [
            {"user_id": 1, **values(10), "event_timestamp": t(10)},
            {"user_id": 1, **values(20), "event_timestamp": t(20)},
            {"user_id": 1, **values(30), "event_timestamp": t(30)},  # the future of every row below but one
            {"user_id": 2, **values(15), "event_timestamp": t(15)},
            {"user_id": 2, **values(16), "event_timestamp": t(15)},  # same event time, written later: wins the tie
            {"user_id": 3, **{**values(5), "country": None, "embedding": [1.0, None]}, "event_timestamp": t(5)},
        ],
    )
    rows = [
        {"user_id": 1, "event_timestamp": t(5), "label": "before any feature row"},
        {"user_id": 1, "event_timestamp": t(10)},  # exactly at a feature row: it counts
        {"user_id": 1, "event_timestamp": t(19.99)},  # 20 is in its future: must not leak
        {"user_id": 1, "event_timestamp": t(25)},
        {"user_id": 2, "event_timestamp": t(15)},
        {"user_id": 2, "event_timestamp": t(14)},
        {"user_id": 3, "event_timestamp": t(100)},
        {"user_id": 99, "event_timestamp": t(100)},  # unknown entity
        {"user_id": 1, "event_timestamp": t(1000)},
    ]
    expected_source = [None, 10, 10, 20, 16, None, 5, None, 30]  # values(i) each row must carry

    got = await both_historical(stores, fv, rows)
    assert len(got) == len(rows)
    for row, result, source in zip(rows, got, expected_source, strict=True):
        assert {k: result[k] for k in row} == row  # the input row comes back as it was, in order
        features = {name: result[name] for name, _ in FEATURES}
        if source is None:
            assert features == dict.fromkeys(features), row
        elif source == 5:
            assert features["country"] is None
            assert features["embedding"][0] == 1.0 and math.isnan(features["embedding"][1])
            assert features["age"] == 35
        else:
            assert features == values(source), row


async def test_historical_values_equal_online_values(
    stores: dict[str, connections.ConnectionInfo],
    postgres_cluster: PostgresCluster,
    redis_cluster: RedisCluster,
    schema: str,
) -> None:
    """Training and serving see identical Python values for the same row (the layout on both sides)."""
    fv = make_view("skew", schema, [("user_id", "string")])
    view = View.from_featureview(fv)
    create_table(postgres_cluster, view)
    row = {**values(3), "ctr": 0.1, "embedding": [0.1, None, -2.5]}
    insert(postgres_cluster, view, [{"user_id": "u", **row, "event_timestamp": t(3)}])
    # What the materializer does: the offline row as psycopg returns it, encoded by the layout.
    names = [n for n, _ in view.features]
    with postgres_cluster.primary.connect() as conn:
        fetched = conn.execute(
            sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(view.schema, view.table)
            )
        ).fetchone()
    assert fetched is not None
    write_online(redis_cluster, view, ("u",), dict(zip(names, fetched, strict=True)), t(3))

    online = (await both_online(stores, fv, ["u"]))[0]
    historical = (await both_historical(stores, fv, [{"user_id": "u", "event_timestamp": t(4)}]))[0]
    assert online is not None
    assert all(equal(online[n], historical[n]) for n in names), (online, historical)


async def test_historical_ttl_composite_keys_and_subset(
    stores: dict[str, connections.ConnectionInfo], postgres_cluster: PostgresCluster, schema: str
) -> None:
    fv = make_view("pairs", schema, [("shop", "string"), ("item", "int32")], ttl="1h")
    view = View.from_featureview(fv)
    create_table(postgres_cluster, view)
    insert(
        postgres_cluster,
        view,
        [
            {"shop": "a:b", "item": 1, **values(1), "event_timestamp": t(0)},
            {"shop": "a", "item": 1, **values(2), "event_timestamp": t(0)},
        ],
    )
    rows = [
        {"shop": "a:b", "item": 1, "event_timestamp": t(60)},  # exactly one TTL old: still served
        {"shop": "a:b", "item": 1, "event_timestamp": t(61)},  # older than the TTL: not served
        {"shop": "a", "item": 1, "event_timestamp": t(30)},
        {"shop": "a", "item": 2, "event_timestamp": t(30)},
    ]
    assert [r["age"] for r in await both_historical(stores, fv, rows, ["age"])] == [31, None, 32, None]
    with FeatureStore([fv], **stores) as store:
        no_ttl = store.get_historical_features("pairs", rows, ["age"], apply_ttl=False)
        assert [r["age"] for r in no_ttl] == [31, 31, 32, None]
        assert store.get_historical_features("pairs", []) == []
        with pytest.raises(ValueError, match="no feature 'nope'"):
            store.get_historical_features("pairs", rows, ["nope"])
        with pytest.raises(ValueError, match="lacks the entity column"):
            store.get_historical_features("pairs", [{"shop": "a", "event_timestamp": t(0)}])


async def test_historical_identifiers_are_quoted(
    stores: dict[str, connections.ConnectionInfo], postgres_cluster: PostgresCluster, schema: str
) -> None:
    """Entity values are parameters and names are quoted identifiers: a hostile value is just a value."""
    fv = make_view("users", schema, [("user_id", "string")])
    view = View.from_featureview(fv)
    create_table(postgres_cluster, view)
    insert(postgres_cluster, view, [{"user_id": "x'; DROP TABLE users; --", **values(1), "event_timestamp": t(0)}])
    got = await both_historical(stores, fv, [{"user_id": "x'; DROP TABLE users; --", "event_timestamp": t(1)}], ["age"])
    assert got[0]["age"] == 31
