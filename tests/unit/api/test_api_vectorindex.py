"""VectorIndex model: vector parameters, quantization variants, source/sync rules."""

from __future__ import annotations

import copy
import random
import re
import unicodedata
from typing import Any

import pydantic
import pytest

from mlinfra.api import vectorindex

pytestmark = pytest.mark.unit

SPEC: dict[str, Any] = {
    "storeRef": {"name": "qdrant"},
    "collection": "docs",
    "vectors": {"size": 384, "distance": "Cosine", "datatype": "float16", "onDisk": True},
    "hnsw": {"m": 16, "efConstruct": 128},
    "quantization": {"type": "scalar", "quantile": 0.99, "alwaysRam": True},
    "shards": 2,
    "replicationFactor": 2,
    "payloadIndexes": [{"field": "lang", "type": "keyword"}, {"field": "meta.year", "type": "integer"}],
    "source": {
        "storeRef": {"name": "pg"},
        "schema": "content",
        "table": "documents",
        "idColumn": "id",
        "vectorColumn": "embedding",
        "payloadColumns": ["lang", "title"],
        "updatedAtColumn": "updated_at",
        "deletedColumn": "deleted",
    },
    "sync": {"schedule": "*/10 * * * *", "batchSize": 256},
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
    spec = vectorindex.VectorIndexSpec.model_validate(SPEC)
    assert spec.source is not None and spec.source.schema_name == "content"
    assert spec.model_dump(exclude_defaults=True) == SPEC


def test_minimal_spec() -> None:
    spec = vectorindex.VectorIndexSpec.model_validate(
        {"storeRef": {"name": "q"}, "collection": "docs", "vectors": {"size": 3, "distance": "Dot"}}
    )
    assert spec.vectors.datatype == "float32" and spec.vectors.on_disk is False
    assert spec.source is None and spec.sync is None


@pytest.mark.parametrize(
    "quantization",
    [{"type": "product", "compression": "x16"}, {"type": "binary", "alwaysRam": False}, {"type": "scalar"}],
)
def test_quantization_variants(quantization: dict[str, Any]) -> None:
    vectorindex.VectorIndexSpec.model_validate(spec_with(quantization=quantization))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vectors": {"size": 0, "distance": "Cosine"}}, "positive number of dimensions"),
        ({"vectors": {"size": -3, "distance": "Cosine"}}, "positive number of dimensions"),
        ({"vectors": {"size": 70000, "distance": "Cosine"}}, "less than or equal to 65536"),
        ({"vectors": {"size": 8, "distance": "Hamming"}}, "Input should be 'Cosine'"),
        ({"quantization": {"type": "product"}}, "compression is required for product"),
        ({"quantization": {"type": "scalar", "compression": "x4"}}, "compression is required for product"),
        ({"quantization": {"type": "binary", "quantile": 0.9}}, "quantile applies only to scalar"),
        ({"quantization": {"type": "scalar", "quantile": 0.2}}, "greater than or equal to 0.5"),
        ({"source": None}, "spec.sync needs spec.source"),
        ({"payloadIndexes": [{"field": "lang", "type": "keyword"}] * 2}, "indexed once"),
        ({"payloadIndexes": [{"field": "lang", "type": "string"}]}, "Input should be 'keyword'"),
        ({"collection": "my docs"}, "should match pattern"),
        ({"sync": {"schedule": "hourly"}}, "cron schedule"),
        ({"hnsw": {"m": 1000}}, "less than or equal to 128"),
        ({"shards": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_specs(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        vectorindex.VectorIndexSpec.model_validate(spec_with(**changes))


def test_status_parses() -> None:
    status = vectorindex.VectorIndexStatus.model_validate(
        {
            "activeCollection": "docs-3f2a",
            "previousCollection": "docs-19bc",
            "points": 1000,
            "indexedVectors": 990,
            "collectionStatus": "green",
            "replicas": [{"shard": 0, "peer": "18446744073709551615", "state": "Active"}],
            "sync": {"rowsBehind": 0, "lagSeconds": 3.0, "lastRun": {"outcome": "Succeeded", "rows": 5}},
        }
    )
    assert status.replicas is not None and status.replicas[0].peer == "18446744073709551615"
    assert status.sync is not None and status.sync.last_run is not None


def test_a_zero_lag_slo_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="must be longer than 0"):
        vectorindex.VectorIndexSpec.model_validate(spec_with(sync={"schedule": "@hourly", "maxLag": "0s"}))


def test_a_zero_retention_stays_allowed() -> None:
    # '0s' is documented: delete the replaced collection right after the alias swap.
    vectorindex.VectorIndexSpec.model_validate(spec_with(previousCollectionRetention="0s"))


# --- payload index fields: Qdrant's JSON path keys, in the form Qdrant writes them back ---------------------

GOOD_FIELDS = [
    "lang",
    "meta.source",
    "tags[]",
    "a.b[].c",
    "items[0]",
    "grid[10][2].x",
    "foo_123-bar",
    '"first name"',
    'meta."first name".x',
    '"a.b"',
    "名前",
    "हिंदी",  # Devanagari: vowel signs are combining marks, letters to Qdrant
    "Größe",
]
BAD_FIELDS = [
    "/../../../x#",  # issue 14: Qdrant answered 400 Invalid json path, retried for ever
    "a..b",
    "a b",
    "a.",
    ".a",
    "[]",
    "a[]b",
    "a[x]",
    "a[-1]",
    "a#b",
    "lang\n",
    '"lang"',  # Qdrant writes it back as lang: quotes only where needed
    "a[01]",  # written back as a[1]
    '""',
    '"a"b"',
    '"a\\b"',
    "a[99999999999999999999]",  # beyond Qdrant's 64-bit index
]


@pytest.mark.parametrize("field", GOOD_FIELDS)
def test_payload_index_fields_qdrant_takes_are_accepted(field: str) -> None:
    spec = vectorindex.VectorIndexSpec.model_validate(spec_with(payloadIndexes=[{"field": field, "type": "keyword"}]))
    assert spec.payload_indexes is not None and spec.payload_indexes[0].field == field


@pytest.mark.parametrize("field", BAD_FIELDS)
def test_payload_index_fields_qdrant_refuses_are_refused_with_what_is_allowed(field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        vectorindex.VectorIndexSpec.model_validate(spec_with(payloadIndexes=[{"field": field, "type": "keyword"}]))
    [error] = raised.value.errors(include_url=False)
    assert error["loc"] == ("payloadIndexes", 0, "field")
    assert vectorindex.PAYLOAD_FIELD_MESSAGE in error["msg"]


def test_an_empty_payload_index_field_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="at least 1 character"):
        vectorindex.PayloadIndex.model_validate({"field": "", "type": "keyword"})


def qdrant_writes_back(path: str) -> bool:
    """Whether Qdrant parses ``path`` and writes it back unchanged: a port of its JSON path parser and Display
    (lib/segment/src/json_path/parse.rs and mod.rs), with Python's isalnum for Rust's is_alphanumeric."""

    def bare(c: str) -> bool:
        return c.isalnum() or c in "_-"

    def key(i: int) -> tuple[str, int] | None:
        if path[i : i + 1] == '"':
            end = path.find('"', i + 1)
            return None if end < 0 or "\\" in path[i + 1 : end] else (path[i + 1 : end], end + 1)
        end = i
        while end < len(path) and bare(path[end]):
            end += 1
        return (path[i:end], end) if end > i else None

    def written(k: str) -> str:
        return k if k and all(map(bare, k)) else f'"{k}"'

    first = key(0)
    if first is None:
        return False
    out, i = [written(first[0])], first[1]
    while i < len(path):
        index = re.match(r"\[([0-9]+)\]", path[i:])
        if path[i] == "." and (item := key(i + 1)) is not None:
            out.append("." + written(item[0]))
            i = item[1]
        elif path.startswith("[]", i):
            out.append("[]")
            i += 2
        elif index is not None and int(index[1]) < 2**64:
            out.append(f"[{int(index[1])}]")
            i += index.end()
        else:
            return False
    return "".join(out) == path


def test_the_model_accepts_exactly_what_qdrant_writes_back() -> None:
    # Seeded strings over the characters that matter to the grammar. Combining marks are left out (the model
    # takes all of them as letters, Qdrant only those Rust calls alphabetic: see vectorindex.py), and an empty
    # key ("") is refused on purpose, though Qdrant would take it.
    rng = random.Random(14)
    alphabet = 'aZ7_-.[]"0 \\#/é名½'
    samples = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(20000)}
    samples |= {f for f in GOOD_FIELDS + BAD_FIELDS if not any(unicodedata.category(c)[0] == "M" for c in f)}
    disagree = []
    for field in sorted(samples):
        try:
            vectorindex.PayloadIndex.model_validate({"field": field, "type": "keyword"})
            accepted = True
        except pydantic.ValidationError:
            accepted = False
        if accepted != (qdrant_writes_back(field) and '""' not in field):
            disagree.append(field)
    assert disagree == []
    assert sum(map(qdrant_writes_back, samples)) > 500  # the samples reach both sides
