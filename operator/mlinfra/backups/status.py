"""Backup status as a pure function of what was observed: the manifest on the target (the proof a backup is
complete), else the Job's state.

``Ready`` is True only while the manifest is there. A Job that ran out of retries with no manifest is
Stalled (a backup is taken once: create a new Backup to try again); one that is still running is
Reconciling. A complete backup whose manifest vanished from the target (deleted by hand, a lifecycle rule)
is Ready=False ``BackupMissing``: status tells the truth about what can be restored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlinfra import problems
from mlinfra.backup import catalog
from mlinfra.backups.plan import Plan
from mlinfra.k8s import conditions
from mlinfra.k8s.conditions import Cond
from mlinfra.problems import Problem

OWNED = (
    "observedGeneration",
    "conditions",
    "engine",
    "backupId",
    "location",
    "startedAt",
    "completedAt",
    "sizeBytes",
    "encrypted",
    "wal",
    "items",
    "attempts",
    "storeUid",
    "target",
    "encryption",
)
COMPLETE = "Complete"
RUNNING = "Running"
BACKUP_FAILED = "BackupFailed"
BACKUP_MISSING = "BackupMissing"


@dataclass(frozen=True)
class Facts:
    generation: int | None
    plan: Plan
    manifest: catalog.Manifest | None = None
    job_failed: str | None = None  # why the Job failed, when it ran out of retries
    attempts: int | None = None
    was_complete: bool = False  # the status said Complete before


def _plan_status(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "engine": plan.engine,
        "backupId": plan.backup_id,
        "location": plan.location,
        "storeUid": plan.store_uid,
        "target": plan.target.model_dump(mode="json", by_alias=True, exclude_defaults=True),
    }
    if plan.encryption is not None:
        out["encryption"] = plan.encryption.model_dump(mode="json", by_alias=True)
    return out


def _covers(manifest: catalog.Manifest) -> dict[str, Any]:
    """What the backup holds, from the engine's metadata in the manifest."""
    meta = manifest.meta
    out: dict[str, Any] = {}
    if manifest.engine == "postgres":
        wal = {
            "timeline": meta.get("timeline"),
            "startLsn": meta.get("start_lsn"),
            "stopLsn": meta.get("stop_lsn"),
            "startWal": meta.get("start_segment"),
            "stopWal": meta.get("stop_segment"),
        }
        out["wal"] = {k: v for k, v in wal.items() if v is not None}
    counts = {"redis": ("keys",), "neo4j": ("nodes", "relationships"), "qdrant": ("points",)}.get(manifest.engine, ())
    values = [meta.get(key) for key in counts]
    if values and all(isinstance(v, int) for v in values):
        out["items"] = sum(v for v in values if isinstance(v, int))
    return out


def compute(f: Facts, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    prev = previous or {}
    status: dict[str, Any] = {"observedGeneration": f.generation, **_plan_status(f.plan)}
    if f.attempts is not None:
        status["attempts"] = f.attempts
    if f.manifest is not None:
        m = f.manifest
        status.update(
            startedAt=conditions.iso_utc(m.started.replace(microsecond=0)),
            completedAt=conditions.iso_utc(m.completed.replace(microsecond=0)),
            sizeBytes=m.stored_size,
            encrypted=m.encrypted,
            **_covers(m),
        )
        ready = Cond("Ready", "True", COMPLETE, f"backup {m.backup_id} is complete at {f.plan.location}")
        conds = problems.settled(ready)
    elif f.was_complete:
        for key in ("startedAt", "completedAt", "sizeBytes", "encrypted", "wal", "items"):
            if prev.get(key) is not None:
                status[key] = prev[key]
        p = Problem(
            BACKUP_MISSING,
            f"the manifest of backup {f.plan.backup_id} is no longer at {f.plan.location}: the backup was deleted "
            "from the target outside the operator and cannot be restored",
            stalled=True,
        )
        conds = problems.summary(p)
    elif f.job_failed is not None:
        p = Problem(BACKUP_FAILED, f"{f.job_failed}; create a new Backup to try again", stalled=True)
        conds = problems.summary(p)
    else:
        msg = f"backup {f.plan.backup_id} of DataStore {f.plan.store} is being taken"
        conds = [
            Cond("Ready", "False", RUNNING, msg),
            Cond("Reconciling", "True", RUNNING, msg),
            Cond("Stalled", "False", problems.READY, ""),
        ]
    status["conditions"] = conditions.merge(prev.get("conditions"), conds, f.generation)
    return status


def problem_status(body: Mapping[str, Any], problem: Problem) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    previous: Mapping[str, Any] = body.get("status") or {}
    status: dict[str, Any] = {"observedGeneration": generation}
    for key in OWNED:
        if key not in ("observedGeneration", "conditions") and previous.get(key) is not None:
            status[key] = previous[key]
    status["conditions"] = conditions.merge(previous.get("conditions"), problems.summary(problem), generation)
    return status


def was_complete(previous: Mapping[str, Any] | None) -> bool:
    return bool((previous or {}).get("completedAt"))
