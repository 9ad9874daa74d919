"""ModelRegistry status as a pure function of what reconcile applied and observe saw in the databases.

``Ready``: the schema is at the requested version and the access Secrets exist. ``LineageInSync``: no outbox
event waits longer than ``spec.lineageSync.maxLag`` (``NotApplicable`` without a lineage store).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlinfra import problems
from mlinfra.k8s import conditions
from mlinfra.k8s.conditions import Cond
from mlinfra.problems import Problem

OWNED = ("observedGeneration", "schemaVersion", "lineage", "counts", "readerSecret", "writerSecret", "conditions")


@dataclass(frozen=True)
class Facts:
    generation: int | None
    schema_version: int | None = None
    reader_secret: str | None = None
    writer_secret: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    lineage_enabled: bool = False
    lineage_problem: str | None = None  # the lineage store is unreachable or the sync failed
    pending_events: int | None = None
    oldest_pending_age: float | None = None
    last_sync_time: datetime.datetime | None = None
    nodes: int | None = None
    relationships: int | None = None
    max_lag: datetime.timedelta = datetime.timedelta(minutes=5)


def _iso(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _lineage(f: Facts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if f.pending_events is not None:
        out["pendingEvents"] = f.pending_events
    if f.oldest_pending_age is not None:
        # Whole seconds: the age grows every observation while events wait, which is real news; sub-second
        # figures would only rewrite status.
        out["oldestPendingAgeSeconds"] = round(f.oldest_pending_age)
    if f.last_sync_time is not None:
        out["lastSyncTime"] = _iso(f.last_sync_time)
    if f.nodes is not None:
        out["nodes"] = f.nodes
    if f.relationships is not None:
        out["relationships"] = f.relationships
    return out


def problem_status(body: Mapping[str, Any], problem: Problem) -> dict[str, Any]:
    """The status of a registry that cannot be served: the summary, ``SchemaApplied`` (Unknown while the
    operator keeps trying), and the schema version and Secrets already reported (they still exist)."""
    generation = body["metadata"].get("generation")
    previous: Mapping[str, Any] = body.get("status") or {}
    status: dict[str, Any] = {"observedGeneration": generation}
    for key in ("schemaVersion", "readerSecret", "writerSecret"):
        if previous.get(key) is not None:
            status[key] = previous[key]
    p = problem
    conds = [*problems.summary(p), Cond("SchemaApplied", "False" if p.stalled else "Unknown", p.reason, p.message)]
    status["conditions"] = conditions.merge(previous.get("conditions"), conds, generation)
    return status


def compute(f: Facts, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    prev = (previous or {}).get("conditions")
    status: dict[str, Any] = {"observedGeneration": f.generation, "schemaVersion": f.schema_version}
    if f.reader_secret:
        status["readerSecret"] = f.reader_secret
    if f.writer_secret:
        status["writerSecret"] = f.writer_secret
    if f.counts:
        status["counts"] = dict(f.counts)
    if f.lineage_enabled:
        lineage = _lineage(f)
        if lineage:
            status["lineage"] = lineage

    if not f.lineage_enabled:
        in_sync = Cond("LineageInSync", "True", "NotApplicable", "no spec.lineageStoreRef")
    elif f.lineage_problem:
        in_sync = Cond("LineageInSync", "False", "LineageStoreUnavailable", f.lineage_problem)
    elif f.oldest_pending_age is not None and f.oldest_pending_age > f.max_lag.total_seconds():
        in_sync = Cond(
            "LineageInSync",
            "False",
            "LineageLagging",
            f"{f.pending_events} events pending, the oldest for {round(f.oldest_pending_age)}s "
            f"(> {int(f.max_lag.total_seconds())}s)",
        )
    else:
        in_sync = Cond("LineageInSync", "True", "InSync", f"{f.pending_events or 0} events pending")
    conds = [
        *problems.settled(Cond("Ready", "True", problems.READY, f"schema version {f.schema_version}")),
        Cond("SchemaApplied", "True", "Migrated", f"schema version {f.schema_version}"),
        in_sync,
    ]
    status["conditions"] = conditions.merge(prev, conds, f.generation)
    return status
