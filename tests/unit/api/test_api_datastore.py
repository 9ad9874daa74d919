"""DataStore model: good and bad specs, the Python mirror of the CEL rules, camelCase on the wire."""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import pytest

from mlinfra.api import datastore

pytestmark = pytest.mark.unit

EXTERNAL: dict[str, Any] = {
    "engine": "postgres",
    "external": {
        "endpoint": "pg.example.com:5432",
        "database": "features",
        "credentialsSecretRef": {"name": "pg-creds"},
        "tls": {"enabled": True, "caSecretRef": {"name": "pg-ca", "key": "ca.crt"}},
    },
}
MANAGED: dict[str, Any] = {
    "engine": "redis",
    "managed": {
        "version": "7.2",
        "replicas": 3,
        "storage": {"size": "10Gi", "storageClassName": "fast"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": 2}},
        "config": {"maxmemory": "1gb", "maxmemory-policy": "allkeys-lru"},
    },
    "deletionPolicy": "Delete",
}


def with_changes(spec: dict[str, Any], **paths: Any) -> dict[str, Any]:
    """A copy of ``spec`` with ``a__b__c`` paths set (``None`` removes the key)."""
    out = copy.deepcopy(spec)
    for dotted, value in paths.items():
        *parents, leaf = dotted.split("__")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


@pytest.mark.parametrize(
    "spec",
    [
        EXTERNAL,
        MANAGED,
        {"engine": "neo4j", "managed": {}},
        {"engine": "neo4j", "managed": {"replicas": 1, "config": {"server.memory.heap.max_size": "1g"}}},
        {"engine": "qdrant", "managed": {"replicas": 3}},
        {"engine": "redis", "external": {"endpoint": "[::1]:6379", "credentialsSecretRef": {"name": "r"}}},
        {"engine": "neo4j", "external": {"endpoint": "10.0.0.5:7687", "credentialsSecretRef": {"name": "n"}}},
    ],
)
def test_good_specs(spec: dict[str, Any]) -> None:
    datastore.DataStoreSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**EXTERNAL, "managed": {}}, "exactly one of spec.managed"),
        ({"engine": "redis"}, "exactly one of spec.managed"),
        ({"engine": "neo4j", "managed": {"replicas": 3}}, "set spec.managed.replicas to 1"),
        (with_changes(MANAGED, managed__config={"port": "7000"}), "allows only these redis settings"),
        (with_changes(MANAGED, engine="postgres"), "allows only these postgres settings"),
        (with_changes(MANAGED, managed__replicas=0), "greater than or equal to 1"),
        (with_changes(MANAGED, managed__replicas=16), "less than or equal to 15"),
        (with_changes(MANAGED, engine="mysql"), "Input should be 'redis'"),
        (with_changes(MANAGED, managed__replica=2), "Extra inputs are not permitted"),
        (with_changes(MANAGED, managed__storage__size="ten gigs"), "Kubernetes quantity"),
        (with_changes(MANAGED, managed__version="latest"), "should match pattern"),
        (with_changes(MANAGED, deletionPolicy="Keep"), "'Retain' or 'Delete'"),
        (with_changes(EXTERNAL, external__endpoint="pg.example.com"), "must be host:port"),
        (with_changes(EXTERNAL, external__credentialsSecretRef=None), "Field required"),
        (with_changes(EXTERNAL, external__tls__verify=False), "Extra inputs are not permitted"),
    ],
)
def test_bad_specs(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        datastore.DataStoreSpec.model_validate(spec)


def test_defaults_and_camel_case_dump() -> None:
    spec = datastore.DataStoreSpec.model_validate({"engine": "redis", "managed": {}})
    assert spec.deletion_policy == "Retain"
    assert spec.managed is not None and spec.managed.replicas == 1
    external = datastore.DataStoreSpec.model_validate(EXTERNAL).external
    assert external is not None
    assert external.credentials_secret_ref.username_key == "username"
    assert external.credentials_secret_ref.password_key == "password"
    dumped = datastore.DataStoreSpec.model_validate(MANAGED).model_dump(exclude_defaults=True)
    assert dumped == MANAGED


def test_python_names_are_accepted_too() -> None:
    spec = datastore.DataStoreSpec(engine="redis", managed=datastore.Managed(replicas=2), deletion_policy="Delete")
    assert spec.model_dump(exclude_defaults=True) == {
        "engine": "redis",
        "managed": {"replicas": 2},
        "deletionPolicy": "Delete",
    }


def test_every_engine_has_an_allow_list() -> None:
    assert set(datastore.ALLOWED_CONFIG) == set(datastore.ENGINES)
    assert set(datastore.CONFIG_RULES) == set(datastore.ENGINES)


def test_a_whole_body_parses() -> None:
    body = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": "cache", "namespace": "ml", "generation": 2, "uid": "u", "managedFields": []},
        "spec": MANAGED,
        "status": {
            "observedGeneration": 2,
            "mode": "managed",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "reason": "Available",
                    "message": "",
                }
            ],
            "members": [{"name": "cache-0", "role": "primary", "ready": True}],
            "replication": {"readyReplicas": 3, "desiredReplicas": 3, "maxLagBytes": 0, "maxLagSeconds": 0.5},
        },
    }
    resource = datastore.DataStore.model_validate(body)
    assert resource.metadata.generation == 2
    assert resource.status is not None and resource.status.replication is not None
    assert resource.status.replication.max_lag_seconds == 0.5
    assert datastore.DataStore.spec_model() is datastore.DataStoreSpec
    assert datastore.DataStore.status_model() is datastore.DataStoreStatus
