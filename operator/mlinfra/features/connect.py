"""Database clients for FeatureView work, from the one connection-Secret format (engines.connection).

Used by the materializer's CLI, freshness checks and the benchmark; the client SDK has its own (async too).
"""

from __future__ import annotations

import redis

from mlinfra.engines import connection

# One implementation for every kind (vectors and registry use it too).
postgres = connection.postgres


def redis_client(info: connection.ConnectionInfo, timeout: float = 30.0) -> redis.Redis:
    """A client of the online store; responses are bytes (hash fields are binary)."""
    return redis.Redis(**connection.redis_kwargs(info, timeout))
