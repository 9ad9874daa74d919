"""Reconcile a VectorIndex: resolve its stores, check the source table, make the collection match the spec
(creating it, repairing drift, rebuilding blue/green on an immutable change), prune the previous collection
when its retention ran out, own the sync CronJob; and observe the collection and the sync.

No Kopf here (handlers/vectorindex.py wires it through ``handlers.kind``). What the user must act on is
raised as a ``Problem``; what the operator did is posted through the object's reporter as events.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

from qdrant_client import QdrantClient

from mlinfra import metrics
from mlinfra.api import common
from mlinfra.api import vectorindex as api
from mlinfra.context import Context, Obj, Reporter
from mlinfra.engines import connection, observation
from mlinfra.engines import qdrant as qdrant_engine
from mlinfra.k8s import jobstatus
from mlinfra.problems import INVALID_SPEC, Problem, ProblemError
from mlinfra.stores import children, refs
from mlinfra.vectors import collection, jobs, rebuild, runs, source, status, sync

IMMUTABLE_WITHOUT_SOURCE = "ImmutableFieldChange"
COLLECTION_CONFLICT = "CollectionConflict"
BACKFILL_FAILED = rebuild.BACKFILL_FAILED
QDRANT_ERROR = "QdrantError"
QDRANT_REFUSED = "QdrantRefused"
SOURCE_RECHECK = 30.0  # seconds between looks at a source table that is missing or lacks columns
# Seconds between attempts at what Qdrant refused: the answer may depend on the server's state (a collection
# deleted by hand, an API key, a server upgrade) as much as on the spec.
QDRANT_REFUSED_RECHECK = 60.0
QDRANT_FAILURES: tuple[type[Exception], ...] = (
    collection.SpecRefused,
    qdrant_engine.LocalBusy,
    *qdrant_engine.CLIENT_ERRORS,
)


@dataclasses.dataclass(frozen=True)
class Stores:
    qdrant: connection.ConnectionInfo
    source: connection.ConnectionInfo | None


def resolve_stores(ctx: Context, vi: api.VectorIndex) -> Stores:
    ns = vi.metadata.namespace or "default"
    qdrant = refs.connection_of(ctx, ns, vi.spec.store_ref.name, "qdrant", "spec.storeRef")
    pg = None
    if vi.spec.source is not None:
        pg = refs.connection_of(ctx, ns, vi.spec.source.store_ref.name, "postgres", "spec.source.storeRef")
    return Stores(qdrant=qdrant, source=pg)


@dataclasses.dataclass(frozen=True)
class Applied:
    """What one pass over the collection found and did (posted as events by :func:`announce`)."""

    ensured: collection.Result
    rebuilt: rebuild.RebuildResult | None = None
    pruned: str | None = None
    watermark_reset: bool = False  # a new empty collection: the next sync copies every row
    strays: tuple[str, ...] = ()  # collections of this index nothing referred to, deleted


def announce(report: Reporter, applied: Applied, drift: bool) -> None:
    """Events for what ``applied`` did; ``drift``: found by an observation (changed by hand), not a spec
    change. A payload-index conflict is a standing state, warned about by each observation (which always
    follows a reconcile), so once per handler run as before."""
    ensured = applied.ensured
    if ensured.created:
        report.event("CollectionCreated", f"created {ensured.collection} behind alias {ensured.alias}")
    if ensured.changes:
        report.event(
            "DriftRepaired" if drift else "SettingsUpdated",
            ("changed by hand, restored: " if drift else "updated in place: ") + "; ".join(ensured.changes),
        )
    if ensured.indexes_created or ensured.indexes_dropped:
        report.event(
            "PayloadIndexesReconciled",
            f"created {list(ensured.indexes_created)}, dropped {list(ensured.indexes_dropped)}",
        )
    if ensured.index_conflicts and drift:
        report.warning("PayloadIndexConflict", "; ".join(ensured.index_conflicts))
    if applied.rebuilt is not None:
        r = applied.rebuilt
        report.event(
            "Rebuilt",
            f"alias {r.alias} moved from {r.previous} to {r.active} "
            f"({r.points} points, count verified against the source)",
        )
    if applied.pruned:
        report.event("PreviousCollectionDeleted", f"deleted {applied.pruned}: spec.previousCollectionRetention passed")
    if applied.watermark_reset:
        report.event("WatermarkReset", "new empty collection: the next sync copies every row")
    if applied.strays:
        report.event(
            "StrayCollectionsDeleted",
            f"deleted {', '.join(applied.strays)}: collections of this index left by earlier rebuilds, neither "
            "live nor kept as the previous one",
        )


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
    """What a failed Qdrant call means for the index. Refused as invalid for a part of the spec: InvalidSpec
    naming it. Refused otherwise (a collection gone, a rejected API key): QdrantRefused. Both Stalled, in
    Qdrant's own words, and tried again every QDRANT_REFUSED_RECHECK seconds. Anything else may pass by
    itself (no answer, a 5xx): QdrantError, retried."""
    if isinstance(exc, collection.SpecRefused):
        message = observation.scrub(str(exc), conn.password)
        return ProblemError(Problem(INVALID_SPEC, message, stalled=True, recheck=QDRANT_REFUSED_RECHECK))
    message = qdrant_engine.describe(exc, conn)
    if qdrant_engine.refusal(exc) is not None:
        return ProblemError(Problem(QDRANT_REFUSED, message, stalled=True, recheck=QDRANT_REFUSED_RECHECK))
    return ProblemError(Problem(QDRANT_ERROR, f"qdrant: {message}", stalled=False))


def reconcile(ctx: Context, obj: Obj[api.VectorIndex]) -> None:
    """Make everything match the spec: the collection (rebuilt blue/green when an immutable setting
    changed), the previous collection's retention, the sync CronJob."""
    vi = obj.model
    stores = resolve_stores(ctx, vi)
    shape = _source_shape(vi, stores)

    def rebuilding(found: collection.Result) -> None:
        why = ", ".join(found.rebuild_reasons)
        obj.report.event("Rebuilding", f"{why}: building {found.target} beside {found.collection}")
        # Written now, not with the status at the end: the rebuild may take minutes.
        obj.report.status_now(status.compute(status.Facts(generation=obj.generation, rebuilding=why), obj.status))

    try:
        with qdrant_engine.open_client(stores.qdrant) as client:
            applied = _ensure_in(client, vi, stores, shape, rebuilding, allow_rebuild=True)
    except QDRANT_FAILURES as exc:
        raise _qdrant_problem(exc, stores.qdrant) from None
    announce(obj.report, applied, drift=False)
    cron = jobs.cronjob(vi, ctx.settings.job_image, obj.owner_reference())
    if cron is not None:
        children.apply(ctx.kube, cron)
    else:
        children.delete(ctx.kube, obj.owner_reference(), "CronJob", obj.namespace, jobs.cronjob_name(obj.name))


def _ensure_in(
    client: QdrantClient,
    vi: api.VectorIndex,
    stores: Stores,
    shape: source.SourceShape | None,
    on_rebuild: Callable[[collection.Result], None] | None,
    allow_rebuild: bool,
) -> Applied:
    """The collection part of :func:`reconcile`; :func:`observe` runs it too (drift repair, retention) but
    never rebuilds from there (``allow_rebuild=False``)."""
    spec, ns, name = vi.spec, vi.metadata.namespace or "default", vi.metadata.name
    refused = qdrant_engine.copies_refusal(
        spec.replication_factor, qdrant_engine.peer_count(client), spec.store_ref.name
    )
    if refused is not None:  # nothing is created or changed; peers may be added: looked at again
        raise ProblemError(Problem(INVALID_SPEC, refused, stalled=True, recheck=QDRANT_REFUSED_RECHECK))
    retention = (
        common.parse_duration(spec.previous_collection_retention) if spec.previous_collection_retention else None
    )
    try:
        ensured = collection.ensure(client, spec, owner=f"{ns}/{name}")
    except collection.CollectionError as exc:
        raise ProblemError(Problem(COLLECTION_CONFLICT, str(exc), stalled=True)) from None
    rebuilt, reset = None, False
    if ensured.created and stores.source is not None:
        _reset_watermark(stores.source, ns, name)
        reset = True
    if ensured.rebuild_needed:
        if spec.source is None or stores.source is None:
            changes = ", ".join(ensured.rebuild_reasons)
            raise ProblemError(
                Problem(
                    IMMUTABLE_WITHOUT_SOURCE,
                    (
                        f"{changes} needs a rebuild into a new collection, and without spec.source there is "
                        f"nothing to backfill it from: nothing was changed, {ensured.collection!r} still serves "
                        f"the alias; revert the change, or add spec.source"
                    ),
                    stalled=True,
                )
            )
        if allow_rebuild:
            if on_rebuild is not None:
                on_rebuild(ensured)
            rebuilt = _rebuild(client, vi, stores.source, shape)
    active = rebuilt.active if rebuilt else ensured.collection
    pruned = collection.prune_previous(
        client, spec, active, retention, datetime.datetime.now(datetime.UTC), owner=f"{ns}/{name}"
    )
    strays = collection.prune_strays(client, spec, active, owner=f"{ns}/{name}") if allow_rebuild else ()
    return Applied(ensured=ensured, rebuilt=rebuilt, pruned=pruned, watermark_reset=reset, strays=strays)


def _reset_watermark(pg: connection.ConnectionInfo, ns: str, name: str) -> None:
    with connection.postgres(pg, application_name="mlinfra-operator") as conn:
        sync.commit_watermark(conn, ns, name, sync.Watermark())


def _rebuild(
    client: QdrantClient, vi: api.VectorIndex, pg: connection.ConnectionInfo, shape: source.SourceShape | None
) -> rebuild.RebuildResult:
    ns, name = vi.metadata.namespace or "default", vi.metadata.name
    with connection.postgres(pg, application_name="mlinfra-operator-rebuild") as conn:
        filled: list[sync.Backfill] = []

        def backfill(target: str) -> int:
            filled.append(sync.snapshot_backfill(conn, client, vi.spec, target, shape))
            return filled[-1].written

        try:
            # Hold the sync lock: a sync Job running meanwhile would move the watermark of the old collection.
            with runs.exclusive(conn, ns, name):
                result = rebuild.rebuild(client, vi.spec, backfill, lambda: filled[-1].expected, owner=f"{ns}/{name}")
                sync.commit_watermark(conn, ns, name, filled[-1].watermark)
        except runs.RunInProgress as exc:
            raise ProblemError(Problem(BACKFILL_FAILED, f"rebuild postponed: {exc}", stalled=False)) from None
        except rebuild.BackfillFailed as exc:
            raise ProblemError(backfill_problem(exc, pg)) from None
        except collection.CollectionError as exc:
            raise ProblemError(Problem(COLLECTION_CONFLICT, str(exc), stalled=True)) from None
    return result


def backfill_problem(exc: rebuild.BackfillFailed, pg: connection.ConnectionInfo) -> Problem:
    """A failed backfill (the alias stayed) is retried; when Qdrant refused the points, not a timeout or an
    outage, every attempt fails the same way: Stalled, looked at again every QDRANT_REFUSED_RECHECK seconds."""
    refused = exc.__cause__ is not None and qdrant_engine.refusal(exc.__cause__) is not None
    return Problem(
        BACKFILL_FAILED,
        observation.scrub(str(exc), pg.password),
        stalled=refused,
        recheck=QDRANT_REFUSED_RECHECK if refused else None,
    )


def observe(ctx: Context, obj: Obj[api.VectorIndex]) -> dict[str, Any]:
    """The new status: drift made by hand repaired and the previous collection's retention applied first
    (never a rebuild: rebuilds follow spec changes, in :func:`reconcile`), in the same client session (local
    mode loads the whole directory per session), then the collection and the sync as they are. Records the
    kind's metrics."""
    vi = obj.model
    spec, ns, name = vi.spec, obj.namespace, obj.name
    stores = resolve_stores(ctx, vi)
    try:
        with qdrant_engine.open_client(stores.qdrant) as client:
            applied = _ensure_in(client, vi, stores, None, None, allow_rebuild=False)
            active = collection.alias_target(client, spec.collection)
            previous = points = indexed = collection_status = optimizer_error = None
            replicas: list[qdrant_engine.ShardReplica] | None = None
            if active is not None:
                info = client.get_collection(active)
                prev_name, _ = collection.previous_of(info)
                previous = prev_name if prev_name and client.collection_exists(prev_name) else None
                points = info.points_count
                indexed = info.indexed_vectors_count
                collection_status = str(getattr(info.status, "value", info.status))
                optimizer_error = getattr(info.optimizer_status, "error", None)
                if not qdrant_engine.is_local_mode(client):
                    replicas = qdrant_engine.collection_replicas(client, active)
    except QDRANT_FAILURES as exc:
        raise _qdrant_problem(exc, stores.qdrant) from None
    announce(obj.report, applied, drift=True)
    progress = last = None
    if spec.source is not None and stores.source is not None:
        try:
            with connection.postgres(stores.source, application_name="mlinfra-operator") as conn:
                source.inspect(conn, spec.source)
                progress = sync.progress(conn, spec, ns, name)
                last = runs.last(conn, ns, name)
        except source.SourceInvalid as exc:
            raise ProblemError(Problem(INVALID_SPEC, str(exc), stalled=True, recheck=SOURCE_RECHECK)) from None
    limit = status.max_lag(vi)
    new = status.compute(
        status.Facts(
            generation=obj.generation,
            active=active,
            previous=previous,
            points=points,
            indexed_vectors=indexed,
            collection_status=collection_status,
            optimizer_error=optimizer_error,
            replicas=replicas,
            has_source=spec.source is not None,
            source_watermark=progress.source_watermark if progress else None,
            index_watermark=progress.index_watermark if progress else None,
            rows_behind=progress.rows_behind if progress else None,
            lag_seconds=progress.lag_seconds if progress else None,
            last_run=last,
            job_failed=jobstatus.newest_failure(ctx.kube, ns, {jobs.KIND_LABEL: name}),
            max_lag=limit,
        ),
        obj.status,
    )
    if points is not None:
        metrics.VECTORINDEX_POINTS.labels(ns, name).set(points)
    if progress is not None:
        metrics.VECTORINDEX_ROWS_BEHIND.labels(ns, name).set(progress.rows_behind)
        if progress.lag_seconds is not None:
            metrics.VECTORINDEX_SYNC_LAG.labels(ns, name).set(progress.lag_seconds)
    metrics.set_objective(
        metrics.VECTORINDEX_SYNC_MAX_LAG, ns, name, limit.total_seconds() if limit is not None else None
    )
    return new


def request_sync(ctx: Context, obj: Obj[api.VectorIndex], requested_at: str) -> str:
    """Start the one-off Job for a ``mlinfra.io/sync-requested-at`` value (idempotent); its name."""
    vi = obj.model
    if vi.spec.source is None:
        raise ProblemError(
            Problem(
                INVALID_SPEC, "sync requested, but spec.source is not set: there is nothing to sync from", stalled=True
            )
        )
    job = jobs.ondemand_job(vi, ctx.settings.job_image, obj.owner_reference(), requested_at)
    children.create(ctx.kube, job)
    return str(job["metadata"]["name"])
