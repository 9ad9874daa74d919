"""The one layout of a FeatureView's data, offline and online: the materializer and the client SDK share it.

Owned here, and nowhere else:

- the feature/entity type mapping: the SQL column type per type, and the Redis hash field encoding and
  decoding to typed Python values;
- the online key ``fv:{namespace}:{view}:{entity key}``: each entity value is converted to text and
  percent-encoded (``:`` and ``%`` included), then the parts are joined with ``:`` — so ``("a:b", "c")`` and
  ``("a", "b:c")`` give different keys, and :func:`decode_entity_key` inverts :func:`entity_key`;
- the ``_event_ts`` hash field (event time of the row the hash holds, integer microseconds since the epoch, so
  a server-side script can compare it numerically);
- the offline table's defaults (schema ``public``; table = view name with ``-`` as ``_``) and the operator's
  own columns ``event_timestamp`` and ``created_at``;
- the materialization marker key ``fv:{namespace}:{view}`` (see :func:`marker_key` and ``features.identity``);
- the bookkeeping tables ``mlinfra.sync_runs`` and ``mlinfra.watermarks``.

Online field encoding (bytes in Redis, values in Python):

============== ================ ===================================================================
type           SQL              Redis field
============== ================ ===================================================================
string         text             UTF-8
int32, int64   integer, bigint  decimal text
float32/64     real, double     ``repr(float)`` (exact round trip, ``nan``/``inf`` included)
bool           boolean          ``1`` / ``0``
timestamp      timestamptz      ISO 8601 in UTC, e.g. ``2024-05-01T12:00:00.250000+00:00``
bytes          bytea            the raw bytes
float32_list   real[]           packed little-endian float32 (4 bytes per element; NULL element = NaN)
============== ================ ===================================================================

A NULL feature is absent from the hash (decoded as ``None``). Pure functions only: no I/O.
"""

from __future__ import annotations

import datetime
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, get_args
from urllib import parse

from mlinfra.api import featureview

FeatureType = featureview.FeatureType
EntityType = featureview.EntityType

# Offline table.
DEFAULT_SCHEMA = "public"
EVENT_TIMESTAMP = "event_timestamp"
CREATED_AT = "created_at"

# Online hash.
KEY_PREFIX = "fv"
EVENT_TS_FIELD = "_event_ts"

# The operator's bookkeeping, in the offline store's database.
BOOKKEEPING_SCHEMA = "mlinfra"
SYNC_RUNS_TABLE = "sync_runs"
WATERMARKS_TABLE = "watermarks"
SYNC_RUNS = f"{BOOKKEEPING_SCHEMA}.{SYNC_RUNS_TABLE}"
WATERMARKS = f"{BOOKKEEPING_SCHEMA}.{WATERMARKS_TABLE}"

SQL_TYPES: dict[str, str] = {
    "string": "text",
    "int32": "integer",
    "int64": "bigint",
    "float32": "real",
    "float64": "double precision",
    "bool": "boolean",
    "timestamp": "timestamp with time zone",
    "bytes": "bytea",
    "float32_list": "real[]",
}

# information_schema.columns: (data_type, udt_name) per SQL type above, to detect type changes.
_INFO_SCHEMA_TYPES: dict[str, tuple[str, str]] = {
    "text": ("text", "text"),
    "integer": ("integer", "int4"),
    "bigint": ("bigint", "int8"),
    "real": ("real", "float4"),
    "double precision": ("double precision", "float8"),
    "boolean": ("boolean", "bool"),
    "timestamp with time zone": ("timestamp with time zone", "timestamptz"),
    "bytea": ("bytea", "bytea"),
    "real[]": ("ARRAY", "_float4"),
}

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_SEP = ":"


def sql_type(type_: str) -> str:
    """The PostgreSQL column type of a feature or entity type (``float32_list`` -> ``real[]``)."""
    try:
        return SQL_TYPES[type_]
    except KeyError:
        raise ValueError(f"unknown feature type {type_!r}: expected one of {', '.join(SQL_TYPES)}") from None


def sql_type_from_information_schema(data_type: str, udt_name: str) -> str:
    """The :data:`SQL_TYPES` spelling of a column as ``information_schema.columns`` reports it.

    Unknown types come back as ``data_type`` (or ``udt_name`` for arrays), so a message can name them.
    """
    for sql, (dt, udt) in _INFO_SCHEMA_TYPES.items():
        if dt == data_type and udt == udt_name:
            return sql
    return f"{udt_name.lstrip('_')}[]" if data_type == "ARRAY" else data_type


def default_table(view: str) -> str:
    """The offline table name when ``spec.offline.table`` is omitted: the view name, ``-`` as ``_``."""
    return view.replace("-", "_")


def offline_table(view: str, schema: str | None, table: str | None) -> tuple[str, str]:
    """``(schema, table)`` of a view's offline table, defaults applied."""
    return schema or DEFAULT_SCHEMA, table or default_table(view)


def qualified_name(schema: str, table: str) -> str:
    """``schema.table`` as ``status.offlineTable`` reports it (identifiers are validated SQL names)."""
    return f"{schema}.{table}"


# -- online keys ------------------------------------------------------------------------------------------


def key_prefix(namespace: str, view: str) -> str:
    """``fv:{namespace}:{view}:``, the prefix of every online key of a view."""
    return f"{KEY_PREFIX}{_SEP}{namespace}{_SEP}{view}{_SEP}"


def key_pattern(namespace: str, view: str) -> str:
    """The glob matching every online key of a view (``status.onlineKeyPattern``, ``SCAN MATCH``)."""
    return key_prefix(namespace, view) + "*"


def marker_key(namespace: str, view: str) -> str:
    """``fv:{namespace}:{view}``: the string key holding the token of the materialization that filled this
    Redis for the view (``features.identity``).

    Beside the entity keys rather than under :func:`key_pattern`: a ``SCAN`` of the pattern yields entity keys
    only (clients parse every one, and count them), and no entity key can equal it (names have no ``:``, and an
    entity key has one more ``:`` than this)."""
    return f"{KEY_PREFIX}{_SEP}{namespace}{_SEP}{view}"


def _entity_text(value: object) -> str:
    if isinstance(value, bool):  # bool is an int: refuse it rather than encode True as 1
        raise TypeError(f"entity values are str or int, got bool {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"entity values are str or int, got {type(value).__name__} {value!r}")


def entity_key(values: Sequence[object]) -> str:
    """The entity part of an online key: each value as text, percent-encoded, joined with ``:``."""
    if not values:
        raise ValueError("an entity key needs at least one value")
    return _SEP.join(parse.quote(_entity_text(v), safe="") for v in values)


def online_key(namespace: str, view: str, values: Sequence[object]) -> str:
    """``fv:{namespace}:{view}:{entity key}`` for one entity (values in ``spec.entities`` order)."""
    return key_prefix(namespace, view) + entity_key(values)


def decode_entity_key(encoded: str, types: Sequence[str]) -> tuple[str | int, ...]:
    """Invert :func:`entity_key` given the entity types (int32/int64 come back as ``int``)."""
    parts = encoded.split(_SEP)
    if len(parts) != len(types):
        raise ValueError(f"entity key {encoded!r} has {len(parts)} parts, expected {len(types)}")
    texts = [parse.unquote(part) for part in parts]
    return tuple(text if type_ == "string" else int(text) for text, type_ in zip(texts, types, strict=True))


def parse_online_key(key: str, namespace: str, view: str, types: Sequence[str]) -> tuple[str | int, ...]:
    """The entity values of an online key of this view."""
    prefix = key_prefix(namespace, view)
    if not key.startswith(prefix):
        raise ValueError(f"key {key!r} is not a key of {namespace}/{view}")
    return decode_entity_key(key[len(prefix) :], types)


# -- timestamps -------------------------------------------------------------------------------------------


def to_utc(value: datetime.datetime) -> datetime.datetime:
    """An aware UTC datetime; naive datetimes are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC)


def event_ts_micros(value: datetime.datetime) -> int:
    """Integer microseconds since the epoch (the ``_event_ts`` field), exact."""
    delta = to_utc(value) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_event_ts_micros(micros: int) -> datetime.datetime:
    """Invert :func:`event_ts_micros`."""
    return _EPOCH + datetime.timedelta(microseconds=micros)


def encode_event_ts(value: datetime.datetime) -> bytes:
    return str(event_ts_micros(value)).encode()


def decode_event_ts(raw: bytes | str) -> datetime.datetime:
    return from_event_ts_micros(int(raw))


# -- values -----------------------------------------------------------------------------------------------


def _encode_string(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"string feature: expected str, got {type(value).__name__}")
    return value.encode()


def _encode_int(value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"integer feature: expected int, got {type(value).__name__}")
    return str(value).encode()


def _encode_float(value: Any) -> bytes:
    return repr(float(value)).encode()


def _encode_bool(value: Any) -> bytes:
    return b"1" if value else b"0"


def _encode_timestamp(value: Any) -> bytes:
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"timestamp feature: expected datetime, got {type(value).__name__}")
    return to_utc(value).isoformat(timespec="microseconds").encode()


def _encode_bytes(value: Any) -> bytes:
    return bytes(value)


def _encode_float32_list(value: Any) -> bytes:
    floats = [math.nan if v is None else float(v) for v in value]
    return struct.pack(f"<{len(floats)}f", *floats)


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "string": _encode_string,
    "int32": _encode_int,
    "int64": _encode_int,
    "float32": _encode_float,
    "float64": _encode_float,
    "bool": _encode_bool,
    "timestamp": _encode_timestamp,
    "bytes": _encode_bytes,
    "float32_list": _encode_float32_list,
}


def encoder(type_: str) -> Callable[[Any], bytes]:
    """The encoding function of one type (for hot loops: look it up once per column)."""
    try:
        return _ENCODERS[type_]
    except KeyError:
        raise ValueError(f"unknown feature type {type_!r}") from None


def encode_value(type_: str, value: Any) -> bytes:
    """One non-NULL value as the bytes of its hash field (see the module table)."""
    return encoder(type_)(value)


def decode_value(type_: str, raw: bytes | str | None) -> Any:
    """The typed Python value of a hash field (``None`` when the field is absent)."""
    if raw is None:
        return None
    data = raw.encode() if isinstance(raw, str) else raw
    if type_ == "string":
        return data.decode()
    if type_ in ("int32", "int64"):
        return int(data)
    if type_ in ("float32", "float64"):
        return float(data)
    if type_ == "bool":
        return data == b"1"
    if type_ == "timestamp":
        return to_utc(datetime.datetime.fromisoformat(data.decode()))
    if type_ == "bytes":
        return data
    if type_ == "float32_list":
        if len(data) % 4:
            raise ValueError(f"float32_list field of {len(data)} bytes is not a multiple of 4")
        return list(struct.unpack(f"<{len(data) // 4}f", data))
    raise ValueError(f"unknown feature type {type_!r}")


def encode_features(
    features: Iterable[tuple[str, str]], values: Sequence[Any], event_ts: datetime.datetime
) -> dict[str, bytes]:
    """The hash of one entity: ``(name, type)`` per feature with its value; NULLs left out; plus ``_event_ts``."""
    fields = {
        name: encode_value(type_, value)
        for (name, type_), value in zip(features, values, strict=True)
        if value is not None
    }
    fields[EVENT_TS_FIELD] = encode_event_ts(event_ts)
    return fields


def decode_features(features: Iterable[tuple[str, str]], fields: Mapping[Any, Any]) -> dict[str, Any]:
    """The typed values of the requested ``(name, type)`` features from a hash (keys ``str`` or ``bytes``)."""

    def field(name: str) -> Any:
        return fields.get(name, fields.get(name.encode()))

    return {name: decode_value(type_, field(name)) for name, type_ in features}


def feature_types() -> tuple[str, ...]:
    """Every supported feature type."""
    return get_args(FeatureType)
