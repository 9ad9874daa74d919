"""``mlinfra sync featureview NAMESPACE/NAME``: one materialization run, as the CronJob/Job runs it.

Called by :mod:`mlinfra.cli`. The FeatureView comes from the Kubernetes API (or ``--file`` for local runs
and tests). Each store's connection comes, in order, from:

1. a mounted connection Secret directory (one file per key): ``MLINFRA_OFFLINE_CONN_DIR`` and
   ``MLINFRA_ONLINE_CONN_DIR`` — how the Job gets them;
2. the DataStore's published ``<name>-conn`` Secret read through the Kubernetes API.

Prints one JSON line (the run summary, or ``{"outcome": "Failed", "error": ...}``) and returns the exit
code: 0 on success, 1 when the run failed (recorded in ``mlinfra.sync_runs`` when it got that far), 2 when
it could not start (bad target, missing FeatureView or connection).

Test hook: ``MLINFRA_SYNC_PAUSE_AFTER_BATCHES=N`` makes the run print ``paused after batch N`` on stderr
and sleep after its N-th batch was written, so a test can kill it between batches.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from mlinfra.api import featureview
from mlinfra.engines import connection
from mlinfra.features import materialize
from mlinfra.k8s import objects
from mlinfra.stores import sync_command

OFFLINE_DIR_ENV = "MLINFRA_OFFLINE_CONN_DIR"
ONLINE_DIR_ENV = "MLINFRA_ONLINE_CONN_DIR"
PAUSE_ENV = sync_command.PAUSE_ENV
SPEC_ENV = "MLINFRA_FEATUREVIEW_SPEC"  # the spec as JSON, set by the operator in the Job (features.jobs)
# Seconds the run waits for one answer of the online store (connect, each write): a stuck Redis fails the run
# (recorded, retried by the next Job) instead of holding it until activeDeadlineSeconds.
ONLINE_TIMEOUT = 30.0

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = sync_command.EXIT_OK, sync_command.EXIT_FAILED, sync_command.EXIT_UNUSABLE
Unusable = sync_command.Unusable
parse_target = sync_command.parse_target


def load_view(namespace: str, name: str, file: pathlib.Path | None = None) -> featureview.FeatureView:
    """The FeatureView from ``file`` (YAML or JSON), the Job's spec variable, or the Kubernetes API."""
    return sync_command.load_resource(featureview.FeatureView, "FeatureView", SPEC_ENV, namespace, name, file)


read_conn_dir = sync_command.read_conn_dir


resolve_connection = sync_command.resolve_connection


def _emit(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, sort_keys=True), flush=True)


def run(target: str, file: pathlib.Path | None = None, batch_size: int | None = None) -> int:
    """One materialization of ``target``; prints the JSON summary line; returns the exit code."""
    try:
        namespace, name = parse_target(target)
        view = load_view(namespace, name, file)
        offline_info = resolve_connection(OFFLINE_DIR_ENV, namespace, view.spec.offline.store_ref.name)
        online_info = resolve_connection(ONLINE_DIR_ENV, namespace, view.spec.online.store_ref.name)
    except (Unusable, ValueError, OSError, objects.ApiError) as error:
        _emit({"featureView": target, "outcome": "Failed", "error": str(error)})
        return EXIT_UNUSABLE
    online = connection.redis_client(online_info, ONLINE_TIMEOUT)
    try:
        with connection.postgres(offline_info, timeouts=connection.JOB) as offline:
            result = materialize.materialize(
                view.spec,
                offline,
                online,
                namespace,
                name,
                batch_size=batch_size,
                on_batch=sync_command.pause_hook(),
                # A store with replicas publishes a read-only host: a failover must not lose a committed run.
                replica_acks=1 if online_info.read_only_host else 0,
            )
    except Exception as error:
        _emit({"featureView": target, "outcome": "Failed", "error": f"{type(error).__name__}: {error}"})
        return EXIT_FAILED
    finally:
        online.close()
    _emit(result.summary())
    return EXIT_OK
