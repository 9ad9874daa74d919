"""FeatureView handlers: schema + CronJob on create/update/resume, "sync now" on the annotation, freshness
and the last run observed by a timer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from mlinfra import metrics
from mlinfra.config import Settings
from mlinfra.features import reconcile, status
from mlinfra.handlers import startup, statuswrite, syncnow
from mlinfra.stores import endpoints
from mlinfra.stores.status import Problem, ProblemError

PLURAL = "featureviews"


def write_status(body: kopf.Body, patch: kopf.Patch, new: dict[str, Any]) -> None:
    statuswrite.write_status(body, patch, new, status.OWNED)


def _problem(body: Mapping[str, Any], problem: Problem) -> dict[str, Any]:
    return status.compute(status.Facts(generation=body["metadata"].get("generation"), problem=problem),
                          body.get("status"))


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    emap = endpoints.EndpointMap(settings.endpoint_map)
    res = (startup.GROUP, startup.VERSION, PLURAL)

    def observe_into(body: kopf.Body, patch: kopf.Patch, applied: reconcile.Applied) -> None:
        fv = reconcile.parse(body)
        observed = reconcile.observe(fv, reconcile.resolve_stores(fv, emap))
        new = status.compute(status.Facts(
            generation=body["metadata"].get("generation"), offline_table=applied.offline_table,
            online_key_pattern=applied.online_key_pattern, schema_message=applied.schema_message,
            freshness=observed.freshness, last_run=observed.last_run, job_failed=observed.job_failed,
            max_lag=status.max_lag(fv)), body.get("status"))
        write_status(body, patch, new)
        ns, name = fv.metadata.namespace or "", fv.metadata.name
        lag = observed.freshness.lag_seconds
        if lag is not None:
            metrics.FEATUREVIEW_FRESHNESS_LAG.labels(ns, name).set(lag)
        objective = status.max_lag(fv)
        metrics.set_objective(metrics.FEATUREVIEW_FRESHNESS_MAX_LAG, ns, name,
                              objective.total_seconds() if objective is not None else None)

    @kopf.on.resume(*res, registry=registry)
    @kopf.on.create(*res, registry=registry)
    @kopf.on.update(*res, field="spec", registry=registry)
    def reconcile_featureview(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        startup.touch()
        with metrics.reconciling("featureview"):
            try:
                applied = reconcile.reconcile(body, settings.job_image, emap)
                observe_into(body, patch, applied)
            except ProblemError as exc:
                statuswrite.fail(body, patch, exc.problem, _problem(body, exc.problem), status.OWNED, 15)

    syncnow.register(registry, res, reconcile.request_sync, settings.job_image)

    @kopf.timer(*res, interval=settings.observe_interval, initial_delay=settings.observe_interval,
                registry=registry)
    def observe_featureview(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        startup.touch()
        st = body.get("status") or {}
        if st.get("observedGeneration") != body["metadata"].get("generation") or not st.get("offlineTable"):
            return  # the reconcile handler has not succeeded for this generation yet
        try:
            applied = reconcile.Applied(offline_table=st["offlineTable"], online_key_pattern=st["onlineKeyPattern"],
                                        schema_message=next((c.get("message", "") for c in st.get("conditions", [])
                                                             if c["type"] == "SchemaApplied"), ""))
            observe_into(body, patch, applied)
        except ProblemError as exc:
            # A store went away or is unhealthy: say so (the handler retries the rest when it is back).
            write_status(body, patch, _problem(body, exc.problem))

    @kopf.on.delete(*res, registry=registry)
    def delete_featureview(body: kopf.Body, **_: Any) -> None:
        # The offline table and online keys hold users' data: never dropped. Jobs go with their owner.
        metrics.forget_featureview(body["metadata"]["namespace"], body["metadata"]["name"])
