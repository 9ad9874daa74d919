"""Kopf handlers, thin: parse the body, call the layer below, write status, map errors to Kopf's.

``register(registry, settings)`` adds every handler to a registry, so settings (intervals, the endpoint
map) are passed in rather than read at import time.
"""

from __future__ import annotations

import kopf

from mlinfra.config import Settings
from mlinfra.handlers import datastore, featureview, modelregistry, startup, vectorindex


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    startup.register(registry, settings)
    datastore.register(registry, settings)
    featureview.register(registry, settings)
    modelregistry.register(registry, settings)
    vectorindex.register(registry, settings)
