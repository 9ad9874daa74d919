"""The pure parts of mlinfra.client.features: views, keys, HMGET decoding and the as-of SQL."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from mlinfra.api import featureview
from mlinfra.client import connections
from mlinfra.client import features as fx
from mlinfra.client.features_async import AsyncFeatureStore
from mlinfra.features import layout

T = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)


def body(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "user-stats", "namespace": "ml"},
        "spec": {
            "entities": [{"name": "shop", "type": "string"}, {"name": "item", "type": "int64"}],
            "features": [
                {"name": "clicks", "type": "int64"},
                {"name": "score", "type": "float64"},
                {"name": "tags", "type": "string"},
            ],
            "offline": {"storeRef": {"name": "pg"}},
            "online": {"storeRef": {"name": "redis"}},
            **spec,
        },
    }


VIEW = fx.View.from_featureview(body(online={"storeRef": {"name": "redis"}, "ttl": "1h"}))


def test_a_view_from_a_body_or_the_model_applies_the_layouts_defaults() -> None:
    expected = fx.View(
        name="user-stats",
        namespace="ml",
        entities=(("shop", "string"), ("item", "int64")),
        features=(("clicks", "int64"), ("score", "float64"), ("tags", "string")),
        schema=layout.DEFAULT_SCHEMA,
        table="user_stats",
        ttl=datetime.timedelta(hours=1),
    )
    assert expected == VIEW
    model = featureview.FeatureView.model_validate(
        body(offline={"storeRef": {"name": "pg"}, "schema": "fs", "table": "t"})
    )
    view = fx.View.from_featureview(model, namespace="other")
    assert (view.namespace, view.schema, view.table, view.ttl) == ("other", "fs", "t", None)


def test_a_view_needs_a_namespace() -> None:
    no_ns = body()
    del no_ns["metadata"]["namespace"]
    with pytest.raises(ValueError, match="pass namespace="):
        fx.View.from_featureview(no_ns)


def test_select_features() -> None:
    assert VIEW.select(None) == VIEW.features
    assert VIEW.select(["tags", "clicks"]) == (("tags", "string"), ("clicks", "int64"))
    with pytest.raises(ValueError, match="no feature 'nope', 'x'; its features are clicks, score, tags"):
        VIEW.select(["clicks", "nope", "x"])
    with pytest.raises(TypeError, match="list of names"):
        VIEW.select("clicks")


def test_entity_keys_are_checked_and_encoded_by_the_layout() -> None:
    assert VIEW.key_values(("a", 1)) == ("a", 1)
    assert VIEW.online_key(("a:b", 1)) == layout.online_key("ml", "user-stats", ("a:b", 1))
    with pytest.raises(ValueError, match="has 2 entities"):
        VIEW.key_values("a")
    with pytest.raises(TypeError, match="item is int64: expected int, got str"):
        VIEW.key_values(("a", "1"))
    with pytest.raises(TypeError, match="got bool"):
        VIEW.key_values(("a", True))
    single = fx.View.from_featureview(body(entities=[{"name": "user_id", "type": "int64"}]))
    assert single.key_values(7) == single.key_values((7,)) == (7,)


def test_hmget_replies_decode_to_rows_or_none() -> None:
    selected = VIEW.select(["clicks", "tags"])
    assert fx.hmget_fields(selected) == ["clicks", "tags", layout.EVENT_TS_FIELD]
    assert fx.decode_hmget(selected, [None, None, None]) is None
    assert fx.decode_hmget(selected, [b"12", None, layout.encode_event_ts(T)]) == {"clicks": 12, "tags": None}


def test_batches() -> None:
    assert [list(b) for b in fx.batches([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    assert list(fx.batches([], 3)) == []
    with pytest.raises(ValueError, match="at least 1"):
        list(fx.batches([1], 0))


def test_the_as_of_query() -> None:
    query = fx.historical_query(VIEW, VIEW.select(["score"])).as_string(None)
    assert 'unnest(%s::text[], %s::bigint[], %s::timestamptz[]) WITH ORDINALITY AS q("k0", "k1", ts, ord)' in query
    assert 'FROM "public"."user_stats" AS t WHERE t."shop" = q."k0" AND t."item" = q."k1"' in query
    assert 't."event_timestamp" <= q.ts AND t."event_timestamp" >= q.ts - %s::interval' in query
    assert 'ORDER BY t."event_timestamp" DESC, t."created_at" DESC LIMIT 1' in query
    assert query.startswith('SELECT q.ord, f."score" FROM') and query.endswith("ORDER BY q.ord")
    assert "interval" not in fx.historical_query(VIEW, VIEW.features, apply_ttl=False).as_string(None)


def test_the_as_of_parameters() -> None:
    naive = datetime.datetime(2024, 5, 1, 12, 0)  # naive on purpose: taken as UTC
    rows = [
        {"shop": "a", "item": 1, "event_timestamp": T, "extra": 1},
        {"shop": "b", "item": 2, "event_timestamp": naive},
    ]
    assert fx.historical_params(VIEW, rows) == [["a", "b"], [1, 2], [T, T], datetime.timedelta(hours=1)]
    assert fx.historical_params(VIEW, rows, apply_ttl=False) == [["a", "b"], [1, 2], [T, T]]
    with pytest.raises(ValueError, match="lacks the entity column"):
        fx.historical_params(VIEW, [{"shop": "a", "event_timestamp": T}])
    with pytest.raises(ValueError, match="has no 'event_timestamp'"):
        fx.historical_params(VIEW, [{"shop": "a", "item": 1}])
    with pytest.raises(TypeError, match="must be a datetime"):
        fx.historical_params(VIEW, [{"shop": "a", "item": 1, "event_timestamp": "2024-05-01"}])


def test_historical_rows_extend_the_input_rows_with_typed_values() -> None:
    selected = VIEW.select(["clicks", "score"])
    rows = [{"shop": "a", "item": 1, "event_timestamp": T}, {"shop": "b", "item": 2, "event_timestamp": T}]
    assert fx.historical_rows(selected, rows, [(1, 5, 0.5), (2, None, None)]) == [
        {**rows[0], "clicks": 5, "score": 0.5},
        {**rows[1], "clicks": None, "score": None},
    ]
    with pytest.raises(ValueError, match="requested features"):
        fx.check_entity_rows(selected, [{"shop": "a", "item": 1, "event_timestamp": T, "score": 1.0}])


def test_views_by_name_and_their_connections() -> None:
    online = connections.from_url("redis://h/0")
    views = fx.Views(online, None, None)
    views.add(body())
    assert views.get("user-stats").online == online
    assert fx.Views.online_of(views.get("user-stats")) == online
    with pytest.raises(ValueError, match="unknown FeatureView 'nope': this store knows user-stats"):
        views.get("nope")
    with pytest.raises(ValueError, match="no offline \\(postgres\\) connection"):
        fx.Views.offline_of(views.get("user-stats"))
    assert views.get(body()).view.name == "user-stats"  # a view passed in, not added


def test_replica_reads_go_to_the_read_only_endpoint_where_a_store_has_one() -> None:
    replicated = connections.from_mapping(
        {"engine": "redis", "host": "cache.ml.svc", "port": "6379", "password": "pw", "readOnlyHost": "cache-ro.ml.svc"}
    )
    single = connections.from_mapping({"engine": "postgres", "host": "pg.ml.svc", "port": "5432", "password": "pw"})
    stores = (
        fx.FeatureStore(body(), online=replicated, offline=single, replica_reads=True),
        AsyncFeatureStore(body(), online=replicated, offline=single, replica_reads=True),
    )
    for store in stores:
        binding = store.views.get("user-stats")
        assert (binding.online.host, binding.online.port) == ("cache-ro.ml.svc", 6379)
        assert binding.offline == single  # one member: its reads stay where the writes go
    # By default reads go to the primary, as writes do.
    assert fx.FeatureStore(body(), online=replicated).views.get("user-stats").online == replicated


def test_the_package_exports_both_clients() -> None:
    import mlinfra.client

    assert {"FeatureStore", "AsyncFeatureStore"} <= set(mlinfra.client.__all__)
