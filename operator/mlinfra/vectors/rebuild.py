"""Blue/green rebuild of a VectorIndex's collection when an immutable setting (size, distance, datatype) changes.

Order, each step only after the previous one succeeded: create the new physical collection (with the spec's
settings and payload indexes), backfill it through the caller's function, verify its exact point count equals
the expected count, record on it which collection it replaces, then move the alias in one atomic
``update_collection_aliases`` call. The previous collection is kept for rollback. Any failure before the swap
leaves the alias where it was and raises :class:`BackfillFailed`; the half-filled new collection stays for
inspection and is reused (emptied) by the next attempt.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable

from qdrant_client import QdrantClient

from mlinfra.api import vectorindex
from mlinfra.vectors import collection

BACKFILL_FAILED = "BackfillFailed"


class BackfillFailed(Exception):
    """The new collection was not filled as expected; the alias still points at the old one."""

    reason = BACKFILL_FAILED


@dataclasses.dataclass(frozen=True)
class RebuildResult:
    alias: str
    active: str  # the new physical collection the alias now points at
    previous: str | None  # the collection it pointed at before (kept), None on a first build
    points: int


def rebuild(
    client: QdrantClient,
    spec: vectorindex.VectorIndexSpec,
    backfill: Callable[[str], int],
    expected_count: int | Callable[[], int],
    *,
    owner: str,
) -> RebuildResult:
    """Build ``spec``'s physical collection beside the live one, fill, verify, swap the alias.

    ``backfill(new_collection)`` writes the points (waiting for Qdrant's acknowledgement) and returns how
    many it wrote; ``expected_count`` is the number of points the source holds (or a function giving it after
    the backfill, when the backfill counts in its own snapshot).
    """
    alias, target = spec.collection, collection.physical_name(spec)
    previous = collection.alias_target(client, alias)
    if previous == target:
        raise ValueError(f"alias {alias!r} already points at {target!r}: nothing to rebuild")
    if client.collection_exists(target):  # a failed earlier attempt: start from empty
        if not collection.is_ours(client, alias, target, owner):
            raise collection.CollectionError(
                f"{target!r} exists and is not a collection of this VectorIndex: the rebuild does not replace it"
            )
        client.delete_collection(target)
    collection.create(client, spec, target, owner=owner)
    info = client.get_collection(target)
    collection.reconcile_indexes(client, spec, target, info)
    try:
        written = backfill(target)
    except Exception as exc:
        raise BackfillFailed(f"backfill of {target!r} failed: {exc}; alias {alias!r} left on {previous!r}") from exc
    points = client.count(target, exact=True).count
    if callable(expected_count):
        expected_count = expected_count()
    if points != expected_count:
        raise BackfillFailed(
            f"backfill of {target!r} wrote {written} points, the collection holds {points}, "
            f"the source has {expected_count}; alias {alias!r} left on {previous!r}"
        )
    if previous is not None:
        # Recorded on the collection itself, so status and retention read it from Qdrant, not from memory; and
        # before the swap: a run killed between the swap and this write would leave the previous collection
        # named nowhere, never pruned nor reported. Until the swap nothing reads it (only the live collection's
        # record is read), and a run that stops before the swap has its collection made anew by the next attempt.
        client.update_collection(
            target,
            metadata={
                collection.PREVIOUS_KEY: {
                    "name": previous,
                    "swappedAt": datetime.datetime.now(datetime.UTC).isoformat(),
                }
            },
        )
    collection.point_alias(client, alias, target, previous)
    return RebuildResult(alias=alias, active=target, previous=previous, points=points)
