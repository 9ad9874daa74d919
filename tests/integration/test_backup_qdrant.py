"""Qdrant backups: local mode here (a local-mode directory of the test's own, as the local platform serves a
store), a real server when QDRANT_URL is set (names from the test's ``qdrant_space``, removed after). Back up,
delete the collections, restore, compare every point (id, vectors, payload), the config and the aliases."""

from __future__ import annotations

import json
import math
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib import parse

import pytest
from qdrant_client import QdrantClient, models

from mlinfra.backup import qdrant as qdrant_backup
from mlinfra.devenv import qdrant as devenv_qdrant
from mlinfra.engines import connection
from mlinfra.engines import qdrant as qdrant_engine

pytestmark = [
    pytest.mark.integration,
    pytest.mark.qdrant,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),
]

POINTS = 700  # more than two scroll/upsert batches
NEEDS_SERVER = "needs a real Qdrant server (QDRANT_URL)"


def server_conn() -> connection.ConnectionInfo | None:
    url = os.environ.get(devenv_qdrant.URL_ENV)
    if not url:
        return None
    parts = parse.urlsplit(url)
    assert parts.hostname, f"{devenv_qdrant.URL_ENV} names no host"
    return connection.ConnectionInfo.for_engine(
        "qdrant",
        parts.hostname,
        os.environ.get(devenv_qdrant.API_KEY_ENV, ""),
        port=parts.port or connection.default_port("qdrant"),
        tls=parts.scheme == "https",
    )


@pytest.fixture
def conn(tmp_path: Path) -> connection.ConnectionInfo:
    """The store to back up: the real server, or a local-mode directory of this test's."""
    real = server_conn()
    if real is not None:
        return real
    info = connection.ConnectionInfo.for_engine("qdrant", "local", "")
    return connection.ConnectionInfo(**{**info.__dict__, "local_path": str(tmp_path / "qdrant")})


@pytest.fixture
def new_conn(tmp_path: Path, conn: connection.ConnectionInfo) -> connection.ConnectionInfo:
    """Where the restore goes: a fresh local-mode directory; on a real server the same server (its
    collections deleted first)."""
    if conn.local_path is None:
        return conn
    return connection.ConnectionInfo(**{**conn.__dict__, "local_path": str(tmp_path / "qdrant-new")})


@pytest.fixture
def client_of() -> Iterator[Any]:
    def opened(info: connection.ConnectionInfo) -> Any:
        return qdrant_engine.open_client(info)

    yield opened


def dense(rng: random.Random, size: int) -> list[float]:
    return [rng.uniform(-1, 1) for _ in range(size)]


def build(client: QdrantClient, space: devenv_qdrant.QdrantSpace) -> tuple[str, str, str]:
    """A collection with named dense, multi and sparse vectors, one with an unnamed vector, and an alias."""
    rng = random.Random(15)
    named, plain = space.name("named"), space.name("plain")
    client.create_collection(
        named,
        vectors_config={
            "text": models.VectorParams(size=8, distance=models.Distance.COSINE),
            "image": models.VectorParams(size=4, distance=models.Distance.EUCLID),
            "tokens": models.VectorParams(
                size=3,
                distance=models.Distance.DOT,
                multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
            ),
        },
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        hnsw_config=models.HnswConfigDiff(m=8, ef_construct=64),
    )
    points = []
    for i in range(POINTS):
        point_id: int | str = i if i % 3 else str(uuid.UUID(int=rng.getrandbits(128)))
        vector: dict[str, Any] = {"text": dense(rng, 8), "image": dense(rng, 4)}
        if i % 2:
            vector["tokens"] = [dense(rng, 3) for _ in range(1 + i % 3)]
        if i % 5:
            indices = sorted(rng.sample(range(1000), 4))
            vector["bm25"] = models.SparseVector(indices=indices, values=[rng.random() for _ in indices])
        payload = {"i": i, "lang": rng.choice(["en", "de", "ünïcødé"]), "tags": [i % 7, "x"], "nested": {"f": i / 3}}
        points.append(models.PointStruct(id=point_id, vector=vector, payload=payload if i % 11 else {}))
    client.upsert(named, points=points, wait=True)
    client.create_payload_index(named, "lang", models.PayloadSchemaType.KEYWORD, wait=True)
    client.create_collection(plain, vectors_config=models.VectorParams(size=5, distance=models.Distance.DOT))
    client.upsert(
        plain, points=[models.PointStruct(id=i, vector=dense(rng, 5), payload={"n": i}) for i in range(40)], wait=True
    )
    alias = space.name("docs")
    client.update_collection_aliases(
        change_aliases_operations=[
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=named, alias_name=alias))
        ]
    )
    return named, plain, alias


def everything(client: QdrantClient, name: str) -> dict[Any, tuple[Any, Any]]:
    out = {}
    offset = None
    while True:
        records, offset = client.scroll(name, limit=300, offset=offset, with_payload=True, with_vectors=True)
        for r in records:
            out[r.id] = (r.vector, r.payload)
        if offset is None:
            return out


def close(a: Any, b: Any) -> bool:
    """Vectors equal, floats within float32 rounding (Cosine vectors are normalized again on upsert)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and sorted(a) == sorted(b) and all(close(a[k], b[k]) for k in a)
    if isinstance(a, models.SparseVector):
        return isinstance(b, models.SparseVector) and a.indices == b.indices and close(a.values, b.values)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)


def assert_same_points(before: dict[Any, Any], after: dict[Any, Any]) -> None:
    assert sorted(map(str, after)) == sorted(map(str, before))
    for point_id, (vector, payload) in before.items():
        new_vector, new_payload = after[point_id]
        assert new_payload == payload, point_id
        assert close(vector, new_vector), point_id


def config_of(client: QdrantClient, name: str) -> dict[str, Any]:
    info = client.get_collection(name)
    return {
        "params": info.config.params.model_dump(mode="json"),
        "hnsw": info.config.hnsw_config.model_dump(mode="json"),
        "quantization": info.config.quantization_config,
        "payload_schema": {k: v.data_type for k, v in info.payload_schema.items()},
    }


def roundtrip(
    client_of: Any,
    conn: connection.ConnectionInfo,
    new_conn: connection.ConnectionInfo,
    space: devenv_qdrant.QdrantSpace,
    staging: Path,
    mode: qdrant_backup.Mode,
) -> dict[str, Any]:
    with client_of(conn) as client:
        named, plain, alias = build(client, space)
    # Read back through a client of its own, as the backup and the comparison after the restore do: local mode
    # normalizes Cosine vectors in memory on upsert but keeps them as given on disk (a reopened directory
    # returns them unnormalized).
    with client_of(conn) as client:
        before = {name: everything(client, name) for name in (named, plain)}
        configs = {name: config_of(client, name) for name in (named, plain)}
    meta = qdrant_backup.take(conn, staging, timeout=300, collections=[named, plain], mode=mode)
    assert [c["name"] for c in meta["collections"]] == [named, plain]
    assert {c["name"]: c["points"] for c in meta["collections"]} == {named: POINTS, plain: 40}
    assert meta["aliases"] == {alias: named}
    assert meta["collections"][0]["vectors"]["text"]["size"] == 8
    assert meta["collections"][0]["sparseVectors"] == {"bm25": {"modifier": "idf"}}
    assert json.loads((staging / qdrant_backup.MANIFEST).read_text()) == meta
    if "snapshot" in meta["methods"]:
        with client_of(conn) as client:  # the server-side snapshots were removed after the download
            assert all(client.list_snapshots(c["name"]) == [] for c in meta["collections"])

    with client_of(conn) as client:  # destroy
        client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))]
        )
        for name in (named, plain):
            client.delete_collection(name)
        assert not client.collection_exists(named)
    counts = qdrant_backup.restore(staging, new_conn, timeout=300)
    assert counts == {named: POINTS, plain: 40}
    with client_of(new_conn) as client:
        for name in (named, plain):
            assert_same_points(before[name], everything(client, name))
            assert config_of(client, name) == configs[name]
        assert {a.alias_name: a.collection_name for a in client.get_aliases().aliases}[alias] == named
    with pytest.raises(qdrant_backup.QdrantBackupError, match="never overwrites"):
        qdrant_backup.restore(staging, new_conn, timeout=60)
    return meta


@pytest.fixture
def space(
    qdrant_space: devenv_qdrant.QdrantSpace, conn: connection.ConnectionInfo, new_conn: connection.ConnectionInfo
) -> Iterator[devenv_qdrant.QdrantSpace]:
    """Names from the test's qdrant_space; in local mode the test's own directories are cleaned up too (they
    are temporary anyway: this checks that nothing outside the prefix was made)."""
    yield qdrant_space
    for info in {conn.local_path, new_conn.local_path} - {None}:
        with qdrant_engine.open_client(connection.ConnectionInfo(**{**conn.__dict__, "local_path": info})) as client:
            devenv_qdrant.remove_prefixed(client, qdrant_space.prefix)


def test_logical_export_roundtrip(
    client_of: Any,
    conn: connection.ConnectionInfo,
    new_conn: connection.ConnectionInfo,
    space: devenv_qdrant.QdrantSpace,
    tmp_path: Path,
) -> None:
    meta = roundtrip(client_of, conn, new_conn, space, tmp_path / "staging", "logical")
    assert meta["methods"] == ["logical"]
    assert all(c["exported"] == c["points"] for c in meta["collections"])


def test_auto_mode_uses_what_the_store_supports(
    client_of: Any,
    conn: connection.ConnectionInfo,
    new_conn: connection.ConnectionInfo,
    space: devenv_qdrant.QdrantSpace,
    tmp_path: Path,
) -> None:
    meta = roundtrip(client_of, conn, new_conn, space, tmp_path / "staging", "auto")
    if conn.local_path is not None:
        assert meta["server"] == "local-mode" and meta["methods"] == ["logical"]
        assert {c["reason"] for c in meta["collections"]} == {qdrant_backup.LOCAL_REASON}
    else:
        assert meta["methods"] == ["snapshot"]


def test_snapshot_roundtrip_on_a_real_server(
    client_of: Any,
    conn: connection.ConnectionInfo,
    new_conn: connection.ConnectionInfo,
    space: devenv_qdrant.QdrantSpace,
    tmp_path: Path,
) -> None:
    if conn.local_path is not None:
        pytest.skip(NEEDS_SERVER)
    meta = roundtrip(client_of, conn, new_conn, space, tmp_path / "staging", "snapshot")
    assert meta["methods"] == ["snapshot"] and meta["server"] != "local-mode"
    for entry in meta["collections"]:
        assert (tmp_path / "staging" / entry["file"]).stat().st_size == entry["size"] > 0


def test_local_mode_has_no_snapshots(
    conn: connection.ConnectionInfo, space: devenv_qdrant.QdrantSpace, tmp_path: Path
) -> None:
    if conn.local_path is None:
        pytest.skip("local mode only: a real server has snapshots")
    name = space.name("c")
    with qdrant_engine.open_client(conn) as client:
        client.create_collection(name, vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
        with pytest.raises(NotImplementedError, match="not supported in the local Qdrant"):
            client.create_snapshot(name)  # what qdrant-client's local mode does: the reason for the logical path
    with pytest.raises(qdrant_backup.QdrantBackupError, match="local mode has no snapshot API"):
        qdrant_backup.take(conn, tmp_path / "staging", timeout=60, collections=[name], mode="snapshot")
    with pytest.raises(qdrant_backup.QdrantBackupError, match="no collection"):
        qdrant_backup.take(conn, tmp_path / "staging", timeout=60, collections=[space.name("missing")])
