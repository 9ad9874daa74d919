"""ModelRegistry handlers: database, migrations, roles and their Secrets, the lineage sync (in process or by a
CronJob) and the observation of schema, counts and lineage lag. On deletion the registry's database and its
writer and reader roles stay (they hold users' data, or are what users' applications log in as); the lineage
role is dropped (only while it carries the registry's mark); the Secrets and the CronJob go with their owner."""

from __future__ import annotations

from mlinfra import metrics
from mlinfra.api import modelregistry as api
from mlinfra.handlers import kind
from mlinfra.registry import reconcile, status

KIND = kind.Kind(
    model=api.ModelRegistry,
    owned=status.OWNED,
    reconcile=reconcile.reconcile,
    observe=reconcile.observe,
    problem_status=status.problem_status,
    forget=metrics.forget_registry,
    delete=reconcile.delete,
    retry_delay=15,
)
