"""The index-sync CronJob, the on-demand Job and the rebuild Jobs of a VectorIndex (see ``mlinfra.k8s.syncjobs``)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlinfra.api import vectorindex as api
from mlinfra.engines import names as store_names
from mlinfra.k8s import syncjobs
from mlinfra.vectors import sync_cli, syncrole

SYNC_REQUESTED_ANNOTATION = syncjobs.SYNC_REQUESTED_ANNOTATION
KIND_LABEL = "mlinfra.io/vectorindex"
SOURCE_DIR = "/var/run/mlinfra/source"
QDRANT_DIR = "/var/run/mlinfra/qdrant"
COMPONENT = "index-sync"
COMPONENT_LABEL = "app.kubernetes.io/component"
REBUILD_COMPONENT = "index-rebuild"
TARGET_LABEL = "mlinfra.io/rebuild-target"  # the collection being built (a digest when not a label value)
ATTEMPT_LABEL = "mlinfra.io/rebuild-attempt"
TARGET_ANNOTATION = "mlinfra.io/rebuild-target"  # the collection's full name, whatever its length
REASONS_ANNOTATION = "mlinfra.io/rebuild-reasons"  # why, e.g. "vectors.distance: Cosine -> Dot"
# A rebuild copies the whole source table: far longer than a sync may take, and more memory (the pod's limit
# is what an OOM kill hits, not the operator).
REBUILD_DEADLINE_SECONDS = 12 * 3600
REBUILD_MEMORY_LIMIT = "2Gi"
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def cronjob_name(index: str) -> str:
    return syncjobs.cronjob_name(index, "index-sync")


def ondemand_job_name(index: str, requested_at: str) -> str:
    return syncjobs.ondemand_job_name(KIND_LABEL, index, requested_at)


def rebuild_job_name(index: str, target: str, attempt: int) -> str:
    """``<index>-rebuild-<8 hex digits of the target>-<attempt>``: one name per (index, target, attempt), so a
    re-handled reconcile never starts an attempt twice. Never a sync Job's name: those end in ``sync-<8 hex>``
    (on demand) or ``index-sync-<minutes>`` (the CronJob's), and the part before this name's final number
    is 8 hex digits, never ``sync``."""
    digest = hashlib.sha256(target.encode()).hexdigest()[:8]
    return syncjobs.bounded_name(index, f"rebuild-{digest}-{attempt}", 63)


def target_label(target: str) -> str:
    if len(target) <= 63 and _LABEL_VALUE.fullmatch(target):
        return target
    return "sha256-" + hashlib.sha256(target.encode()).hexdigest()[:16]


def rebuild_selector(index: str) -> dict[str, str]:
    """The labels of every rebuild Job of ``index`` (and of no sync Job)."""
    return {KIND_LABEL: index, COMPONENT_LABEL: REBUILD_COMPONENT}


def sync_selector(index: str) -> dict[str, str]:
    """The labels of every sync Job of ``index`` (CronJob runs and on-demand ones, no rebuild Job)."""
    return {KIND_LABEL: index, COMPONENT_LABEL: COMPONENT}


def sync_job(vi: api.VectorIndex) -> syncjobs.SyncJob:
    return _job(
        vi,
        ("sync", "vectorindex", *(("--full",) if vi.spec.sync and vi.spec.sync.hard_deletes else ())),
        COMPONENT,
    )


def _job(vi: api.VectorIndex, command: Sequence[str], component: str, **extra: Any) -> syncjobs.SyncJob:
    """The Job of ``command`` (``sync vectorindex``, ``rebuild vectorindex``): the spec, the index's own sync
    role's Secret for the source (``syncrole.secret_name``: not the store's admin credentials) and the Qdrant
    store's Secret (Qdrant has no per-collection credentials here), mounted alike."""
    assert vi.spec.source is not None
    ns, name = vi.metadata.namespace or "default", vi.metadata.name
    verb, kind, *options = command
    return syncjobs.SyncJob(
        kind_label=KIND_LABEL,
        owner_name=name,
        namespace=ns,
        args=(verb, kind, f"{ns}/{name}", *options),
        spec_env=sync_cli.SPEC_ENV,
        spec=vi.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        mounts=(
            syncjobs.Mount(
                "source-conn",
                syncrole.secret_name(name),
                SOURCE_DIR,
                sync_cli.SOURCE_DIR_ENV,
            ),
            syncjobs.Mount(
                "qdrant-conn",
                store_names.connection_secret(vi.spec.store_ref.name),
                QDRANT_DIR,
                sync_cli.QDRANT_DIR_ENV,
            ),
        ),
        component=component,
        **extra,
    )


def cronjob(vi: api.VectorIndex, image: str, owner: Mapping[str, Any]) -> dict[str, Any] | None:
    """The CronJob, or None without ``spec.sync`` (on-demand syncs only, when there is a source)."""
    if vi.spec.sync is None or vi.spec.source is None:
        return None
    return syncjobs.cronjob(
        sync_job(vi), cronjob_name(vi.metadata.name), vi.spec.sync.schedule, vi.spec.sync.suspend, image, owner
    )


def ondemand_job(vi: api.VectorIndex, image: str, owner: Mapping[str, Any], requested_at: str) -> dict[str, Any]:
    return syncjobs.ondemand_job(sync_job(vi), image, owner, requested_at)


def rebuild_job(
    vi: api.VectorIndex, image: str, owner: Mapping[str, Any], target: str, attempt: int, reasons: str = ""
) -> dict[str, Any]:
    """Attempt ``attempt`` of the blue/green rebuild of ``vi`` into the collection ``target``: ``mlinfra rebuild
    vectorindex`` in a pod of its own (an OOM kills the pod, not the operator). One pod, no retry by the Job
    controller (``backoffLimit`` 0): the operator decides about the next attempt, after a backoff."""
    job = _job(
        vi,
        ("rebuild", "vectorindex"),
        REBUILD_COMPONENT,
        backoff_limit=0,
        active_deadline_seconds=REBUILD_DEADLINE_SECONDS,
        memory_limit=REBUILD_MEMORY_LIMIT,
        termination_message_policy="FallbackToLogsOnError",
    )
    labels = {**syncjobs.labels(job), TARGET_LABEL: target_label(target), ATTEMPT_LABEL: str(attempt)}
    spec = syncjobs.job_spec(job, image)
    spec["template"]["metadata"]["labels"] = labels
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": rebuild_job_name(vi.metadata.name, target, attempt),
            "namespace": job.namespace,
            "labels": labels,
            "annotations": {TARGET_ANNOTATION: target, REASONS_ANNOTATION: reasons},
            "ownerReferences": [dict(owner)],
        },
        "spec": spec,
    }
