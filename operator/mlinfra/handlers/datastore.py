"""DataStore handlers: reconcile on create/update/resume, observe on a timer, put drifted children back,
watch the members of stores with failover (stores.ha), honour deletionPolicy."""

from __future__ import annotations

from mlinfra import metrics
from mlinfra.api import datastore as api
from mlinfra.handlers import kind
from mlinfra.stores import ha, observe, reconcile, status

KIND = kind.Kind(
    model=api.DataStore,
    owned=status.OWNED,
    reconcile=reconcile.reconcile,
    observe=observe.observe,
    problem_status=status.problem_status,
    forget=metrics.forget_datastore,
    delete=reconcile.delete,
    retry_delay=30,
    drift_timer=True,
    watch=ha.watch,
    watch_when=ha.admits,
    actions={ha.PROMOTE_ANNOTATION: ha.promote_action},
)
