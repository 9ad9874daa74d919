"""DataStore model: good and bad specs, the Python mirror of the CEL rules, camelCase on the wire."""

from __future__ import annotations

import copy
import datetime
import re
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
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
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
        with_changes(MANAGED, managed__bootstrap={"backup": {"name": "cache-20261130"}}),
        {
            "engine": "postgres",
            "managed": {"bootstrap": {"backup": {"name": "pg-1"}, "targetTime": "2026-11-30T03:15:00Z"}},
        },
        {
            "engine": "postgres",
            "managed": {"bootstrap": {"backup": {"name": "pg-1"}, "targetTime": "2026-11-30T04:15:00.5+01:00"}},
        },
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
        (with_changes(MANAGED, managed__storage__size="ten gigs"), "positive size in bytes"),
        (with_changes(MANAGED, managed__version="latest"), "should match pattern"),
        (with_changes(MANAGED, deletionPolicy="Keep"), "'Retain' or 'Delete'"),
        (with_changes(EXTERNAL, external__endpoint="pg.example.com"), "must be host:port"),
        (with_changes(EXTERNAL, external__credentialsSecretRef=None), "Field required"),
        (with_changes(EXTERNAL, external__tls__verify=False), "Extra inputs are not permitted"),
        # spec.managed.bootstrap
        (
            {"engine": "neo4j", "managed": {"bootstrap": {"backup": {"name": "g"}}}},
            "spec.managed.bootstrap is for redis and postgres stores",
        ),
        (
            {"engine": "qdrant", "managed": {"bootstrap": {"backup": {"name": "q"}}}},
            "spec.managed.bootstrap is for redis and postgres stores",
        ),
        (
            with_changes(MANAGED, managed__bootstrap={"backup": {"name": "c"}, "targetTime": "2026-11-30T03:15:00Z"}),
            "spec.managed.bootstrap.targetTime is for postgres stores",
        ),
        (
            {
                "engine": "postgres",
                "managed": {"bootstrap": {"backup": {"name": "p"}, "targetTime": "2026-11-30T03:15:00"}},
            },
            "must be an RFC 3339 time with a zone",
        ),
        (
            {
                "engine": "postgres",
                "managed": {"bootstrap": {"backup": {"name": "p"}, "targetTime": "2026-11-30 03:15Z"}},
            },
            "must be an RFC 3339 time with a zone",
        ),
        (
            {
                "engine": "postgres",
                "managed": {"bootstrap": {"backup": {"name": "p"}, "targetTime": "2026-02-30T03:15:00Z"}},
            },
            "day is out of range for month",
        ),
        ({"engine": "postgres", "managed": {"bootstrap": {"targetTime": "2026-11-30T03:15:00Z"}}}, "Field required"),
        ({"engine": "postgres", "managed": {"bootstrap": {"backup": {"name": "Bad_Name"}}}}, "should match pattern"),
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


# One value each engine accepts and one it refuses, for every allow-listed setting.
CONFIG_CASES: dict[tuple[str, str], tuple[str, str]] = {
    ("redis", "maxmemory"): ("256mb", "256 MB"),
    ("redis", "maxmemory-policy"): ("allkeys-lfu", "lru"),
    ("redis", "appendonly"): ("yes", "true"),
    ("redis", "appendfsync"): ("everysec", "sometimes"),
    ("redis", "save"): ("3600 1 300 100", "3600 1 300"),
    ("redis", "timeout"): ("300", "5m"),
    ("redis", "tcp-keepalive"): ("60", "-1"),
    ("redis", "hz"): ("10", "ten"),
    ("redis", "io-threads"): ("4", "129"),
    ("redis", "lazyfree-lazy-eviction"): ("no", "off"),
    ("redis", "slowlog-log-slower-than"): ("-1", "10ms"),
    ("redis", "latency-monitor-threshold"): ("100", "-5"),
    ("postgres", "max_connections"): ("262000", "300000"),
    ("postgres", "shared_buffers"): ("256MB", "256mb"),
    ("postgres", "work_mem"): ("4MB", "4 megabytes"),
    ("postgres", "maintenance_work_mem"): ("1GB", "1Gi"),
    ("postgres", "effective_cache_size"): ("4GB", "4G"),
    ("postgres", "max_wal_size"): ("1GB", "-1GB"),
    ("postgres", "min_wal_size"): ("80MB", "80M"),
    ("postgres", "wal_keep_size"): ("1.5GB", "lots"),
    ("postgres", "checkpoint_timeout"): ("5min", "5m"),
    ("postgres", "random_page_cost"): ("1.1", "1,1"),
    ("postgres", "statement_timeout"): ("30s", "-1"),
    ("postgres", "idle_in_transaction_session_timeout"): ("0", "1 minute"),
    ("postgres", "log_min_duration_statement"): ("-1", "-2"),
    ("neo4j", "server.memory.heap.initial_size"): ("512m", "512 mega"),
    ("neo4j", "server.memory.heap.max_size"): ("1GiB", "1.0.0g"),
    ("neo4j", "server.memory.pagecache.size"): ("2g", "2x"),
    ("neo4j", "db.transaction.timeout"): ("30s", "30 seconds"),
    ("neo4j", "db.logs.query.enabled"): ("INFO", "true"),
    ("neo4j", "db.logs.query.threshold"): ("500ms", "0.5s"),
    ("qdrant", "log_level"): ("debug", "loud"),
    ("qdrant", "storage.on_disk_payload"): ("True", "yes"),
    ("qdrant", "storage.performance.max_search_threads"): ("0", "-1"),
    ("qdrant", "storage.optimizers.default_segment_number"): ("2", "two"),
    ("qdrant", "service.max_request_size_mb"): ("32", "0"),
}


def test_every_setting_has_a_case() -> None:
    assert set(CONFIG_CASES) == {(e, k) for e, keys in datastore.CONFIG_VALUES.items() for k in keys}
    assert {e: frozenset(keys) for e, keys in datastore.CONFIG_VALUES.items()} == datastore.ALLOWED_CONFIG


def _managed(engine: str, config: dict[str, str]) -> dict[str, Any]:
    return {"engine": engine, "managed": {"config": config}}


@pytest.mark.parametrize(("engine", "key"), sorted(CONFIG_CASES))
def test_config_values_the_engine_accepts_and_refuses(engine: str, key: str) -> None:
    good, bad = CONFIG_CASES[engine, key]
    datastore.DataStoreSpec.model_validate(_managed(engine, {key: good}))
    with pytest.raises(pydantic.ValidationError, match=re.escape(f"spec.managed.config[{key}] of a {engine}")):
        datastore.DataStoreSpec.model_validate(_managed(engine, {key: bad}))


# Values of the right shape that the engine refuses at start-up: the model names the setting and its range.
OUT_OF_RANGE: list[tuple[str, str, str, str]] = [
    ("postgres", "shared_buffers", "64kB", "is 8 pages (8kB): the engine takes 16 to"),
    ("postgres", "shared_buffers", "99999999999TB", "the engine takes 16 to 1073741823 pages"),
    ("postgres", "work_mem", "32kB", "the engine takes 64 to 2147483647 kB"),
    ("postgres", "maintenance_work_mem", "512kB", "the engine takes 1024 to"),
    ("postgres", "max_wal_size", "16MB", "at least two 16MB WAL segments"),
    ("postgres", "min_wal_size", "2", "at least two 16MB WAL segments"),
    ("postgres", "checkpoint_timeout", "10s", "is 10 s: the engine takes 30 to 86400 s"),
    ("postgres", "checkpoint_timeout", "2d", "the engine takes 30 to 86400 s"),
    ("postgres", "statement_timeout", "30d", "the engine takes 0 to 2147483647 ms"),
    ("postgres", "log_min_duration_statement", "999999999999", "-1 turns it off"),
    ("redis", "slowlog-log-slower-than", "-2", "the engine takes -1 to"),
    ("redis", "maxmemory", "999999999999999gb", "bytes: the engine takes 0 to 18446744073709551615 bytes"),
]
IN_RANGE: list[tuple[str, str, str]] = [
    ("postgres", "shared_buffers", "127kB"),  # 15.9 pages, rounded to 16 as the server does
    ("postgres", "shared_buffers", "16"),  # a bare number is in the setting's unit (pages)
    ("postgres", "work_mem", "64kB"),
    ("postgres", "min_wal_size", "32MB"),
    ("postgres", "checkpoint_timeout", "1d"),
    ("postgres", "log_min_duration_statement", "-1"),
    ("redis", "maxmemory", "0"),
    ("redis", "slowlog-log-slower-than", "-1"),
]


@pytest.mark.parametrize(("engine", "key", "value", "message"), OUT_OF_RANGE)
def test_a_value_out_of_the_engines_range_is_refused_naming_it(engine: str, key: str, value: str, message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        datastore.DataStoreSpec.model_validate(_managed(engine, {key: value}))
    assert f"spec.managed.config[{key}] is {value!r}" in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize(("engine", "key", "value"), IN_RANGE)
def test_a_value_at_the_edge_of_the_range_is_taken(engine: str, key: str, value: str) -> None:
    datastore.DataStoreSpec.model_validate(_managed(engine, {key: value}))


def test_a_neo4j_initial_heap_above_the_maximum_is_refused() -> None:
    heap = {"server.memory.heap.initial_size": "2g", "server.memory.heap.max_size": "1024m"}
    with pytest.raises(pydantic.ValidationError, match="the JVM refuses to start with an initial heap above"):
        datastore.DataStoreSpec.model_validate(_managed("neo4j", heap))
    datastore.DataStoreSpec.model_validate(_managed("neo4j", heap | {"server.memory.heap.max_size": "2GiB"}))


def test_config_value_rules_are_one_per_setting_and_guarded_by_the_engine() -> None:
    rules = datastore.CONFIG_VALUE_RULES
    assert len(rules) == len(CONFIG_CASES)
    for rule in rules:
        assert rule.rule.startswith("self.engine != '") and ".matches(" in rule.rule


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"external__endpoint": "pg.example.com:0"}, "port from 1 to 65535"),
        ({"external__endpoint": "pg.example.com:65536"}, "port from 1 to 65535"),
        ({"external__tls__serverName": "db example com"}, "serverName must be a host name"),
    ],
)
def test_external_values_the_clients_refuse(change: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        datastore.DataStoreSpec.model_validate(with_changes(EXTERNAL, **change))


def test_ports_at_the_bounds_are_fine() -> None:
    for port in (1, 65535, 5432):
        datastore.DataStoreSpec.model_validate(with_changes(EXTERNAL, external__endpoint=f"pg.example.com:{port}"))


def test_a_redis_database_is_a_number() -> None:
    redis = {"engine": "redis", "external": {"endpoint": "r:6379", "credentialsSecretRef": {"name": "r"}}}
    datastore.DataStoreSpec.model_validate(with_changes(redis, external__database="3"))
    with pytest.raises(pydantic.ValidationError, match="must be a database number"):
        datastore.DataStoreSpec.model_validate(with_changes(redis, external__database="features"))
    # Other engines name their databases.
    datastore.DataStoreSpec.model_validate(with_changes(EXTERNAL, external__database="features"))


def test_a_server_name_is_refused_for_redis_only() -> None:
    # redis-py verifies the endpoint's host and cannot verify another name: refused, never ignored.
    redis = {"engine": "redis", "external": {"endpoint": "r:6379", "credentialsSecretRef": {"name": "r"}}}
    with pytest.raises(pydantic.ValidationError, match="serverName is not supported for redis"):
        datastore.DataStoreSpec.model_validate(with_changes(redis, external__tls={"serverName": "r.example.com"}))
    datastore.DataStoreSpec.model_validate(with_changes(redis, external__tls={"enabled": True}))
    datastore.DataStoreSpec.model_validate(with_changes(EXTERNAL, external__tls__serverName="db.example.com"))
    assert datastore.REDIS_SERVER_NAME in datastore.DataStoreSpec.cel_rules


@pytest.mark.parametrize(("image", "ok"), [("redis:7.2", True), ("r.example.com:5000/db/pg@sha256:abc", True),
                                           ("redis 7.2", False), (" redis", False)])  # fmt: skip
def test_images(image: str, ok: bool) -> None:
    spec = with_changes(MANAGED, managed__image=image)
    if ok:
        datastore.DataStoreSpec.model_validate(spec)
    else:
        with pytest.raises(pydantic.ValidationError, match="must be an image reference"):
            datastore.DataStoreSpec.model_validate(spec)


def test_update_rules_sit_where_they_apply() -> None:
    # Rules on oldSelf are transition rules: the API server checks them on updates only.
    assert "oldSelf" in datastore.MODE_FIXED.rule
    assert "oldSelf" in datastore.MAJOR_VERSION_FIXED.rule
    assert datastore.STORAGE_FIXED in datastore.Managed.cel_rules
    assert {datastore.MODE_FIXED, datastore.MAJOR_VERSION_FIXED} <= set(datastore.DataStoreSpec.cel_rules)
    # The default each rule falls back on is the one the renderer uses.
    for engine, version in datastore.DEFAULT_VERSIONS.items():
        assert f"'{engine}': '{version}'" in datastore.MAJOR_VERSION_FIXED.rule
    assert f"'{datastore.DEFAULT_STORAGE_SIZE}'" in datastore.STORAGE_FIXED.rule


def test_bootstrap_target_time_reads_as_an_aware_time() -> None:
    spec = datastore.DataStoreSpec.model_validate(
        {
            "engine": "postgres",
            "managed": {"bootstrap": {"backup": {"name": "p"}, "targetTime": "2026-11-30T04:15:00+01:00"}},
        }
    )
    assert spec.managed is not None and spec.managed.bootstrap is not None
    when = spec.managed.bootstrap.target_datetime
    assert when is not None and when.utcoffset() is not None
    assert when.astimezone(datetime.UTC).isoformat() == "2026-11-30T03:15:00+00:00"
    assert (
        datastore.DataStoreSpec.model_validate(
            {"engine": "redis", "managed": {"bootstrap": {"backup": {"name": "r"}}}}
        ).managed.bootstrap.target_datetime
        is None
    )  # type: ignore[union-attr]
