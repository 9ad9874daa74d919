"""Database clients for FeatureView work, from the one connection-Secret format (engines.connection).

Used by the materializer's CLI, freshness checks and the benchmark; the client SDK has its own (async too).
"""

from __future__ import annotations

import contextlib
import tempfile
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
    params: dict[str, Any] = {
        "host": info.host,
        "port": info.port,
        "user": info.username or None,
        "password": info.password or None,
        "dbname": info.database or None,
        "connect_timeout": connect_timeout,
        "application_name": application_name,
        "sslmode": "require" if info.tls else "prefer",
        "autocommit": True,
    }
    with contextlib.ExitStack() as stack:
        if info.tls and info.ca_cert:
            ca = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".crt"))
            ca.write(info.ca_cert)
            ca.flush()
            params.update(sslmode="verify-full", sslrootcert=ca.name)
        yield stack.enter_context(psycopg.connect(**params))


def redis_client(info: connection.ConnectionInfo, timeout: float = 30.0) -> redis.Redis:
    """A client of the online store; responses are bytes (hash fields are binary)."""
    return redis.Redis(
        host=info.host,
        port=info.port,
        db=int(info.database or 0),
        username=info.username or None,
        password=info.password or None,
        ssl=info.tls,
        ssl_ca_data=info.ca_cert,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
