"""FeatureView status as a pure function of what observe found (the offline table, the stores, the runs).

``Ready``: the offline table is in place, both stores are Ready, and the last materialization did not fail.
``FreshnessSLOMet`` is separate (a stale view is usable, and Argo CD health reports it as Degraded).
When the watermark does not describe the data (``features.identity``: online data lost, offline table
changed), ``Materialized``, ``Ready`` and ``FreshnessSLOMet`` are False with that reason, objective or not:
the status never says fresh while the data is missing.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlinfra import problems
from mlinfra.api import common
from mlinfra.api import featureview as api
from mlinfra.features import freshness as fresh_mod
from mlinfra.features import identity, schema
from mlinfra.k8s import conditions
from mlinfra.k8s.conditions import Cond
from mlinfra.problems import Problem

OWNED = ("observedGeneration", "offlineTable", "onlineKeyPattern", "lastMaterialization", "freshness", "conditions")
# Problems about the offline table itself (SchemaApplied False); any other leaves the schema Unknown.
SCHEMA_REASONS = (problems.IMMUTABLE_FIELD_CHANGE, problems.INVALID_SPEC, schema.TABLE_MISSING, schema.COLUMNS_MISSING)


@dataclass(frozen=True)
class Facts:
    generation: int | None
    problem: Problem | None = None
    offline_table: str | None = None
    online_key_pattern: str | None = None
    schema_message: str = ""
    freshness: fresh_mod.Freshness | None = None
    last_run: common.SyncRun | None = None
    job_failed: str | None = None
    max_lag: datetime.timedelta | None = None
    mismatches: tuple[identity.Mismatch, ...] = ()  # what the watermark no longer describes


def _run(run: common.SyncRun) -> dict[str, Any]:
    data = run.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {k: v for k, v in data.items() if v is not None}


def _freshness(value: fresh_mod.Freshness) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if value.source_watermark is not None:
        out["sourceWatermark"] = conditions.iso_utc(value.source_watermark)
    if value.online_watermark is not None:
        out["onlineWatermark"] = conditions.iso_utc(value.online_watermark)
    if value.lag_seconds is not None:
        # Whole seconds: sub-second jitter is not information and would rewrite status.
        out["lagSeconds"] = round(value.lag_seconds)
    return out


def problem_status(body: Mapping[str, Any], problem: Problem) -> dict[str, Any]:
    """The status of a FeatureView that cannot be served: the kstatus triple, SchemaApplied, and the table and
    key pattern the previous status showed (still where the data is)."""
    return compute(Facts(generation=body["metadata"].get("generation"), problem=problem), body.get("status"))


def compute(facts: Facts, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    prev = (previous or {}).get("conditions")
    status: dict[str, Any] = {"observedGeneration": facts.generation}
    p = facts.problem
    if p is not None:
        schema_cond = (
            Cond("SchemaApplied", "False", p.reason, p.message)
            if p.reason in SCHEMA_REASONS
            else Cond("SchemaApplied", "Unknown", p.reason, "waiting for the stores")
        )
        for key in ("offlineTable", "onlineKeyPattern"):
            if (previous or {}).get(key):
                status[key] = previous[key]  # type: ignore[index]
        status["conditions"] = conditions.merge(prev, [*problems.summary(p), schema_cond], facts.generation)
        return status

    if facts.offline_table:
        status["offlineTable"] = facts.offline_table
    if facts.online_key_pattern:
        status["onlineKeyPattern"] = facts.online_key_pattern
    if facts.last_run is not None:
        status["lastMaterialization"] = _run(facts.last_run)
    if facts.freshness is not None:
        status["freshness"] = _freshness(facts.freshness)

    run = facts.last_run
    lost = facts.mismatches[0] if facts.mismatches else None
    lost_message = "; ".join(m.message for m in facts.mismatches)
    if lost is not None:
        materialized = Cond("Materialized", "False", lost.status_reason, lost_message)
    elif facts.job_failed and (run is None or run.outcome != "Failed"):
        materialized = Cond("Materialized", "False", "JobFailed", facts.job_failed)
    elif run is None:
        materialized = Cond("Materialized", "Unknown", "NeverRun", "no materialization has run yet")
    elif run.outcome == "Failed":
        materialized = Cond("Materialized", "False", "SyncFailed", "the last materialization failed")
    elif run.outcome == "Running":
        materialized = Cond("Materialized", "Unknown", "Running", "a materialization is running")
    else:
        materialized = Cond("Materialized", "True", "Succeeded", f"{run.rows or 0} rows in the last run")

    if lost is not None:
        slo = Cond("FreshnessSLOMet", "False", lost.status_reason, lost_message)
    elif facts.max_lag is None:
        slo = Cond("FreshnessSLOMet", "True", "NoObjective", "spec.freshness.maxLag is not set")
    elif facts.freshness is None or facts.freshness.lag_seconds is None:
        slo = Cond("FreshnessSLOMet", "Unknown", "NoData", "no offline events yet")
    else:
        met = fresh_mod.slo_met(facts.freshness, facts.max_lag)
        lag = round(facts.freshness.lag_seconds)
        budget = int(facts.max_lag.total_seconds())
        slo = (
            Cond("FreshnessSLOMet", "True", "WithinObjective", f"lag {lag}s <= {budget}s")
            if met
            else Cond("FreshnessSLOMet", "False", "FreshnessSLOBreached", f"lag {lag}s > {budget}s")
        )

    failed = materialized.status == "False"
    ready = (
        Cond("Ready", "False", materialized.reason, materialized.message)
        if failed
        else Cond("Ready", "True", "Ready", f"{facts.offline_table} -> {facts.online_key_pattern}")
    )
    conds = [
        *problems.settled(ready),
        Cond("SchemaApplied", "True", "TableReady", facts.schema_message),
        materialized,
        slo,
    ]
    status["conditions"] = conditions.merge(prev, conds, facts.generation)
    return status


def max_lag(fv: api.FeatureView) -> datetime.timedelta | None:
    if fv.spec.freshness is None:
        return None
    return common.parse_duration(fv.spec.freshness.max_lag)
