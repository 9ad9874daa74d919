"""Kopf settings, chosen once (changing storages later would re-run every handler): see conventions.md.
Also the liveness probe: /healthz answers 500 when handlers are stuck.

Every handler run and timer tick records activity (:func:`touch`); every object has a timer ticking every
observe interval. So while objects exist, no activity for ``settings.stall_timeout`` seconds means no
handler could start: every worker is held (a call without a deadline, a deadlock). Restarting the pod is
then the only way out, and the probe fails so that the kubelet does it. An operator with no objects has no
timers and is idle, not stuck: its probe passes. Objects are counted by Kopf indices, kept in the event
loop (the probe and the indexers are coroutines: they answer even when every worker thread is busy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from mlinfra.api import KINDS, base
from mlinfra.config import Settings

FINALIZER = "mlinfra.io/finalizer"
STORAGE_PREFIX = "kopf.mlinfra.io"
ARGOCD_TRACKING = ("metadata", "annotations", "argocd.argoproj.io/tracking-id")

_last_activity = time.monotonic()


def touch() -> None:
    """Record activity (an event handled, a timer tick) for the liveness probe."""
    global _last_activity
    _last_activity = time.monotonic()


class Stuck(Exception):
    """No handler or timer started for too long while objects exist: the liveness probe fails."""


def check_live(idle: float, objects: int, stall_timeout: float) -> float:
    """Seconds since the last activity, as /healthz reports them; raises :class:`Stuck` when objects exist
    and nothing ran for more than ``stall_timeout`` seconds. Pure."""
    if objects and idle > stall_timeout:
        raise Stuck(
            f"no handler or timer started for {idle:.0f} s (limit {stall_timeout:g} s) while {objects} objects "
            "exist: every worker is held"
        )
    return round(idle, 1)


def _objects(indices: Mapping[str, Any]) -> int:
    return sum(len(indices[_index_id(model)].get(None, ())) for model in KINDS)


def _index_id(model: type[base.Resource]) -> str:
    return f"{model.crd_info.plural}_live"


def register(registry: kopf.OperatorRegistry, operator_settings: Settings) -> None:
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
        # Handlers are synchronous: each holds a worker thread for as long as its calls take. Every call has
        # a deadline, so a stuck store holds its objects' threads for that long only; the pool is sized
        # for many stuck objects at once (threads waiting on I/O cost little), not for the CPUs.
        settings.execution.max_workers = operator_settings.max_workers
        # Idle watches die silently without timeouts (kopf#614, #847).
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.watching.connect_timeout = 30
        settings.networking.request_timeout = 60

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Kopf's own readers, not a client library's: in a Pod the ServiceAccount token, else KUBECONFIG.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    for model in KINDS:

        @kopf.index(base.GROUP, base.VERSION, model.crd_info.plural, id=_index_id(model), registry=registry)
        async def present(**_: Any) -> bool:
            return True

    @kopf.on.probe(id="objects", registry=registry)
    async def objects(**kwargs: Any) -> int:
        return _objects(kwargs)

    # PERMANENT: a probe that raises fails /healthz at once (500) instead of being retried inside the request.
    @kopf.on.probe(id="lastActivitySeconds", errors=kopf.ErrorsMode.PERMANENT, registry=registry)
    async def last_activity(**kwargs: Any) -> float:
        return check_live(time.monotonic() - _last_activity, _objects(kwargs), operator_settings.stall_timeout)
