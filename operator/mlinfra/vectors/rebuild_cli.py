"""``mlinfra rebuild vectorindex NAMESPACE/NAME``: the blue/green rebuild of a VectorIndex's collection, as its
rebuild Job runs it (a pod of its own: an OOM kill of a big backfill takes this process, not the operator).

The VectorIndex and the connections are found as ``mlinfra sync vectorindex`` finds them (the spec in
``MLINFRA_VECTORINDEX_SPEC``, the mounted Secret directories; see :mod:`mlinfra.vectors.sync_cli`). The run
holds the index's sync lock (a sync meanwhile would move the old collection's watermark) and its rebuild lock
(the operator reads it in ``pg_locks``: a rebuild is running while it is held), then builds
``physical_name(spec)`` beside the live collection, backfills it from one snapshot of the source, verifies the
count, moves the alias (:mod:`mlinfra.vectors.rebuild`) and commits the watermark. The alias already on that
collection: nothing to do.

Prints one JSON line. Exit codes as the sync's: 0 done (or nothing to do), 1 the rebuild failed (the alias
stayed), 2 it could not start (a lock held, no spec or connection, the bookkeeping or the role's grants not in
place: like the sync, it connects as the index's sync role and creates nothing). On failure the error, one line without
secrets, also goes to the pod's termination message (``/dev/termination-log``, when the kubelet provided it),
``<Reason>: <message>``, where the operator reads it: :data:`QDRANT_REFUSED` marks a refusal no retry fixes.

Test hook, as the sync's: ``MLINFRA_SYNC_PAUSE_AFTER_BATCHES=N`` prints ``paused after batch N`` on stderr and
sleeps after the backfill's N-th batch, so a test can kill the run mid-backfill.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from mlinfra.engines import connection, observation
from mlinfra.engines import qdrant as qdrant_engine
from mlinfra.k8s import objects
from mlinfra.stores import sync_command
from mlinfra.vectors import collection, rebuild, runs, source, sync, sync_cli, syncrole

TERMINATION_LOG_ENV = sync_command.TERMINATION_LOG_ENV
termination_message = sync_command.termination_message
# The reasons of a termination message (its first word).
BACKFILL_FAILED = rebuild.BACKFILL_FAILED
QDRANT_REFUSED = "QdrantRefused"
COLLECTION_CONFLICT = "CollectionConflict"
RUN_IN_PROGRESS = "RunInProgress"
UNUSABLE = "Unusable"
FAILED = "Failed"


def _emit(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)


def reason_of(error: Exception) -> str:
    """The termination message's reason for a failed rebuild. Qdrant refusing the points (a payload it cannot
    take) or the new collection's settings fails every attempt alike: QdrantRefused; a timeout, an outage, a
    count that did not match may pass."""
    if isinstance(error, collection.CollectionError):
        return COLLECTION_CONFLICT
    cause = error.__cause__ if isinstance(error, rebuild.BackfillFailed) else error
    if isinstance(cause, collection.SpecRefused) or (cause is not None and qdrant_engine.refusal(cause) is not None):
        return QDRANT_REFUSED
    return BACKFILL_FAILED if isinstance(error, rebuild.BackfillFailed) else FAILED


def _failed(target: str, reason: str, message: str, code: int) -> int:
    outcome = "Skipped" if code == sync_command.EXIT_UNUSABLE else "Failed"
    _emit({"vectorIndex": target, "outcome": outcome, "reason": reason, "error": message})
    termination_message(reason, message)
    return code


def run(target: str, file: pathlib.Path | None = None) -> int:
    """One rebuild of ``target`` into the collection its spec asks for; prints the JSON summary line; returns
    the exit code."""
    secrets: tuple[str, ...] = ()
    try:
        namespace, name = sync_command.parse_target(target)
        index = sync_cli.load_index(namespace, name, file)
        spec = index.spec
        if spec.source is None:
            raise sync_command.Unusable(f"VectorIndex {target} has no spec.source: there is nothing to rebuild from")
        pg_info = sync_command.resolve_connection(sync_cli.SOURCE_DIR_ENV, namespace, spec.source.store_ref.name)
        qdrant_info = sync_command.resolve_connection(sync_cli.QDRANT_DIR_ENV, namespace, spec.store_ref.name)
        secrets = (pg_info.password, qdrant_info.password)
    except (sync_command.Unusable, ValueError, OSError, objects.ApiError) as error:
        return _failed(target, UNUSABLE, str(error), sync_command.EXIT_UNUSABLE)
    owner, alias, wanted = f"{namespace}/{name}", spec.collection, collection.physical_name(spec)
    try:
        with (
            connection.postgres(pg_info, application_name="mlinfra-vector-rebuild", timeouts=connection.JOB) as conn,
            runs.rebuilding(conn, namespace, name),
            runs.exclusive(conn, namespace, name),
        ):
            syncrole.require(conn, spec.source)  # no DDL: the index's role may run none (vectors.syncrole)
            shape = source.inspect(conn, spec.source)
            with qdrant_engine.open_client(qdrant_info) as client:
                if collection.alias_target(client, alias) == wanted:
                    _emit({"vectorIndex": target, "outcome": "Succeeded", "rebuilt": False, "active": wanted})
                    return sync_command.EXIT_OK
                filled: list[sync.Backfill] = []
                pause = sync_command.pause_hook()

                def backfill(into: str) -> int:
                    filled.append(sync.snapshot_backfill(conn, client, spec, into, shape, on_batch=pause))
                    return filled[-1].written

                result = rebuild.rebuild(client, spec, backfill, lambda: filled[-1].expected, owner=owner)
            sync.commit_watermark(conn, namespace, name, filled[-1].watermark)
    except runs.RunInProgress as error:
        return _failed(target, RUN_IN_PROGRESS, str(error), sync_command.EXIT_UNUSABLE)
    except syncrole.NotReady as error:
        return _failed(target, UNUSABLE, str(error), sync_command.EXIT_UNUSABLE)
    except Exception as error:
        message = str(error) if isinstance(error, rebuild.BackfillFailed | collection.CollectionError) else None
        message = observation.scrub(message or f"{type(error).__name__}: {error}", *secrets)
        return _failed(target, reason_of(error), message, sync_command.EXIT_FAILED)
    _emit(
        {
            "vectorIndex": target,
            "outcome": "Succeeded",
            "rebuilt": True,
            "alias": result.alias,
            "active": result.active,
            "previous": result.previous,
            "points": result.points,
            "watermark": filled[-1].watermark.updated_at.isoformat() if filled[-1].watermark.updated_at else None,
        }
    )
    return sync_command.EXIT_OK
