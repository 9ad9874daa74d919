"""Reconcile a VectorIndex: resolve its stores, check the source table, make the collection match the spec
(creating it, repairing drift, rebuilding blue/green on an immutable change), prune the previous collection
when its retention ran out, own the sync CronJob; and observe the collection and the sync.

No Kopf here (handlers/vectorindex.py calls it). What the user must act on is raised as a ``Problem``.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping
from typing import Any

import pydantic
from qdrant_client import QdrantClient

from mlinfra.api import common
from mlinfra.api import vectorindex as api
from mlinfra.engines import connection
from mlinfra.engines import qdrant as qdrant_engine
from mlinfra.k8s import jobstatus, objects
from mlinfra.stores import endpoints, refs
from mlinfra.stores.status import INVALID_SPEC, Problem, ProblemError, invalid_spec
from mlinfra.vectors import collection, jobs, rebuild, runs, source, sync

IMMUTABLE_WITHOUT_SOURCE = "ImmutableFieldChange"
COLLECTION_CONFLICT = "CollectionConflict"
BACKFILL_FAILED = rebuild.BACKFILL_FAILED
QDRANT_ERROR = "QdrantError"
SOURCE_RECHECK = 30.0  # seconds between looks at a source table that is missing or lacks columns
QDRANT_FAILURES: tuple[type[Exception], ...] = (qdrant_engine.LocalBusy, *qdrant_engine.CLIENT_ERRORS)


def parse(body: Mapping[str, Any]) -> api.VectorIndex:
    try:
        return api.VectorIndex.model_validate(dict(body))
    except pydantic.ValidationError as exc:
        raise ProblemError(invalid_spec(exc)) from None


@dataclasses.dataclass(frozen=True)
class Stores:
    qdrant: connection.ConnectionInfo
    source: connection.ConnectionInfo | None


def resolve_stores(vi: api.VectorIndex, emap: endpoints.EndpointMap) -> Stores:
    ns = vi.metadata.namespace or "default"
    qdrant = refs.connection_of(ns, vi.spec.store_ref.name, "qdrant", "spec.storeRef", emap)
    pg = None
    if vi.spec.source is not None:
        pg = refs.connection_of(ns, vi.spec.source.store_ref.name, "postgres", "spec.source.storeRef", emap)
    return Stores(qdrant=qdrant, source=pg)


@dataclasses.dataclass(frozen=True)
class Applied:
    """What one reconcile found and did (the handler turns it into events)."""

    ensured: collection.Result
    rebuilt: rebuild.RebuildResult | None = None
    pruned: str | None = None
    watermark_reset: bool = False  # a new empty collection: the next sync copies every row


def _source_shape(vi: api.VectorIndex, stores: Stores) -> source.SourceShape | None:
    if vi.spec.source is None or stores.source is None:
        return None
    try:
        with connection.postgres(stores.source, application_name="mlinfra-operator") as conn:
            return source.inspect(conn, vi.spec.source)
    except source.SourceInvalid as exc:
        # The table is the user's, not the spec's: fixed by a migration, so looked at again, not given up on.
        raise ProblemError(Problem(INVALID_SPEC, str(exc), stalled=True, recheck=SOURCE_RECHECK)) from None


def _qdrant_problem(exc: Exception, conn: connection.ConnectionInfo) -> ProblemError:
    from mlinfra.engines import observation

    return ProblemError(Problem(QDRANT_ERROR, f"qdrant: {observation.error_message(exc, conn)}", stalled=False))


def reconcile(body: Mapping[str, Any], job_image: str, emap: endpoints.EndpointMap,
              on_rebuild: Callable[[collection.Result], None] | None = None,
              now: datetime.datetime | None = None) -> Applied:
    """Make everything match the spec. ``on_rebuild`` is called before a rebuild starts (status, event)."""
    vi = parse(body)
    stores = resolve_stores(vi, emap)
    shape = _source_shape(vi, stores)
    applied = ensure_collection(vi, stores, shape, on_rebuild, now, allow_rebuild=True)
    owner = objects.owner_reference(body)
    cron = jobs.cronjob(vi, job_image, owner)
    if cron is not None:
        objects.apply(cron)
    else:
        objects.delete("CronJob", vi.metadata.namespace or "default", jobs.cronjob_name(vi.metadata.name))
    return applied


def ensure_collection(vi: api.VectorIndex, stores: Stores, shape: source.SourceShape | None,
                      on_rebuild: Callable[[collection.Result], None] | None = None,
                      now: datetime.datetime | None = None, allow_rebuild: bool = False) -> Applied:
    """The collection part of :func:`reconcile`; the timer runs it too, through :func:`observe` (drift repair,
    retention), but never rebuilds from there (``allow_rebuild=False``): rebuilds follow spec changes only."""
    try:
        with qdrant_engine.open_client(stores.qdrant) as client:
            return _ensure_in(client, vi, stores, shape, on_rebuild, now, allow_rebuild)
    except QDRANT_FAILURES as exc:
        raise _qdrant_problem(exc, stores.qdrant) from None


def _ensure_in(client: QdrantClient, vi: api.VectorIndex, stores: Stores, shape: source.SourceShape | None,
               on_rebuild: Callable[[collection.Result], None] | None, now: datetime.datetime | None,
               allow_rebuild: bool) -> Applied:
    spec, ns, name = vi.spec, vi.metadata.namespace or "default", vi.metadata.name
    retention = (common.parse_duration(spec.previous_collection_retention)
                 if spec.previous_collection_retention else None)
    moment = now or datetime.datetime.now(datetime.UTC)
    try:
        ensured = collection.ensure(client, spec)
    except collection.CollectionError as exc:
        raise ProblemError(Problem(COLLECTION_CONFLICT, str(exc), stalled=True)) from None
    rebuilt, reset = None, False
    if ensured.created and stores.source is not None:
        _reset_watermark(stores.source, ns, name)
        reset = True
    if ensured.rebuild_needed:
        if spec.source is None or stores.source is None:
            changes = ", ".join(ensured.rebuild_reasons)
            raise ProblemError(Problem(IMMUTABLE_WITHOUT_SOURCE, (
                f"{changes} needs a rebuild into a new collection, and without spec.source there is "
                f"nothing to backfill it from: nothing was changed, {ensured.collection!r} still serves "
                f"the alias; revert the change, or add spec.source"), stalled=True))
        if allow_rebuild:
            if on_rebuild is not None:
                on_rebuild(ensured)
            rebuilt = _rebuild(client, vi, stores.source, shape)
    active = rebuilt.active if rebuilt else ensured.collection
    pruned = collection.prune_previous(client, spec, active, retention, moment)
    return Applied(ensured=ensured, rebuilt=rebuilt, pruned=pruned, watermark_reset=reset)


def _reset_watermark(pg: connection.ConnectionInfo, ns: str, name: str) -> None:
    with connection.postgres(pg, application_name="mlinfra-operator") as conn:
        sync.commit_watermark(conn, ns, name, sync.Watermark())


def _rebuild(client: QdrantClient, vi: api.VectorIndex, pg: connection.ConnectionInfo,
             shape: source.SourceShape | None) -> rebuild.RebuildResult:
    ns, name = vi.metadata.namespace or "default", vi.metadata.name
    with connection.postgres(pg, application_name="mlinfra-operator-rebuild") as conn:
        filled: list[sync.Backfill] = []

        def backfill(target: str) -> int:
            filled.append(sync.snapshot_backfill(conn, client, vi.spec, target, shape))
            return filled[-1].written

        try:
            # Hold the sync lock: a sync Job running meanwhile would move the watermark of the old collection.
            with runs.exclusive(conn, ns, name):
                result = rebuild.rebuild(client, vi.spec, backfill, lambda: filled[-1].expected)
                sync.commit_watermark(conn, ns, name, filled[-1].watermark)
        except runs.RunInProgress as exc:
            raise ProblemError(Problem(BACKFILL_FAILED, f"rebuild postponed: {exc}", stalled=False)) from None
        except rebuild.BackfillFailed as exc:
            raise ProblemError(Problem(BACKFILL_FAILED, str(exc), stalled=False)) from None
    return result


@dataclasses.dataclass(frozen=True)
class Observed:
    active: str | None
    previous: str | None
    points: int | None
    indexed_vectors: int | None
    collection_status: str | None
    optimizer_error: str | None
    replicas: list[qdrant_engine.ShardReplica] | None  # None: not observable (local mode)
    progress: sync.Progress | None
    last_run: common.SyncRun | None
    job_failed: str | None


def observe(vi: api.VectorIndex, stores: Stores, repair: bool = False) -> tuple[Applied | None, Observed]:
    """The collection and the sync as they are; with ``repair`` (the timer) drift is repaired and retention
    applied first, in the same client session (local mode loads the whole directory per session)."""
    spec, ns, name = vi.spec, vi.metadata.namespace or "default", vi.metadata.name
    applied = None
    try:
        with qdrant_engine.open_client(stores.qdrant) as client:
            if repair:
                applied = _ensure_in(client, vi, stores, None, None, None, allow_rebuild=False)
            active = collection.alias_target(client, spec.collection)
            previous = points = indexed = status = optimizer_error = None
            replicas: list[qdrant_engine.ShardReplica] | None = None
            if active is not None:
                info = client.get_collection(active)
                prev_name, _ = collection.previous_of(info)
                previous = prev_name if prev_name and client.collection_exists(prev_name) else None
                points = info.points_count
                indexed = info.indexed_vectors_count
                status = str(getattr(info.status, "value", info.status))
                opt = info.optimizer_status
                optimizer_error = getattr(opt, "error", None)
                if not qdrant_engine.is_local_mode(client):
                    replicas = qdrant_engine.collection_replicas(client, active)
    except QDRANT_FAILURES as exc:
        raise _qdrant_problem(exc, stores.qdrant) from None
    progress = last = None
    if spec.source is not None and stores.source is not None:
        try:
            with connection.postgres(stores.source, application_name="mlinfra-operator") as conn:
                source.inspect(conn, spec.source)
                progress = sync.progress(conn, spec, ns, name)
                last = runs.last(conn, ns, name)
        except source.SourceInvalid as exc:
            raise ProblemError(Problem(INVALID_SPEC, str(exc), stalled=True, recheck=SOURCE_RECHECK)) from None
    failed = jobstatus.newest_failure(ns, {jobs.KIND_LABEL: name})
    return applied, Observed(active=active, previous=previous, points=points, indexed_vectors=indexed,
                             collection_status=status, optimizer_error=optimizer_error, replicas=replicas,
                             progress=progress, last_run=last, job_failed=failed)


def request_sync(body: Mapping[str, Any], job_image: str, requested_at: str) -> str:
    """Start the one-off Job for a ``mlinfra.io/sync-requested-at`` value (idempotent); its name."""
    vi = parse(body)
    if vi.spec.source is None:
        raise ProblemError(Problem(INVALID_SPEC, "sync requested, but spec.source is not set: there is "
                                   "nothing to sync from", stalled=True))
    job = jobs.ondemand_job(vi, job_image, objects.owner_reference(body), requested_at)
    objects.create(job)
    return str(job["metadata"]["name"])
