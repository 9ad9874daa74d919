"""VectorIndex model: vector parameters, quantization variants, source/sync rules."""

from __future__ import annotations

import copy
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
