"""Database clients for FeatureView work, from the one connection-Secret format (engines.connection).

Used by the materializer's CLI, freshness checks and the benchmark; the client SDK has its own (async too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import redis

from mlinfra.engines import connection


@contextlib.contextmanager
def postgres(
    info: connection.ConnectionInfo, application_name: str = "mlinfra-sync", connect_timeout: int = 10
) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection to the offline store (TLS verified against ``ca.crt`` when given)."""
    with connection.libpq_params(info, connect_timeout, application_name, autocommit=True) as params, \
            psycopg.connect(**params) as conn:
        yield conn


def redis_client(info: connection.ConnectionInfo, timeout: float = 30.0) -> redis.Redis:
    """A client of the online store; responses are bytes (hash fields are binary)."""
    return redis.Redis(**connection.redis_kwargs(info, timeout))
