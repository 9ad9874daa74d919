"""pytest fixtures for the local platform, session-scoped: each server starts once per test run.

Registered by the repository's root ``conftest.py``. After the session, ``pytest_sessionfinish`` fails the
run if any process started by the fixtures is still alive.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from mlinfra.devenv import procs, secretscan
from mlinfra.devenv import qdrant as qdrant_mod
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.minio import MinioServer, start_minio
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster, start_postgres
from mlinfra.devenv.redis import RedisCluster, start_redis

log = logging.getLogger(__name__)


_SCANNED: list[Path] = []  # the run's temporary root: its log files are scanned for secrets at the end


@pytest.fixture(scope="session")
def devenv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _SCANNED.append(tmp_path_factory.getbasetemp())
    return tmp_path_factory.mktemp("devenv")


@pytest.fixture(scope="session")
def control_plane(devenv_dir: Path) -> Iterator[ControlPlane]:
    with ControlPlane(devenv_dir / "kube") as cp:
        yield cp


@pytest.fixture(scope="session")
def redis_cluster(devenv_dir: Path) -> Iterator[RedisCluster]:
    with procs.ProcStack() as stack:
        yield start_redis(stack, devenv_dir / "redis", replicas=1)


@pytest.fixture(scope="session")
def postgres_cluster(devenv_dir: Path) -> Iterator[PostgresCluster]:
    with procs.ProcStack() as stack:
        yield start_postgres(stack, devenv_dir / "postgres", standbys=1)


@pytest.fixture(scope="session")
def neo4j_server(devenv_dir: Path) -> Iterator[Neo4jServer]:
    with procs.ProcStack() as stack:
        yield Neo4jServer(devenv_dir / "neo4j").start(stack)


@pytest.fixture(scope="session")
def s3_server(devenv_dir: Path) -> Iterator[MinioServer]:
    """A real S3 server (MinIO, plain HTTP, SSE-S3 available). Tests share it: each makes its own buckets
    (``s3_server.new_bucket()``) and targets on them (``s3_server.target(bucket, prefix)``)."""
    with procs.ProcStack() as stack:
        yield start_minio(stack, devenv_dir / "minio")


@pytest.fixture(scope="session")
def s3_server_tls(devenv_dir: Path) -> Iterator[MinioServer]:
    """The same over TLS, its certificate from a CA of its own (``s3_server_tls.ca_pem``)."""
    with procs.ProcStack() as stack:
        yield start_minio(stack, devenv_dir / "minio-tls", tls=True)


@pytest.fixture
def qdrant_space(record_property: Callable[[str, object], None]) -> Iterator[qdrant_mod.QdrantSpace]:
    """This test's share of Qdrant (``QDRANT_URL``, ``QDRANT_PATH`` or a fresh local mode): names from
    ``qdrant_space.name(...)``, everything under them removed after the test, names made outside reported."""
    record_property("qdrant", qdrant_mod.mode())
    with qdrant_mod.space() as space:
        yield space


@pytest.fixture
def qdrant(qdrant_space: qdrant_mod.QdrantSpace) -> QdrantClient:
    return qdrant_space.client


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Session fixtures are finalized by now: anything still alive was leaked by the platform.
    left: list[object] = list(procs.leaked())
    nodes = sys.modules.get("mlinfra.devenv.realnode")
    if nodes is not None:  # real nodes were started: their shims, mounts, network and cgroups too
        left += [item for layout in nodes.STARTED for item in nodes.leftovers(layout)]
    _secret_scan(session)
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"platform processes or node resources still there after the session: {left}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        log.error(message)


def _secret_scan(session: pytest.Session) -> None:
    """Fail the run if a tracked secret reached a log file, an event or a status (see devenv.secretscan)."""
    found = list(secretscan.findings)
    for root in _SCANNED:
        found += secretscan.scan_files(root)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and _SCANNED:
        reporter.write_line(
            f"secret scan: {len(secretscan.tracked())} secrets tracked, logs under {_SCANNED[0]}: {len(found)} findings"
        )
    if found:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        message = "secrets found where none may be (values not shown): " + "; ".join(found[:50])
        if reporter is not None:
            reporter.write_line(message, red=True)
        log.error(message)
