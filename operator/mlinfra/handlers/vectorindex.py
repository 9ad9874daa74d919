"""VectorIndex handlers: the collection, its blue/green rebuild and the sync CronJob follow the spec; "sync
now" starts a Job; the observation repairs drift made by hand and applies the previous collection's
retention. On deletion the collections stay (they hold users' vectors and may be queried by name), and the
index's sync role is dropped (only while it is the index's: ``vectors.syncrole``); its Secret, the CronJob and
the Jobs go with their owner."""

from __future__ import annotations

from mlinfra import metrics
from mlinfra.api import vectorindex as api
from mlinfra.handlers import kind
from mlinfra.vectors import reconcile, status

KIND = kind.Kind(
    model=api.VectorIndex,
    owned=status.OWNED,
    reconcile=reconcile.reconcile,
    observe=reconcile.observe,
    problem_status=status.problem_status,
    forget=metrics.forget_vectorindex,
    delete=reconcile.delete,
    request_sync=reconcile.request_sync,
    retry_delay=15,
)
