"""Kopf settings, chosen once (changing storages later would re-run every handler): see conventions.md."""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from mlinfra.config import Settings

FINALIZER = "mlinfra.io/finalizer"
STORAGE_PREFIX = "kopf.mlinfra.io"
ARGOCD_TRACKING = ("metadata", "annotations", "argocd.argoproj.io/tracking-id")

_last_activity = time.monotonic()


def touch() -> None:
    """Record activity (an event handled, a timer tick) for the liveness probe."""
    global _last_activity
    _last_activity = time.monotonic()


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        # Kopf ignores every annotation under its storage prefix when it diffs: with "mlinfra.io" it would
        # never see users' own mlinfra.io/sync-requested-at. Its bookkeeping lives under kopf.mlinfra.io.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
        # Argo CD's tracking annotation must not look like a spec change.
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=STORAGE_PREFIX, key="last-handled-configuration", ignored_fields=[ARGOCD_TRACKING]
        )
        # Only warnings become Kubernetes Events: every handler's INFO line as an Event is noise and API writes.
        settings.posting.level = logging.WARNING
        settings.execution.default_backoff = 10
        settings.execution.max_workers = 8
        # Idle watches die silently without timeouts (kopf#614, #847).
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.watching.connect_timeout = 30
        settings.networking.request_timeout = 60

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Kopf's own readers, not a client library's: in a Pod the ServiceAccount token, else KUBECONFIG.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.probe(id="lastActivitySeconds", registry=registry)
    def last_activity(**_: Any) -> float:
        return round(time.monotonic() - _last_activity, 1)
