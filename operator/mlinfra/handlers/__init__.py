"""Kopf handlers: each kind's file declares its ``KIND`` (wiring only); ``handlers.kind`` holds the one shape
they share and registers it.

``register(registry, settings)`` adds every handler to a registry, so settings (intervals, the endpoint
map) are passed in rather than read at import time; the context built here from them is what every
reconcile and observation is given.
"""

from __future__ import annotations

import kopf

from mlinfra.config import Settings
from mlinfra.context import Context
from mlinfra.handlers import backup, datastore, featureview, kind, modelregistry, startup, vectorindex


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    ctx = Context.from_settings(settings)
    startup.register(registry, settings)
    for module in (datastore, featureview, modelregistry, vectorindex, backup):
        kind.register(registry, ctx, module.KIND)
