"""DataStore: one database instance (Redis, PostgreSQL, Neo4j or Qdrant), run by the operator or external.

The infrastructure layer: the ML kinds reference DataStores by name. Exactly one of ``spec.managed`` (the
operator renders and runs it) and ``spec.external`` (an existing server, adopted) is set; either way the
operator publishes the one connection Secret ``<name>-conn``.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

import pydantic

from mlinfra.api import base, common, config_limits
from mlinfra.api.backup import BackupPolicy, Bootstrap, RestoredFrom

Engine = Literal["redis", "postgres", "neo4j", "qdrant"]
ENGINES: tuple[Engine, ...] = ("redis", "postgres", "neo4j", "qdrant")

# The version each engine runs when spec.managed.version is omitted, and the volume size when
# spec.managed.storage is: the renderer's defaults (engines/render.py; a unit test keeps them equal), here
# because the update rules below compare versions and sizes with them.
DEFAULT_VERSIONS: dict[Engine, str] = {"redis": "7.2", "postgres": "15", "neo4j": "5.26", "qdrant": "1.13.6"}
DEFAULT_STORAGE_SIZE = "10Gi"

# Engine settings a user may set in managed mode, each with the shape of value the engine accepts (a value
# it refuses would stop the pods from starting, and only a spec change could fix that). Everything else
# (replication, listen addresses, auth, paths) is the operator's to decide: a user setting would break the
# topology it builds. Key -> (regex, what a valid value looks like).
_YES_NO = (r"^(yes|no)$", "yes or no")
_REDIS_BYTES = (
    r"^[0-9]{1,15}([kKmMgG][bB]?|[bB])?$",
    "a number of bytes with an optional unit b, k, kb, m, mb, g or gb, e.g. 256mb",
)
_WHOLE = (r"^[0-9]{1,9}$", "a whole number, e.g. 300")
_PG_MEMORY = (
    r"^[0-9]{1,12}(\.[0-9]{1,6})? ?(B|kB|MB|GB|TB)?$",
    "a number with an optional unit B, kB, MB, GB or TB (PostgreSQL units are case-sensitive), e.g. 256MB",
)
_PG_TIME = (
    r"^[0-9]{1,12} ?(us|ms|s|min|h|d)?$",
    "a whole number with an optional unit us, ms, s, min, h or d (minutes are min), e.g. 30s",
)
_NEO4J_BYTES = (
    # Neo4j's own list of byte multipliers.
    r"^[0-9]{1,12}(B|KiB|KB|K|kB|kb|k|MiB|MB|M|mB|mb|m|GiB|GB|G|gB|gb|g|TiB|TB|T|tB|tb|t)?$",
    "a number of bytes with an optional unit such as k, m, g, t, KiB, MiB, GiB or MB, e.g. 512m or 1g",
)
_NEO4J_DURATION = (
    r"^[0-9]{1,12}(ms|s|m|h|d)?$",
    "a whole number with an optional unit ms, s, m, h or d (seconds when omitted), e.g. 30s",
)

CONFIG_VALUES: dict[Engine, dict[str, tuple[str, str]]] = {
    "redis": {
        "maxmemory": _REDIS_BYTES,
        "maxmemory-policy": (
            r"^(noeviction|allkeys-lru|allkeys-lfu|allkeys-random|volatile-lru|volatile-lfu|volatile-random"
            r"|volatile-ttl)$",
            "one of noeviction, allkeys-lru, allkeys-lfu, allkeys-random, volatile-lru, volatile-lfu, "
            "volatile-random, volatile-ttl",
        ),
        "appendonly": _YES_NO,
        "appendfsync": (r"^(always|everysec|no)$", "always, everysec or no"),
        "save": (
            r"^([1-9][0-9]{0,9} [0-9]{1,10}( [1-9][0-9]{0,9} [0-9]{1,10})*)?$",
            "pairs of <seconds> <changes> separated by single spaces, e.g. '3600 1 300 100', or '' for no snapshots",
        ),
        "timeout": _WHOLE,
        "tcp-keepalive": _WHOLE,
        "hz": _WHOLE,  # Redis keeps it within 1-500 itself
        "io-threads": (r"^([1-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$", "a whole number from 1 to 128"),
        "lazyfree-lazy-eviction": _YES_NO,
        "slowlog-log-slower-than": (r"^-?[0-9]{1,12}$", "microseconds as a whole number (negative turns it off)"),
        "latency-monitor-threshold": (r"^[0-9]{1,12}$", "milliseconds as a whole number (0 turns it off)"),
    },
    "postgres": {
        # At least 4: PostgreSQL keeps 3 for superusers (superuser_reserved_connections). At most 262000: with
        # the WAL senders, autovacuum and background workers it must stay under 262143 (MAX_BACKENDS).
        "max_connections": (
            r"^([4-9]|[1-9][0-9]{1,4}|1[0-9]{5}|2[0-5][0-9]{4}|26[01][0-9]{3}|262000)$",
            "a whole number from 4 to 262000",
        ),
        "shared_buffers": _PG_MEMORY,
        "work_mem": _PG_MEMORY,
        "maintenance_work_mem": _PG_MEMORY,
        "effective_cache_size": _PG_MEMORY,
        "max_wal_size": _PG_MEMORY,
        "min_wal_size": _PG_MEMORY,
        "wal_keep_size": _PG_MEMORY,
        "checkpoint_timeout": _PG_TIME,
        "random_page_cost": (r"^[0-9]{1,6}(\.[0-9]{1,6})?$", "a number, e.g. 1.1"),
        "statement_timeout": _PG_TIME,
        "idle_in_transaction_session_timeout": _PG_TIME,
        "log_min_duration_statement": (
            r"^(-1|[0-9]{1,12} ?(us|ms|s|min|h|d)?)$",
            "-1 (off) or a whole number with an optional unit us, ms, s, min, h or d, e.g. 250ms",
        ),
    },
    "neo4j": {
        "server.memory.heap.initial_size": _NEO4J_BYTES,
        "server.memory.heap.max_size": _NEO4J_BYTES,
        "server.memory.pagecache.size": _NEO4J_BYTES,
        "db.transaction.timeout": _NEO4J_DURATION,
        "db.logs.query.enabled": (r"^(?i:off|info|verbose)$", "OFF, INFO or VERBOSE"),
        "db.logs.query.threshold": _NEO4J_DURATION,
    },
    "qdrant": {
        "log_level": (r"^(?i:trace|debug|info|warn|error)$", "TRACE, DEBUG, INFO, WARN or ERROR"),
        "storage.on_disk_payload": (r"^(?i:true|false)$", "true or false"),
        "storage.performance.max_search_threads": (r"^[0-9]{1,4}$", "a whole number (0: as many as CPUs)"),
        "storage.optimizers.default_segment_number": (r"^[0-9]{1,3}$", "a whole number (0: Qdrant chooses)"),
        "service.max_request_size_mb": (r"^[1-9][0-9]{0,5}$", "a whole number of megabytes, at least 1"),
    },
}
ALLOWED_CONFIG: dict[Engine, frozenset[str]] = {engine: frozenset(keys) for engine, keys in CONFIG_VALUES.items()}

# host:port with a port from 1 to 65535 (the clients refuse anything else).
_PORT_RE = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
ENDPOINT_RE = rf"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]{{0,251}}[A-Za-z0-9])?):{_PORT_RE}$"
ENDPOINT_MESSAGE = (
    "must be host:port with a port from 1 to 65535, e.g. redis.example.com:6379, 10.0.0.5:5432 or [::1]:7687"
)
VERSION_RE = r"^[0-9]{1,4}(\.[0-9]{1,4}){0,2}$"
# An image reference: no spaces or control characters (the Pod API refuses them), e.g. redis:7.2 or
# registry.example.com/db/postgres@sha256:...
IMAGE_RE = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"
IMAGE_MESSAGE = (
    "spec.managed.image must be an image reference such as redis:7.2 or registry.example.com/postgres:16 (no spaces)"
)
HOSTNAME_RE = r"^[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?$"
SERVER_NAME_MESSAGE = "spec.external.tls.serverName must be a host name, e.g. db.example.com"
REDIS_DATABASE_RE = r"^[0-9]{1,5}$"

ConfigValue = Annotated[str, pydantic.Field(max_length=256, description="Setting value.")]


class Storage(base.SpecModel):
    """The PersistentVolumeClaim of each database pod."""

    size: common.StorageSize = pydantic.Field(description="Volume size per pod, e.g. 10Gi. Fixed once created.")
    storage_class_name: common.ObjectName | None = pydantic.Field(
        default=None,
        description="StorageClass of the volumes; the cluster default when omitted. Fixed once created.",
    )


def _storage_part(side: str, part: str, default: str) -> str:
    # CEL: spec.managed.storage.<part> of `self` or `oldSelf`, or the value it stands for when omitted.
    return f"(has({side}.storage) && has({side}.storage.{part}) ? {side}.storage.{part} : {default!r})"


# Compared as written: parsing both sizes as quantities (so that 10Gi equals 10240Mi) costs more than the API
# server's CEL budget allows on an int-or-string. Spelling the same size differently is refused too.
STORAGE_FIXED = base.Cel(
    f"{_storage_part('self', 'size', DEFAULT_STORAGE_SIZE)} == {_storage_part('oldSelf', 'size', DEFAULT_STORAGE_SIZE)}"
    f" && {_storage_part('self', 'storageClassName', '')} == {_storage_part('oldSelf', 'storageClassName', '')}",
    "spec.managed.storage cannot change on an existing DataStore (omitted means 10Gi of the default class): "
    "the StatefulSet's volume claim templates are immutable and the operator does not resize volumes; put "
    "back the previous size and storageClassName as they were written, or create a new DataStore and move "
    "the data",
    field_path=".storage",
)

# Set at creation or never: a store's data comes from the backup once, before its pods first start (a restore
# never overwrites a running store). Compared whole, as written.
BOOTSTRAP_FIXED = base.Cel(
    "has(self.bootstrap) == has(oldSelf.bootstrap) && (!has(self.bootstrap) || self.bootstrap == oldSelf.bootstrap)",
    "spec.managed.bootstrap is set when a DataStore is created and cannot be added, changed or removed later: a "
    "restore never overwrites an existing store; to restore again, create a new DataStore with "
    "spec.managed.bootstrap",
    field_path=".bootstrap",
)


DEFAULT_FAILOVER_DELAY = 5  # seconds


class Managed(base.SpecModel):
    """The operator runs the database: StatefulSet, Services, Secret, ConfigMap, PodDisruptionBudget."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (STORAGE_FIXED, BOOTSTRAP_FIXED)

    version: str | None = pydantic.Field(
        default=None,
        max_length=14,
        pattern=VERSION_RE,
        description="Engine version, e.g. 7.2 or 16; the operator's tested version when omitted "
        "(status.version reports the running one). Minor upgrades only: the major version is fixed once created.",
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
    image: (
        Annotated[
            str,
            base.regex_check(IMAGE_RE, IMAGE_MESSAGE),
            base.Cel(base.matches(IMAGE_RE), IMAGE_MESSAGE),
        ]
        | None
    ) = pydantic.Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Container image override; the engine's default image for `version` when omitted.",
    )
    config: dict[str, ConfigValue] | None = pydantic.Field(
        default=None,
        max_length=32,
        description="Engine settings from an allow-list per engine (e.g. redis maxmemory, postgres "
        "shared_buffers), each within the engine's own range; settings the operator owns, such as replication, "
        "cannot be set.",
    )
    network_policy: bool = pydantic.Field(
        default=False,
        description="Also render a NetworkPolicy admitting only pods of this namespace and the operator.",
    )
    bootstrap: Bootstrap | None = pydantic.Field(
        default=None,
        description="Start from a Backup's data (redis, postgres; docs/backup.md). Only when the store is created; "
        "status.restoredFrom says where the data came from. An empty store when omitted.",
    )
    # No schema default: a default the API server fills in would change every existing store's spec (and Kopf's
    # record of it) when the CRD is upgraded.
    failover_delay: int | None = pydantic.Field(
        default=None,
        ge=0,
        le=3600,
        description="redis with replicas: seconds the primary may go unanswered before the operator fences it "
        f"and promotes the most advanced replica; {DEFAULT_FAILOVER_DELAY} when omitted "
        "(docs/high-availability.md).",
    )

    synchronous_replicas: int | None = pydantic.Field(
        default=None,
        ge=0,
        le=14,
        description="postgres with standbys: how many streaming standbys must have each commit before it returns "
        "(synchronous_standby_names ANY n, kept by the operator), so a failover loses no acknowledged commit. "
        "While fewer stream, the operator asks for those that do, so writes never stop for a missing standby "
        "(with none, commits are asynchronous again). 0 (asynchronous) when omitted (docs/high-availability.md).",
    )

    @property
    def failover_delay_seconds(self) -> float:
        return float(DEFAULT_FAILOVER_DELAY if self.failover_delay is None else self.failover_delay)


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

    enabled: bool = pydantic.Field(
        default=False,
        description="Connect with TLS; the server's certificate chain and host name are verified unless "
        "insecureSkipVerify.",
    )
    ca_secret_ref: common.SecretKeyRef | None = pydantic.Field(
        default=None, description="CA certificate (PEM) to verify the server; system roots when omitted."
    )
    server_name: (
        Annotated[
            str,
            base.regex_check(HOSTNAME_RE, SERVER_NAME_MESSAGE),
            base.Cel(base.matches(HOSTNAME_RE), SERVER_NAME_MESSAGE),
        ]
        | None
    ) = pydantic.Field(
        default=None,
        max_length=253,
        description="Name to verify in the server certificate, if not the host (postgres, neo4j, qdrant; "
        "redis clients cannot verify another name).",
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


def _config_value_rule(engine: Engine, key: str) -> base.Cel:
    regex = CONFIG_VALUES[engine][key][0]
    setting = f"self.managed.config[{base.cel_string(key)}]"
    return base.Cel(
        rule=f"self.engine != '{engine}' || !has(self.managed) || !has(self.managed.config) || "
        f"!({base.cel_string(key)} in self.managed.config) || {setting}.matches({base.cel_string(regex)})",
        message=config_value_message(engine, key),
        field_path=".managed.config",
    )


def config_value_message(engine: Engine, key: str) -> str:
    return f"spec.managed.config[{key}] of a {engine} DataStore must be {CONFIG_VALUES[engine][key][1]}"


CONFIG_VALUE_RULES: tuple[base.Cel, ...] = tuple(
    _config_value_rule(engine, key) for engine in ENGINES for key in sorted(CONFIG_VALUES[engine])
)
# redis-py verifies the certificate against the host it connects to and has no setting for another name.
REDIS_SERVER_NAME = base.Cel(
    rule="self.engine != 'redis' || !has(self.external) || !has(self.external.tls) || "
    "!has(self.external.tls.serverName)",
    message="spec.external.tls.serverName is not supported for redis (its clients verify the endpoint's host "
    "name): use an endpoint whose host the certificate names",
    field_path=".external.tls.serverName",
)
REDIS_DATABASE = base.Cel(
    rule="self.engine != 'redis' || !has(self.external) || !has(self.external.database) || "
    f"self.external.database.matches({base.cel_string(REDIS_DATABASE_RE)})",
    message="spec.external.database of a redis DataStore must be a database number, e.g. 0",
    field_path=".external.database",
)

SYNCHRONOUS_POSTGRES = base.Cel(
    rule="!has(self.managed) || !has(self.managed.synchronousReplicas) || self.managed.synchronousReplicas == 0 || "
    "(self.engine == 'postgres' && self.managed.synchronousReplicas < self.managed.replicas)",
    message="spec.managed.synchronousReplicas is for postgres stores, and must be less than spec.managed.replicas "
    "(the standbys there are)",
    field_path=".managed.synchronousReplicas",
)

BOOTSTRAP_ENGINES = base.Cel(
    rule="!has(self.managed) || !has(self.managed.bootstrap) || self.engine in ['redis', 'postgres']",
    message="spec.managed.bootstrap is for redis and postgres stores: load a neo4j or qdrant backup into a running "
    "store with `mlinfra restore NAMESPACE/BACKUP --to DATASTORE`",
    field_path=".managed.bootstrap",
)
TARGET_TIME_POSTGRES = base.Cel(
    rule="!has(self.managed) || !has(self.managed.bootstrap) || !has(self.managed.bootstrap.targetTime) || "
    "self.engine == 'postgres'",
    message="spec.managed.bootstrap.targetTime is for postgres stores (point-in-time recovery through the WAL "
    "archive): a redis store starts from the backup as it was taken; omit targetTime",
    field_path=".managed.bootstrap.targetTime",
)

# Changes an existing store cannot take (rules on oldSelf: checked on updates only).
MODE_FIXED = base.Cel(
    rule="has(self.managed) == has(oldSelf.managed)",
    message="spec.managed and spec.external cannot be switched on an existing DataStore (the data would not "
    "follow): create a new DataStore instead",
)


def _major(side: str) -> str:
    defaults = ", ".join(f"'{engine}': '{version}'" for engine, version in DEFAULT_VERSIONS.items())
    return f"(has({side}.managed.version) ? {side}.managed.version : {{{defaults}}}[{side}.engine]).split('.')[0]"


MAJOR_VERSION_FIXED = base.Cel(
    rule=f"!has(self.managed) || !has(oldSelf.managed) || {_major('self')} == {_major('oldSelf')}",
    message="spec.managed.version cannot change its major version on an existing DataStore (an omitted version "
    "means the operator's default, see status.version): the data on the volumes is in the old major's "
    "format; keep the major version (minor upgrades are fine), or create a new DataStore and migrate the data",
    field_path=".managed.version",
)


class DataStoreSpec(base.SpecModel):
    """The desired database: its engine, and either how to run it or where the existing one is."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (
        EXACTLY_ONE_MODE,
        NEO4J_SINGLE,
        *CONFIG_RULES.values(),
        *CONFIG_VALUE_RULES,
        REDIS_DATABASE,
        REDIS_SERVER_NAME,
        BOOTSTRAP_ENGINES,
        SYNCHRONOUS_POSTGRES,
        TARGET_TIME_POSTGRES,
        MODE_FIXED,
        MAJOR_VERSION_FIXED,
    )

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
    backup: BackupPolicy | None = pydantic.Field(
        default=None,
        description="Where this store's backups go, when they are taken and how long they are kept (Backup "
        "objects name the store; docs/backup.md). No backups when omitted.",
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
            for key, value in sorted((self.managed.config or {}).items()):
                if not re.search(CONFIG_VALUES[self.engine][key][0], value):
                    raise ValueError(f"{config_value_message(self.engine, key)}, not {value!r}")
            # In the engine's range too (units: more than CEL can say; the operator reports InvalidSpec).
            out_of_range = config_limits.refusals(self.engine, self.managed.config or {})
            if out_of_range:
                raise ValueError("; ".join(out_of_range))
            synchronous = self.managed.synchronous_replicas or 0
            if synchronous and (self.engine != "postgres" or synchronous >= self.managed.replicas):
                raise ValueError(SYNCHRONOUS_POSTGRES.message)
            bootstrap = self.managed.bootstrap
            if bootstrap is not None and self.engine not in ("redis", "postgres"):
                raise ValueError(BOOTSTRAP_ENGINES.message)
            if bootstrap is not None and bootstrap.target_time is not None and self.engine != "postgres":
                raise ValueError(TARGET_TIME_POSTGRES.message)
        database = self.external.database if self.external is not None else None
        if self.engine == "redis" and database is not None and not re.search(REDIS_DATABASE_RE, database):
            raise ValueError(REDIS_DATABASE.message)
        tls = self.external.tls if self.external is not None else None
        if self.engine == "redis" and tls is not None and tls.server_name is not None:
            raise ValueError(REDIS_SERVER_NAME.message)
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


class BackupSummary(base.StatusModel):
    """The store's backups as the operator last saw them (spec.backup): the newest complete one and the schedule."""

    last_successful_backup: str | None = pydantic.Field(
        default=None, max_length=253, description="Name of the newest complete Backup of this store."
    )
    last_successful_time: str | None = pydantic.Field(
        default=None, max_length=64, description="When that Backup was complete."
    )
    last_scheduled_time: str | None = pydantic.Field(
        default=None, max_length=64, description="The schedule's slot of the newest Backup the schedule created."
    )
    next_scheduled_time: str | None = pydantic.Field(
        default=None, max_length=64, description="The schedule's next slot (none when suspended or unscheduled)."
    )
    backups_kept: int | None = pydantic.Field(
        default=None, ge=0, description="Complete Backups of this store (scheduled and on-demand)."
    )
    first_recoverability_point: str | None = pydantic.Field(
        default=None,
        max_length=64,
        description="postgres: the earliest time a restore can reach (the end of the oldest base backup).",
    )
    last_recoverability_point: str | None = pydantic.Field(
        default=None,
        max_length=64,
        description="postgres: the latest time a restore can reach (the newest mark in the WAL archive that "
        "follows a base backup without a gap).",
    )
    wal_gaps: int | None = pydantic.Field(
        default=None, ge=0, description="postgres: missing stretches in the WAL archive (a restore cannot cross one)."
    )
    recoverability_error: str | None = pydantic.Field(
        default=None, max_length=1024, description="Why the target could not be read for the points above."
    )


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
    backup: BackupSummary | None = pydantic.Field(
        default=None, description="Backups: the newest complete one and the schedule (with spec.backup)."
    )
    restored_from: RestoredFrom | None = pydantic.Field(
        default=None,
        description="spec.managed.bootstrap: the Backup the store's data came from, fixed before its pods first "
        "started.",
    )
    current_primary: str | None = pydantic.Field(
        default=None,
        max_length=253,
        description="redis and postgres (managed): the pod that is the primary (during a failover, the one being "
        "fenced).",
    )
    target_primary: str | None = pydantic.Field(
        default=None, max_length=253, description="During a failover: the pod that becomes the primary."
    )
    primary_epoch: int | None = pydantic.Field(
        default=None, ge=0, description="Primaries named so far (each failover or switchover adds one)."
    )
    last_failover_time: str | None = pydantic.Field(
        default=None, max_length=64, description="When the primary last changed (failover or switchover)."
    )


# A managed store's name is its StatefulSet's and its Services' name: a Service name is a DNS-1035 label, and
# the StatefulSet controller labels the pods with controller-revision-hash `<name>-<hash of up to 10
# characters>`, a label value (63 at most). Its other children add shorter suffixes (-hl, -config, -<ordinal>;
# tests/unit/api/test_api_names.py checks every derived name against its limit).
MAX_MANAGED_NAME = base.MAX_LABEL_VALUE - len("-") - 10


def _is_managed(resource: base.Resource) -> bool:
    return isinstance(resource, DataStore) and resource.spec.managed is not None


MANAGED_NAME_LENGTH = base.NameRule(
    f"the name of a managed DataStore must be at most {MAX_MANAGED_NAME} characters: its StatefulSet labels "
    "its pods with <name>-<revision hash>, which Kubernetes limits to 63",
    max_length=MAX_MANAGED_NAME,
    when="has(self.spec.managed)",
    applies=_is_managed,
)
MANAGED_NAME_DNS = base.NameRule(
    "the name of a managed DataStore must start with a lower-case letter and contain only lower-case letters, "
    "digits and '-' (no dots): it names the store's Services",
    regex=base.DNS_LABEL_RE,
    when="has(self.spec.managed)",
    applies=_is_managed,
)


class DataStore(base.Resource):
    """A database instance, managed by the operator or external."""

    name_rules: ClassVar[tuple[base.NameRule, ...]] = (
        base.label_value_name_rule("DataStore"),
        MANAGED_NAME_LENGTH,
        MANAGED_NAME_DNS,
    )

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
            base.PrinterColumn(
                "Restored From",
                "string",
                ".status.restoredFrom.backup",
                "The Backup the store started from (spec.managed.bootstrap).",
                priority=1,
            ),
            base.AGE_COLUMN,
        ),
    )

    kind: Literal["DataStore"] = pydantic.Field(default="DataStore", description="DataStore.")
    spec: DataStoreSpec = pydantic.Field(description="Desired state.")
    status: DataStoreStatus | None = pydantic.Field(default=None, description="Observed state.")
