"""FeatureView: a set of features keyed by entities, stored offline (PostgreSQL) and online (Redis).

The operator owns the offline table and the online key layout, and runs materialization (offline ->
online) on a schedule. Entities are join keys: the table and every online key are built from them, so the
list is immutable.
"""

from __future__ import annotations

import collections
from typing import Annotated, ClassVar, Literal

import pydantic

from mlinfra.api import base, common

# Columns the operator adds to every offline table (and the online hash field for event time).
RESERVED_COLUMNS: tuple[str, ...] = ("event_timestamp", "created_at", "_event_ts")
_RESERVED_MESSAGE = f"{', '.join(RESERVED_COLUMNS)} are reserved for the operator's own columns: choose another name"


def _not_reserved(name: str) -> str:
    if name in RESERVED_COLUMNS:
        raise ValueError(_RESERVED_MESSAGE)
    return name


ColumnName = Annotated[
    common.SqlIdentifier,
    pydantic.AfterValidator(_not_reserved),
    base.Cel(f"!(self in [{', '.join(base.cel_string(name) for name in RESERVED_COLUMNS)}])", _RESERVED_MESSAGE),
]

EntityType = Literal["string", "int32", "int64"]
FeatureType = Literal["string", "int32", "int64", "float32", "float64", "bool", "timestamp", "bytes", "float32_list"]


class Entity(base.SpecModel):
    """A join key: one column of the offline table, one part of every online key."""

    name: ColumnName = pydantic.Field(description="Column name of the join key.")
    type: EntityType = pydantic.Field(description="Value type: string, int32 or int64.")


class Feature(base.SpecModel):
    """One feature: a column offline, a field of the entity's hash online."""

    name: ColumnName = pydantic.Field(description="Column and field name of the feature.")
    type: FeatureType = pydantic.Field(
        description="Value type: string, int32, int64, float32, float64, bool, timestamp, bytes or float32_list "
        "(an embedding; real[] offline). "
        "Changing it is refused (Stalled, reason ImmutableFieldChange)."
    )
    description: str | None = pydantic.Field(
        default=None, max_length=1024, description="What the feature means (becomes the column comment)."
    )


# Schemas a FeatureView's table may not go into: PostgreSQL's own (CREATE SCHEMA refuses pg_*), and the
# operator's (its bookkeeping tables, the model registry's tables), whose tables a view would alter.
RESERVED_SCHEMAS: tuple[str, ...] = ("mlinfra", "registry", "information_schema")
_RESERVED_SCHEMA_MESSAGE = (
    "spec.offline.schema: pg_* and information_schema are PostgreSQL's, mlinfra and registry are the operator's "
    "own schemas: choose another schema"
)


def _schema_not_reserved(name: str) -> str:
    if name.startswith("pg_") or name in RESERVED_SCHEMAS:
        raise ValueError(_RESERVED_SCHEMA_MESSAGE)
    return name


OfflineSchema = Annotated[
    common.SqlIdentifier,
    pydantic.AfterValidator(_schema_not_reserved),
    base.Cel(
        f"!self.startsWith('pg_') && !(self in [{', '.join(base.cel_string(name) for name in RESERVED_SCHEMAS)}])",
        _RESERVED_SCHEMA_MESSAGE,
    ),
]


class Offline(base.SpecModel):
    """Where the history of feature values lives (PostgreSQL)."""

    store_ref: common.ObjectRef = pydantic.Field(description="A postgres DataStore in this namespace.")
    schema_name: OfflineSchema | None = pydantic.Field(
        default=None, alias="schema", description="Database schema of the table; public when omitted."
    )
    table: common.SqlIdentifier | None = pydantic.Field(
        default=None,
        description="Table name; the view name with dashes as underscores when omitted "
        "(status.offlineTable reports it).",
    )


class Online(base.SpecModel):
    """Where the latest feature values are served from (Redis)."""

    store_ref: common.ObjectRef = pydantic.Field(description="A redis DataStore in this namespace.")
    ttl: common.PositiveDuration | None = pydantic.Field(
        default=None, description="Entity hashes expire this long after their last write; never when omitted."
    )


class Materialization(base.SpecModel):
    """The CronJob copying the latest values per entity from offline to online."""

    schedule: common.CronSchedule = pydantic.Field(description="When to run, e.g. '*/5 * * * *'.")
    batch_size: int = pydantic.Field(default=1000, ge=1, le=100000, description="Rows per write batch.")
    suspend: bool = pydantic.Field(default=False, description="Pause scheduled runs.")


class Freshness(base.SpecModel):
    """The freshness objective reported by the FreshnessSLOMet condition."""

    max_lag: common.PositiveDuration = pydantic.Field(
        description="Largest acceptable lag of the online store behind the offline source, e.g. 15m."
    )


UNIQUE_ENTITIES = base.Cel(
    "self.entities.all(e, self.entities.exists_one(o, o.name == e.name))",
    "spec.entities: each entity name must appear once",
    field_path=".entities",
)
FEATURE_NOT_ENTITY = base.Cel(
    "self.features.all(f, !self.entities.exists(e, e.name == f.name))",
    "spec.features: a feature cannot have the name of an entity (join key): rename the feature",
    field_path=".features",
)


class FeatureViewSpec(base.SpecModel):
    """The features, their join keys, their stores and how fresh they must be kept."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (UNIQUE_ENTITIES, FEATURE_NOT_ENTITY)

    entities: Annotated[
        list[Entity],
        base.Cel(
            "self == oldSelf",
            "spec.entities is immutable (the join keys shape the table and every online key): "
            "create a new FeatureView to change them",
        ),
    ] = pydantic.Field(
        min_length=1,
        max_length=8,
        description="Join keys, in key order. Immutable.",
        # atomic, not map: order is part of the key, and a transition rule must see it.
        json_schema_extra=base.LIST_ATOMIC,
    )
    features: list[Feature] = pydantic.Field(
        min_length=1,
        max_length=256,
        description="Features. Adding one adds a column; removing one keeps its column.",
        json_schema_extra=base.list_map("name"),
    )
    offline: Offline = pydantic.Field(description="Offline (historical) store.")
    online: Online = pydantic.Field(description="Online (serving) store.")
    materialization: Materialization | None = pydantic.Field(
        default=None,
        description="Scheduled offline -> online runs; only on-demand runs (annotation "
        "mlinfra.io/sync-requested-at) when omitted.",
    )
    freshness: Freshness | None = pydantic.Field(default=None, description="Freshness objective.")

    @pydantic.model_validator(mode="after")
    def _check(self) -> FeatureViewSpec:
        # Mirrors cel_rules and the list-map uniqueness the API server enforces on features.
        entity_names = [entity.name for entity in self.entities]
        if len(set(entity_names)) != len(entity_names):
            raise ValueError(UNIQUE_ENTITIES.message)
        feature_names = collections.Counter(feature.name for feature in self.features)
        duplicates = sorted(name for name, count in feature_names.items() if count > 1)
        if duplicates:
            raise ValueError(f"spec.features: duplicate names {', '.join(duplicates)}")
        if set(entity_names) & set(feature_names):
            raise ValueError(FEATURE_NOT_ENTITY.message)
        return self


class FreshnessStatus(base.StatusModel):
    """How far the online store is behind the offline source."""

    source_watermark: pydantic.AwareDatetime | None = pydantic.Field(
        default=None, description="Newest event time in the offline table."
    )
    online_watermark: pydantic.AwareDatetime | None = pydantic.Field(
        default=None, description="Newest event time materialized online."
    )
    lag_seconds: float | None = pydantic.Field(
        default=None, ge=0, description="sourceWatermark - onlineWatermark, in seconds."
    )


class FeatureViewStatus(base.StatusModel):
    """What the operator built and how fresh it is."""

    observed_generation: common.ObservedGeneration = None
    conditions: common.Conditions = pydantic.Field(
        default=None,
        description=common.conditions_description(
            "Ready, Reconciling, Stalled, SchemaApplied, Materialized, FreshnessSLOMet"
        ),
    )
    offline_table: str | None = pydantic.Field(
        default=None, max_length=128, description="schema.table of the offline table."
    )
    online_key_pattern: str | None = pydantic.Field(
        default=None, max_length=512, description="Pattern of the online hash keys, fv:{namespace}:{view}:{key}."
    )
    last_materialization: common.SyncRun | None = pydantic.Field(
        default=None, description="The latest materialization run."
    )
    freshness: FreshnessStatus | None = pydantic.Field(default=None, description="Observed freshness.")


class FeatureView(base.Resource):
    """Features keyed by entities, offline in PostgreSQL and online in Redis."""

    name_rules: ClassVar[tuple[base.NameRule, ...]] = (base.label_value_name_rule("FeatureView"),)

    crd_info: ClassVar[base.CRDInfo] = base.CRDInfo(
        kind="FeatureView",
        plural="featureviews",
        singular="featureview",
        short_names=("fv",),
        description="FeatureView is a set of features keyed by entities: the operator owns its offline table "
        "(postgres) and online layout (redis) and keeps them in sync.",
        printer_columns=(
            base.READY_COLUMN,
            base.REASON_COLUMN,
            base.PrinterColumn(
                "Lag", "number", ".status.freshness.lagSeconds", "Online freshness lag behind offline (s)."
            ),
            base.PrinterColumn(
                "Last Run", "date", ".status.lastMaterialization.endTime", "End of the latest run.", priority=1
            ),
            base.AGE_COLUMN,
        ),
    )

    kind: Literal["FeatureView"] = pydantic.Field(default="FeatureView", description="FeatureView.")
    spec: FeatureViewSpec = pydantic.Field(description="Desired state.")
    status: FeatureViewStatus | None = pydantic.Field(default=None, description="Observed state.")
