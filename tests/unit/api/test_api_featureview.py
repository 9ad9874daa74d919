"""FeatureView model: good and bad specs and the Python mirror of its CEL rules."""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import pytest

from mlinfra.api import featureview

pytestmark = pytest.mark.unit

SPEC: dict[str, Any] = {
    "entities": [{"name": "user_id", "type": "int64"}, {"name": "country", "type": "string"}],
    "features": [
        {"name": "clicks_7d", "type": "int64", "description": "Clicks over the last 7 days."},
        {"name": "ctr", "type": "float32"},
    ],
    "offline": {"storeRef": {"name": "pg"}, "schema": "features", "table": "user_activity"},
    "online": {"storeRef": {"name": "cache"}, "ttl": "48h"},
    "materialization": {"schedule": "*/5 * * * *", "batchSize": 5000},
    "freshness": {"maxLag": "15m"},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SPEC)
    for key, value in changes.items():
        if value is None:
            out.pop(key)
        else:
            out[key] = value
    return out


def test_good_spec_round_trips() -> None:
    spec = featureview.FeatureViewSpec.model_validate(SPEC)
    assert spec.offline.schema_name == "features"
    assert spec.materialization is not None and spec.materialization.suspend is False
    assert spec.model_dump(exclude_defaults=True) == SPEC


def test_minimal_spec() -> None:
    spec = featureview.FeatureViewSpec.model_validate(
        spec_with(materialization=None, freshness=None, online={"storeRef": {"name": "cache"}})
    )
    assert spec.online.ttl is None
    assert spec.offline.table == "user_activity"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"entities": []}, "at least 1 item"),
        ({"entities": [{"name": "user_id", "type": "int64"}] * 2}, "each entity name must appear once"),
        ({"entities": [{"name": "user_id", "type": "float64"}]}, "Input should be 'string', 'int32' or 'int64'"),
        ({"features": [{"name": "user_id", "type": "int64"}]}, "cannot have the name of an entity"),
        ({"features": [{"name": "ctr", "type": "float32"}] * 2}, "duplicate names ctr"),
        ({"features": [{"name": "event_timestamp", "type": "timestamp"}]}, "reserved"),
        ({"entities": [{"name": "created_at", "type": "string"}]}, "reserved"),
        ({"features": [{"name": "Clicks", "type": "int64"}]}, "should match pattern"),
        ({"features": [{"name": "x", "type": "decimal"}]}, "Input should be 'string'"),
        ({"online": {"storeRef": {"name": "cache"}, "ttl": "2 days"}}, "such as 30s, 5m or 1h30m"),
        ({"materialization": {"schedule": "every 5 minutes"}}, "cron schedule of 5 fields"),
        ({"materialization": {"schedule": "@hourly", "batchSize": 0}}, "greater than or equal to 1"),
        ({"freshness": {"maxLag": "soon"}}, "such as 30s"),
        ({"freshness": {}}, "Field required"),
        ({"offline": None}, "Field required"),
        ({"owner": "team-a"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_specs(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        featureview.FeatureViewSpec.model_validate(spec_with(**changes))


def test_too_many_entities_and_features_are_refused() -> None:
    entities = [{"name": f"k{i}", "type": "string"} for i in range(9)]
    with pytest.raises(pydantic.ValidationError, match="at most 8 items"):
        featureview.FeatureViewSpec.model_validate(spec_with(entities=entities))
    features = [{"name": f"f{i}", "type": "bool"} for i in range(257)]
    with pytest.raises(pydantic.ValidationError, match="at most 256 items"):
        featureview.FeatureViewSpec.model_validate(spec_with(features=features))


def test_status_parses() -> None:
    status = featureview.FeatureViewStatus.model_validate(
        {
            "offlineTable": "features.user_activity",
            "onlineKeyPattern": "fv:ml:user-activity:{user_id}:{country}",
            "lastMaterialization": {"startTime": "2026-01-01T00:00:00Z", "rows": 10, "outcome": "Succeeded"},
            "freshness": {"lagSeconds": 12.5},
        }
    )
    assert status.freshness is not None and status.freshness.lag_seconds == 12.5
    assert status.last_materialization is not None and status.last_materialization.outcome == "Succeeded"


@pytest.mark.parametrize("schema", ["pg_catalog", "pg_temp", "information_schema", "mlinfra", "registry"])
def test_offline_schemas_of_postgres_or_the_operator_are_refused(schema: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="choose another schema"):
        featureview.FeatureViewSpec.model_validate(spec_with(offline={"storeRef": {"name": "pg"}, "schema": schema}))


def test_other_offline_schemas_are_fine() -> None:
    for schema in ("public", "features", "pgx", "my_registry"):
        featureview.FeatureViewSpec.model_validate(spec_with(offline={"storeRef": {"name": "pg"}, "schema": schema}))


@pytest.mark.parametrize(
    "changes",
    [
        {"online": {"storeRef": {"name": "cache"}, "ttl": "0s"}},  # every key would expire at once
        {"freshness": {"maxLag": "0m"}},
    ],
)
def test_zero_durations_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError, match="must be longer than 0"):
        featureview.FeatureViewSpec.model_validate(spec_with(**changes))
