"""manifests/samples/vectorindex-docs.yaml: valid for the model, and consistent with the sample DataStores,
the sample table of mlinfra.devenv.vector_sample and the samples' kustomization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlinfra.api import vectorindex
from mlinfra.devenv import vector_sample as sample

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "samples"
MANIFEST = SAMPLES / "vectorindex-docs.yaml"


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def store_engines() -> dict[str, str]:
    return {
        doc["metadata"]["name"]: doc["spec"]["engine"] for doc in map(load, sorted(SAMPLES.glob("datastore-*.yaml")))
    }


def test_the_sample_validates_with_the_model() -> None:
    index = vectorindex.VectorIndex.model_validate(load(MANIFEST))
    assert index.metadata.name == "docs"
    spec = index.spec
    assert (spec.collection, spec.vectors.size, spec.vectors.distance) == ("docs", 384, "Cosine")
    assert spec.hnsw is not None and spec.hnsw.m == 16
    assert [(p.field, p.type) for p in spec.payload_indexes or ()] == [("lang", "keyword")]
    assert spec.sync is not None and (spec.sync.schedule, spec.sync.max_lag) == ("*/10 * * * *", "30m")


def test_the_sample_points_at_the_sample_stores() -> None:
    spec = vectorindex.VectorIndex.model_validate(load(MANIFEST)).spec
    engines = store_engines()
    assert engines.get(spec.store_ref.name) == "qdrant"
    assert spec.source is not None and engines.get(spec.source.store_ref.name) == "postgres"


def test_the_sample_reads_the_sample_table() -> None:
    spec = vectorindex.VectorIndex.model_validate(load(MANIFEST)).spec
    source = spec.source
    assert source is not None
    assert (source.schema_name, source.table) == (sample.DEFAULT_SCHEMA, sample.DEFAULT_TABLE)
    assert spec.vectors.size == sample.DIM
    columns = [
        source.id_column,
        source.vector_column,
        source.updated_at_column,
        source.deleted_column,
        *(source.payload_columns or ()),
    ]
    assert set(columns) <= set(sample.COLUMNS)
    assert source.payload_columns == ["title", "lang"]


def test_the_sample_is_in_the_kustomization() -> None:
    assert MANIFEST.name in load(SAMPLES / "kustomization.yaml")["resources"]
