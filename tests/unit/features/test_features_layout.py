"""mlinfra.features.layout: key encoding, type mapping, field encoding round trips."""

from __future__ import annotations

import datetime
import math

import pytest

from mlinfra.features import layout

pytestmark = pytest.mark.unit


def test_composite_keys_are_unambiguous() -> None:
    a = layout.online_key("ns", "v", ["a:b", "c"])
    b = layout.online_key("ns", "v", ["a", "b:c"])
    assert a != b
    assert a == "fv:ns:v:a%3Ab:c"
    assert layout.parse_online_key(a, "ns", "v", ["string", "string"]) == ("a:b", "c")
    assert layout.parse_online_key(b, "ns", "v", ["string", "string"]) == ("a", "b:c")


@pytest.mark.parametrize("values", [("%3A",), ("",), ("", ""), ("ü/ ?*",), (42, "x"), (-7,), ("a%b", 2**62)])
def test_entity_key_round_trip(values: tuple[object, ...]) -> None:
    types = ["string" if isinstance(v, str) else "int64" for v in values]
    assert layout.decode_entity_key(layout.entity_key(values), types) == values


def test_entity_key_rejects_bool_and_float() -> None:
    with pytest.raises(TypeError):
        layout.entity_key([True])
    with pytest.raises(TypeError):
        layout.entity_key([1.5])


def test_key_pattern_and_prefix() -> None:
    assert layout.key_pattern("team-a", "user-stats") == "fv:team-a:user-stats:*"
    assert layout.online_key("team-a", "user-stats", [1]).startswith(layout.key_prefix("team-a", "user-stats"))


def test_offline_defaults() -> None:
    assert layout.offline_table("user-stats", None, None) == ("public", "user_stats")
    assert layout.offline_table("user-stats", "fs", "t") == ("fs", "t")
    assert layout.SYNC_RUNS == "mlinfra.sync_runs"
    assert layout.WATERMARKS == "mlinfra.watermarks"


def test_every_feature_type_has_a_sql_type() -> None:
    assert set(layout.feature_types()) == set(layout.SQL_TYPES)
    assert layout.sql_type("float32_list") == "real[]"
    with pytest.raises(ValueError, match="unknown feature type"):
        layout.sql_type("decimal")


def test_information_schema_types_map_back() -> None:
    assert layout.sql_type_from_information_schema("ARRAY", "_float4") == "real[]"
    assert layout.sql_type_from_information_schema("bigint", "int8") == "bigint"
    assert layout.sql_type_from_information_schema("numeric", "numeric") == "numeric"
    assert layout.sql_type_from_information_schema("ARRAY", "_int4") == "int4[]"


UTC = datetime.UTC
CASES = [
    ("string", "héllo:world"),
    ("string", ""),
    ("int32", -(2**31)),
    ("int64", 2**63 - 1),
    ("float32", 0.5),
    ("float64", 0.1 + 0.2),
    ("float64", math.inf),
    ("bool", True),
    ("bool", False),
    ("timestamp", datetime.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)),
    ("bytes", b"\x00\xff:raw"),
    ("bytes", b""),
    ("float32_list", [0.5, -1.25, 3.0]),
    ("float32_list", []),
]


@pytest.mark.parametrize(("type_", "value"), CASES)
def test_value_round_trip(type_: str, value: object) -> None:
    assert layout.decode_value(type_, layout.encode_value(type_, value)) == value


def test_nan_and_timezones() -> None:
    assert math.isnan(layout.decode_value("float64", layout.encode_value("float64", math.nan)))
    tz = datetime.timezone(datetime.timedelta(hours=2))
    local = datetime.datetime(2024, 5, 1, 14, 0, tzinfo=tz)
    decoded = layout.decode_value("timestamp", layout.encode_value("timestamp", local))
    assert decoded == local and decoded.tzinfo == UTC
    assert layout.decode_value("float32_list", layout.encode_value("float32_list", [1.0, None]))[1] != 0.0


def test_event_ts_is_exact_micros() -> None:
    ts = datetime.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert layout.event_ts_micros(ts) == 1714564800123456
    assert layout.decode_event_ts(layout.encode_event_ts(ts)) == ts
    assert layout.from_event_ts_micros(0) == datetime.datetime(1970, 1, 1, tzinfo=UTC)


def test_encode_features_drops_nulls_and_adds_event_ts() -> None:
    ts = datetime.datetime(2024, 1, 1, tzinfo=UTC)
    fields = layout.encode_features([("a", "int64"), ("b", "string")], [1, None], ts)
    assert fields == {"a": b"1", "_event_ts": b"1704067200000000"}
    decoded = layout.decode_features([("a", "int64"), ("b", "string")], {k.encode(): v for k, v in fields.items()})
    assert decoded == {"a": 1, "b": None}
