"""The committed CRDs on a real kube-apiserver: bad objects are refused with messages that say what to fix.

Table-driven: each invalid object is applied with ``kubectl apply --server-side`` (what users and Argo CD
do) and must be rejected with the CEL or schema message expected for it; valid objects are accepted (and
defaulted); changing an immutable field is rejected while a vector size change, which drives a rebuild,
is accepted. The operator is not running: this is the API server alone.
"""

from __future__ import annotations

import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any, Protocol

import pytest
import yaml

from e2e_support import variant

pytestmark = pytest.mark.e2e

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMESPACE = "mlinfra-crd-validation"
PLURALS = ("datastores", "featureviews", "modelregistries", "vectorindexes")


class ControlPlane(Protocol):
    """What this module uses of the session's ``control_plane`` fixture."""

    kubeconfig: pathlib.Path

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]: ...


# --- valid objects, the base of every invalid one ---------------------------------------------------------


def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


DS_MANAGED = obj(
    "DataStore",
    "cache",
    {
        "engine": "redis",
        "managed": {
            "version": "7.2",
            "replicas": 2,
            "storage": {"size": "1Gi"},
            "resources": {"requests": {"cpu": 1, "memory": "512Mi"}},
            "config": {"maxmemory": "256mb", "maxmemory-policy": "allkeys-lru"},
        },
    },
)
DS_EXTERNAL = obj(
    "DataStore",
    "pg",
    {
        "engine": "postgres",
        "external": {
            "endpoint": "pg.example.com:5432",
            "database": "features",
            "credentialsSecretRef": {"name": "pg-creds"},
            "tls": {"enabled": True, "caSecretRef": {"name": "pg-ca", "key": "ca.crt"}},
        },
        "deletionPolicy": "Delete",
    },
)
DS_NEO4J = obj("DataStore", "graph", {"engine": "neo4j", "managed": {"storage": {"size": "2Gi"}}})
FV = obj(
    "FeatureView",
    "user-activity",
    {
        "entities": [{"name": "user_id", "type": "int64"}],
        "features": [
            {"name": "clicks_7d", "type": "int64", "description": "Clicks over 7 days."},
            {"name": "ctr", "type": "float32"},
        ],
        "offline": {"storeRef": {"name": "pg"}, "schema": "features"},
        "online": {"storeRef": {"name": "cache"}, "ttl": "1h30m"},
        "materialization": {"schedule": "*/5 * * * *", "batchSize": 500},
        "freshness": {"maxLag": "15m"},
    },
)
MR = obj(
    "ModelRegistry",
    "registry",
    {
        "metadataStoreRef": {"name": "pg"},
        "lineageStoreRef": {"name": "graph"},
        "schemaVersion": 3,
        "lineageSync": {"interval": "30s"},
    },
)
MR_MINIMAL = obj("ModelRegistry", "registry-latest", {"metadataStoreRef": {"name": "pg"}})
VI = obj(
    "VectorIndex",
    "docs",
    {
        "storeRef": {"name": "qdrant"},
        "collection": "docs",
        "vectors": {"size": 384, "distance": "Cosine"},
        "hnsw": {"m": 16, "efConstruct": 100},
        "quantization": {"type": "product", "compression": "x16"},
        "payloadIndexes": [{"field": "lang", "type": "keyword"}],
        "source": {
            "storeRef": {"name": "pg"},
            "table": "documents",
            "idColumn": "id",
            "vectorColumn": "embedding",
            "payloadColumns": ["lang"],
            "updatedAtColumn": "updated_at",
        },
        "sync": {"schedule": "@hourly"},
    },
)
VALID = [DS_MANAGED, DS_EXTERNAL, DS_NEO4J, FV, MR, MR_MINIMAL, VI]


# --- invalid objects and the message each must be rejected with ---------------------------------------------

INVALID: list[tuple[dict[str, Any], str]] = [
    # DataStore
    (variant(DS_EXTERNAL, "ds-both", managed={}), "set exactly one of spec.managed"),
    (variant(DS_MANAGED, "ds-neither", managed=None), "set exactly one of spec.managed"),
    (variant(DS_NEO4J, "ds-neo4j-3", managed__replicas=3), "neo4j Community runs a single instance"),
    (variant(DS_MANAGED, "ds-mysql", engine="mysql"), 'Unsupported value: "mysql"'),
    (variant(DS_MANAGED, "ds-zero", managed__replicas=0), "should be greater than or equal to 1"),
    (variant(DS_EXTERNAL, "ds-no-port", external__endpoint="pg.example.com"), "must be host:port"),
    (variant(DS_MANAGED, "ds-port", managed__config={"port": "7000"}), "allows only these redis settings"),
    (variant(DS_MANAGED, "ds-size", managed__storage__size="ten gigs"), "spec.managed.storage.size"),
    (variant(DS_EXTERNAL, "ds-no-creds", external__credentialsSecretRef=None), "credentialsSecretRef: Required"),
    (variant(DS_MANAGED, "ds-typo", managed__replica=2), ".spec.managed.replica: field not declared in schema"),
    # FeatureView
    (variant(FV, "fv-no-entities", entities=[]), "should have at least 1 items"),
    (
        variant(FV, "fv-dup-entities", entities=[{"name": "user_id", "type": "int64"}] * 2),
        "each entity name must appear once",
    ),
    (
        variant(FV, "fv-shadow", features=[{"name": "user_id", "type": "string"}]),
        "cannot have the name of an entity",
    ),
    (
        variant(FV, "fv-reserved", features=[{"name": "event_timestamp", "type": "timestamp"}]),
        "reserved for the operator's own columns",
    ),
    (variant(FV, "fv-ttl", online__ttl="2 days"), "such as 30s, 5m or 1h30m"),
    (variant(FV, "fv-cron", materialization__schedule="every 5 minutes"), "cron schedule of 5 fields"),
    (variant(FV, "fv-cron-6", materialization__schedule="0 */5 * * * *"), "cron schedule of 5 fields"),
    (
        variant(FV, "fv-dup-feature", features=[{"name": "ctr", "type": "float32"}] * 2),
        'duplicate entries for key [name="ctr"]',
    ),
    (
        variant(FV, "fv-many-keys", entities=[{"name": f"k{i}", "type": "string"} for i in range(9)]),
        "must have at most 8 items",
    ),
    (variant(FV, "fv-type", features=[{"name": "x", "type": "decimal"}]), 'Unsupported value: "decimal"'),
    # ModelRegistry
    (variant(MR, "mr-no-lineage", lineageStoreRef=None), "needs spec.lineageStoreRef"),
    (variant(MR, "mr-newest", schemaVersion="newest"), "must be 'latest' or a migration number"),
    (variant(MR, "mr-zero", schemaVersion=0), "must be 'latest' or a migration number"),
    (variant(MR, "mr-same", lineageStoreRef={"name": "pg"}), "must name a neo4j DataStore"),
    (variant(MR, "mr-interval", lineageSync__interval="10 seconds"), "such as 30s, 5m or 1h30m"),
    # VectorIndex
    (variant(VI, "vi-size", vectors__size=0), "must be a positive number of dimensions"),
    (variant(VI, "vi-hamming", vectors__distance="Hamming"), 'Unsupported value: "Hamming"'),
    (
        variant(VI, "vi-pq", quantization={"type": "product"}),
        "compression is required for product quantization",
    ),
    (
        variant(VI, "vi-quantile", quantization={"type": "binary", "quantile": 0.9}),
        "quantile applies only to scalar",
    ),
    (variant(VI, "vi-no-source", source=None), "spec.sync needs spec.source"),
    (variant(VI, "vi-collection", collection="my docs"), "spec.collection"),
    (variant(VI, "vi-no-vectors", vectors=None), "spec.vectors: Required value"),
]

# Issue 13, class 6: what the API server accepted before but Kubernetes or the engine then refused (the
# operator retried a 422 or a crashing pod for ever). Each is refused at admission with the rule's message.
# Valid object names (<= 253) that no label value can hold, one per kind (test ids are names).
LONG = {kind: kind[0].lower() * 64 for kind in ("DataStore", "FeatureView", "ModelRegistry", "VectorIndex")}
PG_MANAGED = obj("DataStore", "pg-managed", {"engine": "postgres", "managed": {"storage": {"size": "1Gi"}}})
QDRANT_MANAGED = obj("DataStore", "qdrant-managed", {"engine": "qdrant", "managed": {}})
REDIS_EXTERNAL = obj(
    "DataStore",
    "redis-ext",
    {"engine": "redis", "external": {"endpoint": "r.example.com:6379", "credentialsSecretRef": {"name": "r"}}},
)
HOSTILE: list[tuple[dict[str, Any], str]] = [
    # DataStore: names its children cannot carry
    (variant(DS_MANAGED, "d" * 53), "the name of a managed DataStore must be at most 52 characters"),
    (variant(DS_MANAGED, "cache.main"), "must start with a lower-case letter and contain only lower-case"),
    (variant(DS_MANAGED, "1cache"), "must start with a lower-case letter and contain only lower-case"),
    (variant(DS_EXTERNAL, LONG["DataStore"]), "the name of a DataStore must be at most 63 characters"),
    # DataStore: engine settings the engine refuses
    (
        variant(DS_MANAGED, "ds-maxmemory", managed__config={"maxmemory": "256 MB"}),
        "spec.managed.config[maxmemory] of a redis DataStore must be a number of bytes",
    ),
    (
        variant(DS_MANAGED, "ds-policy", managed__config={"maxmemory-policy": "lru"}),
        "spec.managed.config[maxmemory-policy] of a redis DataStore must be one of noeviction",
    ),
    (
        variant(PG_MANAGED, "ds-pg-units", managed__config={"shared_buffers": "256mb"}),
        "spec.managed.config[shared_buffers] of a postgres DataStore must be a number with an optional unit",
    ),
    (
        variant(PG_MANAGED, "ds-pg-conns", managed__config={"max_connections": "3"}),
        "spec.managed.config[max_connections] of a postgres DataStore must be a whole number from 4",
    ),
    (
        variant(DS_NEO4J, "ds-neo4j-log", managed__config={"db.logs.query.enabled": "true"}),
        "spec.managed.config[db.logs.query.enabled] of a neo4j DataStore must be OFF, INFO or VERBOSE",
    ),
    (
        variant(QDRANT_MANAGED, "ds-qdrant-log", managed__config={"log_level": "loud"}),
        "spec.managed.config[log_level] of a qdrant DataStore must be TRACE",
    ),
    # DataStore: volumes, resources and images the Pod and PVC APIs refuse
    (variant(DS_MANAGED, "ds-half-byte", managed__storage__size="500m"), "must be a positive size in bytes"),
    (variant(DS_MANAGED, "ds-no-bytes", managed__storage__size="0"), "must be a positive size in bytes"),
    (
        variant(DS_MANAGED, "ds-cpus", managed__resources={"requests": {"cpus": 1}}),
        "requests: resource names must be cpu, memory, ephemeral-storage",
    ),
    (
        variant(DS_MANAGED, "ds-negative", managed__resources={"limits": {"memory": "-1Gi"}}),
        "limits: resource quantities must not be negative",
    ),
    (
        variant(DS_MANAGED, "ds-over", managed__resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}),
        "each request must be at most the limit of the same resource",
    ),
    (variant(DS_MANAGED, "ds-image", managed__image="redis 7.2"), "spec.managed.image must be an image reference"),
    # DataStore: external settings the clients refuse
    (
        variant(DS_EXTERNAL, "ds-port-range", external__endpoint="pg.example.com:70000"),
        "must be host:port with a port from 1 to 65535",
    ),
    (
        variant(REDIS_EXTERNAL, "ds-redis-db", external__database="features"),
        "spec.external.database of a redis DataStore must be a database number",
    ),
    (
        variant(DS_EXTERNAL, "ds-sni", external__tls__serverName="db example com"),
        "spec.external.tls.serverName must be a host name",
    ),
    (
        variant(REDIS_EXTERNAL, "ds-redis-sni", external__tls={"enabled": True, "serverName": "r.example.com"}),
        "spec.external.tls.serverName is not supported for redis",
    ),
    # FeatureView
    (variant(FV, LONG["FeatureView"]), "the name of a FeatureView must be at most 63 characters"),
    (variant(FV, "fv-minute-60", materialization__schedule="60 * * * *"), "minute 0-59, hour 0-23"),
    (variant(FV, "fv-sunday-7", materialization__schedule="0 0 * * 7"), "day of week 0-6 or SUN-SAT"),
    (variant(FV, "fv-step-0", materialization__schedule="*/0 * * * *"), "cron schedule of 5 fields"),
    (variant(FV, "fv-ttl-0", online__ttl="0s"), "must be longer than 0"),
    (variant(FV, "fv-slo-0", freshness__maxLag="0m"), "must be longer than 0"),
    (variant(FV, "fv-pg-schema", offline__schema="pg_catalog"), "choose another schema"),
    (variant(FV, "fv-our-schema", offline__schema="mlinfra"), "mlinfra and registry are the operator's own"),
    # ModelRegistry
    (variant(MR, LONG["ModelRegistry"]), "the name of a ModelRegistry must be at most 63 characters"),
    (variant(MR, "mr-template", database="template1"), "spec.database cannot be template0 or template1"),
    (variant(MR, "mr-interval-0", lineageSync__interval="0s"), "must be longer than 0"),
    (variant(MR, "mr-hour-25", lineageSync__schedule="0 25 * * *"), "minute 0-59, hour 0-23"),
    # VectorIndex
    (variant(VI, LONG["VectorIndex"]), "the name of a VectorIndex must be at most 63 characters"),
    (variant(VI, "vi-day-32", sync__schedule="0 0 32 * *"), "day of month 1-31"),
    (variant(VI, "vi-lag-0", sync__maxLag="0s"), "must be longer than 0"),
]
INVALID += HOSTILE
# Issue 14: payload index fields Qdrant cannot parse (it answered 400 Invalid json path, which was retried for
# ever) or would write back otherwise (the index re-created on every pass) are refused with what is allowed.
PAYLOAD_KEY = "spec.payloadIndexes[].field must be a Qdrant payload key"


def vi_field(name: str, field: str) -> dict[str, Any]:
    return variant(VI, name, payloadIndexes=[{"field": field, "type": "keyword"}])


INVALID += [
    (vi_field("vi-field-path", "/../../../x#"), PAYLOAD_KEY),
    (vi_field("vi-field-dots", "a..b"), PAYLOAD_KEY),
    (vi_field("vi-field-space", "a b"), PAYLOAD_KEY),
    (vi_field("vi-field-quoted", '"lang"'), PAYLOAD_KEY),
    (vi_field("vi-field-zero", "tags[01]"), PAYLOAD_KEY),
    (vi_field("vi-field-empty", ""), "should be at least 1 chars long"),
]
# spec.managed.bootstrap (issue 15): a new store from a Backup, redis and postgres only, fixed at creation.
BOOTSTRAP = {"backup": {"name": "features-pg-nightly"}}
PG_BOOTSTRAP = variant(
    PG_MANAGED, "pg-bootstrap", managed__bootstrap={**BOOTSTRAP, "targetTime": "2026-11-30T03:15:00Z"}
)
INVALID += [
    (
        variant(DS_NEO4J, "ds-bootstrap-neo4j", managed__bootstrap=BOOTSTRAP),
        "spec.managed.bootstrap is for redis and postgres stores",
    ),
    (
        variant(QDRANT_MANAGED, "ds-bootstrap-qdrant", managed__bootstrap=BOOTSTRAP),
        "spec.managed.bootstrap is for redis and postgres stores",
    ),
    (
        variant(
            DS_MANAGED,
            "ds-bootstrap-redis-time",
            managed__bootstrap={**BOOTSTRAP, "targetTime": "2026-11-30T03:15:00Z"},
        ),
        "spec.managed.bootstrap.targetTime is for postgres stores",
    ),
    (
        variant(
            PG_MANAGED, "ds-bootstrap-no-zone", managed__bootstrap={**BOOTSTRAP, "targetTime": "2026-11-30T03:15:00"}
        ),
        "spec.managed.bootstrap.targetTime must be an RFC 3339 time with a zone",
    ),
    (
        variant(
            PG_MANAGED, "ds-bootstrap-date", managed__bootstrap={**BOOTSTRAP, "targetTime": "30/11/2026 03:15 UTC"}
        ),
        "spec.managed.bootstrap.targetTime must be an RFC 3339 time with a zone",
    ),
    (
        variant(PG_MANAGED, "ds-bootstrap-no-backup", managed__bootstrap={"targetTime": "2026-11-30T03:15:00Z"}),
        "spec.managed.bootstrap.backup: Required value",
    ),
]
VALID += [
    PG_BOOTSTRAP,
    variant(
        PG_MANAGED,
        "pg-bootstrap-offset",
        managed__bootstrap={**BOOTSTRAP, "targetTime": "2026-11-30T04:15:00.25+01:00"},
    ),
    variant(DS_MANAGED, "redis-bootstrap", managed__bootstrap=BOOTSTRAP),
]

# spec.backup.target (issue 15): a bucket or a volume claim, exactly one.
S3_TARGET = {"bucket": "ml-backups", "credentialsSecretRef": {"name": "backup-s3"}}
ONE_TARGET = "spec.backup.target needs exactly one of s3 (a bucket) or volume (a PersistentVolumeClaim)"
INVALID += [
    (variant(DS_MANAGED, "ds-target-none", backup={"target": {}}), ONE_TARGET),
    (
        variant(
            DS_MANAGED, "ds-target-both", backup={"target": {"s3": S3_TARGET, "volume": {"claimName": "ml-backups"}}}
        ),
        ONE_TARGET,
    ),
    (variant(DS_MANAGED, "ds-target-no-claim", backup={"target": {"volume": {}}}), "claimName: Required value"),
]
VALID += [variant(DS_MANAGED, "redis-volume-backups", backup={"target": {"volume": {"claimName": "ml-backups"}}})]
# Synchronous standbys: postgres only, fewer than its members.
VALID += [variant(PG_MANAGED, "pg-sync", managed__replicas=3, managed__synchronousReplicas=1)]
INVALID += [
    (
        variant(DS_MANAGED, "ds-sync-redis", managed__replicas=3, managed__synchronousReplicas=1),
        "spec.managed.synchronousReplicas is for postgres stores",
    ),
    (
        variant(PG_MANAGED, "ds-sync-all", managed__replicas=2, managed__synchronousReplicas=2),
        "must be less than spec.managed.replicas",
    ),
]

# Valid objects near the new limits, accepted as they are.
VALID += [
    variant(DS_MANAGED, "d" * 52),
    variant(DS_EXTERNAL, "pg.external"),  # a dot is fine where no Service is named after the store
    variant(DS_EXTERNAL, "pg-sni", external__tls__serverName="db.example.com"),  # postgres verifies another name
    variant(REDIS_EXTERNAL, "redis-tls", external__tls={"enabled": True, "insecureSkipVerify": True}),
    variant(PG_MANAGED, "pg-tuned", managed__config={"shared_buffers": "256MB", "max_connections": "200"}),
    variant(FV, "n" * 63, materialization__schedule="0 9-17/2 * jan-mar MON-FRI"),
    variant(
        VI,
        "vi-fields",
        payloadIndexes=[
            {"field": field, "type": "keyword"}
            for field in ("meta.source", "tags[]", "authors[].name", "grid[0][12]", 'meta."first name"', "名前", "हिंदी")
        ],
    ),
]

# Updates: (original, changed, message if rejected or None if accepted).
UPDATES: list[tuple[str, dict[str, Any], dict[str, Any], str | None]] = [
    (
        "engine-change",
        variant(DS_EXTERNAL, "upd-engine"),
        variant(DS_EXTERNAL, "upd-engine", engine="redis"),
        "spec.engine is immutable",
    ),
    (
        "entity-type-change",
        variant(FV, "upd-entity-type"),
        variant(FV, "upd-entity-type", entities=[{"name": "user_id", "type": "string"}]),
        "spec.entities is immutable",
    ),
    (
        "entity-added",
        variant(FV, "upd-entity-added"),
        variant(
            FV,
            "upd-entity-added",
            entities=[{"name": "user_id", "type": "int64"}, {"name": "country", "type": "string"}],
        ),
        "spec.entities is immutable",
    ),
    (
        "feature-added",
        variant(FV, "upd-feature-added"),
        variant(FV, "upd-feature-added", features=[*FV["spec"]["features"], {"name": "spend", "type": "float64"}]),
        None,
    ),
    (
        "vector-size-and-distance-change",
        variant(VI, "upd-vectors"),
        variant(VI, "upd-vectors", vectors={"size": 768, "distance": "Dot"}),
        None,
    ),
    (
        "storage-resize",
        variant(DS_MANAGED, "upd-storage"),
        variant(DS_MANAGED, "upd-storage", managed__storage__size="2Gi"),
        "spec.managed.storage cannot change on an existing DataStore",
    ),
    (
        "storage-class-set",
        variant(DS_MANAGED, "upd-storage-class"),
        variant(DS_MANAGED, "upd-storage-class", managed__storage__storageClassName="fast"),
        "spec.managed.storage cannot change on an existing DataStore",
    ),
    (
        "storage-default-spelt-out",
        variant(PG_MANAGED, "upd-storage-default", managed__storage=None),
        variant(PG_MANAGED, "upd-storage-default", managed__storage__size="10Gi"),
        None,
    ),
    (
        "storage-default-grown",
        variant(PG_MANAGED, "upd-storage-grown", managed__storage=None),
        variant(PG_MANAGED, "upd-storage-grown", managed__storage__size="20Gi"),
        "spec.managed.storage cannot change on an existing DataStore",
    ),
    (
        "managed-to-external",
        variant(DS_MANAGED, "upd-mode"),
        variant(REDIS_EXTERNAL, "upd-mode"),
        "spec.managed and spec.external cannot be switched on an existing DataStore",
    ),
    (
        "major-upgrade",
        variant(DS_MANAGED, "upd-major"),
        variant(DS_MANAGED, "upd-major", managed__version="8.0"),
        "spec.managed.version cannot change its major version",
    ),
    (
        "major-upgrade-from-the-default",
        variant(PG_MANAGED, "upd-major-default"),
        variant(PG_MANAGED, "upd-major-default", managed__version="16"),
        "spec.managed.version cannot change its major version",
    ),
    (
        "minor-upgrade",
        variant(DS_MANAGED, "upd-minor"),
        variant(DS_MANAGED, "upd-minor", managed__version="7.4"),
        None,
    ),
    (
        "default-version-spelt-out",
        variant(PG_MANAGED, "upd-version-default"),
        variant(PG_MANAGED, "upd-version-default", managed__version="15.8"),
        None,
    ),
    # spec.managed.bootstrap is set at creation and never changes; the store's other fields still do.
    (
        "bootstrap-added",
        variant(PG_MANAGED, "upd-bootstrap-added"),
        variant(PG_MANAGED, "upd-bootstrap-added", managed__bootstrap=BOOTSTRAP),
        "spec.managed.bootstrap is set when a DataStore is created and cannot be added, changed or removed",
    ),
    (
        "bootstrap-removed",
        variant(PG_BOOTSTRAP, "upd-bootstrap-removed"),
        variant(PG_BOOTSTRAP, "upd-bootstrap-removed", managed__bootstrap=None),
        "spec.managed.bootstrap is set when a DataStore is created and cannot be added, changed or removed",
    ),
    (
        "bootstrap-target-time-changed",
        variant(PG_BOOTSTRAP, "upd-bootstrap-time"),
        variant(PG_BOOTSTRAP, "upd-bootstrap-time", managed__bootstrap__targetTime="2026-11-30T03:20:00Z"),
        "spec.managed.bootstrap is set when a DataStore is created and cannot be added, changed or removed",
    ),
    (
        "bootstrap-backup-changed",
        variant(PG_BOOTSTRAP, "upd-bootstrap-backup"),
        variant(PG_BOOTSTRAP, "upd-bootstrap-backup", managed__bootstrap__backup={"name": "other"}),
        "spec.managed.bootstrap is set when a DataStore is created and cannot be added, changed or removed",
    ),
    (
        "bootstrap-kept-while-scaling",
        variant(PG_BOOTSTRAP, "upd-bootstrap-scale"),
        variant(PG_BOOTSTRAP, "upd-bootstrap-scale", managed__replicas=3, managed__version="15.8"),
        None,
    ),
    (
        "neo4j-scale-up",
        variant(DS_NEO4J, "upd-neo4j"),
        variant(DS_NEO4J, "upd-neo4j", managed__replicas=2),
        "neo4j Community runs a single instance",
    ),
]


# --- fixtures and helpers -----------------------------------------------------------------------------------


def apply(cp: ControlPlane, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cp.kubectl(
        "apply",
        "--server-side",
        "--field-manager=crd-validation-test",
        "-f",
        "-",
        input=yaml.safe_dump(body),
        check=False,
    )


def wait_until(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The control plane with the committed CRDs installed (as the README says) and a namespace."""
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    for plural in PLURALS:
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{plural}.mlinfra.io")
    control_plane.kubectl("create", "namespace", NAMESPACE)
    # Established is not the end of it: kubectl must also discover the new resources.
    for plural in PLURALS:
        wait_until(
            f"{plural} to be served",
            lambda p=plural: control_plane.kubectl("get", p, "-n", NAMESPACE, check=False).returncode == 0,
        )
    yield control_plane
    control_plane.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def contains(actual: Any, expected: Any) -> bool:
    """Whether ``actual`` has everything ``expected`` has (the API server may add defaults)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(contains(actual.get(k), v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(map(contains, actual, expected))
    return bool(actual == expected)


def get(cp: ControlPlane, body: dict[str, Any]) -> dict[str, Any]:
    out = cp.kubectl("get", body["kind"].lower(), body["metadata"]["name"], "-n", NAMESPACE, "-o", "yaml")
    loaded: dict[str, Any] = yaml.safe_load(out.stdout)
    return loaded


# --- tests ---------------------------------------------------------------------------------------------------


def test_the_table_is_big_enough() -> None:
    assert len(INVALID) >= 60
    assert {body["kind"] for body, _ in HOSTILE} == {"DataStore", "FeatureView", "ModelRegistry", "VectorIndex"}
    assert {body["kind"] for body, _ in INVALID} == {"DataStore", "FeatureView", "ModelRegistry", "VectorIndex"}
    assert len({body["metadata"]["name"] for body, _ in INVALID}) == len(INVALID)


@pytest.mark.parametrize(
    ("body", "message"), [pytest.param(body, message, id=body["metadata"]["name"]) for body, message in INVALID]
)
def test_invalid_objects_are_rejected(cluster: ControlPlane, body: dict[str, Any], message: str) -> None:
    result = apply(cluster, body)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert message in result.stderr, result.stderr
    gone = cluster.kubectl("get", body["kind"].lower(), body["metadata"]["name"], "-n", NAMESPACE, check=False)
    assert gone.returncode != 0


@pytest.mark.parametrize("body", [pytest.param(body, id=body["metadata"]["name"]) for body in VALID])
def test_valid_objects_are_accepted(cluster: ControlPlane, body: dict[str, Any]) -> None:
    result = apply(cluster, body)
    assert result.returncode == 0, result.stderr
    assert contains(get(cluster, body)["spec"], body["spec"])


def test_schema_defaults_are_applied(cluster: ControlPlane) -> None:
    for body in (DS_MANAGED, DS_NEO4J, MR_MINIMAL):
        assert apply(cluster, body).returncode == 0
    managed = get(cluster, DS_MANAGED)["spec"]
    assert managed["deletionPolicy"] == "Retain"
    assert managed["managed"]["networkPolicy"] is False
    assert get(cluster, DS_NEO4J)["spec"]["managed"]["replicas"] == 1
    registry = get(cluster, MR_MINIMAL)["spec"]
    assert registry["schemaVersion"] == "latest"


def test_kubectl_get_mlinfra_shows_the_columns_and_short_names_work(cluster: ControlPlane) -> None:
    for body in (DS_MANAGED, FV, MR, VI):
        assert apply(cluster, body).returncode == 0
    header = cluster.kubectl("get", "datastores", "-n", NAMESPACE).stdout.splitlines()[0].split()
    assert header == ["NAME", "ENGINE", "MODE", "READY", "REASON", "MAX", "LAG", "AGE"]
    listed = cluster.kubectl("get", "mlinfra", "-n", NAMESPACE, "-o", "name").stdout.split()
    for name in ("datastore.mlinfra.io/cache", "featureview.mlinfra.io/user-activity", "vectorindex.mlinfra.io/docs"):
        assert name in listed
    # `ds` itself means DaemonSets to kubectl (built-in short names win); `dstore` is DataStore's usable one.
    for short, name in (
        ("dstore", "datastore.mlinfra.io/cache"),
        ("fv", "featureview.mlinfra.io/user-activity"),
        ("mr", "modelregistry.mlinfra.io/registry"),
        ("vi", "vectorindex.mlinfra.io/docs"),
    ):
        assert name in cluster.kubectl("get", short, "-n", NAMESPACE, "-o", "name").stdout.split()


@pytest.mark.parametrize(
    ("original", "changed", "message"),
    [pytest.param(original, changed, message, id=name) for name, original, changed, message in UPDATES],
)
def test_updates(cluster: ControlPlane, original: dict[str, Any], changed: dict[str, Any], message: str | None) -> None:
    created = apply(cluster, original)
    assert created.returncode == 0, created.stderr
    result = apply(cluster, changed)
    if message is None:
        assert result.returncode == 0, result.stderr
        assert contains(get(cluster, changed)["spec"], changed["spec"])
    else:
        assert result.returncode != 0, f"accepted: {result.stdout}"
        assert message in result.stderr, result.stderr
