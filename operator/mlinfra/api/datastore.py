"""DataStore: one database instance (Redis, PostgreSQL, Neo4j or Qdrant), run by the operator or external.

The infrastructure layer: the ML kinds reference DataStores by name. Exactly one of ``spec.managed`` (the
operator renders and runs it) and ``spec.external`` (an existing server, adopted) is set; either way the
operator publishes the one connection Secret ``<name>-conn``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import pydantic

from mlinfra.api import base, common

Engine = Literal["redis", "postgres", "neo4j", "qdrant"]
ENGINES: tuple[Engine, ...] = ("redis", "postgres", "neo4j", "qdrant")

# Engine settings a user may set in managed mode. Everything else (replication, listen addresses, auth,
# paths) is the operator's to decide: a user setting would break the topology it builds.
ALLOWED_CONFIG: dict[str, frozenset[str]] = {
    "redis": frozenset(
        {
            "maxmemory",
            "maxmemory-policy",
            "appendonly",
            "appendfsync",
            "save",
            "timeout",
            "tcp-keepalive",
            "hz",
            "io-threads",
            "lazyfree-lazy-eviction",
            "slowlog-log-slower-than",
            "latency-monitor-threshold",
        }
    ),
    "postgres": frozenset(
        {
            "max_connections",
            "shared_buffers",
            "work_mem",
            "maintenance_work_mem",
            "effective_cache_size",
            "max_wal_size",
            "min_wal_size",
            "wal_keep_size",
            "checkpoint_timeout",
            "random_page_cost",
            "statement_timeout",
            "idle_in_transaction_session_timeout",
            "log_min_duration_statement",
        }
    ),
    "neo4j": frozenset(
        {
            "server.memory.heap.initial_size",
            "server.memory.heap.max_size",
            "server.memory.pagecache.size",
            "db.transaction.timeout",
            "db.logs.query.enabled",
            "db.logs.query.threshold",
        }
    ),
    "qdrant": frozenset(
        {
            "log_level",
            "storage.on_disk_payload",
            "storage.performance.max_search_threads",
            "storage.optimizers.default_segment_number",
            "service.max_request_size_mb",
        }
    ),
}

ENDPOINT_RE = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?):[0-9]{1,5}$"
ENDPOINT_MESSAGE = "must be host:port, e.g. redis.example.com:6379, 10.0.0.5:5432 or [::1]:7687"
VERSION_RE = r"^[0-9]{1,4}(\.[0-9]{1,4}){0,2}$"

ConfigValue = Annotated[str, pydantic.Field(max_length=256, description="Setting value.")]


class Storage(base.SpecModel):
    """The PersistentVolumeClaim of each database pod."""

    size: common.Quantity = pydantic.Field(description="Volume size per pod, e.g. 10Gi.")
    storage_class_name: common.ObjectName | None = pydantic.Field(
        default=None, description="StorageClass of the volumes; the cluster default when omitted."
    )


class Managed(base.SpecModel):
    """The operator runs the database: StatefulSet, Services, Secret, ConfigMap, PodDisruptionBudget."""

    version: str | None = pydantic.Field(
        default=None,
        max_length=14,
        pattern=VERSION_RE,
        description="Engine version, e.g. 7.2 or 16; the operator's tested version when omitted "
        "(status.version reports the running one).",
    )
    replicas: int = pydantic.Field(
        default=1,
        ge=1,
        le=15,
        description="Pods: redis 1 primary + replicas, postgres primary + streaming standbys, "
        "qdrant cluster peers; neo4j Community must be 1.",
    )
    storage: Storage | None = pydantic.Field(
        default=None, description="Persistent volumes; the operator's default size when omitted."
    )
    resources: common.ResourceRequirements | None = pydantic.Field(
        default=None, description="CPU and memory requests and limits of the database container."
    )
    image: str | None = pydantic.Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Container image override; the engine's default image for `version` when omitted.",
    )
    config: dict[str, ConfigValue] | None = pydantic.Field(
        default=None,
        max_length=32,
        description="Engine settings from an allow-list per engine (e.g. redis maxmemory, postgres "
        "shared_buffers); settings the operator owns, such as replication, cannot be set.",
    )
    network_policy: bool = pydantic.Field(
        default=False,
        description="Also render a NetworkPolicy admitting only pods of this namespace and the operator.",
    )


class CredentialsSecretRef(base.SpecModel):
    """The Secret holding the user name and password for an external database."""

    name: common.ObjectName = pydantic.Field(description="Name of the Secret in this namespace.")
    username_key: common.SecretKey = pydantic.Field(
        default="username", description="Key of the user name in the Secret."
    )
    password_key: common.SecretKey = pydantic.Field(
        default="password", description="Key of the password in the Secret."
    )


class TLS(base.SpecModel):
    """How the operator and the apps connect to an external database over TLS."""

    enabled: bool = pydantic.Field(default=False, description="Connect with TLS.")
    ca_secret_ref: common.SecretKeyRef | None = pydantic.Field(
        default=None, description="CA certificate (PEM) to verify the server; system roots when omitted."
    )
    server_name: str | None = pydantic.Field(
        default=None, max_length=253, description="Name to verify in the server certificate, if not the host."
    )
    insecure_skip_verify: bool = pydantic.Field(
        default=False, description="Do not verify the server certificate (testing only)."
    )


class External(base.SpecModel):
    """An existing database the operator adopts: it observes it and publishes its connection Secret."""

    endpoint: Annotated[
        str,
        pydantic.Field(min_length=3, max_length=261),
        base.regex_check(ENDPOINT_RE, ENDPOINT_MESSAGE),
        base.Cel(base.matches(ENDPOINT_RE), ENDPOINT_MESSAGE),
    ] = pydantic.Field(description="host:port of the server.")
    database: str | None = pydantic.Field(
        default=None,
        min_length=1,
        max_length=63,
        description="Database name (postgres, neo4j) or number (redis); the engine's default when omitted.",
    )
    credentials_secret_ref: CredentialsSecretRef = pydantic.Field(
        description="Secret with the credentials the operator and the apps use."
    )
    tls: TLS | None = pydantic.Field(default=None, description="TLS settings; plain TCP when omitted.")


def _config_rule(engine: Engine) -> base.Cel:
    # The allow-list as CEL, one rule per engine so each message lists only that engine's settings.
    keys = sorted(ALLOWED_CONFIG[engine])
    return base.Cel(
        rule=f"self.engine != '{engine}' || !has(self.managed) || !has(self.managed.config) || "
        f"self.managed.config.all(k, k in [{', '.join(base.cel_string(key) for key in keys)}])",
        message=f"spec.managed.config allows only these {engine} settings: {', '.join(keys)}",
        field_path=".managed.config",
    )


EXACTLY_ONE_MODE = base.Cel(
    rule="has(self.managed) != has(self.external)",
    message="set exactly one of spec.managed (the operator runs the database) or spec.external (an existing database)",
)
NEO4J_SINGLE = base.Cel(
    rule="self.engine != 'neo4j' || !has(self.managed) || self.managed.replicas == 1",
    message="neo4j Community runs a single instance: set spec.managed.replicas to 1",
    field_path=".managed.replicas",
)
CONFIG_RULES: dict[Engine, base.Cel] = {engine: _config_rule(engine) for engine in ENGINES}


class DataStoreSpec(base.SpecModel):
    """The desired database: its engine, and either how to run it or where the existing one is."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (EXACTLY_ONE_MODE, NEO4J_SINGLE, *CONFIG_RULES.values())

    engine: Annotated[
        Engine,
        base.Cel(
            "self == oldSelf",
            "spec.engine is immutable: create a new DataStore to change engines",
        ),
    ] = pydantic.Field(description="Database engine: redis, postgres, neo4j or qdrant. Immutable.")
    managed: Managed | None = pydantic.Field(
        default=None, description="Run the database in the cluster (exclusive with external)."
    )
    external: External | None = pydantic.Field(
        default=None, description="Adopt an existing database (exclusive with managed)."
    )
    deletion_policy: Literal["Retain", "Delete"] = pydantic.Field(
        default="Retain",
        description="On deletion of a managed store: Retain keeps volumes and the credentials Secret, "
        "Delete removes them.",
    )

    @pydantic.model_validator(mode="after")
    def _check(self) -> DataStoreSpec:
        # Mirrors cel_rules, so the operator refuses what the API server would.
        if (self.managed is None) == (self.external is None):
            raise ValueError(EXACTLY_ONE_MODE.message)
        if self.managed is not None:
            if self.engine == "neo4j" and self.managed.replicas != 1:
                raise ValueError(NEO4J_SINGLE.message)
            unknown = sorted(set(self.managed.config or {}) - ALLOWED_CONFIG[self.engine])
            if unknown:
                raise ValueError(f"{CONFIG_RULES[self.engine].message} (not allowed: {', '.join(unknown)})")
        return self


MemberRole = Literal["primary", "replica", "peer", "standalone", "unknown"]


class Member(base.StatusModel):
    """One database server as observed: its role, health and lag behind the primary."""

    name: str = pydantic.Field(max_length=253, description="Pod name (managed) or endpoint (external).")
    role: MemberRole | None = pydantic.Field(
        default=None, description="primary, replica, peer (qdrant), standalone or unknown."
    )
    ready: bool | None = pydantic.Field(default=None, description="Whether it answers and serves.")
    lag_bytes: int | None = pydantic.Field(
        default=None, ge=0, description="Replication lag in bytes (redis offsets, postgres WAL)."
    )
    lag_seconds: float | None = pydantic.Field(
        default=None, ge=0, description="Replication lag in seconds, as reported by the engine."
    )


class Replication(base.StatusModel):
    """Replication summary across members."""

    ready_replicas: int | None = pydantic.Field(default=None, ge=0, description="Members ready.")
    desired_replicas: int | None = pydantic.Field(default=None, ge=0, description="Members wanted.")
    max_lag_bytes: int | None = pydantic.Field(default=None, ge=0, description="Largest lag in bytes.")
    max_lag_seconds: float | None = pydantic.Field(default=None, ge=0, description="Largest lag in seconds.")


class DataStoreStatus(base.StatusModel):
    """The database as observed by the operator's timers."""

    observed_generation: common.ObservedGeneration = None
    conditions: common.Conditions = pydantic.Field(
        default=None, description=common.conditions_description("Ready, Reconciling, Stalled, Reachable, Replicating")
    )
    mode: Literal["managed", "external"] | None = pydantic.Field(
        default=None, description="managed or external, as resolved from the spec."
    )
    endpoint: str | None = pydantic.Field(default=None, max_length=261, description="host:port clients use.")
    connection_secret: str | None = pydantic.Field(
        default=None,
        max_length=253,
        description="Name of the connection Secret (keys engine, host, port, username, password, database, uri, tls).",
    )
    version: str | None = pydantic.Field(default=None, max_length=64, description="Server version observed.")
    members: list[Member] | None = pydantic.Field(
        default=None, max_length=16, description="Servers observed.", json_schema_extra=base.list_map("name")
    )
    replication: Replication | None = pydantic.Field(default=None, description="Replication summary.")
    capabilities: list[Annotated[str, pydantic.Field(max_length=64)]] | None = pydantic.Field(
        default=None,
        max_length=32,
        description="Extensions and features discovered, e.g. pgvector, redisearch, apoc.",
        json_schema_extra=base.LIST_SET,
    )


class DataStore(base.Resource):
    """A database instance, managed by the operator or external."""

    crd_info: ClassVar[base.CRDInfo] = base.CRDInfo(
        kind="DataStore",
        plural="datastores",
        singular="datastore",
        # `ds` as designed, but kubectl resolves it to DaemonSets (built-in short names win), so `dstore`
        # is the one that works with kubectl.
        short_names=("ds", "dstore"),
        description="DataStore is one database instance (redis, postgres, neo4j or qdrant), run by the "
        "operator (spec.managed) or adopted (spec.external).",
        printer_columns=(
            base.PrinterColumn("Engine", "string", ".spec.engine", "Database engine."),
            base.PrinterColumn("Mode", "string", ".status.mode", "managed or external."),
            base.READY_COLUMN,
            base.REASON_COLUMN,
            base.PrinterColumn(
                "Replicas", "integer", ".status.replication.readyReplicas", "Members ready.", priority=1
            ),
            base.PrinterColumn(
                "Max Lag", "number", ".status.replication.maxLagSeconds", "Largest replication lag (s)."
            ),
            base.PrinterColumn(
                "Lag Bytes", "integer", ".status.replication.maxLagBytes", "Largest lag (bytes).", priority=1
            ),
            base.AGE_COLUMN,
        ),
    )

    kind: Literal["DataStore"] = pydantic.Field(default="DataStore", description="DataStore.")
    spec: DataStoreSpec = pydantic.Field(description="Desired state.")
    status: DataStoreStatus | None = pydantic.Field(default=None, description="Observed state.")
