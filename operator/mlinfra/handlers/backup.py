"""Backup handlers: the Job is started once, the status follows the manifest on the target, and deleting a
Backup deletes the objects it stored (only those its manifest lists)."""

from __future__ import annotations

from mlinfra import metrics
from mlinfra.api import backup as api
from mlinfra.backups import reconcile, status
from mlinfra.handlers import kind

KIND = kind.Kind(
    model=api.Backup,
    owned=status.OWNED,
    reconcile=reconcile.reconcile,
    observe=reconcile.observe,
    problem_status=status.problem_status,
    forget=metrics.forget_backup,
    delete=reconcile.delete,
    retry_delay=15,
)
