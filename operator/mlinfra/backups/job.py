"""The backup Job: a pure builder. It runs ``mlinfra take backup NAMESPACE/NAME`` in the operator's image with
the plan as JSON in an environment variable and each Secret it needs (the store's connection, the target's
credentials and CA, the encryption key) mounted read-only; its pod has no Kubernetes API access.

A failed run is retried by the Job controller (``backoffLimit``, with its exponential delay: 10 s, 20 s, 40 s);
a backup never half-counts, since only a manifest makes one. The staging directory is an emptyDir without a
size limit: it holds one backup's files while they are sealed and uploaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlinfra.backups.plan import Plan
from mlinfra.k8s import syncjobs
from mlinfra.stores import backupaccess

LABEL = "mlinfra.io/backup"
COMPONENT = "backup"
PLAN_ENV = "MLINFRA_BACKUP_PLAN"
STAGING_ENV = "MLINFRA_BACKUP_STAGING"
SECRETS_ROOT = "/var/run/mlinfra/secrets"
RETRIES = 3
DEADLINE_SECONDS = 6 * 3600


def job_name(backup: str) -> str:
    return syncjobs.bounded_name(backup, "backup", 63)


SECRET_DIR_ENV = "MLINFRA_BACKUP_SECRET"  # noqa: S105 - MLINFRA_BACKUP_SECRET_<n>: the n-th Secret's directory


def build(plan: Plan, image: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    job = syncjobs.SyncJob(
        kind_label=LABEL,
        owner_name=plan.backup,
        namespace=plan.namespace,
        args=["take", "backup", f"{plan.namespace}/{plan.backup}"],
        spec_env=PLAN_ENV,
        spec=backupaccess.pod_spec_of(plan, SECRET_DIR_ENV),
        mounts=backupaccess.mounts(plan, SECRET_DIR_ENV, SECRETS_ROOT),
        component=COMPONENT,
        backoff_limit=RETRIES,
        active_deadline_seconds=DEADLINE_SECONDS,
        memory_limit="1Gi",
        termination_message_policy="FallbackToLogsOnError",
        scratch_size_limit=None,
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(plan.backup),
            "namespace": plan.namespace,
            "labels": syncjobs.labels(job),
            "ownerReferences": [dict(owner)],
        },
        "spec": syncjobs.job_spec(job, image),
    }
