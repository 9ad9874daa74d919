"""VectorIndex: a Qdrant collection behind an alias, optionally synced from a PostgreSQL table.

Mutable settings (HNSW, quantization, payload indexes) are changed in place. Changing ``vectors.size`` or
``vectors.distance`` is allowed: it drives a blue/green rebuild (new collection, backfill, alias swap), so
no rule forbids it; the API server only checks that the values make sense.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import pydantic
import pydantic_core
from pydantic_core import core_schema

from mlinfra.api import base, common

# Qdrant accepts more, but these names are safe in URLs, metrics labels and derived collection names.
COLLECTION_RE = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
SIZE_MESSAGE = "spec.vectors.size must be a positive number of dimensions, e.g. 384"


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError(SIZE_MESSAGE)
    return value


class Vectors(base.SpecModel):
    """The vectors stored; size and distance changes trigger a rebuild into a new collection."""

    size: Annotated[int, pydantic.AfterValidator(_positive), base.Cel("self > 0", SIZE_MESSAGE)] = pydantic.Field(
        le=65536, description="Dimensions per vector. Changing it rebuilds the collection."
    )
    distance: Literal["Cosine", "Euclid", "Dot", "Manhattan"] = pydantic.Field(
        description="Distance function. Changing it rebuilds the collection."
    )
    datatype: Literal["float32", "float16", "uint8"] = pydantic.Field(
        default="float32", description="Storage type of vector components."
    )
    on_disk: bool = pydantic.Field(default=False, description="Keep vectors on disk (memory-mapped).")


class Hnsw(base.SpecModel):
    """HNSW graph parameters; changed in place. Qdrant's defaults apply to omitted fields."""

    m: int | None = pydantic.Field(default=None, ge=0, le=128, description="Edges per node; 0 disables the graph.")
    ef_construct: int | None = pydantic.Field(
        default=None, ge=4, le=4096, description="Neighbours considered while building the graph."
    )


PRODUCT_NEEDS_COMPRESSION = base.Cel(
    "self.type == 'product' ? has(self.compression) : !has(self.compression)",
    "compression is required for product quantization and not allowed for scalar or binary",
    field_path=".compression",
)
QUANTILE_ONLY_SCALAR = base.Cel(
    "self.type == 'scalar' || !has(self.quantile)",
    "quantile applies only to scalar quantization: remove it or set type: scalar",
    field_path=".quantile",
)


class Quantization(base.SpecModel):
    """Vector quantization; changed in place."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (PRODUCT_NEEDS_COMPRESSION, QUANTILE_ONLY_SCALAR)

    type: Literal["scalar", "product", "binary"] = pydantic.Field(description="scalar, product or binary.")
    quantile: float | None = pydantic.Field(
        default=None, ge=0.5, le=1.0, description="Scalar only: quantile of values kept in range."
    )
    compression: Literal["x4", "x8", "x16", "x32", "x64"] | None = pydantic.Field(
        default=None, description="Product only: compression ratio."
    )
    always_ram: bool | None = pydantic.Field(default=None, description="Keep quantized vectors in RAM.")

    @pydantic.model_validator(mode="after")
    def _check(self) -> Quantization:
        # Mirrors cel_rules.
        if (self.type == "product") != (self.compression is not None):
            raise ValueError(PRODUCT_NEEDS_COMPRESSION.message)
        if self.type != "scalar" and self.quantile is not None:
            raise ValueError(QUANTILE_ONLY_SCALAR.message)
        return self


class Optimizers(base.SpecModel):
    """Segment optimizer thresholds; changed in place. Qdrant's defaults apply to omitted fields."""

    indexing_threshold: int | None = pydantic.Field(
        default=None,
        ge=0,
        le=1_000_000_000,
        description="Kilobytes of vectors per segment before an HNSW index is built; 0 disables indexing.",
    )
    memmap_threshold: int | None = pydantic.Field(
        default=None, ge=0, le=1_000_000_000, description="Kilobytes per segment before it is memory-mapped."
    )
    default_segment_number: int | None = pydantic.Field(
        default=None, ge=0, le=64, description="Target number of segments; 0 lets Qdrant choose."
    )


# A payload key as Qdrant parses it (its JSON path grammar, lib/segment/src/json_path/parse.rs): a first key,
# then any of `.key`, `[]` (every element of an array) and `[N]` (one element). A bare key is letters, digits,
# `_` and `-`, Unicode ones included (Rust's is_alphanumeric). Combining marks are taken as letters: Rust
# counts those of scripts such as Devanagari, so those keys need no quotes; a key with a mark Rust does not
# count is refused by Qdrant itself, and the status says so. Any other key is double-quoted and holds no `"`
# or `\`. Only the form Qdrant writes back is allowed (its payload_schema keys, which the operator compares
# with the spec): quotes only where needed, no leading zeros. `"lang"` or `tags[01]` would never match what
# Qdrant reports, and the index would be re-created on every pass.
_BARE_CHAR = r"\p{L}\p{M}\p{N}_-"
_PAYLOAD_KEY = rf'([{_BARE_CHAR}]+|"[^"\\]*[^"\\{_BARE_CHAR}][^"\\]*")'
PAYLOAD_FIELD_RE = rf"^{_PAYLOAD_KEY}(\.{_PAYLOAD_KEY}|\[(0|[1-9][0-9]{{0,18}})?\])*$"
PAYLOAD_FIELD_MESSAGE = (
    "spec.payloadIndexes[].field must be a Qdrant payload key: names of letters, digits, _ and - joined by "
    "dots, each optionally followed by [] (every array element) or [N] (one element), e.g. lang, meta.source, "
    'tags[], authors[].name; a name with any other character is double-quoted (meta."first name"; quotes only '
    'where needed: lang, not "lang") and holds no double quote or backslash'
)
# Python's re has no \p{..} classes; pydantic-core's Rust regex reads this one as the API server's RE2 does.
_PAYLOAD_FIELD = pydantic_core.SchemaValidator(core_schema.str_schema(pattern=PAYLOAD_FIELD_RE))


def _payload_field(value: str) -> str:
    try:
        _PAYLOAD_FIELD.validate_python(value)
    except pydantic_core.ValidationError:
        raise ValueError(PAYLOAD_FIELD_MESSAGE) from None
    return value


PayloadField = Annotated[
    str,
    pydantic.Field(min_length=1, max_length=256),
    pydantic.AfterValidator(_payload_field),
    base.Cel(base.matches(PAYLOAD_FIELD_RE), PAYLOAD_FIELD_MESSAGE),
]


class PayloadIndex(base.SpecModel):
    """An index on one payload field; only indexes the operator created are ever dropped."""

    field: PayloadField = pydantic.Field(description="Payload key, e.g. lang, meta.source or tags[].")
    type: Literal["keyword", "integer", "float", "bool", "geo", "datetime", "text", "uuid"] = pydantic.Field(
        description="Index type."
    )


class Source(base.SpecModel):
    """The PostgreSQL table vectors are copied from (real[] or pgvector column)."""

    store_ref: common.ObjectRef = pydantic.Field(description="A postgres DataStore in this namespace.")
    schema_name: common.SqlIdentifier | None = pydantic.Field(
        default=None, alias="schema", description="Database schema of the table; public when omitted."
    )
    table: common.SqlIdentifier = pydantic.Field(description="Source table.")
    id_column: common.SqlIdentifier = pydantic.Field(description="Primary key column (integer or uuid).")
    vector_column: common.SqlIdentifier = pydantic.Field(description="Column holding the vector.")
    payload_columns: list[common.SqlIdentifier] | None = pydantic.Field(
        default=None,
        max_length=64,
        description="Columns copied into the payload.",
        json_schema_extra=base.LIST_SET,
    )
    updated_at_column: common.SqlIdentifier = pydantic.Field(description="Change timestamp column; the sync watermark.")
    deleted_column: common.SqlIdentifier | None = pydantic.Field(
        default=None, description="Soft-delete flag column; rows with it true are removed from the index."
    )


class IndexSync(base.SpecModel):
    """The CronJob copying changed rows from the source table into the collection."""

    schedule: common.CronSchedule = pydantic.Field(description="When to run, e.g. '*/10 * * * *'.")
    batch_size: int = pydantic.Field(default=500, ge=1, le=10000, description="Points per upsert batch.")
    suspend: bool = pydantic.Field(default=False, description="Pause scheduled runs.")
    hard_deletes: bool = pydantic.Field(
        default=False,
        description="Also remove points whose row was deleted outright (DELETE, not deletedColumn). Each run "
        "then compares every point id with the table: slower on large collections.",
    )
    max_lag: common.PositiveDuration | None = pydantic.Field(
        default=None,
        description="Index lag SLO: Synced is False (reason LagExceeded) while the collection is further behind "
        "its source table than this, e.g. '30m'. Omitted: any lag only reports Behind.",
    )


SYNC_NEEDS_SOURCE = base.Cel(
    "!has(self.sync) || has(self.source)",
    "spec.sync needs spec.source (the postgres table to copy vectors from)",
    field_path=".sync",
)


class VectorIndexSpec(base.SpecModel):
    """The collection, its vector and index settings, and where its data comes from."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (SYNC_NEEDS_SOURCE,)

    store_ref: common.ObjectRef = pydantic.Field(description="The qdrant DataStore in this namespace.")
    collection: str = pydantic.Field(
        min_length=1,
        max_length=63,
        pattern=COLLECTION_RE,
        description="Alias users query; the physical collections behind it are the operator's.",
    )
    vectors: Vectors = pydantic.Field(description="Vector parameters.")
    hnsw: Hnsw | None = pydantic.Field(default=None, description="HNSW parameters.")
    quantization: Quantization | None = pydantic.Field(default=None, description="Quantization; none when omitted.")
    optimizers: Optimizers | None = pydantic.Field(default=None, description="Optimizer thresholds.")
    shards: int | None = pydantic.Field(default=None, ge=1, le=64, description="Shards; Qdrant's default when omitted.")
    replication_factor: int | None = pydantic.Field(
        default=None, ge=1, le=10, description="Copies of each shard; Qdrant's default when omitted."
    )
    on_disk_payload: bool | None = pydantic.Field(
        default=None, description="Keep payloads on disk (read on demand); Qdrant's default when omitted."
    )
    payload_indexes: list[PayloadIndex] | None = pydantic.Field(
        default=None, max_length=64, description="Payload indexes.", json_schema_extra=base.list_map("field")
    )
    source: Source | None = pydantic.Field(default=None, description="Source table; none when omitted.")
    sync: IndexSync | None = pydantic.Field(default=None, description="Scheduled sync from source.")
    previous_collection_retention: common.Duration | None = pydantic.Field(
        default=None,
        description="How long the collection replaced by a rebuild is kept for rollback, e.g. '72h'; '0s' "
        "deletes it right after the alias swap. Omitted: kept until the next rebuild replaces it.",
    )

    @pydantic.model_validator(mode="after")
    def _check(self) -> VectorIndexSpec:
        # Mirrors cel_rules and the list-map uniqueness of payload indexes.
        if self.sync is not None and self.source is None:
            raise ValueError(SYNC_NEEDS_SOURCE.message)
        fields = [index.field for index in self.payload_indexes or ()]
        if len(set(fields)) != len(fields):
            raise ValueError("spec.payloadIndexes: each field may be indexed once")
        return self


class ShardReplica(base.StatusModel):
    """One replica of one shard, as Qdrant reports it."""

    shard: int = pydantic.Field(ge=0, description="Shard id.")
    # Qdrant peer ids are unsigned 64-bit: a string, since they may not fit a signed int64.
    peer: str = pydantic.Field(max_length=20, description="Peer id.")
    state: str = pydantic.Field(max_length=32, description="Replica state, e.g. Active, Partial, Dead.")


class IndexSyncStatus(base.StatusModel):
    """How far the collection is behind its source table."""

    source_watermark: pydantic.AwareDatetime | None = pydantic.Field(
        default=None, description="Newest change time in the source table."
    )
    index_watermark: pydantic.AwareDatetime | None = pydantic.Field(
        default=None, description="Newest change time copied into the collection."
    )
    rows_behind: int | None = pydantic.Field(default=None, ge=0, description="Source rows not yet indexed.")
    lag_seconds: float | None = pydantic.Field(
        default=None, ge=0, description="sourceWatermark - indexWatermark, in seconds."
    )
    last_run: common.SyncRun | None = pydantic.Field(default=None, description="The latest sync run.")


class VectorIndexStatus(base.StatusModel):
    """The collections behind the alias, their health and the sync state."""

    observed_generation: common.ObservedGeneration = None
    conditions: common.Conditions = pydantic.Field(
        default=None,
        description=common.conditions_description("Ready, Reconciling, Stalled, CollectionReady, Synced, Reindexing"),
    )
    active_collection: str | None = pydantic.Field(
        default=None, max_length=255, description="Physical collection the alias points at."
    )
    previous_collection: str | None = pydantic.Field(
        default=None, max_length=255, description="Collection kept for rollback after the last rebuild."
    )
    points: int | None = pydantic.Field(default=None, ge=0, description="Points in the active collection.")
    indexed_vectors: int | None = pydantic.Field(default=None, ge=0, description="Vectors in the HNSW index.")
    collection_status: Literal["green", "yellow", "grey", "red"] | None = pydantic.Field(
        default=None, description="Qdrant's collection status."
    )
    replicas: list[ShardReplica] | None = pydantic.Field(
        default=None,
        max_length=256,
        description="Shard replicas and their states.",
        json_schema_extra=base.list_map("shard", "peer"),
    )
    sync: IndexSyncStatus | None = pydantic.Field(default=None, description="Sync state.")


class VectorIndex(base.Resource):
    """A Qdrant collection behind an alias, optionally synced from PostgreSQL."""

    name_rules: ClassVar[tuple[base.NameRule, ...]] = (base.label_value_name_rule("VectorIndex"),)

    crd_info: ClassVar[base.CRDInfo] = base.CRDInfo(
        kind="VectorIndex",
        plural="vectorindexes",
        singular="vectorindex",
        short_names=("vi",),
        description="VectorIndex is a qdrant collection behind an alias, optionally synced from a postgres "
        "table; size or distance changes rebuild it blue/green.",
        printer_columns=(
            base.READY_COLUMN,
            base.REASON_COLUMN,
            base.PrinterColumn("Points", "integer", ".status.points", "Points in the active collection."),
            base.PrinterColumn("Collection", "string", ".status.activeCollection", "Active collection."),
            base.PrinterColumn("Lag", "number", ".status.sync.lagSeconds", "Sync lag (s).", priority=1),
            base.AGE_COLUMN,
        ),
    )

    kind: Literal["VectorIndex"] = pydantic.Field(default="VectorIndex", description="VectorIndex.")
    spec: VectorIndexSpec = pydantic.Field(description="Desired state.")
    status: VectorIndexStatus | None = pydantic.Field(default=None, description="Observed state.")
