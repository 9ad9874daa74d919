"""Reconcile a FeatureView: resolve its two DataStores, apply the offline schema, own the sync CronJob.

No Kopf here (handlers/featureview.py calls it). Problems the user must act on are raised as
``stores.status.Problem`` wrapped in ``FeatureViewProblem``; the status function turns them into conditions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from mlinfra.api import featureview as api
from mlinfra.engines import connection
from mlinfra.features import connect, freshness, jobs, layout, schema
from mlinfra.k8s import jobstatus, objects
from mlinfra.stores import endpoints, refs
from mlinfra.stores.status import Problem, ProblemError, invalid_spec

IMMUTABLE_FIELD_CHANGE = schema.REASON


class FeatureViewProblem(ProblemError):
    """The FeatureView cannot be served as specified."""


def parse(body: Mapping[str, Any]) -> api.FeatureView:
    try:
        return api.FeatureView.model_validate(dict(body))
    except pydantic.ValidationError as exc:
        raise FeatureViewProblem(invalid_spec(exc)) from None


@dataclass(frozen=True)
class Stores:
    offline: connection.ConnectionInfo
    online: connection.ConnectionInfo


def resolve_stores(fv: api.FeatureView, emap: endpoints.EndpointMap) -> Stores:
    ns = fv.metadata.namespace or "default"
    return Stores(
        offline=refs.connection_of(ns, fv.spec.offline.store_ref.name, "postgres", "spec.offline.storeRef", emap),
        online=refs.connection_of(ns, fv.spec.online.store_ref.name, "redis", "spec.online.storeRef", emap),
    )


@dataclass(frozen=True)
class Applied:
    offline_table: str
    online_key_pattern: str
    schema_message: str


def reconcile(body: Mapping[str, Any], job_image: str, emap: endpoints.EndpointMap) -> Applied:
    fv = parse(body)
    stores = resolve_stores(fv, emap)
    try:
        with connect.postgres(stores.offline, application_name="mlinfra-operator") as conn:
            schema.ensure_bookkeeping(conn)
            result = schema.ensure_offline_table(conn, fv.spec, fv.metadata.name)
    except schema.ImmutableFieldChange as exc:
        raise FeatureViewProblem(Problem(IMMUTABLE_FIELD_CHANGE, f"refused, nothing was changed: {exc}",
                                         stalled=True)) from None
    owner = objects.owner_reference(body)
    cron = jobs.cronjob(fv, job_image, owner)
    ns = fv.metadata.namespace or "default"
    if cron is not None:
        objects.apply(cron)
    else:
        objects.delete("CronJob", ns, jobs.cronjob_name(fv.metadata.name))
    parts = [f"table {result.table}" + (" created" if result.created else " up to date")]
    if result.added:
        parts.append(f"added columns {', '.join(result.added)}")
    if result.retained:
        parts.append(f"kept columns of removed features {', '.join(result.retained)} (not served)")
    return Applied(offline_table=result.table,
                   online_key_pattern=layout.key_pattern(ns, fv.metadata.name),
                   schema_message="; ".join(parts))


def request_sync(body: Mapping[str, Any], job_image: str, requested_at: str) -> str:
    """Start the one-off Job for a ``mlinfra.io/sync-requested-at`` value (idempotent); its name."""
    fv = parse(body)
    job = jobs.ondemand_job(fv, job_image, objects.owner_reference(body), requested_at)
    objects.create(job)
    return str(job["metadata"]["name"])


@dataclass(frozen=True)
class Observed:
    freshness: freshness.Freshness
    last_run: Any  # common.SyncRun | None
    job_failed: str | None  # the newest sync Job failed, and why


def observe(fv: api.FeatureView, stores: Stores) -> Observed:
    ns, name = fv.metadata.namespace or "default", fv.metadata.name
    with connect.postgres(stores.offline, application_name="mlinfra-operator") as conn:
        fresh = freshness.compute(conn, fv.spec, ns, name)
        last = freshness.last_run(conn, ns, name)
    failed = jobstatus.newest_failure(ns, {"mlinfra.io/featureview": name})
    return Observed(freshness=fresh, last_run=last, job_failed=failed)
