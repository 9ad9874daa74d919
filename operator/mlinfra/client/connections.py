"""How the client SDK finds its databases: the connection-Secret format, from wherever users have it.

A connection is a :class:`mlinfra.engines.connection.ConnectionInfo`, the one parser of the ``<name>-conn``
Secret the operator publishes per DataStore. This module only gets the Secret's keys from where they are:

- a mounted Secret directory (one file per key, as a Pod sees a Secret volume): :func:`from_directory`;
- a dict of the Secret's keys (``stringData`` or decoded ``data``): :func:`from_mapping`;
- the Kubernetes API (the DataStore's ``<name>-conn`` Secret; needs the ``kubernetes`` package and read
  access to Secrets): :func:`from_kubernetes`;
- an explicit URL (``redis://``, ``rediss://``, ``postgresql://``, ``postgres://``): :func:`from_url`.

:func:`resolve` accepts any of these. It also builds the drivers' clients (sync and asyncio) from a
``ConnectionInfo``, so TLS and the CA certificate are handled the same way everywhere in the SDK.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib import parse

import psycopg
import redis as redis_lib
import redis.asyncio as redis_async

from mlinfra.engines import connection, names

ConnectionInfo = connection.ConnectionInfo
# What users may pass wherever the SDK wants a connection.
ConnectionSource = ConnectionInfo | Mapping[str, "str | bytes"] | str | os.PathLike[str]

_SCHEMES: dict[str, tuple[connection.Engine, bool]] = {
    "redis": ("redis", False),
    "rediss": ("redis", True),
    "postgresql": ("postgres", False),
    "postgres": ("postgres", False),
}
_APPLICATION_NAME = "mlinfra-client"


def from_mapping(data: Mapping[str, str | bytes]) -> ConnectionInfo:
    """The connection in a dict of the Secret's keys (values ``str`` or ``bytes``)."""
    return ConnectionInfo.from_secret_data(data)


def from_directory(path: str | os.PathLike[str]) -> ConnectionInfo:
    """The connection in a mounted Secret directory: one file per key.

    Kubernetes' own entries of a Secret volume (``..data`` and the timestamped directory it links to) start
    with a dot and are skipped, as are sub-directories.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"connection directory {str(root)!r} does not exist or is not a directory")
    data = {
        entry.name: entry.read_bytes() for entry in root.iterdir() if not entry.name.startswith(".") and entry.is_file()
    }
    return from_mapping(data)


def from_url(url: str, password: str | None = None) -> ConnectionInfo:
    """The connection named by a URL, e.g. ``redis://:secret@host:6379/0`` or ``postgresql://u@host/db``.

    ``password`` overrides (or supplies) the URL's password. ``rediss://`` and ``sslmode=verify-full`` (or
    ``verify-ca``) turn TLS on, verified against the system roots and the host name; ``sslmode=require`` is
    libpq's encrypted-but-unverified mode and reads as such (``insecure_skip_verify``). A CA or another name
    to verify cannot come from a URL: use the connection Secret (``ca.crt``, ``serverName``).
    """
    parts = parse.urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"unsupported URL scheme {parts.scheme!r}: expected one of {', '.join(_SCHEMES)}")
    engine, tls = _SCHEMES[parts.scheme]
    if not parts.hostname:
        raise ValueError("the URL names no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the URL's port is not a number between 0 and 65535") from None
    query = parse.parse_qs(parts.query)
    sslmode = query.get("sslmode", [""])[-1] if engine == "postgres" else ""
    tls = tls or sslmode in {"require", "verify-ca", "verify-full"}
    database = parse.unquote(parts.path.lstrip("/")) or None
    if engine == "redis" and database is None and "db" in query:
        database = query["db"][-1]
    return ConnectionInfo.for_engine(
        engine,
        parts.hostname,
        password if password is not None else parse.unquote(parts.password or ""),
        port=port,
        username=parse.unquote(parts.username) if parts.username else None,
        database=database,
        tls=tls,
        insecure_skip_verify=sslmode == "require",
    )


def from_kubernetes(namespace: str, datastore: str) -> ConnectionInfo:
    """The connection the operator published for the DataStore ``namespace/datastore`` (its ``-conn`` Secret).

    Uses in-cluster credentials when running in a Pod, else the kubeconfig (``KUBECONFIG``).
    """
    from kubernetes import client  # optional: only the Kubernetes readers need it

    load_kube_config()
    with client.ApiClient() as api:
        secret = client.CoreV1Api(api).read_namespaced_secret(names.connection_secret(datastore), namespace)
    data = {str(key): str(value) for key, value in (secret.data or {}).items()}
    return ConnectionInfo.from_secret_base64(data)


def load_kube_config() -> None:
    """Credentials for the Kubernetes API: the Pod's service account, else the kubeconfig (``KUBECONFIG``)."""
    from kubernetes import config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


def resolve(source: ConnectionSource) -> ConnectionInfo:
    """A ConnectionInfo from any source: itself, a dict of Secret keys, a URL, or a mounted Secret directory."""
    if isinstance(source, ConnectionInfo):
        return source
    if isinstance(source, Mapping):
        return from_mapping(source)
    text = os.fspath(source)
    if "://" in text:
        return from_url(text)
    return from_directory(text)


def expect_engine(info: ConnectionInfo, engine: connection.Engine, role: str) -> ConnectionInfo:
    """``info`` when it is a connection to ``engine``; a ValueError naming ``role`` otherwise."""
    if info.engine != engine:
        raise ValueError(f"the {role} connection must be a {engine} store, got {info.engine}")
    return info


# --- drivers ---------------------------------------------------------------------------------------------


def _redis_kwargs(info: ConnectionInfo, timeout: float) -> dict[str, Any]:
    # Replies stay bytes: feature values are decoded by the feature layout, bytes included.
    return connection.redis_kwargs(info, timeout)


def redis_client(info: ConnectionInfo, timeout: float = 5.0) -> redis_lib.Redis:
    """A Redis client (``bytes`` replies) for a redis connection."""
    return redis_lib.Redis(
        **_redis_kwargs(expect_engine(info, "redis", "online"), timeout), retry=connection.redis_retry()
    )


def redis_async_client(info: ConnectionInfo, timeout: float = 5.0) -> redis_async.Redis:
    """An asyncio Redis client (``bytes`` replies) for a redis connection."""
    return redis_async.Redis(
        **_redis_kwargs(expect_engine(info, "redis", "online"), timeout), retry=connection.redis_async_retry()
    )


@contextlib.contextmanager
def _postgres_params(info: ConnectionInfo, timeout: float) -> Iterator[dict[str, Any]]:
    """libpq parameters; a CA certificate goes through a private temporary file, read at connect time."""
    expect_engine(info, "postgres", "offline")
    with connection.libpq_params(info, timeout, _APPLICATION_NAME) as params:
        yield params


def postgres_connect(info: ConnectionInfo, timeout: float = 10.0) -> psycopg.Connection[tuple[Any, ...]]:
    """A new autocommit PostgreSQL connection for a postgres connection (the caller closes it)."""
    with _postgres_params(info, timeout) as params:
        return psycopg.connect(**params, autocommit=True)


async def postgres_connect_async(
    info: ConnectionInfo, connect_timeout: float = 10.0
) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    """A new autocommit asyncio PostgreSQL connection (the caller closes it)."""
    with _postgres_params(info, connect_timeout) as params:
        return await psycopg.AsyncConnection.connect(**params, autocommit=True)
