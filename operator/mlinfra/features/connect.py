"""How the operator reaches a FeatureView's two DataStores: the checked connections, and the one-attempt Redis
client its reconcile and observation use (a timer must not hang on a stuck Redis, nor retry a timeout).

No Kopf here; used by ``features.reconcile`` and ``features.synccreds``.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis import backoff as redis_backoff
from redis import retry as redis_retry

from mlinfra.api import featureview as api
from mlinfra.context import Context, Obj
from mlinfra.engines import connection
from mlinfra.stores import refs

APPLICATION_NAME = "mlinfra-operator"
ONLINE_UNREACHABLE = "OnlineStoreUnreachable"
ONLINE_TIMEOUT = 5.0  # seconds per Redis call of the operator: the timer must not hang on a stuck Redis
CONFLICT_RECHECK = 60.0  # seconds: what holds a name the view wants may go away without a spec change here


@dataclass(frozen=True)
class Stores:
    offline: connection.ConnectionInfo  # reachable from the operator (dev endpoint map applied)
    online: connection.ConnectionInfo
    offline_published: connection.ConnectionInfo | None = None  # as published for apps (in-cluster host)
    online_published: connection.ConnectionInfo | None = None


def stores(ctx: Context, obj: Obj[api.FeatureView]) -> Stores:
    """Both DataStores, checked (exist, right engine, Ready) and reachable by the operator."""
    spec = obj.model.spec
    offline = refs.connection_of(ctx, obj.namespace, spec.offline.store_ref.name, "postgres", "spec.offline.storeRef")
    return Stores(
        offline=offline,
        online=refs.connection_of(ctx, obj.namespace, spec.online.store_ref.name, "redis", "spec.online.storeRef"),
        offline_published=refs.published_connection(ctx, obj.namespace, spec.offline.store_ref.name) or offline,
        online_published=refs.published_connection(ctx, obj.namespace, spec.online.store_ref.name),
    )


def online_client(info: connection.ConnectionInfo) -> redis.Redis:
    """A client of the online store for the operator's own calls: :data:`ONLINE_TIMEOUT`, one attempt per call
    (a timeout is final: ``connection.redis_retry``'s retries are for the Jobs)."""
    return redis.Redis(
        **connection.redis_kwargs(info, ONLINE_TIMEOUT), retry=redis_retry.Retry(redis_backoff.NoBackoff(), 0)
    )
