"""vectors.collection against Qdrant: local mode here, a real server when QDRANT_URL is set (recorded per test
as the ``qdrant`` property). Every name comes from the test's ``qdrant_space``: the suite passes on a shared,
persistent server, run after run."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from mlinfra.api import vectorindex
from mlinfra.devenv import qdrant as devenv_qdrant
from mlinfra.vectors import collection, rebuild

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),
]


Spec = Callable[..., vectorindex.VectorIndexSpec]


@pytest.fixture
def docs(qdrant_space: devenv_qdrant.QdrantSpace) -> str:
    """The alias the tests' VectorIndex serves: "docs" in this test's space."""
    return qdrant_space.name("docs")


@pytest.fixture
def spec(docs: str) -> Spec:
    def make(**overrides: Any) -> vectorindex.VectorIndexSpec:
        body: dict[str, Any] = {
            "storeRef": {"name": "qdrant"},
            "collection": docs,
            "vectors": {"size": 4, "distance": "Cosine"},
        }
        body.update(overrides)
        return vectorindex.VectorIndexSpec.model_validate(body)

    return make


def test_create_points_the_alias_at_a_hashed_physical_collection(qdrant: QdrantClient, spec: Spec, docs: str) -> None:
    s = spec(hnsw={"m": 8}, payloadIndexes=[{"field": "lang", "type": "keyword"}])
    result = collection.ensure(qdrant, s, owner="test/vectors")
    assert result.created and not result.rebuild_needed
    assert result.collection == collection.physical_name(s) and result.collection.startswith(f"{docs}-")
    assert collection.alias_target(qdrant, docs) == result.collection
    assert result.indexes_created == ("lang",)
    params = qdrant.get_collection(docs).config.params.vectors
    assert isinstance(params, models.VectorParams)
    assert (params.size, params.distance) == (4, models.Distance.COSINE)
    again = collection.ensure(qdrant, s, owner="test/vectors")
    assert (again.created, again.changes, again.indexes_created, again.indexes_dropped) == (False, (), (), ())


def test_mutable_change_is_applied_in_place_and_reported(qdrant: QdrantClient, spec: Spec, docs: str) -> None:
    first = collection.ensure(qdrant, spec(hnsw={"m": 8}), owner="test/vectors")
    result = collection.ensure(
        qdrant,
        spec(hnsw={"m": 16, "efConstruct": 200}, quantization={"type": "scalar", "quantile": 0.99}),
        owner="test/vectors",
    )
    assert result.collection == first.collection and not result.created
    assert "hnsw.m: 8 -> 16" in result.changes
    assert "quantization: none -> scalar" in result.changes
    assert (
        collection.ensure(
            qdrant,
            spec(hnsw={"m": 16, "efConstruct": 200}, quantization={"type": "scalar", "quantile": 0.99}),
            owner="test/vectors",
        ).changes
        == ()
    )
    removed = collection.ensure(qdrant, spec(hnsw={"m": 16, "efConstruct": 200}), owner="test/vectors")
    assert removed.changes == ("quantization: scalar -> none",)


def test_drift_made_by_hand_is_repaired(qdrant: QdrantClient, spec: Spec, docs: str) -> None:
    if not devenv_qdrant.is_real_server():
        pytest.skip("local mode keeps no HNSW settings: a change by hand is not observable (set QDRANT_URL)")
    s = spec(hnsw={"m": 8})
    name = collection.ensure(qdrant, s, owner="test/vectors").collection
    qdrant.update_collection(name, hnsw_config=models.HnswConfigDiff(m=32))
    result = collection.ensure(qdrant, s, owner="test/vectors")
    assert result.changes == ("hnsw.m: 32 -> 8",)
    assert qdrant.get_collection(name).config.hnsw_config.m == 8


def test_immutable_change_is_reported_not_applied(qdrant: QdrantClient, spec: Spec, docs: str) -> None:
    before = collection.ensure(qdrant, spec(), owner="test/vectors")
    result = collection.ensure(qdrant, spec(vectors={"size": 8, "distance": "Dot"}), owner="test/vectors")
    assert result.rebuild_needed and result.collection == before.collection != result.target
    assert result.rebuild_reasons == ("vectors.size: 4 -> 8", "vectors.distance: Cosine -> Dot")
    assert collection.alias_target(qdrant, docs) == before.collection
    assert not qdrant.collection_exists(result.target)


def test_payload_index_reconcile_never_drops_a_foreign_index(qdrant: QdrantClient, spec: Spec, docs: str) -> None:
    name = collection.ensure(
        qdrant,
        spec(payloadIndexes=[{"field": "lang", "type": "keyword"}, {"field": "year", "type": "integer"}]),
        owner="test/vectors",
    ).collection
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qdrant.create_payload_index(name, "team", models.PayloadSchemaType.KEYWORD, wait=True)  # by hand
    deleted: list[str] = []
    original = qdrant.delete_payload_index

    def spy(collection_name: str, field_name: str, **kwargs: Any) -> Any:
        deleted.append(field_name)
        return original(collection_name, field_name, **kwargs)

    qdrant.delete_payload_index = spy  # type: ignore[method-assign]
    result = collection.ensure(
        qdrant, spec(payloadIndexes=[{"field": "lang", "type": "keyword"}]), owner="test/vectors"
    )
    assert result.indexes_dropped == ("year",) and result.indexes_created == ()
    assert "team" not in deleted
    result = collection.ensure(qdrant, spec(), owner="test/vectors")
    assert result.indexes_dropped == ("lang",)
    assert "team" not in deleted
    if devenv_qdrant.is_real_server():
        assert set(qdrant.get_collection(name).payload_schema) == {"team"}


def test_a_plain_collection_with_the_alias_name_is_not_adopted(qdrant: QdrantClient, spec: Spec, docs: str) -> None:
    qdrant.create_collection(docs, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    with pytest.raises(collection.CollectionError, match="not an alias"):
        collection.ensure(qdrant, spec(), owner="test/vectors")


def _fill(client: QdrantClient, count: int, size: int) -> Any:
    def backfill(name: str) -> int:
        client.upsert(
            name,
            points=[models.PointStruct(id=i, vector=[float(i + 1)] * size, payload={"i": i}) for i in range(count)],
            wait=True,
        )
        return count

    return backfill


def test_rebuild_swaps_the_alias_after_verification_and_keeps_the_previous(
    qdrant: QdrantClient, spec: Spec, docs: str
) -> None:
    old = collection.ensure(qdrant, spec(), owner="test/vectors").collection
    _fill(qdrant, 3, 4)(old)
    new_spec = spec(vectors={"size": 8, "distance": "Dot"}, payloadIndexes=[{"field": "i", "type": "integer"}])
    seen: list[str | None] = []

    def backfill(name: str) -> int:
        seen.append(collection.alias_target(qdrant, docs))  # still the old one while filling
        return int(_fill(qdrant, 5, 8)(name))

    result = rebuild.rebuild(qdrant, new_spec, backfill, expected_count=5, owner="test/vectors")
    assert seen == [old]
    assert (result.previous, result.active, result.points) == (old, collection.physical_name(new_spec), 5)
    assert collection.alias_target(qdrant, docs) == result.active
    assert qdrant.count(docs, exact=True).count == 5
    assert qdrant.count(old, exact=True).count == 3  # kept for rollback
    after = collection.ensure(qdrant, new_spec, owner="test/vectors")
    assert not after.rebuild_needed and after.collection == result.active and after.indexes_created == ()


@pytest.mark.parametrize("failure", ["raises", "short"])
def test_failed_backfill_keeps_the_old_alias(qdrant: QdrantClient, failure: str, spec: Spec, docs: str) -> None:
    old = collection.ensure(qdrant, spec(), owner="test/vectors").collection
    new_spec = spec(vectors={"size": 8, "distance": "Cosine"})

    def backfill(name: str) -> int:
        _fill(qdrant, 2, 8)(name)
        if failure == "raises":
            raise RuntimeError("source went away")
        return 2

    with pytest.raises(rebuild.BackfillFailed, match=f"alias '{docs}' left on") as info:
        rebuild.rebuild(qdrant, new_spec, backfill, expected_count=4, owner="test/vectors")
    assert info.value.reason == "BackfillFailed"
    assert collection.alias_target(qdrant, docs) == old
    # A retry starts from an empty collection and succeeds.
    result = rebuild.rebuild(qdrant, new_spec, _fill(qdrant, 4, 8), expected_count=4, owner="test/vectors")
    assert result.previous == old and qdrant.count(docs, exact=True).count == 4


def test_collection_params_change_in_place_and_shards_need_a_rebuild(
    qdrant: QdrantClient, spec: Spec, docs: str
) -> None:
    first = spec(replicationFactor=1, onDiskPayload=False)
    collection.ensure(qdrant, first, owner="test/vectors")
    changed = collection.ensure(qdrant, spec(replicationFactor=2, onDiskPayload=True), owner="test/vectors")
    assert set(changed.changes) == {"params.replication_factor: 1 -> 2", "params.on_disk_payload: False -> True"}
    assert not changed.rebuild_needed
    assert collection.ensure(qdrant, spec(replicationFactor=2, onDiskPayload=True), owner="test/vectors").changes == ()
    resharded = collection.ensure(qdrant, spec(replicationFactor=2, onDiskPayload=True, shards=2), owner="test/vectors")
    assert resharded.rebuild_reasons == ("shards: default -> 2",)
    assert resharded.target != resharded.collection


# --- tenants sharing one Qdrant: aliases are server-wide -------------------------------------------------------


def test_an_alias_serving_another_vectorindex_is_refused_and_nothing_changes(
    qdrant: QdrantClient, spec: Spec, docs: str
) -> None:
    s = spec(hnsw={"m": 8})
    mine = collection.ensure(qdrant, s, owner="team-a/docs")
    before = qdrant.get_collection(mine.collection).config
    # Another namespace's VectorIndex with the same alias and other settings: refused before any change.
    with pytest.raises(collection.CollectionError, match="belongs to VectorIndex team-a/docs"):
        collection.ensure(qdrant, spec(hnsw={"m": 32}), owner="team-b/docs")
    assert qdrant.get_collection(mine.collection).config == before
    assert collection.alias_target(qdrant, docs) == mine.collection
    assert collection.ensure(qdrant, s, owner="team-a/docs").changes == ()


def test_another_vectorindex_never_prunes_or_rebuilds_over_a_collection_not_its_own(
    qdrant: QdrantClient, spec: Spec, docs: str
) -> None:
    old = collection.ensure(qdrant, spec(), owner="team-a/docs")
    assert not collection.is_ours(qdrant, docs, old.collection, "team-b/docs")
    assert collection.is_ours(qdrant, docs, old.collection, "team-a/docs")
    # A rebuild by team-b towards a target that team-a already holds (same alias, same settings) is refused.
    bigger = spec(vectors={"size": 8, "distance": "Cosine"})
    collection.create(qdrant, bigger, collection.physical_name(bigger), owner="team-a/docs")
    with pytest.raises(collection.CollectionError, match="not a collection of this VectorIndex"):
        rebuild.rebuild(qdrant, bigger, lambda target: 0, 0, owner="team-b/docs")
    assert qdrant.collection_exists(collection.physical_name(bigger))


def test_a_collection_made_before_owners_were_recorded_is_claimed_by_the_first(
    qdrant: QdrantClient, spec: Spec, docs: str
) -> None:
    s = spec()
    name = collection.physical_name(s)
    collection.create(qdrant, s, name, owner="x/y")
    qdrant.update_collection(name, metadata={collection.OWNER_KEY: None})  # as an older operator left it
    collection.point_alias(qdrant, docs, name, None)
    collection.ensure(qdrant, s, owner="team-a/docs")
    assert qdrant.get_collection(name).config.metadata[collection.OWNER_KEY] == "team-a/docs"
    with pytest.raises(collection.CollectionError, match="team-a/docs"):
        collection.ensure(qdrant, s, owner="team-b/docs")


def test_an_alias_to_a_collection_the_operator_did_not_make_is_not_adopted(
    qdrant: QdrantClient, qdrant_space: devenv_qdrant.QdrantSpace, spec: Spec, docs: str
) -> None:
    theirs = qdrant_space.name("theirs")
    qdrant.create_collection(theirs, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    collection.point_alias(qdrant, docs, theirs, None)
    with pytest.raises(collection.CollectionError, match="did not create"):
        collection.ensure(qdrant, spec(hnsw={"m": 32}), owner="team-a/docs")
    assert qdrant.get_collection(theirs).config.metadata in (None, {})


def test_collections_nothing_refers_to_are_pruned_and_nothing_else(qdrant: QdrantClient, spec: Spec, docs: str) -> None:
    a, b, c = spec(), spec(vectors={"size": 8, "distance": "Dot"}), spec(vectors={"size": 8, "distance": "Euclid"})
    first = collection.ensure(qdrant, a, owner="test/vectors").collection
    to_b = rebuild.rebuild(qdrant, b, _fill(qdrant, 2, 8), expected_count=2, owner="test/vectors")
    to_c = rebuild.rebuild(qdrant, c, _fill(qdrant, 2, 8), expected_count=2, owner="test/vectors")
    assert (to_b.previous, to_c.previous) == (first, to_b.active)
    # A rebuild that never swapped (the spec went back meanwhile): its collection is referred to by nothing.
    abandoned = collection.physical_name(spec(vectors={"size": 16, "distance": "Dot"}))
    collection.create(qdrant, spec(vectors={"size": 16, "distance": "Dot"}), abandoned, owner="test/vectors")
    # Look-alikes that are not this index's: another owner's, and one made by hand without the operator's metadata.
    foreign = f"{docs}-{'ab' * 4}"
    collection.create(qdrant, spec(vectors={"size": 4, "distance": "Dot"}), foreign, owner="other/vectors")
    by_hand = f"{docs}-{'cd' * 4}"
    qdrant.create_collection(by_hand, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    strays = collection.prune_strays(qdrant, c, to_c.active, owner="test/vectors")
    assert strays == tuple(sorted([first, abandoned]))
    left = {col.name for col in qdrant.get_collections().collections if col.name.startswith(f"{docs}-")}
    assert left == {to_c.active, to_b.active, foreign, by_hand}  # live, previous, and what is not ours
    assert collection.prune_strays(qdrant, c, to_c.active, owner="test/vectors") == ()
