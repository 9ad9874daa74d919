"""``mlinfra run``: the operator process — Kopf standalone, liveness on /healthz, metrics on /metrics."""

from __future__ import annotations

import asyncio
import logging

import kopf
import prometheus_client

from mlinfra import handlers
from mlinfra.config import Settings

log = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    kopf.configure(
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN, verbose=False
    )
    registry = kopf.OperatorRegistry()
    handlers.register(registry, settings)
    prometheus_client.start_http_server(settings.metrics_port)
    log.info(
        "mlinfra-operator starting: namespaces=%s metrics=:%d health=:%d endpoint-map=%s",
        list(settings.namespaces) or "all",
        settings.metrics_port,
        settings.health_port,
        settings.endpoint_map or "off",
    )
    asyncio.run(
        kopf.operator(
            registry=registry,
            # One replica with strategy Recreate: Kopf has no Lease-based leader election.
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        )
    )
