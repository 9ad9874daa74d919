"""ModelRegistry model: schemaVersion as int-or-string, lineage rules."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from mlinfra.api import modelregistry

pytestmark = pytest.mark.unit

SPEC: dict[str, Any] = {
    "metadataStoreRef": {"name": "pg"},
    "lineageStoreRef": {"name": "graph"},
    "database": "registry",
    "schemaVersion": 4,
    "lineageSync": {"interval": "10s", "batchSize": 1000},
}


def test_good_spec_round_trips() -> None:
    spec = modelregistry.ModelRegistrySpec.model_validate(SPEC)
    assert spec.schema_version == 4
    assert spec.model_dump(exclude_defaults=True) == SPEC


def test_defaults() -> None:
    spec = modelregistry.ModelRegistrySpec.model_validate({"metadataStoreRef": {"name": "pg"}})
    assert spec.schema_version == "latest"
    assert spec.lineage_store_ref is None and spec.lineage_sync is None
    sync = modelregistry.LineageSync()
    assert (sync.interval, sync.batch_size) == ("30s", 500)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schemaVersion": "newest"}, "Input should be 'latest'"),
        ({"schemaVersion": 0}, "'latest' or a migration number"),
        ({"schemaVersion": -2}, "'latest' or a migration number"),
        ({"lineageStoreRef": None}, "needs spec.lineageStoreRef"),
        ({"lineageStoreRef": {"name": "pg"}}, "must name a neo4j DataStore"),
        ({"lineageSync": {"interval": "ten seconds"}}, "such as 30s"),
        ({"lineageSync": {"batchSize": 100000}}, "less than or equal to 10000"),
        ({"database": "Registry-DB"}, "should match pattern"),
        ({"metadataStoreRef": None}, "Field required"),
    ],
)
def test_bad_specs(changes: dict[str, Any], message: str) -> None:
    spec = {**SPEC, **changes}
    spec = {key: value for key, value in spec.items() if value is not None}
    with pytest.raises(pydantic.ValidationError, match=message):
        modelregistry.ModelRegistrySpec.model_validate(spec)


def test_status_parses() -> None:
    status = modelregistry.ModelRegistryStatus.model_validate(
        {
            "schemaVersion": 4,
            "lineage": {"pendingEvents": 7, "oldestPendingAgeSeconds": 1.5, "nodes": 10, "relationships": 12},
            "counts": {"registeredModels": 2, "modelVersions": 5},
            "readerSecret": "reg-reader",
            "writerSecret": "reg-writer",
        }
    )
    assert status.lineage is not None and status.lineage.pending_events == 7
    assert status.counts is not None and status.counts.registered_models == 2


@pytest.mark.parametrize("database", ["template0", "template1"])
def test_template_databases_are_refused(database: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="cannot be template0 or template1"):
        modelregistry.ModelRegistrySpec.model_validate({**SPEC, "database": database})


@pytest.mark.parametrize("field", ["interval", "maxLag"])
def test_zero_lineage_durations_are_refused(field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="must be longer than 0"):
        modelregistry.ModelRegistrySpec.model_validate({**SPEC, "lineageSync": {field: "0s"}})
