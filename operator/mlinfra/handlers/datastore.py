"""DataStore handlers: reconcile on create/update/resume, observe on a timer, honour deletionPolicy."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import kopf

from mlinfra import metrics
from mlinfra.config import Settings
from mlinfra.handlers import startup, statuswrite
from mlinfra.stores import endpoints, observe, reconcile, status

PLURAL = "datastores"


def write_status(body: kopf.Body, patch: kopf.Patch, new: dict[str, Any]) -> bool:
    return statuswrite.write_status(body, patch, new, status.OWNED)


def _problem_status(body: Mapping[str, Any], problem: status.Problem) -> dict[str, Any]:
    spec = body.get("spec") or {}
    facts = status.Facts(generation=body["metadata"].get("generation"), engine=str(spec.get("engine")),
                         mode="managed" if spec.get("managed") else "external" if spec.get("external") else None,
                         problem=problem)
    return status.compute(facts, body.get("status"))


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    emap = endpoints.EndpointMap(settings.endpoint_map)
    res = (startup.GROUP, startup.VERSION, PLURAL)

    def reconcile_and_observe(body: kopf.Body, patch: kopf.Patch) -> None:
        startup.touch()
        with metrics.reconciling("datastore"):
            try:
                applied = reconcile.reconcile(body, settings.engine_images)
            except reconcile.StoreProblem as exc:
                statuswrite.fail(body, patch, exc.problem, _problem_status(body, exc.problem), status.OWNED, 30)
            ds = reconcile.parse(body)
            new = status.compute(observe.facts(body, ds, applied, emap, settings.probe_timeout), body.get("status"))
            write_status(body, patch, new)
            metrics.record_datastore(ds.metadata.namespace or "", ds.metadata.name, ds.spec.engine, new)

    @kopf.on.resume(*res, registry=registry)
    @kopf.on.create(*res, registry=registry)
    @kopf.on.update(*res, field="spec", registry=registry)
    def reconcile_datastore(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconcile_and_observe(body, patch)

    @kopf.timer(*res, interval=settings.observe_interval, initial_delay=settings.observe_interval,
                registry=registry)
    def observe_datastore(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        startup.touch()
        st = body.get("status") or {}
        # A spec the handlers have not acted on yet (or refused) is theirs to report, not the timer's.
        if st.get("observedGeneration") != body["metadata"].get("generation") or \
                any(c.get("type") == "Stalled" and c.get("status") == "True" for c in st.get("conditions") or []):
            return
        try:
            ds = reconcile.parse(body)
        except reconcile.StoreProblem:
            return
        ns, name = ds.metadata.namespace or "default", ds.metadata.name
        conn = reconcile.connection_from_secret(ns, name)
        if conn is None:
            return
        applied = reconcile.Applied(conn=conn, endpoint=str(st.get("endpoint") or f"{conn.host}:{conn.port}"),
                                    connection_secret=str(st.get("connectionSecret")))
        new = status.compute(observe.facts(body, ds, applied, emap, settings.probe_timeout), st)
        write_status(body, patch, new)
        metrics.record_datastore(ns, name, ds.spec.engine, new)

    @kopf.timer(*res, interval=settings.drift_interval, initial_delay=settings.drift_interval, registry=registry)
    def correct_drift(body: kopf.Body, **_: Any) -> None:
        # Server-side apply of unchanged children is a no-op for the API server (no write, no new
        # resourceVersion); children edited by hand are put back.
        with contextlib.suppress(reconcile.StoreProblem):
            reconcile.reconcile(body, settings.engine_images)

    @kopf.on.delete(*res, registry=registry)
    def delete_datastore(body: kopf.Body, **_: Any) -> None:
        startup.touch()
        with contextlib.suppress(reconcile.StoreProblem):  # an invalid spec never created anything
            reconcile.delete(body)
        metrics.forget_datastore(body["metadata"]["namespace"], body["metadata"]["name"])
