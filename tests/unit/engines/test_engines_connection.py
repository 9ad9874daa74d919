"""The one connection-Secret format: round trips, URIs without the password, a repr that hides it."""

from __future__ import annotations

import base64
from urllib import parse

import pytest

from mlinfra.engines import connection

PASSWORD = "pa:ss/w@rd?#%"  # every character that would break a URI if it were embedded


def info(engine: connection.Engine = "postgres", **overrides: object) -> connection.ConnectionInfo:
    values: dict[str, object] = {
        "engine": engine,
        "host": "db.example.com",
        "port": 5432,
        "username": "app",
        "password": PASSWORD,
        "database": "features",
        "tls": False,
    }
    values.update(overrides)
    return connection.ConnectionInfo(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["redis", "postgres", "neo4j", "qdrant"])
@pytest.mark.parametrize("tls", [False, True])
def test_secret_data_round_trips(engine: connection.Engine, tls: bool) -> None:
    original = info(engine, tls=tls)
    data = original.to_secret_data()
    assert set(data) == set(connection.SECRET_KEYS)
    assert all(isinstance(value, str) for value in data.values())
    assert connection.ConnectionInfo.from_secret_data(data) == original


def test_secret_data_keeps_a_ca_certificate() -> None:
    original = info(tls=True, ca_cert="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    data = original.to_secret_data()
    assert data[connection.CA_KEY] == original.ca_cert
    assert connection.ConnectionInfo.from_secret_data(data) == original


def test_from_secret_data_accepts_decoded_bytes() -> None:
    original = info("redis", port=6379, database="2")
    as_bytes = {key: value.encode() for key, value in original.to_secret_data().items()}
    assert connection.ConnectionInfo.from_secret_data(as_bytes) == original


def test_from_secret_base64_reads_the_api_form() -> None:
    original = info("neo4j", port=7687, database="neo4j")
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in original.to_secret_data().items()}
    assert connection.ConnectionInfo.from_secret_base64(encoded) == original


def test_secret_values_are_exactly_the_documented_strings() -> None:
    data = info("redis", port=6380, database="0", tls=True).to_secret_data()
    assert data == {
        "engine": "redis",
        "host": "db.example.com",
        "port": "6380",
        "username": "app",
        "password": PASSWORD,
        "database": "0",
        "uri": "rediss://app@db.example.com:6380/0",
        "tls": "true",
    }


@pytest.mark.parametrize(
    ("engine", "port", "tls", "uri"),
    [
        ("redis", 6379, False, "redis://app@db.example.com:6379/features"),
        ("redis", 6379, True, "rediss://app@db.example.com:6379/features"),
        ("postgres", 5432, False, "postgresql://app@db.example.com:5432/features"),
        (
            "postgres",
            5432,
            True,
            "postgresql://app@db.example.com:5432/features?sslmode=verify-full&sslrootcert=system",
        ),
        ("neo4j", 7687, False, "bolt://db.example.com:7687"),
        ("neo4j", 7687, True, "neo4j+s://db.example.com:7687"),
        ("qdrant", 6333, False, "http://db.example.com:6333"),
        ("qdrant", 6333, True, "https://db.example.com:6333"),
    ],
)
def test_uri_per_engine_never_embeds_the_password(engine: connection.Engine, port: int, tls: bool, uri: str) -> None:
    conn = info(engine, port=port, tls=tls)
    assert conn.uri == uri
    assert PASSWORD not in conn.uri
    assert parse.quote(PASSWORD, safe="") not in conn.uri
    assert parse.urlsplit(conn.uri).password is None


def test_uri_quotes_user_and_database_and_brackets_ipv6() -> None:
    conn = info(host="::1", username="a@b", database="my db")
    assert conn.uri == "postgresql://a%40b@[::1]:5432/my%20db"
    assert conn.endpoint == "[::1]:5432"


def test_repr_and_str_hide_the_password() -> None:
    conn = info()
    for text in (repr(conn), str(conn), f"{conn}", repr([conn])):
        assert PASSWORD not in text
        assert "password='***'" in text


@pytest.mark.parametrize(("engine", "port"), [("redis", 6379), ("postgres", 5432)])
def test_a_replicated_store_publishes_its_read_only_endpoint(engine: connection.Engine, port: int) -> None:
    conn = info(engine, port=port, read_only_host="db-ro.ml.svc")
    data = conn.to_secret_data()
    assert data["readOnlyHost"] == "db-ro.ml.svc"
    assert data["readOnlyUri"] == conn.uri.replace("db.example.com", "db-ro.ml.svc")
    assert PASSWORD not in data["readOnlyUri"]
    assert connection.ConnectionInfo.from_secret_data(data) == conn
    replicas = conn.read_only()
    assert (replicas.host, replicas.port, replicas.password, replicas.read_only_host) == (
        "db-ro.ml.svc",
        port,
        PASSWORD,
        None,
    )
    # Without one (a single member, an external store) reads go where writes go.
    assert info(engine).read_only() == info(engine)
    assert "readOnlyHost" not in info(engine).to_secret_data()


def test_with_endpoint_keeps_everything_else() -> None:
    conn = info(tls=True)
    moved = conn.with_endpoint("10.0.0.7", 15432)
    assert (moved.host, moved.port) == ("10.0.0.7", 15432)
    assert (moved.password, moved.username, moved.database, moved.tls) == (PASSWORD, "app", "features", True)
    assert (conn.host, conn.port) == ("db.example.com", 5432)


@pytest.mark.parametrize(
    ("engine", "port", "username", "database"),
    [
        ("redis", 6379, "default", "0"),
        ("postgres", 5432, "postgres", "postgres"),
        ("neo4j", 7687, "neo4j", "neo4j"),
        ("qdrant", 6333, "", ""),
    ],
)
def test_for_engine_fills_the_defaults(engine: connection.Engine, port: int, username: str, database: str) -> None:
    conn = connection.ConnectionInfo.for_engine(engine, "h", "pw")
    assert (conn.port, conn.username, conn.database, conn.tls) == (port, username, database, False)
    assert connection.default_port(engine) == port


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"host": "h", "port": "1"}, "key 'engine' is missing"),
        ({"engine": "mysql", "host": "h", "port": "1"}, "key 'engine' must be one of"),
        ({"engine": "redis", "port": "1"}, "key 'host' is missing"),
        ({"engine": "redis", "host": "h", "port": "x"}, "key 'port' is not a number"),
        ({"engine": "redis", "host": "h", "port": "0"}, "port must be between"),
        ({"engine": "redis", "host": "h", "port": "1", "tls": "maybe"}, "key 'tls' must be true or false"),
        ({"engine": "redis", "host": "h", "port": "1", "password": b"\xff"}, "key 'password' is not UTF-8"),
    ],
)
def test_bad_secret_data_names_the_key(data: dict[str, str | bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        connection.ConnectionInfo.from_secret_data(data)


def test_bad_secret_errors_never_show_the_password() -> None:
    data = {**info().to_secret_data(), "port": "nope"}
    with pytest.raises(ValueError) as raised:
        connection.ConnectionInfo.from_secret_data(data)
    assert PASSWORD not in str(raised.value)


def test_is_immutable() -> None:
    conn = info()
    with pytest.raises(AttributeError):
        conn.password = "other"  # type: ignore[misc]
