"""VectorIndex handlers: collection, rebuild and CronJob on create/update/resume; "sync now" on the
annotation; a timer that repairs drift made by hand, applies the previous collection's retention and
observes the collection and the sync."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import kopf

from mlinfra import metrics
from mlinfra.config import Settings
from mlinfra.handlers import startup, statuswrite, syncnow
from mlinfra.k8s import objects
from mlinfra.stores import endpoints
from mlinfra.stores.status import Problem, ProblemError
from mlinfra.vectors import collection, reconcile, status

PLURAL = "vectorindexes"
KIND = "VectorIndex"


def write_status(body: kopf.Body, patch: kopf.Patch, new: dict[str, Any]) -> None:
    statuswrite.write_status(body, patch, new, status.OWNED)


def _problem(body: Mapping[str, Any], problem: Problem) -> dict[str, Any]:
    return status.compute(status.Facts(generation=body["metadata"].get("generation"), problem=problem),
                          body.get("status"))


def _lock(memo: Any) -> threading.Lock:
    # One reconcile or observation of an object at a time: a timer tick during a rebuild would otherwise
    # overwrite "Reindexing" with what it sees of the old collection.
    lock: threading.Lock | None = getattr(memo, "vectorindex_lock", None)
    if lock is None:
        lock = memo.vectorindex_lock = threading.Lock()
    return lock


def _announce(body: kopf.Body, applied: reconcile.Applied, drift: bool) -> None:
    ensured = applied.ensured
    if ensured.created:
        statuswrite.announce(body, "CollectionCreated",
                             f"created {ensured.collection} behind alias {ensured.alias}")
    if ensured.changes:
        statuswrite.announce(body, "DriftRepaired" if drift else "SettingsUpdated",
                             ("changed by hand, restored: " if drift else "updated in place: ")
                             + "; ".join(ensured.changes))
    if ensured.indexes_created or ensured.indexes_dropped:
        statuswrite.announce(body, "PayloadIndexesReconciled",
                             f"created {list(ensured.indexes_created)}, dropped {list(ensured.indexes_dropped)}")
    if ensured.index_conflicts:
        kopf.warn(body, reason="PayloadIndexConflict", message="; ".join(ensured.index_conflicts))
    if applied.rebuilt is not None:
        r = applied.rebuilt
        statuswrite.announce(body, "Rebuilt", f"alias {r.alias} moved from {r.previous} to {r.active} "
                             f"({r.points} points, count verified against the source)")
    if applied.pruned:
        statuswrite.announce(body, "PreviousCollectionDeleted",
                             f"deleted {applied.pruned}: spec.previousCollectionRetention passed")
    if applied.watermark_reset:
        statuswrite.announce(body, "WatermarkReset", "new empty collection: the next sync copies every row")


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    emap = endpoints.EndpointMap(settings.endpoint_map)
    res = (startup.GROUP, startup.VERSION, PLURAL)

    def observe_into(body: kopf.Body, patch: kopf.Patch, repair: bool = False) -> None:
        vi = reconcile.parse(body)
        applied, observed = reconcile.observe(vi, reconcile.resolve_stores(vi, emap), repair=repair)
        if applied is not None:
            _announce(body, applied, drift=True)
        progress = observed.progress
        new = status.compute(status.Facts(
            generation=body["metadata"].get("generation"), active=observed.active, previous=observed.previous,
            points=observed.points, indexed_vectors=observed.indexed_vectors,
            collection_status=observed.collection_status, optimizer_error=observed.optimizer_error,
            replicas=observed.replicas, has_source=vi.spec.source is not None,
            source_watermark=progress.source_watermark if progress else None,
            index_watermark=progress.index_watermark if progress else None,
            rows_behind=progress.rows_behind if progress else None,
            lag_seconds=progress.lag_seconds if progress else None,
            last_run=observed.last_run, job_failed=observed.job_failed, max_lag=status.max_lag(vi)),
            body.get("status"))
        write_status(body, patch, new)
        ns, name = vi.metadata.namespace or "", vi.metadata.name
        if observed.points is not None:
            metrics.VECTORINDEX_POINTS.labels(ns, name).set(observed.points)
        if progress is not None:
            metrics.VECTORINDEX_ROWS_BEHIND.labels(ns, name).set(progress.rows_behind)
            if progress.lag_seconds is not None:
                metrics.VECTORINDEX_SYNC_LAG.labels(ns, name).set(progress.lag_seconds)
        limit = status.max_lag(vi)
        metrics.set_objective(metrics.VECTORINDEX_SYNC_MAX_LAG, ns, name,
                              limit.total_seconds() if limit is not None else None)

    @kopf.on.resume(*res, registry=registry)
    @kopf.on.create(*res, registry=registry)
    @kopf.on.update(*res, field="spec", registry=registry)
    def reconcile_vectorindex(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
        startup.touch()
        generation = body["metadata"].get("generation")

        def rebuilding(found: collection.Result) -> None:
            why = ", ".join(found.rebuild_reasons)
            statuswrite.announce(body, "Rebuilding", f"{why}: building {found.target} beside {found.collection}")
            # Written now, not with the handler's patch at the end: the rebuild may take minutes.
            new = status.compute(status.Facts(generation=generation, rebuilding=why), body.get("status"))
            objects.merge_patch(KIND, body["metadata"]["namespace"], body["metadata"]["name"],
                                {"status": {k: new[k] for k in ("observedGeneration", "conditions")}},
                                subresource="status")

        with _lock(memo), metrics.reconciling("vectorindex"):
            try:
                applied = reconcile.reconcile(body, settings.job_image, emap, on_rebuild=rebuilding)
                _announce(body, applied, drift=False)
                observe_into(body, patch)
            except ProblemError as exc:
                statuswrite.fail(body, patch, exc.problem, _problem(body, exc.problem), status.OWNED, 15)

    syncnow.register(registry, res, reconcile.request_sync, settings.job_image)

    @kopf.timer(*res, interval=settings.observe_interval, initial_delay=settings.observe_interval,
                registry=registry)
    def observe_vectorindex(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
        startup.touch()
        st = body.get("status") or {}
        if st.get("observedGeneration") != body["metadata"].get("generation") or not st.get("activeCollection"):
            return  # the reconcile handler has not succeeded for this generation yet
        lock = _lock(memo)
        if not lock.acquire(blocking=False):
            return  # a reconcile (perhaps a rebuild) is running: it writes status when done
        try:
            # Drift repair and retention, then observation; rebuilds follow spec changes only (the reconcile
            # handler).
            observe_into(body, patch, repair=True)
        except ProblemError as exc:
            write_status(body, patch, _problem(body, exc.problem))
        finally:
            lock.release()

    @kopf.on.delete(*res, registry=registry)
    def delete_vectorindex(body: kopf.Body, **_: Any) -> None:
        # The collections hold users' vectors (and may be queried by name): never dropped here; the
        # CronJob and Jobs go with their owner.
        metrics.forget_vectorindex(body["metadata"]["namespace"], body["metadata"]["name"])
