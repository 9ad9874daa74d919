"""mlinfra.client.connections: every way the SDK finds a connection parses to the same ConnectionInfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlinfra.client import connections
from mlinfra.engines import connection

REDIS = connection.ConnectionInfo.for_engine("redis", "redis.ml.svc", "s3cret", port=6380, database="2")
POSTGRES = connection.ConnectionInfo.for_engine(
    "postgres",
    "pg.ml.svc",
    "pw",
    username="app",
    database="features",
    tls=True,
    ca_cert="-----BEGIN CERTIFICATE-----\n",
)


@pytest.mark.parametrize("info", [REDIS, POSTGRES])
def test_a_mounted_secret_directory(tmp_path: Path, info: connection.ConnectionInfo) -> None:
    for key, value in info.to_secret_data().items():
        (tmp_path / key).write_text(value)
    # What kubelet adds to a Secret volume: a timestamped directory and the ..data link to it.
    (tmp_path / "..2026_01_01_00_00_00.000").mkdir()
    (tmp_path / "..data").symlink_to(tmp_path / "..2026_01_01_00_00_00.000")
    assert connections.from_directory(tmp_path) == info
    assert connections.resolve(tmp_path) == info
    assert connections.resolve(str(tmp_path)) == info


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        connections.from_directory(tmp_path / "nope")


@pytest.mark.parametrize("info", [REDIS, POSTGRES])
def test_a_mapping_of_secret_keys(info: connection.ConnectionInfo) -> None:
    assert connections.resolve(info.to_secret_data()) == info
    as_bytes = {key: value.encode() for key, value in info.to_secret_data().items()}
    assert connections.from_mapping(as_bytes) == info
    assert connections.resolve(info) is info


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@redis.ml.svc:6380/2", REDIS),
        ("redis://default:s3cret@redis.ml.svc:6380/2", REDIS),
        ("redis://h", connection.ConnectionInfo.for_engine("redis", "h", "")),
        ("rediss://u:p@h:1/0", connection.ConnectionInfo("redis", "h", 1, "u", "p", "0", True)),
        (
            "postgresql://app:pw@pg.ml.svc/features?sslmode=require",
            connection.ConnectionInfo(
                "postgres", "pg.ml.svc", 5432, "app", "pw", "features", True, insecure_skip_verify=True
            ),
        ),
        (
            "postgresql://app:pw@pg.ml.svc/features?sslmode=verify-full&sslrootcert=system",
            connection.ConnectionInfo("postgres", "pg.ml.svc", 5432, "app", "pw", "features", True),
        ),
        (
            "postgres://app:p%40ss@[::1]:5433/db",
            connection.ConnectionInfo("postgres", "::1", 5433, "app", "p@ss", "db", False),
        ),
        ("postgresql://h", connection.ConnectionInfo.for_engine("postgres", "h", "")),
    ],
)
def test_urls(url: str, expected: connection.ConnectionInfo) -> None:
    assert connections.from_url(url) == expected
    assert connections.resolve(url) == expected


def test_an_explicit_password_wins_over_the_urls() -> None:
    assert connections.from_url("redis://:old@h/0", password="new").password == "new"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "unsupported URL scheme"),
        ("redis:///0", "no host"),
        ("redis://h:99999", "port"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        connections.from_url(url)


def test_the_driver_builders_refuse_the_wrong_engine() -> None:
    with pytest.raises(ValueError, match="online connection must be a redis store"):
        connections.redis_client(POSTGRES)
    with pytest.raises(ValueError, match="offline connection must be a postgres store"):
        connections.postgres_connect(REDIS)


def test_the_redis_client_is_built_from_the_connection() -> None:
    client = connections.redis_client(REDIS)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("redis.ml.svc", 6380, 2, "s3cret")
    assert kwargs["decode_responses"] is False
    client.close()
