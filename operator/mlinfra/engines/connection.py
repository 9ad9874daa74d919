"""The one connection-Secret format, for every engine, managed or external.

The operator publishes a Secret ``<name>-conn`` per DataStore with the string keys ``engine, host, port,
username, password, database, uri, tls`` (plus ``ca.crt`` when a CA certificate is configured). Sync jobs, the
client SDK, the probes and users' apps all read it through :class:`ConnectionInfo`, so the format is written
and parsed in this module only.

``uri`` never embeds the password: it is safe to print, log and put in ``status``. Clients take the password
from the ``password`` key.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import math
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, get_args
from urllib import parse

import neo4j
import psycopg
import redis

from mlinfra.api import datastore

Engine = datastore.Engine

DEFAULT_PORTS: dict[Engine, int] = {"redis": 6379, "postgres": 5432, "neo4j": 7687, "qdrant": 6333}
DEFAULT_USERNAMES: dict[Engine, str] = {"redis": "default", "postgres": "postgres", "neo4j": "neo4j", "qdrant": ""}
DEFAULT_DATABASES: dict[Engine, str] = {"redis": "0", "postgres": "postgres", "neo4j": "neo4j", "qdrant": ""}

# The keys of the Secret, in the order DESIGN.md lists them. CA_KEY is present only when a CA is set.
SECRET_KEYS = ("engine", "host", "port", "username", "password", "database", "uri", "tls")
CA_KEY = "ca.crt"

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


def default_port(engine: Engine) -> int:
    """The engine's standard client port (qdrant: the HTTP API)."""
    return DEFAULT_PORTS[engine]


@dataclasses.dataclass(frozen=True)
class ConnectionInfo:
    """How to reach one database: endpoint, credentials, database and TLS. Immutable."""

    engine: Engine
    host: str
    port: int
    username: str
    password: str
    database: str
    tls: bool
    ca_cert: str | None = None
    # Development only, never in a Secret: qdrant-client local mode on this directory instead of a server
    # (set by the endpoint map of the local platform, where no Qdrant server binary exists).
    local_path: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in get_args(Engine):
            raise ValueError(f"unknown engine {self.engine!r}: expected one of {', '.join(get_args(Engine))}")
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be between 1 and 65535, got {self.port}")

    @classmethod
    def for_engine(
        cls,
        engine: Engine,
        host: str,
        password: str,
        *,
        port: int | None = None,
        username: str | None = None,
        database: str | None = None,
        tls: bool = False,
        ca_cert: str | None = None,
    ) -> ConnectionInfo:
        """A ConnectionInfo with the engine's default port, user name and database where not given."""
        return cls(
            engine=engine,
            host=host,
            port=port if port is not None else DEFAULT_PORTS[engine],
            username=username if username is not None else DEFAULT_USERNAMES[engine],
            password=password,
            database=database if database is not None else DEFAULT_DATABASES[engine],
            tls=tls,
            ca_cert=ca_cert,
        )

    @property
    def endpoint(self) -> str:
        """``host:port`` (IPv6 hosts in brackets), as ``status.endpoint`` shows it."""
        return f"{_url_host(self.host)}:{self.port}"

    @property
    def uri(self) -> str:
        """The engine's URI for this endpoint, user and database; never the password."""
        netloc = self.endpoint
        if self.engine == "redis":
            user = f"{parse.quote(self.username, safe='')}@" if self.username else ""
            db = f"/{parse.quote(self.database, safe='')}" if self.database else ""
            return f"{'rediss' if self.tls else 'redis'}://{user}{netloc}{db}"
        if self.engine == "postgres":
            user = f"{parse.quote(self.username, safe='')}@" if self.username else ""
            db = f"/{parse.quote(self.database, safe='')}" if self.database else ""
            return f"postgresql://{user}{netloc}{db}{'?sslmode=require' if self.tls else ''}"
        if self.engine == "neo4j":
            return f"{'neo4j+s' if self.tls else 'bolt'}://{netloc}"
        return f"{'https' if self.tls else 'http'}://{netloc}"

    def with_endpoint(self, host: str, port: int) -> ConnectionInfo:
        """The same credentials and database at another endpoint (e.g. one member, or a dev port map)."""
        return dataclasses.replace(self, host=host, port=port)

    def to_secret_data(self) -> dict[str, str]:
        """The ``stringData`` of the connection Secret: string values only."""
        data = {
            "engine": self.engine,
            "host": self.host,
            "port": str(self.port),
            "username": self.username,
            "password": self.password,
            "database": self.database,
            "uri": self.uri,
            "tls": "true" if self.tls else "false",
        }
        if self.ca_cert:
            data[CA_KEY] = self.ca_cert
        return data

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str | bytes]) -> ConnectionInfo:
        """Parse the Secret's keys; values may be ``str`` (``stringData``) or decoded ``bytes``.

        ``uri`` is derived, so it is not read. Errors name the offending key, never a value of the password.
        """
        values = {key: text(key, value) for key, value in data.items()}
        engine = _require(values, "engine")
        if engine not in get_args(Engine):
            raise ValueError(f"connection secret: key 'engine' must be one of {', '.join(get_args(Engine))}")
        port_text = _require(values, "port")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"connection secret: key 'port' is not a number: {port_text!r}") from None
        tls_text = values.get("tls", "false").strip().lower()
        if tls_text not in _TRUE | _FALSE:
            raise ValueError(f"connection secret: key 'tls' must be true or false, got {tls_text!r}")
        return cls(
            engine=engine,  # type: ignore[arg-type]  # checked against Engine above
            host=_require(values, "host"),
            port=port,
            username=values.get("username", ""),
            password=values.get("password", ""),
            database=values.get("database", ""),
            tls=tls_text in _TRUE,
            ca_cert=values.get(CA_KEY) or None,
        )

    @classmethod
    def from_secret_base64(cls, data: Mapping[str, str]) -> ConnectionInfo:
        """Parse a Secret's ``data`` as the Kubernetes API returns it (base64-encoded values)."""
        return cls.from_secret_data(decode_secret_data(data))

    def __repr__(self) -> str:
        return (
            f"ConnectionInfo(engine={self.engine!r}, host={self.host!r}, port={self.port}, "
            f"username={self.username!r}, password='***', database={self.database!r}, tls={self.tls}, "
            f"ca_cert={'<set>' if self.ca_cert else None})"
        )

    __str__ = __repr__


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def split_endpoint(endpoint: str, default_port: int) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``, or a bare host) into its parts."""
    if endpoint.startswith("["):
        host, _, rest = endpoint[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = endpoint.rpartition(":")
    if not sep:
        return endpoint, default_port
    return host, int(port)


def decode_secret_data(data: Mapping[str, str]) -> dict[str, bytes]:
    """A Secret's ``data`` as the Kubernetes API returns it (base64 values), decoded: the one decoder."""
    return {key: base64.b64decode(value) for key, value in data.items()}


def text(key: str, value: str | bytes) -> str:
    """A Secret value as text; a value that is not UTF-8 is an error naming the key (never the value)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"connection secret: key {key!r} is not UTF-8 text") from None
    return value


def _require(values: Mapping[str, str], key: str) -> str:
    value = values.get(key, "").strip()
    if not value:
        raise ValueError(f"connection secret: key {key!r} is missing or empty")
    return value


# --- driver parameters: the one translation of a ConnectionInfo into client settings --------------------


def redis_kwargs(info: ConnectionInfo, timeout: float) -> dict[str, Any]:
    """Keyword arguments of ``redis.Redis`` / ``redis.asyncio.Redis`` (replies stay bytes)."""
    return {
        "host": info.host,
        "port": info.port,
        "db": int(info.database or 0),
        "username": info.username or None,
        "password": info.password or None,
        "ssl": info.tls,
        "ssl_ca_data": info.ca_cert,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }


@contextlib.contextmanager
def libpq_params(
    info: ConnectionInfo, connect_timeout: float, application_name: str, **extra: Any
) -> Iterator[dict[str, Any]]:
    """psycopg/libpq connection parameters. With TLS and a CA the server is verified (``verify-full``);
    the CA goes through a private temporary file that lives as long as the context (libpq reads it at
    connect time)."""
    params: dict[str, Any] = {
        "host": info.host,
        "port": info.port,
        "user": info.username or None,
        "password": info.password or None,
        "dbname": info.database or None,
        "connect_timeout": max(1, math.ceil(connect_timeout)),  # libpq takes whole seconds
        "application_name": application_name,
        "sslmode": "require" if info.tls else "prefer",
        **extra,
    }
    with contextlib.ExitStack() as stack:
        if info.tls and info.ca_cert:
            ca = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".crt"))
            ca.write(info.ca_cert)
            ca.flush()
            params.update(sslmode="verify-full", sslrootcert=ca.name)
        yield params


@contextlib.contextmanager
def postgres(
    info: ConnectionInfo,
    application_name: str = "mlinfra-sync",
    connect_timeout: float = 10,
    database: str | None = None,
    **extra: Any,
) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """The one way to open a PostgreSQL connection: autocommit, TLS verified against ``ca.crt`` when given,
    closed on exit; ``database`` instead of the connection's own when given; ``extra``: more libpq
    parameters (e.g. ``options``)."""
    if database:
        info = dataclasses.replace(info, database=database)
    with (
        libpq_params(info, connect_timeout, application_name, autocommit=True, **extra) as params,
        psycopg.connect(**params) as conn,
    ):
        yield conn


def redis_client(info: ConnectionInfo, timeout: float = 30.0) -> redis.Redis:
    """The one way to open a synchronous Redis client; replies stay bytes (hash fields are binary)."""
    return redis.Redis(**redis_kwargs(info, timeout))


@contextlib.contextmanager
def neo4j_driver(info: ConnectionInfo, timeout: float, **options: Any) -> Iterator[neo4j.Driver]:
    """A Neo4j driver (closed on exit). With TLS and a CA the server is verified against it (the CA goes
    through a private temporary file); ``options`` are the driver's own settings."""
    settings: dict[str, Any] = {
        "connection_timeout": timeout,
        "connection_acquisition_timeout": timeout,
        # Queries may name labels or relationship types that do not exist yet:
        # the server's notifications about it are expected, not warnings.
        "notifications_min_severity": "OFF",
        **options,
    }
    with contextlib.ExitStack() as stack:
        if info.tls and info.ca_cert:
            ca = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".crt"))
            ca.write(info.ca_cert)
            ca.flush()
            uri = f"bolt://{info.endpoint}"
            settings.update(encrypted=True, trusted_certificates=neo4j.TrustCustomCAs(ca.name))
        else:
            uri = f"{'bolt+s' if info.tls else 'bolt'}://{info.endpoint}"
        yield stack.enter_context(
            neo4j.GraphDatabase.driver(uri, auth=(info.username or "neo4j", info.password), **settings)
        )
