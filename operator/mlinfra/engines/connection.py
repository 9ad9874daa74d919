"""The one connection-Secret format, for every engine, managed or external.

The operator publishes a Secret ``<name>-conn`` per DataStore with the string keys ``engine, host, port,
username, password, database, uri, tls`` (plus ``ca.crt`` when a CA certificate is configured, ``serverName``
when the certificate names another host than ``host``, ``insecureSkipVerify`` when verification is off, and
``readOnlyHost`` and ``readOnlyUri`` for a replicated managed redis or postgres store: its healthy replicas,
for reads that may lag the primary).
Sync jobs, the client SDK, the probes and users' apps all read it through :class:`ConnectionInfo`, so the
format is written and parsed in this module only.

TLS is verified unless ``insecureSkipVerify`` says otherwise: the chain against ``ca.crt`` (or the system
roots without one) and the host name (``serverName`` or else ``host``). The driver translations at the end
of this module are the one place that turns that into each driver's settings.

``uri`` never embeds the password: it is safe to print, log and put in ``status``. Clients take the password
from the ``password`` key.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import math
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any, get_args
from urllib import parse

import neo4j
import psycopg
import redis
from redis import backoff as redis_backoff
from redis import retry as redis_retry_mod
from redis.asyncio import retry as redis_async_retry_mod

from mlinfra.api import datastore

Engine = datastore.Engine

DEFAULT_PORTS: dict[Engine, int] = {"redis": 6379, "postgres": 5432, "neo4j": 7687, "qdrant": 6333}
DEFAULT_USERNAMES: dict[Engine, str] = {"redis": "default", "postgres": "postgres", "neo4j": "neo4j", "qdrant": ""}
DEFAULT_DATABASES: dict[Engine, str] = {"redis": "0", "postgres": "postgres", "neo4j": "neo4j", "qdrant": ""}

# The keys of the Secret, in the order DESIGN.md lists them. The optional keys are present only when set, so
# Secrets written before they existed read as the defaults (verified, against the host's own name).
SECRET_KEYS = ("engine", "host", "port", "username", "password", "database", "uri", "tls")
CA_KEY = "ca.crt"
SERVER_NAME_KEY = "serverName"
INSECURE_KEY = "insecureSkipVerify"
# A replicated managed redis or postgres store: the read-only Service over its healthy replicas, and its URI.
READ_ONLY_HOST_KEY = "readOnlyHost"
READ_ONLY_URI_KEY = "readOnlyUri"

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
    # The name to verify in the server's certificate (and send as SNI) when it is not ``host``.
    server_name: str | None = None
    # Encrypt without verifying the server at all (spec.external.tls.insecureSkipVerify: testing only).
    insecure_skip_verify: bool = False
    # The host of the read-only endpoint (the healthy replicas, same port and credentials); None without one.
    read_only_host: str | None = None
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
        server_name: str | None = None,
        insecure_skip_verify: bool = False,
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
            server_name=server_name,
            insecure_skip_verify=insecure_skip_verify,
        )

    @property
    def verified(self) -> bool:
        """TLS on and the server's certificate checked (chain and name)."""
        return self.tls and not self.insecure_skip_verify

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
            return f"postgresql://{user}{netloc}{db}{_pg_uri_query(self)}"
        if self.engine == "neo4j":
            # neo4j+ssc: encrypted, certificate not checked (the drivers' own scheme for it).
            scheme = "neo4j+s" if self.verified else "neo4j+ssc" if self.tls else "bolt"
            return f"{scheme}://{netloc}"
        return f"{'https' if self.tls else 'http'}://{netloc}"

    def read_only(self) -> ConnectionInfo:
        """The connection for reads that may lag the primary: the read-only endpoint where the store has one,
        this connection otherwise (a single member, or an engine whose members all serve)."""
        if self.read_only_host is None:
            return self
        return dataclasses.replace(self, host=self.read_only_host, read_only_host=None)

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
        if self.server_name:
            data[SERVER_NAME_KEY] = self.server_name
        if self.insecure_skip_verify:
            data[INSECURE_KEY] = "true"
        if self.read_only_host:
            data[READ_ONLY_HOST_KEY] = self.read_only_host
            data[READ_ONLY_URI_KEY] = self.read_only().uri
        return data

    def to_secret_base64(self) -> dict[str, str]:
        """:meth:`to_secret_data` as a Secret's ``data`` (base64): applied as ``data``, a key the connection no
        longer has leaves the Secret (applied as ``stringData``, which the API server turns into ``data`` after
        merging the apply, it would stay)."""
        return {key: base64.b64encode(value.encode()).decode() for key, value in self.to_secret_data().items()}

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
        return cls(
            engine=engine,  # type: ignore[arg-type]  # checked against Engine above
            host=_require(values, "host"),
            port=port,
            username=values.get("username", ""),
            password=values.get("password", ""),
            database=values.get("database", ""),
            tls=_flag(values, "tls"),
            ca_cert=values.get(CA_KEY) or None,
            server_name=values.get(SERVER_NAME_KEY, "").strip() or None,
            insecure_skip_verify=_flag(values, INSECURE_KEY),
            read_only_host=values.get(READ_ONLY_HOST_KEY, "").strip() or None,
        )

    @classmethod
    def from_secret_base64(cls, data: Mapping[str, str]) -> ConnectionInfo:
        """Parse a Secret's ``data`` as the Kubernetes API returns it (base64-encoded values)."""
        return cls.from_secret_data(decode_secret_data(data))

    def __repr__(self) -> str:
        return (
            f"ConnectionInfo(engine={self.engine!r}, host={self.host!r}, port={self.port}, "
            f"username={self.username!r}, password='***', database={self.database!r}, tls={self.tls}, "
            f"ca_cert={'<set>' if self.ca_cert else None}, server_name={self.server_name!r}, "
            f"insecure_skip_verify={self.insecure_skip_verify}, read_only_host={self.read_only_host!r})"
        )

    __str__ = __repr__


def _flag(values: Mapping[str, str], key: str) -> bool:
    """A true/false key of the Secret; missing is false."""
    value = values.get(key, "false").strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"connection secret: key {key!r} must be true or false, got {value!r}")
    return value in _TRUE


def _pg_uri_query(info: ConnectionInfo) -> str:
    # libpq's own words for what the operator does: verify-full checks chain and host name; without a CA
    # the system roots (libpq >= 16); with one the app points sslrootcert at ca.crt. require: no check.
    if not info.tls:
        return ""
    if info.insecure_skip_verify:
        return "?sslmode=require"
    return "?sslmode=verify-full" if info.ca_cert else "?sslmode=verify-full&sslrootcert=system"


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


class TLSNotSupported(ValueError):
    """A TLS setting the engine's driver cannot honour (refused, never silently ignored)."""


class _ServerNameContext(ssl.SSLContext):
    """An SSLContext that sends and verifies ``server_name`` whatever host the driver connected to.

    Drivers that take an SSLContext (neo4j, httpx under qdrant-client) pass their own host as
    ``server_hostname``; Python checks the certificate against exactly that argument, so replacing it here
    is how a certificate for another name is verified without switching verification off.
    """

    server_name: str | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side,
            do_handshake_on_connect,
            suppress_ragged_eofs,
            self.server_name or server_hostname,
            session,
        )

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name or server_hostname, session)


def ssl_context(info: ConnectionInfo) -> ssl.SSLContext:
    """The client SSLContext for ``info`` (neo4j, qdrant): the chain checked against ``ca.crt`` only, or the
    system roots without one; the host name (``server_name`` or else the host) checked; TLS 1.2 or newer.
    With ``insecure_skip_verify`` nothing is checked (the connection is still encrypted)."""
    context = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.server_name = info.server_name
    if info.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif info.ca_cert:
        context.load_verify_locations(cadata=info.ca_cert)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


def redis_kwargs(info: ConnectionInfo, timeout: float) -> dict[str, Any]:
    """Keyword arguments of ``redis.Redis`` / ``redis.asyncio.Redis`` (replies stay bytes).

    redis-py builds its own SSLContext from the system roots, adds ``ca.crt`` to them when given, and checks
    the certificate against ``host`` (both stated here, not left to the library's defaults). It has no
    setting for another name to verify, so a ``server_name`` is refused (:class:`TLSNotSupported`); the API
    refuses ``serverName`` for redis DataStores for the same reason.
    """
    params: dict[str, Any] = {
        "host": info.host,
        "port": info.port,
        "db": int(info.database or 0),
        "username": info.username or None,
        "password": info.password or None,
        "ssl": info.tls,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # A peer that vanished while the connection idles in a pool is noticed, not waited on.
        "socket_keepalive": True,
    }
    if info.tls:
        if info.server_name:
            raise TLSNotSupported(
                f"redis at {info.endpoint}: serverName is not supported for redis (redis-py verifies the "
                "endpoint's host name); use an endpoint whose host the certificate names"
            )
        params.update(
            ssl_cert_reqs="none" if info.insecure_skip_verify else "required",
            ssl_check_hostname=info.verified,
            ssl_ca_data=info.ca_cert if info.verified else None,
        )
    return params


def qdrant_kwargs(info: ConnectionInfo, timeout: float) -> dict[str, Any]:
    """Keyword arguments of ``qdrant_client.QdrantClient`` for a server (the password is the API key).

    qdrant-client hands ``verify`` to its httpx client: with TLS an SSLContext from :func:`ssl_context`
    (CA, system roots, server name, or no check), so every Qdrant call verifies like the other engines.
    """
    params: dict[str, Any] = {
        "url": info.uri,
        "api_key": info.password or None,
        "timeout": max(1, math.ceil(timeout)),
        "check_compatibility": False,
    }
    if info.tls:
        params["verify"] = ssl_context(info)
    return params


# --- deadlines: no call the operator makes waits for ever ----------------------------------------------


class DeadlineExceeded(TimeoutError):
    """A call to a database did not finish in time: no connection within the connect timeout, a statement
    or lock timeout, or a server that stopped answering. A ``TimeoutError``, so the handlers report it on
    the object that made the call (not stalled: retried) without knowing the engines."""


class Deadline:
    """One deadline shared by the many calls of a long piece of work (a snapshot, an export): each call gets
    what is left, and the first to find nothing left raises DeadlineExceeded naming ``what``."""

    def __init__(self, timeout: float, what: str) -> None:
        self.ends = time.monotonic() + timeout
        self.timeout, self.what = timeout, what

    def left(self) -> float:
        remaining = self.ends - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"{self.what} did not finish within {self.timeout:g} s")
        return remaining


class PostgresDeadlineExceeded(DeadlineExceeded, psycopg.OperationalError):
    """A PostgreSQL call that missed its deadline; still a ``psycopg.OperationalError`` for the code that
    handles PostgreSQL errors as such (the sync commands)."""


@dataclasses.dataclass(frozen=True)
class PgTimeouts:
    """How long a PostgreSQL connection may wait, in seconds (None: no limit).

    ``statement``, ``lock`` and ``idle_in_transaction`` are the server's own timeouts, set at connect time.
    The server cannot enforce them when it does not run at all (stopped, or a host that vanished after the
    connection was made), so the client enforces one more: a single call (a statement, a fetch, a commit)
    that outlives ``statement + CLIENT_GRACE`` closes the connection. ``total`` bounds the whole life of the
    connection as well (a probe's budget).
    """

    statement: float | None = 60.0
    lock: float | None = 10.0
    idle_in_transaction: float | None = 300.0
    total: float | None = None

    @property
    def client(self) -> float | None:
        """The longest one call may block this client."""
        return self.statement + CLIENT_GRACE if self.statement is not None else None

    def options(self) -> str:
        """The libpq ``options`` that set the server-side timeouts (``-c name=ms``; 0 is no limit)."""
        settings = {
            "statement_timeout": self.statement,
            "lock_timeout": self.lock,
            "idle_in_transaction_session_timeout": self.idle_in_transaction,
        }
        return " ".join(f"-c {name}={_ms(value)}" for name, value in settings.items())


# The server's statement_timeout normally answers first (a clear error); the client's deadline is the backstop.
CLIENT_GRACE = 5.0
# The operator's handlers and timers: a statement is catalog reads, small DDL or a bounded batch; a lock is
# never worth queueing for (DDL waiting on a lock blocks every writer behind it); nothing stays open.
OPERATOR = PgTimeouts()
_operator_timeouts = OPERATOR


def set_operator_timeouts(timeouts: PgTimeouts) -> None:
    """The operator's settings (``mlinfra run``, once at start-up) in place of :data:`OPERATOR`."""
    global _operator_timeouts
    _operator_timeouts = timeouts


def operator_timeouts() -> PgTimeouts:
    """The timeouts of the operator's own connections: :data:`OPERATOR` or what the settings say."""
    return _operator_timeouts


# Sync Jobs: a materialization reads a whole table in one snapshot while it writes the online store, so
# the server's timeouts stay off; the Job's activeDeadlineSeconds bounds the run.
JOB = PgTimeouts(statement=None, lock=None, idle_in_transaction=None)
# TCP keepalives and tcp_user_timeout (libpq, Linux): a peer that vanished (a node lost, a partition) ends
# the connection within about half a minute even when no statement runs.
KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms
}


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, math.ceil(seconds * 1000))


# What psycopg (pinned in pyproject) raises when ``Connection.wait`` reaches its ``timeout``.
_WAIT_TIMEOUT: type[psycopg.Error] = psycopg.errors._WaitTimeout


class _DeadlineConnection(psycopg.Connection[tuple[Any, ...]]):
    """A psycopg connection whose every blocking call (``wait``) has a deadline; past it, the connection is
    closed and :class:`PostgresDeadlineExceeded` raised (the server may be frozen mid-answer, so the
    connection is unusable)."""

    _call_limit: float | None = None
    _ends_at: float | None = None  # monotonic; the whole connection's budget
    _endpoint: str = ""

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        limits = [t for t in (timeout, self._call_limit) if t is not None]
        if self._ends_at is not None:
            limits.append(max(0.0, self._ends_at - time.monotonic()))
        limit = min(limits) if limits else None
        try:
            return super().wait(gen, interval, limit)
        except _WAIT_TIMEOUT:
            self.close()
            raise PostgresDeadlineExceeded(
                f"PostgreSQL at {self._endpoint} did not answer within {limit:.0f} s (the connection was closed)"
            ) from None


def deadline_error(exc: BaseException, timeouts: PgTimeouts, endpoint: str = "") -> PostgresDeadlineExceeded | None:
    """``exc`` as a deadline error when it is one (connect, statement, lock or idle timeout), else None."""
    if isinstance(exc, PostgresDeadlineExceeded):
        return exc
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return PostgresDeadlineExceeded(f"PostgreSQL at {endpoint}: no connection in time ({_first_line(exc)})")
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return PostgresDeadlineExceeded(
            f"PostgreSQL: {_first_line(exc)} (lock_timeout {_seconds(timeouts.lock)}: the operator does not "
            "queue behind another transaction's lock, it tries again later)"
        )
    if isinstance(exc, psycopg.errors.QueryCanceled) and "statement timeout" in str(exc):
        return PostgresDeadlineExceeded(
            f"PostgreSQL: {_first_line(exc)} (statement_timeout {_seconds(timeouts.statement)})"
        )
    if isinstance(exc, psycopg.errors.IdleInTransactionSessionTimeout):
        return PostgresDeadlineExceeded(f"PostgreSQL: {_first_line(exc)}")
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _seconds(value: float | None) -> str:
    return "off" if value is None else f"{value:g} s"


# libpq learnt ``sslrootcert=system`` (verify against the system roots) in PostgreSQL 16.
_LIBPQ_SYSTEM_ROOTS = 160000


def _pg_addresses(info: ConnectionInfo) -> str:
    """The addresses of ``info.host`` for libpq's ``hostaddr`` (comma-separated; libpq tries each)."""
    try:
        found = socket.getaddrinfo(info.host, info.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise psycopg.OperationalError(f"could not resolve the PostgreSQL host {info.host!r}: {exc}") from None
    return ",".join(dict.fromkeys(str(entry[4][0]) for entry in found))


def _pg_tls(info: ConnectionInfo, ca_file: str | None) -> dict[str, Any]:
    """The libpq TLS parameters: ``verify-full`` (chain and host name) against ``ca_file`` or the system
    roots; ``require`` (encrypted, unchecked) with insecure_skip_verify; plain TCP without TLS (``disable``,
    not libpq's default ``prefer``: the spec says plain when TLS is off)."""
    if not info.tls:
        return {"sslmode": "disable"}
    params: dict[str, Any] = {"sslmode": "require" if info.insecure_skip_verify else "verify-full"}
    if info.verified:
        if ca_file is None and psycopg.pq.version() < _LIBPQ_SYSTEM_ROOTS:
            raise TLSNotSupported(
                f"PostgreSQL at {info.endpoint}: verifying against the system roots needs libpq 16 or newer "
                f"(this is {psycopg.pq.version()}); give a CA (caSecretRef)"
            )
        params["sslrootcert"] = ca_file or "system"
    if info.server_name:
        # The libpq way to verify another name: ``host`` is the name checked (and sent as SNI), ``hostaddr``
        # where libpq connects, one entry per address so that every address is still tried.
        addresses = _pg_addresses(info)
        params.update(host=",".join([info.server_name] * (addresses.count(",") + 1)), hostaddr=addresses)
    return params


@contextlib.contextmanager
def libpq_params(
    info: ConnectionInfo, connect_timeout: float, application_name: str, **extra: Any
) -> Iterator[dict[str, Any]]:
    """psycopg/libpq connection parameters, TLS as :func:`_pg_tls` says. A CA goes through a private
    temporary file that lives as long as the context (libpq reads it at connect time)."""
    params: dict[str, Any] = {
        "host": info.host,
        "port": info.port,
        "user": info.username or None,
        "password": info.password or None,
        "dbname": info.database or None,
        "connect_timeout": max(1, math.ceil(connect_timeout)),  # libpq takes whole seconds
        "application_name": application_name,
        **extra,
    }
    with contextlib.ExitStack() as stack:
        ca_file = None
        if info.verified and info.ca_cert:
            ca = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".crt"))
            ca.write(info.ca_cert)
            ca.flush()
            ca_file = ca.name
        params.update(_pg_tls(info, ca_file))
        yield params


@contextlib.contextmanager
def postgres(
    info: ConnectionInfo,
    application_name: str = "mlinfra-sync",
    connect_timeout: float = 10,
    database: str | None = None,
    timeouts: PgTimeouts | None = None,
    **extra: Any,
) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """The one way to open a PostgreSQL connection: autocommit, TLS as :func:`libpq_params` says, closed on
    exit; ``database`` instead of the connection's own when given; ``timeouts``: the operator's
    (default, :func:`operator_timeouts`) or the sync Jobs' (:data:`JOB`); ``extra``: more libpq parameters.

    Every wait has an end (see :class:`PgTimeouts`); one that is reached raises
    :class:`PostgresDeadlineExceeded`, a ``TimeoutError``, naming the timeout.
    """
    if database:
        info = dataclasses.replace(info, database=database)
    timeouts = timeouts or _operator_timeouts
    if timeouts.total is not None:
        connect_timeout = min(connect_timeout, timeouts.total)
    started = time.monotonic()
    try:
        with libpq_params(
            info, connect_timeout, application_name, autocommit=True, options=timeouts.options(), **KEEPALIVES, **extra
        ) as params:
            conn = _DeadlineConnection.connect(**params)
            conn._call_limit, conn._endpoint = timeouts.client, info.endpoint
            if timeouts.total is not None:
                conn._ends_at = started + timeouts.total
            with conn:
                yield conn
    except psycopg.Error as exc:
        translated = deadline_error(exc, timeouts, info.endpoint)
        if translated is None or translated is exc:
            raise
        raise translated from exc


def redis_retry() -> redis_retry_mod.Retry:
    """The retry policy of every Redis client: one timeout is final; a connection refused or reset (a restart,
    a failover) is tried again, a few times. redis-py's default tries every call 10 more times, timeouts
    included, so a frozen server held the caller ten times its timeout per call."""
    return redis_retry_mod.Retry(
        redis_backoff.ExponentialWithJitterBackoff(base=0.1, cap=2.0), 3, supported_errors=(redis.ConnectionError,)
    )


def redis_async_retry() -> redis_async_retry_mod.Retry:
    """:func:`redis_retry` for asyncio clients."""
    return redis_async_retry_mod.Retry(
        redis_backoff.ExponentialWithJitterBackoff(base=0.1, cap=2.0), 3, supported_errors=(redis.ConnectionError,)
    )


def redis_client(info: ConnectionInfo, timeout: float = 30.0) -> redis.Redis:
    """The one way to open a synchronous Redis client; replies stay bytes (hash fields are binary). One call
    waits at most ``timeout`` for an answer (:func:`redis_retry`)."""
    return redis.Redis(**redis_kwargs(info, timeout), retry=redis_retry())


def neo4j_settings(info: ConnectionInfo, timeout: float, **options: Any) -> tuple[str, dict[str, Any]]:
    """The URI and settings of ``neo4j.GraphDatabase.driver`` (without auth). With TLS the driver gets the
    SSLContext of :func:`ssl_context` over ``bolt://`` (the driver allows its own ``ssl_context`` only with
    the plain schemes): CA or system roots, host or server name checked, or nothing with insecure_skip_verify.
    ``options`` are the driver's own settings."""
    settings: dict[str, Any] = {
        "connection_timeout": timeout,
        "connection_acquisition_timeout": timeout,
        # Queries may name labels or relationship types that do not exist yet:
        # the server's notifications about it are expected, not warnings.
        "notifications_min_severity": "OFF",
        **options,
    }
    if info.tls:
        settings["ssl_context"] = ssl_context(info)
    return f"bolt://{info.endpoint}", settings


@contextlib.contextmanager
def neo4j_driver(info: ConnectionInfo, timeout: float, **options: Any) -> Iterator[neo4j.Driver]:
    """A Neo4j driver (closed on exit), TLS as :func:`neo4j_settings` says."""
    uri, settings = neo4j_settings(info, timeout, **options)
    with neo4j.GraphDatabase.driver(uri, auth=(info.username or "neo4j", info.password), **settings) as driver:
        yield driver
