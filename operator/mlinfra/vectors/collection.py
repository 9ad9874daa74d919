"""A VectorIndex's collection as code: the alias users query, the physical collection behind it, its settings.

The alias ``spec.collection`` points at a physical collection ``<alias>-<hash>``, the hash covering the
immutable settings (size, distance, datatype): a change of those gives a new name, so a rebuild never
overwrites the live collection (:mod:`mlinfra.vectors.rebuild`). :func:`ensure` creates what is missing,
updates mutable settings (HNSW, quantization) in place and reports what it changed (drift repair), reconciles
payload indexes, and reports — never applies — an immutable change.

Ownership: every collection the operator creates names its VectorIndex (``<namespace>/<name>``) in its
metadata (:data:`OWNER_KEY`). Aliases are server-wide: a VectorIndex whose alias serves another VectorIndex's
collection (two namespaces, one Qdrant), or a collection the operator did not make, gets a CollectionConflict
and changes nothing — no settings applied, no rebuild, nothing pruned. A collection made before owners were
recorded (our metadata, no owner) is claimed by the first VectorIndex that reconciles it. The payload
indexes this operator created are recorded too (:data:`OWNED_INDEXES_KEY`); only those are ever dropped.

qdrant-client's local mode keeps vector parameters and metadata but neither HNSW, quantization nor payload
indexes (it reports Qdrant's defaults). There the settings last applied, recorded in the metadata
(:data:`APPLIED_KEY`), stand in for the observed ones: spec changes are applied and reported, but a change
made by hand outside the operator is only visible against a real server.

Qdrant refusing a request as invalid (400, 422) for one part of the spec raises :class:`SpecRefused` naming
that part (``spec.payloadIndexes[<field>]``): the user fixes it there. Other failures propagate as raised,
for the caller to classify (:func:`mlinfra.engines.qdrant.refusal`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Collection, Iterator
from typing import Any

from qdrant_client import QdrantClient
from qdrant_client.http import models

from mlinfra.api import vectorindex
from mlinfra.engines import qdrant as qdrant_engine

OWNER_KEY = "mlinfra.io/owner"  # "<namespace>/<name>" of the VectorIndex the collection belongs to
OWNED_INDEXES_KEY = "mlinfra.io/payload-indexes"
APPLIED_KEY = "mlinfra.io/applied"
IMMUTABLE_KEY = "mlinfra.io/immutable"
PREVIOUS_KEY = "mlinfra.io/previous"  # {name, swappedAt} of the collection a rebuild replaced

DISTANCES = {
    "Cosine": models.Distance.COSINE,
    "Euclid": models.Distance.EUCLID,
    "Dot": models.Distance.DOT,
    "Manhattan": models.Distance.MANHATTAN,
}
DATATYPES = {"float32": models.Datatype.FLOAT32, "float16": models.Datatype.FLOAT16, "uint8": models.Datatype.UINT8}
INDEX_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
    "geo": models.PayloadSchemaType.GEO,
    "datetime": models.PayloadSchemaType.DATETIME,
    "text": models.PayloadSchemaType.TEXT,
    "uuid": models.PayloadSchemaType.UUID,
}


class CollectionError(Exception):
    """The collection cannot be managed as asked (e.g. a plain collection already carries the alias's name)."""


class SpecRefused(Exception):
    """Qdrant refused, as an invalid request, what one part of the spec asks for."""

    def __init__(self, where: str, refusal: qdrant_engine.Refusal) -> None:
        super().__init__(f"{where}: {refusal}")
        self.where = where  # e.g. spec.payloadIndexes[lang]
        self.refusal = refusal


@contextlib.contextmanager
def _for_spec(where: str) -> Iterator[None]:
    """Calls made for one part of the spec: an invalid-request refusal names that part, since only a change
    there can fix it; anything else propagates as raised."""
    try:
        yield
    except qdrant_engine.CLIENT_ERRORS as exc:
        refused = qdrant_engine.refusal(exc)
        if refused is None or not refused.invalid_request:
            raise
        raise SpecRefused(where, refused) from exc


@dataclasses.dataclass(frozen=True)
class Result:
    """What :func:`ensure` found and did."""

    alias: str
    collection: str  # the physical collection the alias points at after ensure
    target: str  # the physical collection the spec asks for (differs from collection when a rebuild is due)
    created: bool = False
    changes: tuple[str, ...] = ()  # mutable settings changed in place, e.g. "hnsw.m: 8 -> 16"
    indexes_created: tuple[str, ...] = ()
    indexes_dropped: tuple[str, ...] = ()
    index_conflicts: tuple[str, ...] = ()  # spec'd fields a foreign index of another type already holds
    rebuild_reasons: tuple[str, ...] = ()  # immutable differences, e.g. "vectors.size: 3 -> 4"

    @property
    def rebuild_needed(self) -> bool:
        return bool(self.rebuild_reasons)


# --- pure: names and desired settings -------------------------------------------------------------------


def immutable_settings(spec: vectorindex.VectorIndexSpec) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "size": spec.vectors.size,
        "distance": spec.vectors.distance,
        "datatype": spec.vectors.datatype,
    }
    if spec.shards is not None:  # only when set, so that names of collections without it stay the same
        settings["shards"] = spec.shards
    return settings


def physical_name(spec: vectorindex.VectorIndexSpec) -> str:
    """``<alias>-<8 hex digits of the immutable settings' hash>``."""
    digest = hashlib.sha256(json.dumps(immutable_settings(spec), sort_keys=True).encode()).hexdigest()
    return f"{spec.collection}-{digest[:8]}"


def desired_hnsw(spec: vectorindex.VectorIndexSpec) -> dict[str, int]:
    """The HNSW fields the spec sets (omitted ones are Qdrant's business)."""
    if spec.hnsw is None:
        return {}
    values = {"m": spec.hnsw.m, "ef_construct": spec.hnsw.ef_construct}
    return {key: value for key, value in values.items() if value is not None}


def desired_optimizers(spec: vectorindex.VectorIndexSpec) -> dict[str, int]:
    """The optimizer thresholds the spec sets (omitted ones are Qdrant's business)."""
    if spec.optimizers is None:
        return {}
    values = {
        "indexing_threshold": spec.optimizers.indexing_threshold,
        "memmap_threshold": spec.optimizers.memmap_threshold,
        "default_segment_number": spec.optimizers.default_segment_number,
    }
    return {key: value for key, value in values.items() if value is not None}


def desired_params(spec: vectorindex.VectorIndexSpec) -> dict[str, Any]:
    """Collection parameters Qdrant changes in place (the spec's set ones)."""
    values = {
        "replication_factor": spec.replication_factor,
        "on_disk_payload": spec.on_disk_payload,
        "vectors_on_disk": spec.vectors.on_disk,
    }
    return {key: value for key, value in values.items() if value is not None}


def observed_params(params: models.CollectionParams) -> dict[str, Any]:
    vectors = params.vectors
    return {
        "replication_factor": params.replication_factor,
        "on_disk_payload": params.on_disk_payload,
        # Unset means in memory.
        "vectors_on_disk": bool(vectors.on_disk) if isinstance(vectors, models.VectorParams) else None,
    }


def desired_quantization(spec: vectorindex.VectorIndexSpec) -> dict[str, Any] | None:
    q = spec.quantization
    if q is None:
        return None
    return {"type": q.type, "quantile": q.quantile, "compression": q.compression, "always_ram": q.always_ram}


def quantization_config(
    desired: dict[str, Any] | None,
) -> models.ScalarQuantization | models.ProductQuantization | models.BinaryQuantization | None:
    if desired is None:
        return None
    if desired["type"] == "scalar":
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=desired["quantile"], always_ram=desired["always_ram"]
            )
        )
    if desired["type"] == "product":
        return models.ProductQuantization(
            product=models.ProductQuantizationConfig(
                compression=models.CompressionRatio(desired["compression"]), always_ram=desired["always_ram"]
            )
        )
    return models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=desired["always_ram"]))


def observed_quantization(config: Any) -> dict[str, Any] | None:
    """A server's quantization config in the spec's terms (None: no quantization)."""
    if isinstance(config, models.ScalarQuantization):
        return {
            "type": "scalar",
            "quantile": config.scalar.quantile,
            "compression": None,
            "always_ram": config.scalar.always_ram,
        }
    if isinstance(config, models.ProductQuantization):
        return {
            "type": "product",
            "quantile": None,
            "compression": str(config.product.compression.value),
            "always_ram": config.product.always_ram,
        }
    if isinstance(config, models.BinaryQuantization):
        return {"type": "binary", "quantile": None, "compression": None, "always_ram": config.binary.always_ram}
    return None


def hnsw_changes(desired: dict[str, int], observed: dict[str, Any], prefix: str = "hnsw") -> list[str]:
    return [
        f"{prefix}.{key}: {observed.get(key)} -> {value}"
        for key, value in sorted(desired.items())
        if observed.get(key) != value
    ]


def quantization_changes(desired: dict[str, Any] | None, observed: dict[str, Any] | None) -> list[str]:
    if desired is None:
        return [] if observed is None else [f"quantization: {observed['type']} -> none"]
    if observed is None:
        return [f"quantization: none -> {desired['type']}"]
    # Fields the spec leaves out are Qdrant's defaults: not compared.
    return [
        f"quantization.{key}: {observed.get(key)} -> {value}"
        for key, value in desired.items()
        if value is not None and observed.get(key) != value
    ]


def immutable_reasons(spec: vectorindex.VectorIndexSpec, params: models.VectorParams | Any) -> list[str]:
    """Differences between the spec and a collection's vector parameters that only a rebuild can apply."""
    if not isinstance(params, models.VectorParams):
        return ["vectors: the collection has named or no vectors; expected one unnamed vector"]
    reasons = []
    if params.size != spec.vectors.size:
        reasons.append(f"vectors.size: {params.size} -> {spec.vectors.size}")
    if params.distance != DISTANCES[spec.vectors.distance]:
        reasons.append(f"vectors.distance: {params.distance.value} -> {spec.vectors.distance}")
    datatype = params.datatype.value if params.datatype is not None else "float32"
    if datatype != spec.vectors.datatype:
        reasons.append(f"vectors.datatype: {datatype} -> {spec.vectors.datatype}")
    return reasons


# --- I/O ---------------------------------------------------------------------------------------------------


def alias_target(client: QdrantClient, alias: str) -> str | None:
    """The collection ``alias`` points at, or None."""
    for description in client.get_aliases().aliases:
        if description.alias_name == alias:
            return str(description.collection_name)
    return None


def create(client: QdrantClient, spec: vectorindex.VectorIndexSpec, name: str, *, owner: str) -> None:
    """Create the physical collection ``name`` of the VectorIndex ``owner`` with all of the spec's settings
    (no alias, no indexes)."""
    hnsw = desired_hnsw(spec)
    quantization = desired_quantization(spec)
    optimizers = desired_optimizers(spec)
    with _for_spec("spec"):
        client.create_collection(
            name,
            vectors_config=models.VectorParams(
                size=spec.vectors.size,
                distance=DISTANCES[spec.vectors.distance],
                datatype=DATATYPES[spec.vectors.datatype],
                on_disk=spec.vectors.on_disk,
            ),
            hnsw_config=models.HnswConfigDiff(**hnsw) if hnsw else None,
            quantization_config=quantization_config(quantization),
            optimizers_config=models.OptimizersConfigDiff(**optimizers) if optimizers else None,
            shard_number=spec.shards,
            replication_factor=spec.replication_factor,
            on_disk_payload=spec.on_disk_payload,
            metadata={
                APPLIED_KEY: {
                    "hnsw": hnsw,
                    "quantization": quantization,
                    "optimizers": optimizers,
                    "params": desired_params(spec),
                },
                IMMUTABLE_KEY: immutable_settings(spec),
                OWNED_INDEXES_KEY: {},
                OWNER_KEY: owner,
            },
        )


def point_alias(client: QdrantClient, alias: str, collection: str, previous: str | None) -> None:
    """Point ``alias`` at ``collection`` in one atomic change (dropping it from ``previous`` first)."""
    operations: list[Any] = []
    if previous is not None:
        operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
    operations.append(
        models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))
    )
    client.update_collection_aliases(change_aliases_operations=operations)


def claim(client: QdrantClient, alias: str, name: str, owner: str) -> None:
    """Check that the collection ``name`` (served by ``alias``) belongs to ``owner``; claim it if it was made by
    this operator before owners were recorded. CollectionError, changing nothing, otherwise."""
    meta = _metadata(client.get_collection(name))
    holder = meta.get(OWNER_KEY)
    if holder == owner:
        return
    if holder is not None:
        raise CollectionError(
            f"alias {alias!r} on this Qdrant serves {name!r}, which belongs to VectorIndex {holder}: nothing was "
            "changed; choose another spec.collection"
        )
    if IMMUTABLE_KEY not in meta:
        raise CollectionError(
            f"alias {alias!r} points at {name!r}, a collection the operator did not create: it does not adopt "
            "it; remove the alias or choose another spec.collection"
        )
    client.update_collection(name, metadata={OWNER_KEY: owner})


def ensure(client: QdrantClient, spec: vectorindex.VectorIndexSpec, *, owner: str) -> Result:
    """Make the alias, its collection and the mutable settings match ``spec``; report an immutable change.
    ``owner``: the VectorIndex (``<namespace>/<name>``), see the ownership rules above."""
    alias, target = spec.collection, physical_name(spec)
    current = alias_target(client, alias)
    created = False
    repaired: list[str] = []
    if current is None:
        if client.collection_exists(alias):
            raise CollectionError(
                f"a collection named {alias!r} exists and is not an alias: the operator "
                "does not adopt it; rename it or choose another spec.collection"
            )
        if not client.collection_exists(target):
            create(client, spec, target, owner=owner)
            created = True
        else:
            claim(client, alias, target, owner)
            if _metadata(client.get_collection(target)).get(OWNED_INDEXES_KEY) is not None:
                # Ours, with the alias gone: deleted by hand (or a run stopped between create and alias).
                repaired.append(f"alias {alias}: missing -> {target}")
        point_alias(client, alias, target, None)
        current = target
    else:
        claim(client, alias, current, owner)
    info = client.get_collection(current)
    reasons = immutable_reasons(spec, info.config.params.vectors)
    created_shards = (_metadata(info).get(IMMUTABLE_KEY) or {}).get("shards")
    if spec.shards is not None and created_shards != spec.shards:
        # Qdrant cannot reshard a collection in place: a rebuild creates one with the new shard count.
        reasons.append(f"shards: {created_shards or 'default'} -> {spec.shards}")
    changes = repaired + _apply_mutable(client, spec, current, info)
    made, dropped, conflicts = reconcile_indexes(client, spec, current, info)
    return Result(
        alias=alias,
        collection=current,
        target=target,
        created=created,
        changes=tuple(changes),
        indexes_created=made,
        indexes_dropped=dropped,
        index_conflicts=conflicts,
        rebuild_reasons=tuple(reasons),
    )


def _metadata(info: models.CollectionInfo) -> dict[str, Any]:
    return dict(info.config.metadata or {})


def _apply_mutable(
    client: QdrantClient, spec: vectorindex.VectorIndexSpec, name: str, info: models.CollectionInfo
) -> list[str]:
    hnsw, quantization, optimizers = desired_hnsw(spec), desired_quantization(spec), desired_optimizers(spec)
    params = desired_params(spec)
    if qdrant_engine.is_local_mode(client):
        applied = _metadata(info).get(APPLIED_KEY) or {}
        observed_hnsw, observed_q = applied.get("hnsw") or {}, applied.get("quantization")
        observed_opt = applied.get("optimizers") or {}
        observed_p = applied.get("params") or {}
    else:
        observed_hnsw = info.config.hnsw_config.model_dump()
        observed_q = observed_quantization(info.config.quantization_config)
        observed_opt = info.config.optimizer_config.model_dump()
        observed_p = observed_params(info.config.params)
    hnsw_diff = hnsw_changes(hnsw, observed_hnsw)
    q_diff = quantization_changes(quantization, observed_q)
    opt_diff = hnsw_changes(optimizers, observed_opt, prefix="optimizers")
    p_diff = hnsw_changes(params, observed_p, prefix="params")
    if not hnsw_diff and not q_diff and not opt_diff and not p_diff:
        return []
    q_config: Any = None
    if q_diff:
        q_config = quantization_config(quantization) if quantization is not None else models.Disabled.DISABLED
    changes = hnsw_diff + q_diff + opt_diff + p_diff
    with _for_spec(f"spec ({'; '.join(changes)})"):
        client.update_collection(
            name,
            hnsw_config=models.HnswConfigDiff(**hnsw) if hnsw_diff else None,
            quantization_config=q_config,
            optimizers_config=models.OptimizersConfigDiff(**optimizers) if opt_diff else None,
            collection_params=models.CollectionParamsDiff(
                replication_factor=params.get("replication_factor"), on_disk_payload=params.get("on_disk_payload")
            )
            if p_diff
            else None,
            vectors_config={"": models.VectorParamsDiff(on_disk=params["vectors_on_disk"])}
            if p_diff and "vectors_on_disk" in params
            else None,
            metadata={
                APPLIED_KEY: {"hnsw": hnsw, "quantization": quantization, "optimizers": optimizers, "params": params}
            },
        )
    return changes


def reconcile_indexes(
    client: QdrantClient, spec: vectorindex.VectorIndexSpec, name: str, info: models.CollectionInfo
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Create the spec's missing payload indexes, drop owned ones the spec no longer lists.

    Returns ``(created, dropped, conflicts)``; a conflict is a spec'd field that a foreign index of another
    type holds: left alone, never dropped.
    """
    desired = {index.field: index.type for index in spec.payload_indexes or ()}
    owned: dict[str, str] = dict(_metadata(info).get(OWNED_INDEXES_KEY) or {})
    if qdrant_engine.is_local_mode(client):
        observed = dict(owned)  # local mode keeps no payload indexes: what we created stands for them
    else:
        observed = {
            field: str(getattr(schema.data_type, "value", schema.data_type))
            for field, schema in (info.payload_schema or {}).items()
        }
    created: list[str] = []
    dropped: list[str] = []
    conflicts: list[str] = []
    for field in sorted(owned.keys() - desired.keys()):
        if field in observed:
            client.delete_payload_index(name, field, wait=True)
        del owned[field]
        dropped.append(field)
    for field, kind in sorted(desired.items()):
        if observed.get(field) == kind:
            continue
        if field in observed and field not in owned:
            conflicts.append(f"{field}: a {observed[field]} index not created by the operator")
            continue
        try:
            with _for_spec(f"spec.payloadIndexes[{field}]"):
                if field in observed:
                    client.delete_payload_index(name, field, wait=True)
                client.create_payload_index(name, field, INDEX_TYPES[kind], wait=True)
        except SpecRefused:
            # The indexes made before this one stay recorded as the operator's: unrecorded, the next pass
            # would take them for someone else's.
            if created or dropped:
                client.update_collection(name, metadata={OWNED_INDEXES_KEY: owned})
            raise
        owned[field] = kind
        created.append(field)
    if created or dropped:
        client.update_collection(name, metadata={OWNED_INDEXES_KEY: owned})
    return tuple(created), tuple(dropped), tuple(conflicts)


def previous_of(info: models.CollectionInfo) -> tuple[str | None, datetime.datetime | None]:
    """The collection a rebuild replaced with this one, and when (from this collection's metadata)."""
    record = _metadata(info).get(PREVIOUS_KEY) or {}
    name, when = record.get("name"), record.get("swappedAt")
    try:
        swapped = datetime.datetime.fromisoformat(when) if isinstance(when, str) else None
    except ValueError:
        swapped = None
    return (str(name) if name else None), swapped


def is_ours(client: QdrantClient, alias: str, name: str, owner: str) -> bool:
    """A physical collection this operator made for ``alias`` of the VectorIndex ``owner`` (its name and
    metadata say so; one made before owners were recorded counts when it names no other owner)."""
    if not name.startswith(f"{alias}-") or not client.collection_exists(name):
        return False
    meta = _metadata(client.get_collection(name))
    return IMMUTABLE_KEY in meta and meta.get(OWNER_KEY, owner) == owner


def prune_previous(
    client: QdrantClient,
    spec: vectorindex.VectorIndexSpec,
    active: str,
    retention: datetime.timedelta | None,
    now: datetime.datetime,
    *,
    owner: str,
) -> str | None:
    """Delete the collection the last rebuild replaced once ``retention`` has passed; its name, or None.

    Only a collection this operator created for this alias is ever deleted, never the live one.
    """
    if retention is None:
        return None
    previous, swapped = previous_of(client.get_collection(active))
    if previous is None or previous == active or swapped is None or now - swapped < retention:
        return None
    if not is_ours(client, spec.collection, previous, owner):
        return None
    client.delete_collection(previous)
    return previous


def prune_strays(
    client: QdrantClient,
    spec: vectorindex.VectorIndexSpec,
    active: str,
    *,
    owner: str,
    keep: Collection[str] = (),
) -> tuple[str, ...]:
    """Delete the collections of this VectorIndex that nothing refers to: neither the live one nor the one it
    records as replaced. A rebuild leaves them when it never swapped (the spec changed back, the operator was
    killed) or when two rebuilds came one after the other (A -> B -> C leaves A, named only by B). They are
    copies of the source table, not data of their own; only collections this operator made for this alias
    and ``owner`` are deleted, and never one in ``keep`` (what a rebuild Job still running may be filling).
    Run from the reconcile only, and not while a rebuild process runs: an observation may run beside a
    rebuild, whose collection is not referred to yet."""
    previous, _ = previous_of(client.get_collection(active))
    own_name = re.compile(rf"{re.escape(spec.collection)}-[0-9a-f]{{8}}")
    strays = tuple(
        sorted(
            c.name
            for c in client.get_collections().collections
            if own_name.fullmatch(c.name)
            and c.name not in (active, previous)
            and c.name not in keep
            and is_ours(client, spec.collection, c.name, owner)
        )
    )
    for name in strays:
        client.delete_collection(name)
    return strays
