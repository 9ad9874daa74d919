"""Sync Jobs of the ML kinds: pure builders of the CronJob and the one-off Job running ``mlinfra sync ...``.

Every sync Job runs the operator's own image with the referenced DataStores' connection Secrets mounted
read-only (one directory each, named by an environment variable) and the resource's spec as JSON in an
environment variable, so the pod needs no Kubernetes API access (its ServiceAccount token is not mounted).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SYNC_REQUESTED_ANNOTATION = "mlinfra.io/sync-requested-at"
# The first kind with on-demand Jobs: the digest in its Job names is of the requested-at value alone, as it was
# before other kinds had such Jobs (a Job started before an upgrade keeps its name); other kinds mix in theirs.
FEATUREVIEW_LABEL = "mlinfra.io/featureview"
# CronJob names may not exceed 52 characters: the controller appends an 11-character suffix to its Jobs.
_MAX_CRONJOB_NAME = 52


@dataclass(frozen=True)
class Mount:
    """A connection Secret mounted for the sync command: ``env`` names the directory it is mounted at."""

    volume: str
    secret: str
    path: str
    env: str


@dataclass(frozen=True)
class SyncJob:
    """What differs between the kinds' sync Jobs."""

    kind_label: str  # e.g. mlinfra.io/featureview
    owner_name: str
    namespace: str
    args: Sequence[str]  # after the image's entrypoint (`mlinfra`)
    spec_env: str
    spec: Mapping[str, Any]
    mounts: Sequence[Mount]
    component: str
    # Optional, for Jobs other than the syncs (a VectorIndex rebuild); None keeps the sync Jobs' values.
    backoff_limit: int | None = None
    active_deadline_seconds: int | None = None
    memory_limit: str | None = None
    # "FallbackToLogsOnError": a container that wrote no termination message (killed) shows its last log lines.
    termination_message_policy: str | None = None
    # The /tmp emptyDir's limit; None: no limit (a backup Job stages a whole backup there).
    scratch_size_limit: str | None = "64Mi"


def bounded_name(name: str, suffix: str, limit: int) -> str:
    full = f"{name}-{suffix}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    # A cut right after a dot would leave ".-", which no DNS subdomain may contain.
    return f"{name[: limit - len(suffix) - 10].rstrip('.')}-{digest}-{suffix}"


def cronjob_name(owner: str, suffix: str) -> str:
    """``<owner>-<suffix>``; each kind has its own suffix and none ends another (``materialize``,
    ``index-sync``, ``lineage``), so two kinds' objects of any names never share a CronJob name."""
    return bounded_name(owner, suffix, _MAX_CRONJOB_NAME)


def ondemand_job_name(kind_label: str, owner: str, requested_at: str) -> str:
    """Deterministic per kind, object and request value: re-handling the same annotation never starts a
    second Job, and a FeatureView and a VectorIndex of one name asked for the same value get one Job each
    (the digest covers the kind, except the FeatureView's, see FEATUREVIEW_LABEL)."""
    seed = requested_at if kind_label == FEATUREVIEW_LABEL else f"{kind_label}\n{requested_at}"
    digest = hashlib.sha256(seed.encode()).hexdigest()[:8]
    return bounded_name(owner, f"sync-{digest}", 63)


def labels(job: SyncJob) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlinfra-sync",
        "app.kubernetes.io/instance": job.owner_name,
        "app.kubernetes.io/component": job.component,
        "app.kubernetes.io/managed-by": "mlinfra-operator",
        job.kind_label: job.owner_name,
    }


def pod_spec(job: SyncJob, image: str) -> dict[str, Any]:
    env = [{"name": job.spec_env, "value": json.dumps(dict(job.spec), sort_keys=True)}]
    env += [{"name": m.env, "value": m.path} for m in job.mounts]
    env.append({"name": "MLINFRA_LOG_FORMAT", "value": "json"})
    container: dict[str, Any] = {
        "name": "sync",
        "image": image,
        "args": list(job.args),
        "env": env,
        "volumeMounts": [{"name": m.volume, "mountPath": m.path, "readOnly": True} for m in job.mounts]
        + [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir: the root filesystem is read-only
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": job.memory_limit or "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if job.termination_message_policy is not None:
        container["terminationMessagePolicy"] = job.termination_message_policy
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": m.volume, "secret": {"secretName": m.secret}} for m in job.mounts]
        + [{"name": "tmp", "emptyDir": {"sizeLimit": job.scratch_size_limit} if job.scratch_size_limit else {}}],
    }


def job_spec(job: SyncJob, image: str) -> dict[str, Any]:
    return {
        # A failed run is retried by the next schedule (watermarks make reruns exact), not in a loop.
        "backoffLimit": 1 if job.backoff_limit is None else job.backoff_limit,
        "activeDeadlineSeconds": job.active_deadline_seconds or 3600,
        "ttlSecondsAfterFinished": 86400,
        "template": {"metadata": {"labels": labels(job)}, "spec": pod_spec(job, image)},
    }


def cronjob(
    job: SyncJob, name: str, schedule: str, suspend: bool, image: str, owner: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": job.namespace, "labels": labels(job), "ownerReferences": [dict(owner)]},
        "spec": {
            "schedule": schedule,
            "suspend": suspend,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"metadata": {"labels": labels(job)}, "spec": job_spec(job, image)},
        },
    }


def ondemand_job(job: SyncJob, image: str, owner: Mapping[str, Any], requested_at: str) -> dict[str, Any]:
    """A one-off run for the ``mlinfra.io/sync-requested-at`` annotation ("sync now")."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": ondemand_job_name(job.kind_label, job.owner_name, requested_at),
            "namespace": job.namespace,
            "labels": {**labels(job), "mlinfra.io/trigger": "on-demand"},
            "annotations": {SYNC_REQUESTED_ANNOTATION: requested_at},
            "ownerReferences": [dict(owner)],
        },
        "spec": job_spec(job, image),
    }
