"""ModelRegistry handlers: database, migrations, roles and Secrets on create/update/resume; the lineage
sync and the observation of schema, counts and lineage lag on a timer (in-process, for small setups)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf

from mlinfra import metrics
from mlinfra.api import common
from mlinfra.api import modelregistry as api
from mlinfra.config import Settings
from mlinfra.handlers import startup, statuswrite
from mlinfra.registry import reconcile, status
from mlinfra.stores import endpoints
from mlinfra.stores.status import Problem, ProblemError

PLURAL = "modelregistries"


def write_status(body: kopf.Body, patch: kopf.Patch, new: dict[str, Any]) -> None:
    statuswrite.write_status(body, patch, new, status.OWNED)


def _problem(body: Mapping[str, Any], problem: Problem) -> dict[str, Any]:
    return status.compute(status.Facts(generation=body["metadata"].get("generation"), problem=problem),
                          body.get("status"))


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    emap = endpoints.EndpointMap(settings.endpoint_map)
    res = (startup.GROUP, startup.VERSION, PLURAL)

    def sync_and_observe(body: kopf.Body, patch: kopf.Patch, memo: Any, force: bool) -> None:
        mr = reconcile.parse(body)
        stores = reconcile.resolve_stores(mr, emap)
        sync = mr.spec.lineage_sync or api.LineageSync()
        interval = common.parse_duration(sync.interval)
        problem = stores.lineage_problem
        last = getattr(memo, "last_lineage_sync", 0.0)
        # With a schedule the CronJob syncs; the operator only observes.
        if sync.schedule is None and (force or time.monotonic() - last >= interval.total_seconds()):
            problem = reconcile.sync_lineage(mr, stores)
            memo.last_lineage_sync = time.monotonic()
        facts = reconcile.observe(mr, stores, problem)
        write_status(body, patch, status.compute(facts, body.get("status")))
        if facts.pending_events is not None:
            ns, name = mr.metadata.namespace or "", mr.metadata.name
            metrics.REGISTRY_PENDING_EVENTS.labels(ns, name).set(facts.pending_events)
            metrics.REGISTRY_LINEAGE_LAG.labels(ns, name).set(facts.oldest_pending_age or 0)
            metrics.REGISTRY_LINEAGE_MAX_LAG.labels(ns, name).set(facts.max_lag.total_seconds())

    @kopf.on.resume(*res, registry=registry)
    @kopf.on.create(*res, registry=registry)
    @kopf.on.update(*res, field="spec", registry=registry)
    def reconcile_modelregistry(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
        startup.touch()
        with metrics.reconciling("modelregistry"):
            try:
                reconcile.reconcile(body, emap, settings.job_image)
                sync_and_observe(body, patch, memo, force=True)
            except ProblemError as exc:
                statuswrite.fail(body, patch, exc.problem, _problem(body, exc.problem), status.OWNED, 15)

    @kopf.timer(*res, interval=settings.observe_interval, initial_delay=settings.observe_interval,
                registry=registry)
    def observe_modelregistry(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
        startup.touch()
        st = body.get("status") or {}
        if st.get("observedGeneration") != body["metadata"].get("generation") or st.get("schemaVersion") is None:
            return  # the reconcile handler has not succeeded for this generation yet
        try:
            sync_and_observe(body, patch, memo, force=False)
        except ProblemError as exc:
            write_status(body, patch, _problem(body, exc.problem))

    @kopf.on.delete(*res, registry=registry)
    def delete_modelregistry(body: kopf.Body, **_: Any) -> None:
        # The registry's database and roles hold users' data: never dropped. Secrets go with their owner.
        metrics.forget_registry(body["metadata"]["namespace"], body["metadata"]["name"])
