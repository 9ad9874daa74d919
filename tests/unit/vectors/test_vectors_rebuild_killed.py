"""A rebuild killed at its last step: the collection it replaced stays recorded, so retention still prunes it
and the status still reports it (the issue 13 e2e test kills the rebuild Job's process mid-backfill, and the
operator while the process runs; this is the moment after the alias swap, which no test can hit from outside)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from qdrant_client import QdrantClient

from mlinfra.api import vectorindex
from mlinfra.vectors import collection, rebuild

OWNER = "ml/docs"


class Killed(BaseException):
    """The process dying: nothing after it runs (a BaseException, so no ``except Exception`` catches it)."""


def spec(distance: str) -> vectorindex.VectorIndexSpec:
    return vectorindex.VectorIndexSpec.model_validate(
        {"storeRef": {"name": "vectors"}, "collection": "docs", "vectors": {"size": 4, "distance": distance}}
    )


def test_killed_right_after_the_alias_swap_the_previous_collection_is_recorded_and_pruned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = QdrantClient(location=":memory:")
    old = collection.ensure(client, spec("Cosine"), owner=OWNER).collection
    swap = collection.point_alias

    def swap_then_die(*args: Any, **kwargs: Any) -> None:
        swap(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(collection, "point_alias", swap_then_die)
    with pytest.raises(Killed):
        rebuild.rebuild(client, spec("Dot"), lambda target: 0, 0, owner=OWNER)
    active = collection.alias_target(client, "docs")
    assert active == collection.physical_name(spec("Dot")) != old
    assert collection.previous_of(client.get_collection(active))[0] == old
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    assert collection.prune_previous(client, spec("Dot"), active, datetime.timedelta(0), later, owner=OWNER) == old
    assert not client.collection_exists(old)
