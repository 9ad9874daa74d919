"""FeatureView handlers: the offline schema and the sync CronJob on create/update/resume, "sync now" on the
annotation, freshness and the last run observed by a timer (see handlers.kind and mlinfra.features).

Deletion keeps the offline table and the online keys (users' data) and drops the view's sync role (only while
it is the view's: ``features.syncrole``); its Secret and the Jobs go with their owner."""

from __future__ import annotations

from mlinfra import metrics
from mlinfra.api import featureview as api
from mlinfra.features import reconcile, status
from mlinfra.handlers import kind

KIND = kind.Kind(
    model=api.FeatureView,
    owned=status.OWNED,
    reconcile=reconcile.reconcile,
    observe=reconcile.observe,
    problem_status=status.problem_status,
    forget=metrics.forget_featureview,
    delete=reconcile.delete,
    request_sync=reconcile.request_sync,
    retry_delay=15,
    # The table is re-applied now and then: one dropped by hand comes back without a spec change.
    drift_timer=True,
)
