"""``mlinfra sync modelregistry NAMESPACE/NAME``: one lineage sync pass, as the CronJob runs it.

Called by :mod:`mlinfra.cli`. The spec comes from ``MLINFRA_MODELREGISTRY_SPEC`` (JSON, set by the operator
in the Job) or from the Kubernetes API. Each store's connection comes from a mounted connection Secret
directory (``MLINFRA_METADATA_CONN_DIR``, ``MLINFRA_LINEAGE_CONN_DIR``) or else from the DataStore's
``<name>-conn`` Secret through the API. The registry database is ``spec.database``, else the Secret's.

The graph written is the registry's own share of the Neo4j database, keyed by ``NAMESPACE/NAME``
(``registry.lineage``); a graph of that name built from another registry database is refused (``GraphInUse``,
nothing changed).

Prints one JSON line and returns the exit code: 0 synced, 1 the sync failed, 2 it could not start (the
graph held by another registry database included).
"""

from __future__ import annotations

import json
import os
from typing import Any

import neo4j
import psycopg
import pydantic

from mlinfra.api import modelregistry
from mlinfra.engines import connection
from mlinfra.k8s import objects
from mlinfra.registry import lineage
from mlinfra.stores import sync_command

METADATA_DIR_ENV = "MLINFRA_METADATA_CONN_DIR"
LINEAGE_DIR_ENV = "MLINFRA_LINEAGE_CONN_DIR"
SPEC_ENV = "MLINFRA_MODELREGISTRY_SPEC"

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = sync_command.EXIT_OK, sync_command.EXIT_FAILED, sync_command.EXIT_UNUSABLE
Unusable = sync_command.Unusable
parse_target = sync_command.parse_target


def load_spec(namespace: str, name: str) -> modelregistry.ModelRegistrySpec:
    spec_json = os.environ.get(SPEC_ENV)
    try:
        if spec_json:
            return modelregistry.ModelRegistrySpec.model_validate(json.loads(spec_json))
        try:
            body = objects.Kube().get("ModelRegistry", namespace, name)
        except objects.NotFound:
            raise Unusable(f"ModelRegistry {namespace}/{name} not found") from None
        return modelregistry.ModelRegistry.model_validate(body).spec
    except pydantic.ValidationError as exc:
        raise Unusable(f"ModelRegistry {namespace}/{name} is invalid: {exc}") from None


resolve_connection = sync_command.resolve_connection


def run(target: str, batch_size: int | None = None) -> int:
    """One sync pass of ``target``; prints the JSON summary line; returns the exit code."""
    try:
        namespace, name = parse_target(target)
        spec = load_spec(namespace, name)
        if spec.lineage_store_ref is None:
            raise Unusable(f"ModelRegistry {namespace}/{name} has no spec.lineageStoreRef: nothing to sync")
        pg_info = resolve_connection(METADATA_DIR_ENV, namespace, spec.metadata_store_ref.name)
        graph_info = resolve_connection(LINEAGE_DIR_ENV, namespace, spec.lineage_store_ref.name)
    except Unusable as exc:
        _emit({"outcome": "Unusable", "error": str(exc)})
        return EXIT_UNUSABLE
    size = batch_size or (spec.lineage_sync.batch_size if spec.lineage_sync else 500)
    try:
        with (
            connection.postgres(
                pg_info, "mlinfra-lineage-sync", database=spec.database, timeouts=connection.JOB
            ) as conn,
            connection.neo4j_driver(graph_info, 10) as driver,
        ):
            lineage.ensure_schema(driver)
            result = lineage.sync(conn, driver, batch_size=size, registry=f"{namespace}/{name}")
    except lineage.GraphInUse as exc:
        _emit({"outcome": "GraphInUse", "error": str(exc)})
        return EXIT_UNUSABLE
    except (psycopg.Error, neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
        _emit({"outcome": "Failed", "error": f"{type(exc).__name__}: {exc}"})
        return EXIT_FAILED
    _emit(
        {
            "outcome": "Synced",
            "events": result.events,
            "batches": result.batches,
            "lastEventId": result.last_event_id,
            "seconds": round(result.seconds, 3),
            "finishedAt": result.finished_at.isoformat(),
            "rebuilt": result.rebuilt,
        }
    )
    return EXIT_OK


def _emit(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, sort_keys=True), flush=True)
