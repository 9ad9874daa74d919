"""Reconcile a VectorIndex: resolve its stores, check the source table, make the collection match the spec
(creating it, repairing drift, and on an immutable change a blue/green rebuild run by a Job: started, followed,
retried after a backoff), prune the previous collection when its retention ran out, make the sync role and the
Secret its Jobs mount (``vectors.synccreds``), own the sync CronJob; observe the collection and the sync; drop
the sync role on deletion.

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
from mlinfra.vectors import (
    attempts,
    collection,
    jobs,
    rebuild,
    rebuild_cli,
    runs,
    source,
    status,
    sync,
    synccreds,
    syncrole,
)

IMMUTABLE_WITHOUT_SOURCE = "ImmutableFieldChange"
COLLECTION_CONFLICT = "CollectionConflict"
BACKFILL_FAILED = rebuild.BACKFILL_FAILED
QDRANT_ERROR = "QdrantError"
QDRANT_REFUSED = "QdrantRefused"
RUNNING_PROCESS = "its process holds the rebuild lock"  # said of a running rebuild seen in pg_locks
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
    """Make everything match the spec: the collection (rebuilt blue/green by a Job when an immutable setting
    changed), the previous collection's retention, the sync CronJob.

    While a rebuild runs, or waits for its next attempt, this raises a Problem (``Rebuilding``, or
    ``BackfillFailed`` naming the attempt), which writes the status and has the handler run again: the
    operator follows the Job without holding anything. A running rebuild is found before Qdrant is opened (a
    local-mode directory is held by the rebuild process for the whole backfill)."""
    vi = obj.model
    stores = resolve_stores(ctx, vi)
    shape, lock_held = _source_facts(vi, stores, obj.namespace, obj.name)
    rebuilds = _rebuild_jobs(ctx, obj, lock_held)
    if rebuilds is not None and attempts.running(rebuilds.attempts, lock_held):
        raise ProblemError(_running(ctx, obj, rebuilds))

    def start_or_wait(found: collection.Result) -> None:
        assert rebuilds is not None and stores.source is not None
        _sync_credentials(ctx, obj, stores)  # what the rebuild Job mounts
        _start_or_wait(ctx, obj, found, rebuilds, (stores.source.password, stores.qdrant.password))

    try:
        with qdrant_engine.open_client(stores.qdrant) as client:
            keep = rebuilds.stale_active if rebuilds is not None else ()
            applied = _ensure_in(client, vi, stores, shape, start_or_wait, allow_rebuild=True, keep=keep)
            if rebuilds is not None:
                applied = dataclasses.replace(applied, rebuilt=_rebuilt(client, vi, rebuilds))
    except QDRANT_FAILURES as exc:
        raise _qdrant_problem(exc, stores.qdrant) from None
    announce(obj.report, applied, drift=False)
    _sync_credentials(ctx, obj, stores)  # what the sync Jobs mount, once the collection is the index's
    if applied.rebuilt is not None and rebuilds is not None and rebuilds.attempts:
        # Once per rebuild: the next reconcile finds the Job marked and posts nothing.
        newest = rebuilds.attempts[-1].job
        ctx.kube.merge_patch(
            "Job", obj.namespace, newest, {"metadata": {"annotations": {attempts.ANNOUNCED_ANNOTATION: "true"}}}
        )
    cron = jobs.cronjob(vi, ctx.settings.job_image, obj.owner_reference())
    if cron is not None:
        children.apply(ctx.kube, cron)
    else:
        children.delete(ctx.kube, obj.owner_reference(), "CronJob", obj.namespace, jobs.cronjob_name(obj.name))


def delete(ctx: Context, obj: Obj[api.VectorIndex]) -> None:
    """What deleting the index does besides garbage collection: its sync role goes (``synccreds.drop``). The
    collections stay (users' vectors), as do the source table and the bookkeeping rows."""
    synccreds.drop(ctx, obj)


def _sync_credentials(ctx: Context, obj: Obj[api.VectorIndex], stores: Stores) -> None:
    """The bookkeeping, the index's sync role and the Secret its Jobs mount for the source
    (``vectors.synccreds``); nothing without a source."""
    if obj.model.spec.source is None or stores.source is None:
        return
    with connection.postgres(stores.source, application_name=synccreds.APPLICATION_NAME) as conn:
        synccreds.ensure(ctx, obj, conn, stores.source)


@dataclasses.dataclass(frozen=True)
class Rebuilds:
    """The rebuild Jobs of the collection the spec asks for, and whether a rebuild process is alive."""

    target: str
    attempts: list[attempts.Attempt]  # of ``target``, oldest first
    lock_held: bool
    stale_active: tuple[str, ...] = ()  # targets of deleted stale Jobs that were still running


def _source_facts(vi: api.VectorIndex, stores: Stores, ns: str, name: str) -> tuple[source.SourceShape | None, bool]:
    """The source table's shape, and whether a rebuild process holds the index's rebuild lock."""
    if vi.spec.source is None or stores.source is None:
        return None, False
    try:
        with connection.postgres(stores.source, application_name="mlinfra-operator") as conn:
            return source.inspect(conn, vi.spec.source), runs.rebuild_running(conn, ns, name)
    except source.SourceInvalid as exc:
        # The table is the user's, not the spec's: fixed by a migration, so looked at again, not given up on.
        raise ProblemError(Problem(INVALID_SPEC, str(exc), stalled=True, recheck=SOURCE_RECHECK)) from None


def _rebuild_jobs(ctx: Context, obj: Obj[api.VectorIndex], lock_held: bool) -> Rebuilds | None:
    """The rebuild Jobs of the spec's target (None without a source: no rebuild can run). Jobs building a
    collection the spec no longer asks for are deleted (their half-filled collection is left to
    ``collection.prune_strays``, once nothing fills it)."""
    vi = obj.model
    found = attempts.attempts_of(ctx.kube.list_("Job", obj.namespace, jobs.rebuild_selector(obj.name)))
    target = collection.physical_name(vi.spec) if vi.spec.source is not None else None
    stale_active = []
    for attempt in found:
        if attempt.target != target:
            children.delete(ctx.kube, obj.owner_reference(), "Job", obj.namespace, attempt.job)
            if attempt.active:
                stale_active.append(attempt.target)
    if target is None:
        return None
    mine = [a for a in found if a.target == target]
    return Rebuilds(target, mine, lock_held, tuple(sorted(set(stale_active))))


def _recheck(ctx: Context) -> float:
    """Seconds between looks at a running rebuild."""
    return min(ctx.settings.observe_interval, 30.0)


def _running(ctx: Context, obj: Obj[api.VectorIndex], rebuilds: Rebuilds) -> Problem:
    """The Problem that holds Ready at False (Reindexing True) while a rebuild process or Job is alive."""
    last = rebuilds.attempts[-1] if rebuilds.attempts else None
    if last is not None and rebuilds.lock_held and last.ended_at is not None:
        # Its process ran after the Job was seen over (kwok: the Job ends at once): the backoff counts from
        # when it is seen over again.
        ctx.kube.merge_patch(
            "Job", obj.namespace, last.job, {"metadata": {"annotations": {attempts.ENDED_ANNOTATION: None}}}
        )
    if last is None:
        what = f"a rebuild process holds the rebuild lock of VectorIndex {obj.namespace}/{obj.name}"
    else:
        what = f"{last.reasons or 'rebuild'}: Job {last.job} (attempt {last.number}) is building {rebuilds.target}"
        if rebuilds.lock_held:
            what += f" ({RUNNING_PROCESS})"
    return Problem(
        status.REBUILDING,
        f"{what}; the alias keeps serving the current collection until the new one is verified",
        stalled=False,
        recheck=_recheck(ctx),
    )


def _start_or_wait(
    ctx: Context,
    obj: Obj[api.VectorIndex],
    found: collection.Result,
    rebuilds: Rebuilds,
    secrets: tuple[str, ...],
) -> None:
    """The alias is not on the target and nothing is running: start the next attempt when its backoff is
    over, else report the last one's failure. Always raises (the handler runs again)."""
    now = datetime.datetime.now(datetime.UTC)
    decision = attempts.decide(rebuilds.attempts, False, now, ctx.settings.rebuild_backoff)
    why = ", ".join(found.rebuild_reasons)
    last = decision.last
    if decision.action == "start":
        job = jobs.rebuild_job(
            obj.model, ctx.settings.job_image, obj.owner_reference(), found.target, decision.attempt, why
        )
        children.create(ctx.kube, job)
        job_name = job["metadata"]["name"]
        obj.report.event(
            "Rebuilding",
            f"{why}: building {found.target} beside {found.collection} in Job {job_name} (attempt {decision.attempt})",
        )
        started = attempts.Attempt(decision.attempt, job_name, found.target, True, None, None, False, why)
        raise ProblemError(_running(ctx, obj, dataclasses.replace(rebuilds, attempts=[started])))
    assert decision.action == "wait" and last is not None and decision.next_at is not None
    if last.ended_at is None:
        ctx.kube.merge_patch(
            "Job", obj.namespace, last.job, {"metadata": {"annotations": {attempts.ENDED_ANNOTATION: now.isoformat()}}}
        )
    detail = _failure(ctx, obj.namespace, last)
    # Looked at again before the next attempt is due too: a process of this attempt may still start (kwok ends
    # Jobs before anything ran), and the status must say Reindexing while it runs.
    raise ProblemError(attempt_problem(last, detail, found, decision.next_at, now, secrets, poll=_recheck(ctx)))


def _failure(ctx: Context, ns: str, last: attempts.Attempt) -> str:
    """What the attempt's Job and its pod say about how it ended."""
    ended = jobstatus.terminated(ctx.kube, ns, last.job)
    if last.failed is not None:
        said = f"Job {last.job} failed ({last.failed})"
    else:
        said = f"Job {last.job} completed without moving the alias (nothing ran the rebuild, or it stopped early)"
    return f"{said}; its container: {ended}" if ended else said


def attempt_problem(
    last: attempts.Attempt,
    detail: str,
    found: collection.Result,
    next_at: datetime.datetime,
    now: datetime.datetime,
    secrets: tuple[str, ...] = (),
    poll: float | None = None,
) -> Problem:
    """A failed attempt (the alias stayed): BackfillFailed, naming the attempt, why, and when the next one
    starts. When Qdrant refused the backfill (the rebuild's termination message says so) every attempt fails
    the same way: Stalled, still tried again after the backoff (the refusal may depend on the server).
    Looked at again when the attempt is due, or every ``poll`` seconds before."""
    refused = f"{rebuild_cli.QDRANT_REFUSED}: " in detail
    message = observation.scrub(
        f"rebuild attempt {last.number} failed: {detail}; alias {found.alias} left on {found.collection}; "
        f"attempt {last.number + 1} starts at {next_at.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        *secrets,
    )
    due = max(1.0, (next_at - now).total_seconds())
    return Problem(BACKFILL_FAILED, message[:1024], stalled=refused, recheck=min(due, poll) if poll else due)


def _rebuilt(client: QdrantClient, vi: api.VectorIndex, rebuilds: Rebuilds) -> rebuild.RebuildResult | None:
    """The rebuild the Jobs of the target did, not announced yet: the alias is on the target (the truth)."""
    if not rebuilds.attempts or any(a.announced for a in rebuilds.attempts):
        return None
    if collection.alias_target(client, vi.spec.collection) != rebuilds.target:
        return None
    info = client.get_collection(rebuilds.target)
    previous, _ = collection.previous_of(info)
    return rebuild.RebuildResult(
        alias=vi.spec.collection, active=rebuilds.target, previous=previous, points=info.points_count or 0
    )


def _ensure_in(
    client: QdrantClient,
    vi: api.VectorIndex,
    stores: Stores,
    shape: source.SourceShape | None,
    on_rebuild: Callable[[collection.Result], None] | None,
    allow_rebuild: bool,
    keep: tuple[str, ...] = (),
) -> Applied:
    """The collection part of :func:`reconcile`; :func:`observe` runs it too (drift repair, retention) but
    never starts rebuilds from there (``allow_rebuild=False``). ``on_rebuild`` starts or follows one (it
    raises); ``keep``: collections a rebuild process may still be filling, never pruned as strays."""
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
    reset = False
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
        if allow_rebuild and on_rebuild is not None:
            on_rebuild(ensured)
    active = ensured.collection
    pruned = collection.prune_previous(
        client, spec, active, retention, datetime.datetime.now(datetime.UTC), owner=f"{ns}/{name}"
    )
    strays = collection.prune_strays(client, spec, active, owner=f"{ns}/{name}", keep=keep) if allow_rebuild else ()
    return Applied(ensured=ensured, pruned=pruned, watermark_reset=reset, strays=strays)


def _reset_watermark(pg: connection.ConnectionInfo, ns: str, name: str) -> None:
    with connection.postgres(pg, application_name="mlinfra-operator") as conn:
        syncrole.ensure_bookkeeping(conn)
        sync.commit_watermark(conn, ns, name, sync.Watermark())


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
                synccreds.repair(ctx, obj, conn, stores.source)  # before the Jobs it may start need the grants
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
            job_failed=jobstatus.newest_failure(ctx.kube, ns, jobs.sync_selector(name)),
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
