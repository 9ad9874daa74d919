"""``mlinfra sync vectorindex NAMESPACE/NAME``: one sync run from the source table into the collection, as the
CronJob/Job runs it.

The VectorIndex comes from ``MLINFRA_VECTORINDEX_SPEC`` (set by the operator in the Job), ``--file``, or the
Kubernetes API. Connections: the mounted Secret directories ``MLINFRA_SOURCE_CONN_DIR`` (PostgreSQL) and
``MLINFRA_QDRANT_CONN_DIR``, else the DataStores' published Secrets (see :mod:`mlinfra.stores.sync_command`).

In a Job the source connection is the index's own sync role (``vectors.syncrole``, the Secret
``<index>-sync-source``): the run creates nothing, it checks that the bookkeeping the operator made is there
and that the role may read the columns the spec names (exit 2 saying what is missing otherwise).

The run holds the index's advisory lock (a concurrent run exits with code 2, doing nothing), records itself in
``mlinfra.vector_sync_runs``, writes into the collection the alias points at, and prints one JSON line.
Exit codes: 0 success (bad rows are reported, not fatal), 1 the run failed, 2 it could not start.

Test hook: ``MLINFRA_SYNC_PAUSE_AFTER_BATCHES=N`` prints ``paused after batch N`` on stderr and sleeps after
the N-th committed batch, so a test can kill the run between batches.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from mlinfra.api import vectorindex
from mlinfra.engines import connection
from mlinfra.engines import qdrant as qdrant_engine
from mlinfra.k8s import objects
from mlinfra.stores import sync_command
from mlinfra.vectors import runs, source, sync, syncrole

SOURCE_DIR_ENV = "MLINFRA_SOURCE_CONN_DIR"
QDRANT_DIR_ENV = "MLINFRA_QDRANT_CONN_DIR"
SPEC_ENV = "MLINFRA_VECTORINDEX_SPEC"
PAUSE_ENV = sync_command.PAUSE_ENV
MAX_BAD_ROWS_SHOWN = 20


def load_index(namespace: str, name: str, file: pathlib.Path | None = None) -> vectorindex.VectorIndex:
    return sync_command.load_resource(vectorindex.VectorIndex, "VectorIndex", SPEC_ENV, namespace, name, file)


def _emit(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)


def run(target: str, file: pathlib.Path | None = None, full: bool = False) -> int:
    """One sync of ``target``; prints the JSON summary line; returns the exit code."""
    try:
        namespace, name = sync_command.parse_target(target)
        index = load_index(namespace, name, file)
        spec = index.spec
        if spec.source is None:
            raise sync_command.Unusable(f"VectorIndex {target} has no spec.source: there is nothing to sync from")
        pg_info = sync_command.resolve_connection(SOURCE_DIR_ENV, namespace, spec.source.store_ref.name)
        qdrant_info = sync_command.resolve_connection(QDRANT_DIR_ENV, namespace, spec.store_ref.name)
    except (sync_command.Unusable, ValueError, OSError, objects.ApiError) as error:
        _emit({"vectorIndex": target, "outcome": "Failed", "error": str(error)})
        return sync_command.EXIT_UNUSABLE
    try:
        with connection.postgres(pg_info, application_name="mlinfra-vector-sync", timeouts=connection.JOB) as conn:
            # No DDL: the index's role may run none; the operator's reconcile makes the bookkeeping and grants.
            syncrole.require(conn, spec.source)
            with runs.exclusive(conn, namespace, name):
                run_id = runs.start(conn, namespace, name)
                try:
                    shape = source.inspect(conn, spec.source)
                    with qdrant_engine.open_client(qdrant_info) as client:
                        result = sync.sync(
                            conn,
                            client,
                            spec,
                            namespace,
                            name,
                            full=full,
                            shape=shape,
                            on_batch=sync_command.pause_hook(),
                        )
                except Exception as error:
                    message = f"{type(error).__name__}: {error}"
                    runs.finish(conn, run_id, rows=0, upserted=0, deleted=0, bad_rows=0, watermark=None, error=message)
                    _emit({"vectorIndex": target, "outcome": "Failed", "error": message})
                    return sync_command.EXIT_FAILED
                runs.finish(
                    conn,
                    run_id,
                    rows=result.rows,
                    upserted=result.upserted,
                    deleted=result.deleted + result.removed,
                    bad_rows=result.bad,
                    watermark=result.watermark.updated_at,
                )
    except runs.RunInProgress as error:
        _emit({"vectorIndex": target, "outcome": "Skipped", "error": str(error)})
        return sync_command.EXIT_UNUSABLE
    except syncrole.NotReady as error:
        _emit({"vectorIndex": target, "outcome": "Failed", "error": str(error)})
        return sync_command.EXIT_UNUSABLE
    except Exception as error:
        _emit({"vectorIndex": target, "outcome": "Failed", "error": f"{type(error).__name__}: {error}"})
        return sync_command.EXIT_FAILED
    _emit(
        {
            "vectorIndex": target,
            "outcome": "Succeeded",
            "rows": result.rows,
            "upserted": result.upserted,
            "deleted": result.deleted,
            "removed": result.removed,
            "batches": result.batches,
            "badRows": result.bad,
            "badRowIds": [{"id": key, "problem": why} for key, why in result.bad_rows[:MAX_BAD_ROWS_SHOWN]],
            "watermark": result.watermark.updated_at.isoformat() if result.watermark.updated_at else None,
        }
    )
    return sync_command.EXIT_OK
