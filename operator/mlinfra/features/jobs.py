"""The materialization CronJob and the on-demand Job of a FeatureView: pure builders of their manifests.

The Job runs ``mlinfra sync featureview NS/NAME`` from the operator's own image with the two DataStores'
connection Secrets mounted read-only, and the FeatureView's spec in an environment variable, so the pod
needs no Kubernetes API access at all (its ServiceAccount token is not even mounted).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mlinfra.api import featureview as api
from mlinfra.engines import names as store_names
from mlinfra.features import sync_cli

SYNC_REQUESTED_ANNOTATION = "mlinfra.io/sync-requested-at"
OFFLINE_DIR = "/var/run/mlinfra/offline"
ONLINE_DIR = "/var/run/mlinfra/online"
SPEC_ENV = sync_cli.SPEC_ENV
COMPONENT = "materialization"
# CronJob names may not exceed 52 characters: the controller appends an 11-character suffix to its Jobs.
_MAX_CRONJOB_NAME = 52


def _bounded(name: str, suffix: str, limit: int) -> str:
    full = f"{name}-{suffix}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - len(suffix) - 10]}-{digest}-{suffix}"


def cronjob_name(view: str) -> str:
    return _bounded(view, "materialize", _MAX_CRONJOB_NAME)


def ondemand_job_name(view: str, requested_at: str) -> str:
    """Deterministic per request value: re-handling the same annotation never starts a second Job."""
    digest = hashlib.sha256(requested_at.encode()).hexdigest()[:8]
    return _bounded(view, f"sync-{digest}", 63)


def labels(view: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlinfra-sync",
        "app.kubernetes.io/instance": view,
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/managed-by": "mlinfra-operator",
        "mlinfra.io/featureview": view,
    }


def pod_spec(fv: api.FeatureView, image: str) -> dict[str, Any]:
    ns, name = fv.metadata.namespace or "default", fv.metadata.name
    spec_json = json.dumps(fv.spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True)
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "sync",
            "image": image,
            "args": ["sync", "featureview", f"{ns}/{name}"],
            "env": [
                {"name": SPEC_ENV, "value": spec_json},
                {"name": "MLINFRA_OFFLINE_CONN_DIR", "value": OFFLINE_DIR},
                {"name": "MLINFRA_ONLINE_CONN_DIR", "value": ONLINE_DIR},
                {"name": "MLINFRA_LOG_FORMAT", "value": "json"},
            ],
            "volumeMounts": [
                {"name": "offline-conn", "mountPath": OFFLINE_DIR, "readOnly": True},
                {"name": "online-conn", "mountPath": ONLINE_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir: the root filesystem is read-only
            ],
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
        }],
        "volumes": [
            {"name": "offline-conn",
             "secret": {"secretName": store_names.connection_secret(fv.spec.offline.store_ref.name)}},
            {"name": "online-conn",
             "secret": {"secretName": store_names.connection_secret(fv.spec.online.store_ref.name)}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }


def job_spec(fv: api.FeatureView, image: str) -> dict[str, Any]:
    return {
        # A failed run is retried by the next schedule (the watermark makes reruns exact), not in a loop.
        "backoffLimit": 1,
        "activeDeadlineSeconds": 3600,
        "ttlSecondsAfterFinished": 86400,
        "template": {"metadata": {"labels": labels(fv.metadata.name)}, "spec": pod_spec(fv, image)},
    }


def cronjob(fv: api.FeatureView, image: str, owner: Mapping[str, Any]) -> dict[str, Any] | None:
    """The CronJob, or None when the view has no ``spec.materialization`` (on-demand syncs only)."""
    m = fv.spec.materialization
    if m is None:
        return None
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": cronjob_name(fv.metadata.name), "namespace": fv.metadata.namespace,
                     "labels": labels(fv.metadata.name), "ownerReferences": [dict(owner)]},
        "spec": {
            "schedule": m.schedule,
            "suspend": m.suspend,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"metadata": {"labels": labels(fv.metadata.name)}, "spec": job_spec(fv, image)},
        },
    }


def ondemand_job(fv: api.FeatureView, image: str, owner: Mapping[str, Any], requested_at: str) -> dict[str, Any]:
    """A one-off run for the ``mlinfra.io/sync-requested-at`` annotation ("sync now")."""
    meta_labels = {**labels(fv.metadata.name), "mlinfra.io/trigger": "on-demand"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": ondemand_job_name(fv.metadata.name, requested_at),
                     "namespace": fv.metadata.namespace, "labels": meta_labels,
                     "annotations": {SYNC_REQUESTED_ANNOTATION: requested_at},
                     "ownerReferences": [dict(owner)]},
        "spec": job_spec(fv, image),
    }
