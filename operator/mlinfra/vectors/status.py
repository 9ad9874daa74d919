"""VectorIndex status as a pure function of what reconcile did and the observation found.

``Ready``: the alias resolves to a usable collection, the spec is realized (no rebuild pending, running or
failed: those are reported through the reconcile's Problem, :func:`problem_status`) and the last sync did not
fail. ``Synced`` is separate: an index behind its source still answers queries
(``LagExceeded`` is the SLO breach Argo CD health reports as Degraded). ``Reindexing`` is True only while a
blue/green rebuild runs; False with ``BackfillFailed`` when the last attempt failed (the alias stayed).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlinfra import problems
from mlinfra.api import common
from mlinfra.api import vectorindex as api
from mlinfra.k8s import conditions
from mlinfra.k8s.conditions import Cond
from mlinfra.problems import Problem
from mlinfra.vectors import rebuild

OWNED = (
    "observedGeneration",
    "activeCollection",
    "previousCollection",
    "points",
    "indexedVectors",
    "collectionStatus",
    "replicas",
    "sync",
    "conditions",
)
OBSERVED_FIELDS = (
    "activeCollection",
    "previousCollection",
    "points",
    "indexedVectors",
    "collectionStatus",
    "replicas",
    "sync",
)

CAUGHT_UP, BEHIND, LAG_EXCEEDED, SYNC_FAILED, NO_SOURCE = "CaughtUp", "Behind", "LagExceeded", "SyncFailed", "NoSource"
REBUILDING, IDLE = "Rebuilding", "Idle"


@dataclass(frozen=True)
class Facts:
    generation: int | None
    rebuilding: str | None = None  # why a rebuild is running now (set just before it starts)
    active: str | None = None
    previous: str | None = None
    points: int | None = None
    indexed_vectors: int | None = None
    collection_status: str | None = None
    optimizer_error: str | None = None
    replicas: list[tuple[int, int, str]] | None = None
    has_source: bool = False
    source_watermark: datetime.datetime | None = None
    index_watermark: datetime.datetime | None = None
    rows_behind: int | None = None
    lag_seconds: float | None = None
    last_run: common.SyncRun | None = None
    job_failed: str | None = None
    max_lag: datetime.timedelta | None = None


def _sync(facts: Facts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if facts.source_watermark is not None:
        out["sourceWatermark"] = conditions.iso_utc(facts.source_watermark)
    if facts.index_watermark is not None:
        out["indexWatermark"] = conditions.iso_utc(facts.index_watermark)
    if facts.rows_behind is not None:
        out["rowsBehind"] = facts.rows_behind
    if facts.lag_seconds is not None:
        out["lagSeconds"] = round(facts.lag_seconds)  # whole seconds: jitter would rewrite status
    if facts.last_run is not None:
        out["lastRun"] = facts.last_run.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def _kept(previous: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: previous[key] for key in OBSERVED_FIELDS if previous and previous.get(key) is not None}


def _reindexing_kept(prev: Any) -> Cond:
    old = conditions.get(prev, "Reindexing")
    if old is not None and old.get("status") == "False":
        return Cond("Reindexing", "False", old.get("reason", IDLE), old.get("message", ""))
    return Cond("Reindexing", "False", IDLE, "")


def problem_status(body: Mapping[str, Any], problem: Problem) -> dict[str, Any]:
    """The status of a VectorIndex that cannot be served as specified yet: what was observed last is kept;
    ``Reindexing`` is True while a rebuild runs (``Rebuilding``: Ready False, Reconciling True), says
    ``BackfillFailed`` when an attempt failed (the alias stayed), else keeps what it said."""
    previous, generation = body.get("status"), body["metadata"].get("generation")
    prev = (previous or {}).get("conditions")
    if problem.reason == REBUILDING:  # a rebuild Job runs: the reconcile follows it through this Problem
        reindexing = Cond("Reindexing", "True", REBUILDING, problem.message)
    elif problem.reason == rebuild.BACKFILL_FAILED:
        reindexing = Cond("Reindexing", "False", rebuild.BACKFILL_FAILED, problem.message)
    else:
        reindexing = _reindexing_kept(prev)
    return {
        "observedGeneration": generation,
        **_kept(previous),
        "conditions": conditions.merge(prev, [*problems.summary(problem), reindexing], generation),
    }


def compute(facts: Facts, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    prev = (previous or {}).get("conditions")
    status: dict[str, Any] = {"observedGeneration": facts.generation}
    if facts.rebuilding is not None:
        status.update(_kept(previous))
        conds = [
            Cond(
                "Ready",
                "False",
                REBUILDING,
                f"rebuilding: {facts.rebuilding}; the alias keeps serving the "
                "current collection until the new one is verified",
            ),
            Cond("Reconciling", "True", REBUILDING, facts.rebuilding),
            Cond("Stalled", "False", REBUILDING, ""),
            Cond("Reindexing", "True", REBUILDING, facts.rebuilding),
        ]
        status["conditions"] = conditions.merge(prev, conds, facts.generation)
        return status

    for key, value in (
        ("activeCollection", facts.active),
        ("previousCollection", facts.previous),
        ("points", facts.points),
        ("indexedVectors", facts.indexed_vectors),
        ("collectionStatus", facts.collection_status),
    ):
        if value is not None:
            status[key] = value
    if facts.replicas is not None:
        status["replicas"] = [{"shard": s, "peer": str(peer), "state": state} for s, peer, state in facts.replicas]
    if facts.has_source:
        status["sync"] = _sync(facts)

    if facts.active is None:
        collection = Cond("CollectionReady", "False", "AliasMissing", "the alias points at no collection")
    elif facts.collection_status == "red":
        collection = Cond(
            "CollectionReady",
            "False",
            "CollectionRed",
            f"collection {facts.active} is red: {facts.optimizer_error or 'see the Qdrant logs'}",
        )
    else:
        collection = Cond(
            "CollectionReady", "True", "Ready", f"alias serves {facts.active} ({facts.collection_status or 'unknown'})"
        )

    synced = _synced(facts)
    ready_blocker = collection if collection.status != "True" else synced if synced.reason == SYNC_FAILED else None
    ready = (
        Cond("Ready", "False", ready_blocker.reason, ready_blocker.message)
        if ready_blocker
        else Cond("Ready", "True", "Ready", f"{facts.points or 0} points in {facts.active}")
    )
    old = conditions.get(prev, "Reindexing")
    if old is not None and old.get("reason") == rebuild.BACKFILL_FAILED:
        reindexing = Cond("Reindexing", "False", IDLE, "")  # the spec is realized now: the failure is over
    else:
        reindexing = _reindexing_kept(prev)
    if reindexing.reason == IDLE:
        reindexing = Cond(
            "Reindexing",
            "False",
            IDLE,
            f"previous collection {facts.previous} kept for rollback" if facts.previous else "",
        )
    conds = [*problems.settled(ready), collection, synced, reindexing]
    status["conditions"] = conditions.merge(prev, conds, facts.generation)
    return status


def _synced(facts: Facts) -> Cond:
    if not facts.has_source:
        return Cond("Synced", "True", NO_SOURCE, "no spec.source: points are written by clients")
    run = facts.last_run
    if facts.job_failed and (run is None or run.outcome != "Failed"):
        return Cond("Synced", "False", SYNC_FAILED, facts.job_failed)
    if run is not None and run.outcome == "Failed":
        return Cond("Synced", "False", SYNC_FAILED, f"the last sync failed: {run.message or 'no message'}")
    behind = facts.rows_behind or 0
    if behind == 0:
        return Cond("Synced", "True", CAUGHT_UP, "every source row is indexed")
    lag = facts.lag_seconds
    if facts.max_lag is not None and lag is not None and lag > facts.max_lag.total_seconds():
        return Cond(
            "Synced",
            "False",
            LAG_EXCEEDED,
            f"{behind} rows behind, lag {round(lag)}s > {int(facts.max_lag.total_seconds())}s",
        )
    detail = f", lag {round(lag)}s" if lag is not None else " (no sync has run yet)"
    return Cond("Synced", "False", BEHIND, f"{behind} rows not indexed yet{detail}")


def max_lag(vi: api.VectorIndex) -> datetime.timedelta | None:
    if vi.spec.sync is None or vi.spec.sync.max_lag is None:
        return None
    return common.parse_duration(vi.spec.sync.max_lag)
