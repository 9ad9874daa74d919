"""Pure parts of vectors.collection: names, desired settings, and the diffs drift repair reports."""

from __future__ import annotations

from typing import Any

import pytest
from qdrant_client.http import models

from mlinfra.api import vectorindex
from mlinfra.vectors import collection

pytestmark = pytest.mark.unit


def spec(**overrides: Any) -> vectorindex.VectorIndexSpec:
    body: dict[str, Any] = {
        "storeRef": {"name": "q"},
        "collection": "docs",
        "vectors": {"size": 4, "distance": "Cosine"},
    }
    body.update(overrides)
    return vectorindex.VectorIndexSpec.model_validate(body)


def test_physical_name_changes_with_immutable_settings_only() -> None:
    base = collection.physical_name(spec())
    assert base.startswith("docs-") and len(base) == len("docs-") + 8
    assert collection.physical_name(spec(hnsw={"m": 4}, quantization={"type": "binary"})) == base
    assert collection.physical_name(spec(vectors={"size": 5, "distance": "Cosine"})) != base
    assert collection.physical_name(spec(vectors={"size": 4, "distance": "Dot"})) != base
    assert collection.physical_name(spec(vectors={"size": 4, "distance": "Cosine", "datatype": "float16"})) != base


def test_hnsw_drift_against_a_reported_config() -> None:
    reported = models.HnswConfig(m=32, ef_construct=100, full_scan_threshold=10000).model_dump()
    assert collection.hnsw_changes({"m": 8}, reported) == ["hnsw.m: 32 -> 8"]
    assert collection.hnsw_changes({"m": 32}, reported) == []
    assert collection.hnsw_changes({}, reported) == []


def test_quantization_round_trip_and_drift() -> None:
    for q in (
        {"type": "scalar", "quantile": 0.99},
        {"type": "product", "compression": "x16"},
        {"type": "binary", "alwaysRam": True},
    ):
        desired = collection.desired_quantization(spec(quantization=q))
        observed = collection.observed_quantization(collection.quantization_config(desired))
        assert collection.quantization_changes(desired, observed) == []
    scalar = collection.desired_quantization(spec(quantization={"type": "scalar"}))
    assert collection.quantization_changes(scalar, None) == ["quantization: none -> scalar"]
    assert collection.quantization_changes(None, scalar) == ["quantization: scalar -> none"]
    binary = collection.observed_quantization(models.BinaryQuantization(binary=models.BinaryQuantizationConfig()))
    assert collection.quantization_changes(scalar, binary) == ["quantization.type: binary -> scalar"]


def test_immutable_reasons() -> None:
    params = models.VectorParams(size=4, distance=models.Distance.COSINE)
    assert collection.immutable_reasons(spec(), params) == []
    assert collection.immutable_reasons(
        spec(vectors={"size": 4, "distance": "Cosine", "datatype": "uint8"}), params
    ) == ["vectors.datatype: float32 -> uint8"]
    assert collection.immutable_reasons(spec(), {"a": params}) != []
