"""Pure pieces of features: the schema plan, freshness lag, the sync CLI's target parsing, RESP packing."""

from __future__ import annotations

import datetime

import pytest

from mlinfra.api import featureview
from mlinfra.features import freshness, materialize, schema, sync_cli

pytestmark = pytest.mark.unit

SPEC = featureview.FeatureViewSpec.model_validate(
    {
        "entities": [{"name": "user_id", "type": "int64"}],
        "features": [{"name": "a", "type": "float32"}, {"name": "b", "type": "float32_list"}],
        "offline": {"storeRef": {"name": "pg"}},
        "online": {"storeRef": {"name": "redis"}},
    }
)
BASE = {"user_id": "bigint", "event_timestamp": "timestamp with time zone", "created_at": "timestamp with time zone"}


def test_plan_adds_and_retains() -> None:
    plan = schema.plan(SPEC, {**BASE, "a": "real", "old": "text"}, ["user_id"])
    assert plan == schema.Plan(add=(("b", "real[]"),), retained=("old",), refusals=())


def test_plan_refuses_type_and_entity_changes() -> None:
    plan = schema.plan(SPEC, {**BASE, "a": "double precision", "user_id": "text"}, ["user_id", "country"])
    assert len(plan.refusals) == 3
    assert "feature column a: type double precision in the table, real in the spec" in plan.refusals
    assert any("keyed by (user_id, country)" in r for r in plan.refusals)


def test_refusal_carries_the_reason() -> None:
    error = schema.ImmutableFieldChange(["x", "y"])
    assert error.reason == "ImmutableFieldChange" and str(error) == "x; y"


def test_index_names_fit_postgres() -> None:
    assert len(schema.index_name("t" * 63, "entity_event_idx")) == 63


T = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("source", "online", "lag"),
    [
        (None, None, 0.0),  # empty source: nothing to be behind
        (T, None, None),  # never materialized: unknown
        (T, T, 0.0),  # caught up, however old the data (an idle source is not stale)
        (T + datetime.timedelta(seconds=90), T, 90.0),
        (T, T + datetime.timedelta(seconds=5), 0.0),  # never negative
    ],
)
def test_lag(source: datetime.datetime | None, online: datetime.datetime | None, lag: float | None) -> None:
    assert freshness.lag(source, online) == lag


def test_slo() -> None:
    assert freshness.slo_met(freshness.Freshness(T, T, 60.0), datetime.timedelta(minutes=1)) is True
    assert freshness.slo_met(freshness.Freshness(T, T, 61.0), datetime.timedelta(minutes=1)) is False
    assert freshness.slo_met(freshness.Freshness(T, None, None), datetime.timedelta(minutes=1)) is None


@pytest.mark.parametrize("target", ["noslash", "/name", "ns/", "a/b/c"])
def test_bad_targets(target: str) -> None:
    with pytest.raises(sync_cli.Unusable):
        sync_cli.parse_target(target)


def test_target() -> None:
    assert sync_cli.parse_target("team-a/user-stats") == ("team-a", "user-stats")


def test_resp_packing() -> None:
    assert materialize._pack([b"HSET", b"k", b""]) == b"*3\r\n$4\r\nHSET\r\n$1\r\nk\r\n$0\r\n\r\n"


def test_queries_select_latest_per_entity() -> None:
    bounds, latest = materialize.select_latest(SPEC, "user-stats", with_ttl=True)
    text = latest.as_string(None)
    assert 'DISTINCT ON ("user_id")' in text
    assert '"public"."user_stats"' in text
    assert 'ORDER BY "user_id", "event_timestamp" DESC, "created_at" DESC' in text
    assert "%(cutoff)s" in text and "%(since)s" in bounds.as_string(None)
