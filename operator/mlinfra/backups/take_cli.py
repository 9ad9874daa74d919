"""``mlinfra take backup NAMESPACE/NAME``: one backup, as its Job runs it.

The plan comes from ``MLINFRA_BACKUP_PLAN`` (put there by the operator: the pod needs no Kubernetes API
access), the Secrets from the directories it names. The engine writes into the staging directory
(``MLINFRA_BACKUP_STAGING``, the pod's /tmp emptyDir by default), the catalog seals and uploads, the manifest
goes last. Prints one JSON line; exit 0 when the backup is complete, 1 when it failed (the Job controller
retries), 2 when it cannot start (no plan, a Secret missing). On failure the reason and a one-line message
without secrets also go to the pod's termination message, where the operator reads it.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

from mlinfra.backup import take
from mlinfra.backup.target import TargetError
from mlinfra.backups import job
from mlinfra.backups.plan import Plan
from mlinfra.problems import ProblemError
from mlinfra.stores import backupaccess as access
from mlinfra.stores import sync_command

TIMEOUT = 3600.0  # the engine's own deadline for taking the files (the Job's activeDeadlineSeconds caps all)
TARGET_FAILED = "TargetFailed"
BACKUP_FAILED = "BackupFailed"
UNUSABLE = "Unusable"


def _emit(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)


def _failed(target: str, reason: str, message: str, code: int) -> int:
    _emit({"backup": target, "outcome": "Failed", "reason": reason, "error": message})
    sync_command.termination_message(reason, message)
    return code


def run(target: str) -> int:
    try:
        namespace, _ = sync_command.parse_target(target)
        opened = access.open_in_pod(job.PLAN_ENV, Plan, namespace, "inside a backup Job")
        plan, conn, store_target, enc_key = opened.plan, opened.conn, opened.target, opened.key
    except (sync_command.Unusable, ProblemError, KeyError, ValueError) as exc:
        return _failed(target, UNUSABLE, str(exc), sync_command.EXIT_UNUSABLE)
    staging = pathlib.Path(os.environ.get(job.STAGING_ENV) or tempfile.gettempdir())
    try:
        manifest = take.take_backup(
            engine=plan.engine,
            conn=conn,
            target=store_target,
            store_prefix=plan.store_prefix,
            store=plan.store_ref,
            backup_id=plan.backup_id,
            enc_key=enc_key,
            staging=staging,
            timeout=TIMEOUT,
        )
    except TargetError as exc:
        return _failed(target, TARGET_FAILED, str(exc), sync_command.EXIT_FAILED)
    except Exception as exc:  # the engine's own errors: one line, the Job retries
        return _failed(target, BACKUP_FAILED, f"{type(exc).__name__}: {exc}", sync_command.EXIT_FAILED)
    _emit(
        {
            "backup": target,
            "outcome": "Complete",
            "backupId": manifest.backup_id,
            "location": plan.location,
            "bytes": manifest.stored_size,
        }
    )
    return sync_command.EXIT_OK
