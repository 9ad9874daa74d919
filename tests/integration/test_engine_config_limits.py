"""The numeric limits of spec.managed.config (api.config_limits) are the engines' own: every value the model
takes, the real PostgreSQL and redis-server start with; every value it refuses, they refuse too. PostgreSQL's
ranges are also compared with its pg_settings, so a new server version that moves one shows up here."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from mlinfra.api import config_limits, datastore
from mlinfra.devenv import procs, tools
from mlinfra.devenv.postgres import PostgresCluster, PostgresServer

pytestmark = pytest.mark.integration

# (engine, setting, value): values of the CRD's shape on both sides of each limit.
VALUES: list[tuple[str, str, str]] = [
    ("postgres", "shared_buffers", "64kB"),
    ("postgres", "shared_buffers", "127kB"),
    ("postgres", "shared_buffers", "1.5"),
    ("postgres", "shared_buffers", "16"),
    ("postgres", "effective_cache_size", "4kB"),
    ("postgres", "effective_cache_size", "8kB"),
    ("postgres", "work_mem", "63kB"),
    ("postgres", "work_mem", "1536B"),
    ("postgres", "work_mem", "64kB"),
    ("postgres", "maintenance_work_mem", "1023kB"),
    ("postgres", "maintenance_work_mem", "1MB"),
    ("postgres", "max_wal_size", "16MB"),
    ("postgres", "max_wal_size", "32MB"),
    ("postgres", "min_wal_size", "16MB"),
    ("postgres", "min_wal_size", "32MB"),
    ("postgres", "wal_keep_size", "0"),
    ("postgres", "checkpoint_timeout", "29s"),
    ("postgres", "checkpoint_timeout", "30s"),
    ("postgres", "checkpoint_timeout", "1d"),
    ("postgres", "checkpoint_timeout", "25h"),
    ("postgres", "statement_timeout", "10us"),
    ("postgres", "statement_timeout", "24d"),
    ("postgres", "statement_timeout", "25d"),
    ("postgres", "log_min_duration_statement", "-1"),
    ("postgres", "log_min_duration_statement", "2147483647"),
    ("postgres", "log_min_duration_statement", "2147483648"),
    ("postgres", "idle_in_transaction_session_timeout", "2147483648ms"),
    ("redis", "slowlog-log-slower-than", "-1"),
    ("redis", "slowlog-log-slower-than", "-2"),
    ("redis", "maxmemory", "0"),
    ("redis", "maxmemory", "17179869184gb"),
    ("redis", "maxmemory", "17179869183gb"),
]

WRAPS = {("redis", "maxmemory", "17179869184gb")}


def model_takes(engine: str, key: str, value: str) -> bool:
    try:
        datastore.DataStoreSpec.model_validate({"engine": engine, "managed": {"config": {key: value}}})
    except pydantic.ValidationError:
        return False
    return True


@pytest.fixture(scope="module")
def pg_datadir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """An initdb'd cluster that is never started: ``postgres -C`` checks values against it."""
    yield PostgresServer(tmp_path_factory.mktemp("limits-pg"), "limits", secrets.token_urlsafe(16)).init()


def postgres_takes(server: PostgresServer, key: str, value: str) -> bool:
    """Whether the real server starts with ``key = value``: ``postgres -C`` applies every range check of the
    setting; the WAL sizes are also checked against the segment size, which only a real start does."""
    try:
        server.run([str(tools.which("postgres")), "-D", str(server.datadir), "-C", key, "-c", f"{key}={value}"])
    except procs.StartupError:
        return False
    if key in ("min_wal_size", "max_wal_size"):
        return starts(server, key, value)
    return True


def starts(server: PostgresServer, key: str, value: str) -> bool:
    argv = [
        str(tools.which("postgres")), "-D", str(server.datadir), "-c", f"{key}={value}",
        "-c", f"port={procs.free_port()}", "-c", "listen_addresses=",
        "-c", f"unix_socket_directories={server.socket_dir}",
    ]  # fmt: skip
    uid, gid = server._prepare_dirs()
    with subprocess.Popen(argv, user=uid, group=gid, stderr=subprocess.PIPE, text=True, cwd=server.workdir) as proc:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                line = proc.stderr.readline()
                if "ready to accept connections" in line:
                    return True
                if "FATAL" in line or (not line and proc.poll() is not None):
                    return False
            raise AssertionError(f"postgres with {key}={value} neither started nor failed in 30 s")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def redis_takes(tmp: Path, key: str, value: str) -> bool:
    """Whether redis-server takes ``key value``: it loads its configuration (a refused value ends it there,
    FATAL), then, told to listen nowhere, exits."""
    argv = [str(tools.which("redis-server")), "--port", "0", "--save", "", "--dir", str(tmp), f"--{key}", value]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert ("FATAL" in output) != ("Configuration loaded" in output), output
    return "Configuration loaded" in output


@pytest.mark.parametrize(("engine", "key", "value"), VALUES)
def test_the_model_refuses_exactly_what_the_engine_refuses(
    engine: str, key: str, value: str, pg_datadir: PostgresServer, tmp_path: Path
) -> None:
    real = postgres_takes(pg_datadir, key, value) if engine == "postgres" else redis_takes(tmp_path, key, value)
    if (engine, key, value) in WRAPS:
        # Redis multiplies without an overflow check: 2^64 bytes starts as maxmemory 0, "no limit". The model
        # refuses what does not fit in 64 bits rather than let it mean the opposite.
        assert real and not model_takes(engine, key, value)
        return
    assert model_takes(engine, key, value) == real, f"{engine} {'takes' if real else 'refuses'} {key}={value}"


def test_the_postgres_limits_are_the_servers_own(postgres_cluster: PostgresCluster) -> None:
    with postgres_cluster.primary.connect() as conn:
        rows = conn.execute(
            "SELECT name, min_val::float8, max_val::float8, coalesce(unit, '') FROM pg_settings WHERE name = ANY(%s)",
            (list(config_limits.LIMITS["postgres"]),),
        ).fetchall()
        segment = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()
    assert segment is not None
    server = {str(name): (lo, hi, str(unit)) for name, lo, hi, unit in rows}
    assert set(server) == set(config_limits.LIMITS["postgres"])
    units = {"8kB": "pages (8kB)", "kB": "kB", "MB": "MB", "s": "s", "ms": "ms"}
    for name, limit in config_limits.LIMITS["postgres"].items():
        lo, hi, unit = server[name]
        assert units[unit] == limit.unit, name
        assert limit.maximum == hi, name
        if name in ("min_wal_size", "max_wal_size"):
            # Two WAL segments at least (a start-up check pg_settings does not show).
            assert limit.minimum == 2 * int(segment[0]) // 2**20, name
        else:
            assert limit.minimum == lo, name
