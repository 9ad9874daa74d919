"""Qdrant backups: collection snapshots from a real server, a logical export where snapshots cannot be had.

**Snapshot** (a real server): per collection ``POST /collections/{c}/snapshots`` (the server writes a
point-in-time archive of the collection's shards with its config), download it over HTTP (the API key in
the ``api-key`` header, TLS verified as for every engine, the sha256 the server states checked), then delete
it on the server. Restore uploads it into the new server (``POST /collections/{c}/snapshots/upload
?priority=snapshot``), which creates the collection from it. A collection snapshot holds only the shards of
the peer that answered: when a shard lives on other peers only (a multi-peer cluster), the snapshot would be
incomplete, so that collection is exported logically instead (``reason`` in the metadata says so). A snapshot
is restorable into the same Qdrant version or a newer one that reads it (``server`` in the metadata).

**Logical** (qdrant-client's local mode, which has no snapshot API: its ``create_snapshot`` raises
``NotImplementedError``; or ``mode="logical"``): the collection's config (vectors, named, sparse and
multi-vectors, HNSW, optimizer, WAL, quantization, strict mode) and its payload indexes as JSON, every point
(id, all vectors, payload) scrolled into JSON lines; restore recreates the collection with that config and
upserts the points in batches. What it cannot do: it is not a point-in-time snapshot — points written while
the scroll runs may or may not be in it, and a point updated meanwhile is taken as the scroll met it. Local
mode itself keeps no HNSW/optimizer settings (it reports defaults), so those come back as defaults. In the
local platform the export holds the local-mode directory for its whole run (the operator waits meanwhile).

Aliases pointing at a backed-up collection are recorded and recreated after the collections (a VectorIndex
serves an alias over a hashed physical collection). Collections are each consistent on their own, not with
one another. A restore never overwrites: it refuses when a collection or alias already exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib import parse

import httpx
from qdrant_client import QdrantClient, models

from mlinfra.engines import connection
from mlinfra.engines import qdrant as qdrant_engine

Mode = Literal["auto", "snapshot", "logical"]
SNAPSHOT = "snapshot"
LOGICAL = "logical"
MANIFEST = "qdrant.json"
BATCH = 256
_CHUNK = 1 << 20
LOCAL_REASON = "qdrant-client local mode has no snapshot API"


class QdrantBackupError(Exception):
    """The backup or restore cannot be done as asked; the message says why (never the API key)."""


# --- take ---------------------------------------------------------------------------------------------------


def take(
    conn: connection.ConnectionInfo,
    staging: Path,
    timeout: float,
    *,
    collections: Sequence[str] | None = None,
    mode: Mode = "auto",
) -> dict[str, Any]:
    """Back up ``collections`` (default: every collection) of the Qdrant at ``conn`` into ``staging`` within
    ``timeout`` seconds; ``mode``: snapshots where the server supports them (``auto``), only snapshots (an
    error where impossible), or only the logical export. Returns the metadata, also written to
    ``staging/qdrant.json`` (which :func:`restore` reads)."""
    deadline = connection.Deadline(timeout, f"qdrant at {conn.endpoint}")
    staging.mkdir(parents=True, exist_ok=True)
    with qdrant_engine.open_client(conn, timeout) as client:
        local = qdrant_engine.is_local_mode(client)
        existing = sorted(c.name for c in client.get_collections().collections)
        names = existing if collections is None else list(collections)
        missing = sorted(set(names) - set(existing))
        if missing:
            raise QdrantBackupError(f"qdrant at {conn.endpoint}: no collection {', '.join(missing)}")
        aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases if a.collection_name in names}
        entries = []
        for index, name in enumerate(names):
            method, reason = _method(client, name, mode, local)
            entry: dict[str, Any] = {"name": name, "method": method}
            if reason:
                entry["reason"] = reason
            info = client.get_collection(name)
            entry["points"] = info.points_count or 0
            entry["vectors"] = _dump(info.config.params.vectors)
            entry["sparseVectors"] = _dump(info.config.params.sparse_vectors)
            if method == SNAPSHOT:
                entry.update(_snapshot(client, conn, name, staging, f"c{index}.snapshot", deadline))
            else:
                entry.update(_export(client, name, info, staging, f"c{index}", deadline))
            entries.append(entry)
        meta: dict[str, Any] = {
            "engine": "qdrant",
            "server": qdrant_engine.LOCAL_MODE if local else str(client.info().version),
            "source": qdrant_engine.LOCAL_MODE if local else conn.endpoint,
            "collections": entries,
            "aliases": aliases,
            "points": sum(entry["points"] for entry in entries),
            "methods": sorted({entry["method"] for entry in entries}),
        }
    _write_json(staging / MANIFEST, meta)
    return meta


def _method(client: QdrantClient, name: str, mode: Mode, local: bool) -> tuple[str, str | None]:
    if mode == LOGICAL:
        return LOGICAL, None
    if local:
        if mode == SNAPSHOT:
            raise QdrantBackupError(f"collection {name}: {LOCAL_REASON}; use the logical export")
        return LOGICAL, LOCAL_REASON
    cluster = client.http.distributed_api.collection_cluster_info(name).result
    assert cluster is not None
    here = {s.shard_id for s in cluster.local_shards if s.state == models.ReplicaState.ACTIVE}
    elsewhere = sorted({s.shard_id for s in cluster.remote_shards} - here)
    if not elsewhere:
        return SNAPSHOT, None
    reason = (
        f"shards {elsewhere} have no active replica on the peer that answered: a collection snapshot would miss them"
    )
    if mode == SNAPSHOT:
        raise QdrantBackupError(f"collection {name}: {reason}")
    return LOGICAL, reason


def _headers(conn: connection.ConnectionInfo) -> dict[str, str]:
    return {"api-key": conn.password} if conn.password else {}


def _http(conn: connection.ConnectionInfo, deadline: connection.Deadline) -> httpx.Client:
    # TLS as connection.qdrant_kwargs sets it for qdrant-client: the one ssl_context (CA, system roots, name).
    return httpx.Client(
        base_url=conn.uri,
        headers=_headers(conn),
        verify=connection.ssl_context(conn) if conn.tls else True,
        timeout=httpx.Timeout(deadline.left()),
    )


def _path(*parts: str) -> str:
    return "/" + "/".join(parse.quote(part, safe="") for part in parts)


def _snapshot(
    client: QdrantClient,
    conn: connection.ConnectionInfo,
    name: str,
    staging: Path,
    file: str,
    deadline: connection.Deadline,
) -> dict[str, Any]:
    description = client.create_snapshot(name, wait=True)
    if description is None:
        raise QdrantBackupError(f"collection {name}: the server made no snapshot")
    partial = staging / f".{file}.partial"
    digest = hashlib.sha256()
    size = 0
    try:
        with (
            _http(conn, deadline) as http,
            http.stream("GET", _path("collections", name, "snapshots", description.name)) as answer,
        ):
            _raise_for(answer, f"download of the snapshot of {name}")
            with open(partial, "wb") as sink:
                for chunk in answer.iter_bytes(_CHUNK):
                    deadline.left()
                    sink.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                sink.flush()
                os.fsync(sink.fileno())
        if description.checksum and description.checksum != digest.hexdigest():
            raise QdrantBackupError(f"collection {name}: the downloaded snapshot does not match its sha256")
        partial.rename(staging / file)
    except BaseException:
        partial.unlink(missing_ok=True)
        with contextlib.suppress(*qdrant_engine.CLIENT_ERRORS):  # the first error is the one to report
            client.delete_snapshot(name, description.name, wait=True)
        raise
    client.delete_snapshot(name, description.name, wait=True)  # the server's disk is not ours to fill
    return {"file": file, "size": size, "sha256": digest.hexdigest(), "snapshot": description.name}


def _raise_for(answer: httpx.Response, what: str) -> None:
    if answer.is_success:
        return
    answer.read()
    message = qdrant_engine.server_message(answer.content)
    raise QdrantBackupError(f"qdrant refused the {what} ({answer.status_code} {answer.reason_phrase}): {message}")


def _dump(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: _dump(item) for key, item in value.items()}
    return value.model_dump(mode="json", exclude_none=True)


def _export(
    client: QdrantClient,
    name: str,
    info: models.CollectionInfo,
    staging: Path,
    stem: str,
    deadline: connection.Deadline,
) -> dict[str, Any]:
    if info.config.params.sharding_method == models.ShardingMethod.CUSTOM:
        raise QdrantBackupError(f"collection {name}: custom sharding (shard keys) has no logical export")
    config = {
        "config": info.config.model_dump(mode="json"),
        "payloadSchema": {field: schema.model_dump(mode="json") for field, schema in info.payload_schema.items()},
    }
    _write_json(staging / f"{stem}.config.json", config)
    partial = staging / f".{stem}.points.jsonl.partial"
    count = 0
    try:
        with open(partial, "w", encoding="utf-8") as sink:
            for record in _scroll(client, name, deadline):
                line = {"id": record.id, "vector": _vector_json(record.vector), "payload": record.payload or {}}
                sink.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
                count += 1
            sink.flush()
            os.fsync(sink.fileno())
        partial.rename(staging / f"{stem}.points.jsonl")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {"config": f"{stem}.config.json", "file": f"{stem}.points.jsonl", "exported": count}


def _scroll(client: QdrantClient, name: str, deadline: connection.Deadline) -> Iterator[models.Record]:
    offset: Any = None
    while True:
        deadline.left()
        records, offset = client.scroll(
            name, limit=BATCH, offset=offset, with_payload=True, with_vectors=True, timeout=max(1, int(deadline.left()))
        )
        yield from records
        if offset is None:
            return


def _vector_json(vector: Any) -> Any:
    """A point's vectors as JSON: a list (the unnamed vector), or a dict of named dense lists, multi-vectors
    (lists of lists) and sparse vectors ({"indices", "values"})."""
    if vector is None:
        return {}
    if isinstance(vector, dict):
        return {key: _vector_json(item) for key, item in vector.items()}
    if isinstance(vector, models.SparseVector):
        return {"indices": list(vector.indices), "values": list(vector.values)}
    return vector


def _vector_model(vector: Any) -> Any:
    if isinstance(vector, dict):
        if set(vector) == {"indices", "values"}:
            return models.SparseVector(indices=vector["indices"], values=vector["values"])
        return {key: _vector_model(item) for key, item in vector.items()}
    return vector


# --- restore ------------------------------------------------------------------------------------------------


def restore(staging: Path, conn: connection.ConnectionInfo, timeout: float) -> dict[str, Any]:
    """Recreate the backed-up collections and aliases of ``staging`` in the (new) Qdrant at ``conn``: snapshots
    are uploaded, logical exports re-imported. Refuses (:class:`QdrantBackupError`) before any change when a
    collection or alias exists already. Returns {collection: points} as the server counts them after."""
    deadline = connection.Deadline(timeout, f"qdrant at {conn.endpoint}")
    meta = json.loads((staging / MANIFEST).read_text())
    with qdrant_engine.open_client(conn, timeout) as client:
        local = qdrant_engine.is_local_mode(client)
        present = {c.name for c in client.get_collections().collections}
        present_aliases = {a.alias_name for a in client.get_aliases().aliases}
        clash = sorted({c["name"] for c in meta["collections"]} & present) + sorted(
            set(meta["aliases"]) & present_aliases
        )
        if clash:
            raise QdrantBackupError(
                f"qdrant at {conn.endpoint} already has {', '.join(clash)}: a restore never overwrites"
            )
        counts = {}
        for entry in meta["collections"]:
            name = entry["name"]
            if entry["method"] == SNAPSHOT:
                if local:
                    raise QdrantBackupError(
                        f"collection {name}: a snapshot backup needs a Qdrant server ({LOCAL_REASON})"
                    )
                _upload(conn, name, staging / entry["file"], entry["sha256"], deadline)
            else:
                _import(client, name, staging, entry, deadline)
            counts[name] = client.count(name, exact=True).count
        if meta["aliases"]:
            client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=target, alias_name=alias)
                    )
                    for alias, target in sorted(meta["aliases"].items())
                ]
            )
    return counts


def _upload(conn: connection.ConnectionInfo, name: str, file: Path, sha256: str, deadline: connection.Deadline) -> None:
    with _http(conn, deadline) as http, open(file, "rb") as source:
        answer = http.post(
            _path("collections", name, "snapshots", "upload"),
            params={"wait": "true", "priority": "snapshot", "checksum": sha256},
            files={"snapshot": (f"{name}.snapshot", source, "application/octet-stream")},
        )
        _raise_for(answer, f"upload of the snapshot of {name}")


def _diff(model: type[Any], value: Any) -> Any:
    """An output config (e.g. HnswConfig) as the matching input model (HnswConfigDiff): the fields it knows."""
    if value is None:
        return None
    data = value.model_dump(mode="json", exclude_none=True)
    return model.model_validate({key: item for key, item in data.items() if key in model.model_fields})


def _import(
    client: QdrantClient, name: str, staging: Path, entry: dict[str, Any], deadline: connection.Deadline
) -> None:
    saved = json.loads((staging / entry["config"]).read_text())
    config = models.CollectionConfig.model_validate(saved["config"])
    params = config.params
    client.create_collection(
        name,
        vectors_config=params.vectors,
        sparse_vectors_config=params.sparse_vectors,
        shard_number=params.shard_number,
        sharding_method=params.sharding_method,
        replication_factor=params.replication_factor,
        write_consistency_factor=params.write_consistency_factor,
        on_disk_payload=params.on_disk_payload,
        hnsw_config=_diff(models.HnswConfigDiff, config.hnsw_config),
        optimizers_config=_diff(models.OptimizersConfigDiff, config.optimizer_config),
        wal_config=_diff(models.WalConfigDiff, config.wal_config),
        quantization_config=config.quantization_config,
        strict_mode_config=_diff(models.StrictModeConfig, config.strict_mode_config),
        metadata=config.metadata,
        payload=params.payload,
        id_tracker=params.id_tracker,
        timeout=max(1, int(deadline.left())),
    )
    for field, schema in saved["payloadSchema"].items():
        index = models.PayloadIndexInfo.model_validate(schema)
        with warnings.catch_warnings():  # local mode: "payload indexes have no effect" (it scans)
            warnings.simplefilter("ignore")
            client.create_payload_index(name, field, field_schema=index.params or index.data_type, wait=True)
    batch: list[models.PointStruct] = []
    with open(staging / entry["file"], encoding="utf-8") as source:
        for line in source:
            point = json.loads(line)
            batch.append(
                models.PointStruct(id=point["id"], vector=_vector_model(point["vector"]), payload=point["payload"])
            )
            if len(batch) >= BATCH:
                _upsert(client, name, batch, deadline)
                batch = []
    if batch:
        _upsert(client, name, batch, deadline)


def _upsert(client: QdrantClient, name: str, batch: list[models.PointStruct], deadline: connection.Deadline) -> None:
    deadline.left()
    client.upsert(name, points=batch, wait=True)


def _write_json(path: Path, data: Any) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True))
    partial.rename(path)
