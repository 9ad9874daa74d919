"""The client SDK: what users' training and serving code imports to read the features the operator built.

- :class:`FeatureStore` (sync) and :class:`AsyncFeatureStore` (asyncio): ``get_online_features`` (Redis) and
  point-in-time ``get_historical_features`` (PostgreSQL), through the one layout of
  :mod:`mlinfra.features.layout` — the materializer's — so training and serving cannot skew.
- :mod:`mlinfra.client.connections`: finding the stores (mounted connection Secret, dict, Kubernetes API, URL).

See docs/client.md.
"""

from mlinfra.client.features import FeatureStore, View
from mlinfra.client.features_async import AsyncFeatureStore
from mlinfra.client.lineage import Lineage
from mlinfra.client.registry import Registry

__all__ = ["AsyncFeatureStore", "FeatureStore", "View"]
__all__ += ["Lineage", "Registry"]
