"""ModelRegistry: a model registry schema in PostgreSQL, with an optional lineage graph in Neo4j.

The operator applies forward-only migrations up to ``schemaVersion``, creates reader and writer roles, and
(with a lineage store) drains the registry's outbox into Neo4j on ``lineageSync.interval``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import pydantic

from mlinfra.api import base, common

SCHEMA_VERSION_MESSAGE = "spec.schemaVersion must be 'latest' or a migration number such as 3"


def _check_schema_version(value: int | str) -> int | str:
    if value != "latest" and not (isinstance(value, int) and value >= 1):
        raise ValueError(SCHEMA_VERSION_MESSAGE)
    return value


# A pin (migration number) or "latest": an int-or-string, checked by CEL since a structural schema cannot
# put per-type constraints inside the anyOf.
SchemaVersion = Annotated[
    int | Literal["latest"],
    pydantic.AfterValidator(_check_schema_version),
    pydantic.WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": 16,
            "x-kubernetes-validations": [
                {"rule": "type(self) == int ? self >= 1 : self == 'latest'", "message": SCHEMA_VERSION_MESSAGE}
            ],
        }
    ),
]


class LineageSync(base.SpecModel):
    """How the outbox of change events is drained into the lineage graph."""

    interval: common.PositiveDuration = pydantic.Field(default="30s", description="Time between sync passes.")
    batch_size: int = pydantic.Field(default=500, ge=1, le=10000, description="Events per transaction.")
    schedule: common.CronSchedule | None = pydantic.Field(
        default=None,
        description="Run the sync as a CronJob on this schedule (`mlinfra sync modelregistry`) instead of "
        "inside the operator every interval; for registries whose outbox is too busy for the operator.",
    )
    max_lag: common.PositiveDuration = pydantic.Field(
        default="5m",
        description="LineageInSync turns False when the oldest pending outbox event is older than this.",
    )


LINEAGE_SYNC_NEEDS_STORE = base.Cel(
    "!has(self.lineageSync) || has(self.lineageStoreRef)",
    "spec.lineageSync needs spec.lineageStoreRef (the neo4j DataStore to sync lineage into)",
    field_path=".lineageSync",
)
DISTINCT_STORES = base.Cel(
    "!has(self.lineageStoreRef) || self.lineageStoreRef.name != self.metadataStoreRef.name",
    "spec.lineageStoreRef must name a neo4j DataStore, not the postgres metadataStoreRef",
    field_path=".lineageStoreRef.name",
)


_TEMPLATE_DATABASE_MESSAGE = (
    "spec.database cannot be template0 or template1: PostgreSQL copies them into every new database "
    "(template0 takes no connections): choose another name"
)


def _not_template(name: str) -> str:
    if name in ("template0", "template1"):
        raise ValueError(_TEMPLATE_DATABASE_MESSAGE)
    return name


RegistryDatabase = Annotated[
    common.SqlIdentifier,
    pydantic.AfterValidator(_not_template),
    base.Cel("!(self in ['template0', 'template1'])", _TEMPLATE_DATABASE_MESSAGE),
]


class ModelRegistrySpec(base.SpecModel):
    """Where the registry lives, which schema version it runs, and how lineage is synced."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (LINEAGE_SYNC_NEEDS_STORE, DISTINCT_STORES)

    metadata_store_ref: common.ObjectRef = pydantic.Field(
        description="The postgres DataStore holding the registry tables."
    )
    lineage_store_ref: common.ObjectRef | None = pydantic.Field(
        default=None, description="The neo4j DataStore holding the lineage graph; no lineage when omitted."
    )
    database: RegistryDatabase | None = pydantic.Field(
        default=None,
        description="Database of the registry; the database of the metadata store's connection Secret when omitted.",
    )
    schema_version: SchemaVersion = pydantic.Field(
        default="latest",
        description="Migration to apply up to: a number pins it, latest follows the operator. "
        "Migrations only go forward.",
    )
    lineage_sync: LineageSync | None = pydantic.Field(
        default=None, description="Outbox -> lineage graph sync; the defaults apply when omitted."
    )

    @pydantic.model_validator(mode="after")
    def _check(self) -> ModelRegistrySpec:
        # Mirrors cel_rules.
        if self.lineage_sync is not None and self.lineage_store_ref is None:
            raise ValueError(LINEAGE_SYNC_NEEDS_STORE.message)
        if self.lineage_store_ref is not None and self.lineage_store_ref.name == self.metadata_store_ref.name:
            raise ValueError(DISTINCT_STORES.message)
        return self


class LineageStatus(base.StatusModel):
    """State of the lineage graph sync."""

    pending_events: int | None = pydantic.Field(default=None, ge=0, description="Outbox events not synced.")
    oldest_pending_age_seconds: float | None = pydantic.Field(
        default=None, ge=0, description="Age of the oldest unsynced event, in seconds."
    )
    last_sync_time: pydantic.AwareDatetime | None = pydantic.Field(
        default=None, description="End of the latest successful sync pass."
    )
    nodes: int | None = pydantic.Field(default=None, ge=0, description="Nodes in the lineage graph.")
    relationships: int | None = pydantic.Field(default=None, ge=0, description="Relationships in the lineage graph.")


class RegistryCounts(base.StatusModel):
    """Row counts of the main registry tables."""

    registered_models: int | None = pydantic.Field(default=None, ge=0, description="Registered models.")
    model_versions: int | None = pydantic.Field(default=None, ge=0, description="Model versions.")
    datasets: int | None = pydantic.Field(default=None, ge=0, description="Datasets.")
    deployments: int | None = pydantic.Field(default=None, ge=0, description="Deployments.")


class ModelRegistryStatus(base.StatusModel):
    """The applied schema, the lineage sync, and where the role credentials are."""

    observed_generation: common.ObservedGeneration = None
    conditions: common.Conditions = pydantic.Field(
        default=None,
        description=common.conditions_description("Ready, Reconciling, Stalled, SchemaApplied, LineageInSync"),
    )
    schema_version: int | None = pydantic.Field(default=None, ge=0, description="Latest applied migration.")
    lineage: LineageStatus | None = pydantic.Field(default=None, description="Lineage sync state.")
    counts: RegistryCounts | None = pydantic.Field(default=None, description="Registry contents.")
    reader_secret: str | None = pydantic.Field(
        default=None, max_length=253, description="Secret with the read-only role's connection details."
    )
    writer_secret: str | None = pydantic.Field(
        default=None, max_length=253, description="Secret with the writer role's connection details."
    )


class ModelRegistry(base.Resource):
    """A model registry in PostgreSQL with lineage in Neo4j."""

    name_rules: ClassVar[tuple[base.NameRule, ...]] = (base.label_value_name_rule("ModelRegistry"),)

    crd_info: ClassVar[base.CRDInfo] = base.CRDInfo(
        kind="ModelRegistry",
        plural="modelregistries",
        singular="modelregistry",
        short_names=("mr",),
        description="ModelRegistry is a model registry schema in postgres (models, versions, artifacts, "
        "lineage links, audit log) with an optional lineage graph in neo4j.",
        printer_columns=(
            base.READY_COLUMN,
            base.REASON_COLUMN,
            base.PrinterColumn("Schema", "integer", ".status.schemaVersion", "Latest applied migration."),
            base.PrinterColumn("Pending", "integer", ".status.lineage.pendingEvents", "Lineage events not yet synced."),
            base.PrinterColumn(
                "Models", "integer", ".status.counts.registeredModels", "Registered models.", priority=1
            ),
            base.AGE_COLUMN,
        ),
    )

    kind: Literal["ModelRegistry"] = pydantic.Field(default="ModelRegistry", description="ModelRegistry.")
    spec: ModelRegistrySpec = pydantic.Field(description="Desired state.")
    status: ModelRegistryStatus | None = pydantic.Field(default=None, description="Observed state.")
