"""The engine probes against real servers: real members, real lag, honest failures.

Lag is made real by freezing a replica (SIGSTOP) and writing on the primary; it returns to zero after the
replica resumes. Every wait is a deadline-bounded poll; no assert is about time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import Callable, Iterator

import pytest
from qdrant_client import QdrantClient, models

from mlinfra.devenv import procs
from mlinfra.devenv import qdrant as devenv_qdrant
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster, PostgresServer
from mlinfra.devenv.redis import RedisCluster, RedisServer
from mlinfra.engines import connection, neo4j, observation, postgres, probe
from mlinfra.engines import qdrant as qdrant_engine

MEGABYTE = 1024 * 1024
CATCH_UP_SECONDS = 30


def redis_conn(server: RedisServer, password: str | None = None) -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine("redis", "127.0.0.1", password or server.password, port=server.port)


def postgres_conn(server: PostgresServer, password: str | None = None) -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine(
        "postgres", "127.0.0.1", password or server.password, port=server.port, username=server.user
    )


def neo4j_conn(server: Neo4jServer, password: str | None = None) -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine(
        "neo4j", "127.0.0.1", password or server.password, port=server.port, username=server.user
    )


def probe_until(
    conn: connection.ConnectionInfo, what: str, check: Callable[[observation.Observation], bool]
) -> observation.Observation:
    """Probe until ``check`` holds (deadline-bounded); return the observation that satisfied it."""
    seen: list[observation.Observation] = []

    def satisfied() -> bool:
        seen.append(probe.probe(conn))
        return check(seen[-1])

    try:
        procs.wait_until(what, satisfied, CATCH_UP_SECONDS)
    except procs.StartupError as exc:
        raise AssertionError(f"{exc}; last observation: {seen[-1] if seen else None}") from None
    return seen[-1]


@contextlib.contextmanager
def frozen(server: PostgresServer) -> Iterator[None]:
    """The whole standby frozen: its postmaster (``server.pause()``) and every backend of it.

    PostgreSQL children make themselves process-group leaders (``InitPostmasterChild`` calls ``setsid``),
    so ``pause()``, a signal to the postmaster's group, leaves the WAL receiver and the startup process
    running: the standby would keep replaying. Freezing the children as well makes it fall behind for real.
    """
    assert server.proc is not None
    children = _children(server.proc.pid)
    server.pause()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.resume()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


def the_replica(obs: observation.Observation) -> observation.MemberObservation:
    assert len(obs.replicas) == 1, obs
    return obs.replicas[0]


def assert_unreachable_without_secrets(obs: observation.Observation, *passwords: str) -> str:
    assert not obs.reachable
    assert obs.error
    assert (obs.version, obs.members, obs.replication) == (None, [], None)
    for password in passwords:
        assert password not in obs.error
    return obs.error


# --- redis ------------------------------------------------------------------------------------------------


def test_redis_primary_reports_its_replica_with_lag_figures(redis_cluster: RedisCluster) -> None:
    primary, replica = redis_cluster.primary, redis_cluster.replicas[0]
    obs = probe_until(
        redis_conn(primary),
        "the redis replica to be caught up",
        lambda o: o.reachable and bool(o.replicas) and o.replicas[0].lag_bytes == 0,
    )
    assert obs.version is not None and obs.version.count(".") == 2
    assert obs.replication == "streaming"
    assert [(m.name, m.role, m.ready) for m in obs.members] == [
        (f"127.0.0.1:{primary.port}", "primary", True),
        (f"127.0.0.1:{replica.port}", "replica", True),
    ]
    member = the_replica(obs)
    assert member.lag_seconds is not None and member.lag_seconds >= 0
    assert (obs.max_lag_bytes, obs.max_lag_seconds) == (member.lag_bytes, member.lag_seconds)
    assert obs.capabilities == []  # Debian's redis-server loads no modules
    assert obs.error is None


def test_redis_lag_grows_while_the_replica_is_frozen_and_returns_to_zero(redis_cluster: RedisCluster) -> None:
    primary, replica = redis_cluster.primary, redis_cluster.replicas[0]
    conn = redis_conn(primary)
    probe_until(conn, "the redis replica to be caught up", lambda o: o.reachable and o.max_lag_bytes == 0)
    key = f"lag-{secrets.token_hex(4)}"
    replica.pause()
    try:
        primary.client().set(key, secrets.token_hex(MEGABYTE // 2))  # 1 MB of text
        behind = probe.probe(conn)
        member = the_replica(behind)
        assert member.lag_bytes is not None and member.lag_bytes >= MEGABYTE, behind
        assert behind.max_lag_bytes == member.lag_bytes
        # The frozen replica stops acking: its lag in seconds grows with the time since its last ack.
        probe_until(
            conn,
            "the frozen replica's lag in seconds to grow",
            lambda o: (o.max_lag_seconds or 0) >= 2 and (o.max_lag_bytes or 0) >= MEGABYTE,
        )
    finally:
        replica.resume()
        primary.client().delete(key)
    caught_up = probe_until(
        conn, "the redis replica to catch up again", lambda o: o.max_lag_bytes == 0 and o.replication == "streaming"
    )
    assert the_replica(caught_up).ready


def test_redis_replica_reports_itself_as_a_replica(redis_cluster: RedisCluster) -> None:
    replica = redis_cluster.replicas[0]
    obs = probe.probe(redis_conn(replica))
    assert obs.reachable, obs
    assert [(m.name, m.role, m.ready) for m in obs.members] == [(f"127.0.0.1:{replica.port}", "replica", True)]
    assert obs.replication == "streaming"
    assert obs.members[0].lag_bytes is None  # a replica does not know how far its primary has got
    assert obs.members[0].lag_seconds is not None


def test_redis_wrong_password_is_unreachable_without_the_password(redis_cluster: RedisCluster) -> None:
    wrong = secrets.token_urlsafe(16)
    error = assert_unreachable_without_secrets(
        probe.probe(redis_conn(redis_cluster.primary, wrong)), wrong, redis_cluster.password
    )
    assert "AuthenticationError" in error


def test_redis_closed_port_is_unreachable() -> None:
    conn = connection.ConnectionInfo.for_engine("redis", "127.0.0.1", "pw", port=procs.free_port())
    assert "refused" in assert_unreachable_without_secrets(probe.probe(conn, timeout=2), "pw").lower()


def test_redis_frozen_server_times_out_instead_of_hanging(redis_cluster: RedisCluster) -> None:
    replica = redis_cluster.replicas[0]
    replica.pause()
    try:
        obs = probe.probe(redis_conn(replica), timeout=1)
    finally:
        replica.resume()
    assert "Timeout" in assert_unreachable_without_secrets(obs, replica.password)


# --- postgres ---------------------------------------------------------------------------------------------


def test_postgres_primary_reports_its_standby_with_lag_figures(postgres_cluster: PostgresCluster) -> None:
    primary, standby = postgres_cluster.primary, postgres_cluster.standbys[0]
    obs = probe_until(
        postgres_conn(primary),
        "the postgres standby to be caught up",
        lambda o: o.reachable and bool(o.replicas) and o.replicas[0].lag_bytes == 0,
    )
    assert obs.version is not None and obs.version.split(".")[0].isdigit()
    assert obs.replication == "streaming"
    assert [(m.name, m.role, m.ready) for m in obs.members] == [
        (f"127.0.0.1:{primary.port}", "primary", True),
        (standby.name, "replica", True),
    ]
    member = the_replica(obs)
    assert (member.lag_bytes, member.lag_seconds) == (0, 0.0)  # caught up: zero in both units
    assert (obs.max_lag_bytes, obs.max_lag_seconds) == (0, 0.0)
    assert "pg_stat_statements" in obs.capabilities  # contrib is installed; pgvector is not, here
    assert obs.error is None


def test_postgres_lag_grows_while_the_standby_is_frozen_and_returns_to_zero(postgres_cluster: PostgresCluster) -> None:
    primary, standby = postgres_cluster.primary, postgres_cluster.standbys[0]
    conn = postgres_conn(primary)
    probe_until(conn, "the postgres standby to be caught up", lambda o: o.reachable and o.max_lag_bytes == 0)
    table = f"lag_{secrets.token_hex(4)}"
    with frozen(standby):
        with primary.connect() as pg:
            pg.execute(f"create table {table} (v text)")
            pg.execute(f"insert into {table} select repeat('x', 1024) from generate_series(1, 1024)")  # ~1 MB
        behind = probe.probe(conn)
        member = the_replica(behind)
        assert member.lag_bytes is not None and member.lag_bytes >= MEGABYTE, behind
        assert behind.max_lag_bytes == member.lag_bytes
    caught_up = probe_until(
        conn, "the postgres standby to catch up again", lambda o: o.max_lag_bytes == 0 and o.replication == "streaming"
    )
    assert the_replica(caught_up).lag_seconds == 0.0
    with primary.connect() as pg:
        pg.execute(f"drop table {table}")


def test_postgres_standby_reports_itself_as_a_replica(postgres_cluster: PostgresCluster) -> None:
    standby = postgres_cluster.standbys[0]
    obs = probe_until(
        postgres_conn(standby),
        "the standby to report itself streaming",
        lambda o: o.reachable and o.replication == "streaming",
    )
    assert [(m.name, m.role, m.ready) for m in obs.members] == [(f"127.0.0.1:{standby.port}", "replica", True)]
    assert obs.members[0].lag_bytes is not None


def test_postgres_wrong_password_is_unreachable_without_the_password(postgres_cluster: PostgresCluster) -> None:
    wrong = secrets.token_urlsafe(16)
    error = assert_unreachable_without_secrets(
        probe.probe(postgres_conn(postgres_cluster.primary, wrong)), wrong, postgres_cluster.password
    )
    assert "password authentication failed" in error


def test_postgres_closed_port_is_unreachable() -> None:
    conn = connection.ConnectionInfo.for_engine("postgres", "127.0.0.1", "pw", port=procs.free_port())
    assert "refused" in assert_unreachable_without_secrets(probe.probe(conn, timeout=2), "pw").lower()


def test_postgres_frozen_server_times_out_instead_of_hanging(postgres_cluster: PostgresCluster) -> None:
    standby = postgres_cluster.standbys[0]
    with frozen(standby):
        obs = probe.probe(postgres_conn(standby), timeout=1)
    assert "timeout" in assert_unreachable_without_secrets(obs, standby.password).lower()


# --- neo4j ------------------------------------------------------------------------------------------------


def test_neo4j_reports_community_without_replication(neo4j_server: Neo4jServer) -> None:
    obs = probe.probe(neo4j_conn(neo4j_server))
    assert obs.reachable, obs
    assert obs.version is not None and obs.version.startswith("5.26.")
    assert obs.edition == "community"
    assert obs.replication == "not-applicable"
    assert obs.notes == [neo4j.COMMUNITY_NOTE]
    assert [(m.name, m.role, m.ready) for m in obs.members] == [(f"127.0.0.1:{neo4j_server.port}", "standalone", True)]
    assert (obs.max_lag_bytes, obs.max_lag_seconds) == (None, None)
    assert obs.capabilities == []  # no APOC or GDS in the embedded test server


def test_neo4j_wrong_password_is_unreachable_without_the_password(neo4j_server: Neo4jServer) -> None:
    wrong = secrets.token_urlsafe(16)
    error = assert_unreachable_without_secrets(
        probe.probe(neo4j_conn(neo4j_server, wrong)), wrong, neo4j_server.password
    )
    assert "AuthError" in error


def test_neo4j_closed_port_is_unreachable() -> None:
    conn = connection.ConnectionInfo.for_engine("neo4j", "127.0.0.1", "pw", port=procs.free_port())
    assert "ServiceUnavailable" in assert_unreachable_without_secrets(probe.probe(conn, timeout=2), "pw")


def test_neo4j_frozen_server_times_out_instead_of_hanging(neo4j_server: Neo4jServer) -> None:
    assert neo4j_server.proc is not None
    neo4j_server.proc.signal(signal.SIGSTOP)
    try:
        obs = probe.probe(neo4j_conn(neo4j_server), timeout=1)
    finally:
        neo4j_server.proc.signal(signal.SIGCONT)
    assert "ServiceUnavailable" in assert_unreachable_without_secrets(obs, neo4j_server.password)
    recovered = probe_until(neo4j_conn(neo4j_server), "neo4j to answer again", lambda o: o.reachable)
    assert recovered.edition == "community"


# --- qdrant -----------------------------------------------------------------------------------------------


@pytest.fixture
def collection(qdrant: QdrantClient, qdrant_space: devenv_qdrant.QdrantSpace) -> str:
    name = qdrant_space.name("probe")
    qdrant.create_collection(name, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    return name


def test_qdrant_probe_through_the_client(qdrant: QdrantClient) -> None:
    obs = qdrant_engine.probe_client(qdrant)
    assert obs.reachable and obs.error is None, obs
    if devenv_qdrant.is_real_server():
        assert obs.version is not None
        assert obs.members
    else:
        assert obs.version is None
        assert obs.capabilities == [qdrant_engine.LOCAL_MODE]
        assert obs.replication == "not-applicable"
        assert [(m.role, m.ready) for m in obs.members] == [("standalone", True)]


def test_qdrant_collection_replicas(qdrant: QdrantClient, collection: str) -> None:
    replicas = qdrant_engine.collection_replicas(qdrant, collection)
    if devenv_qdrant.is_real_server():
        assert replicas, "a collection has at least one shard replica"
        assert all(state == "Active" for _, _, state in replicas)
    else:
        assert replicas == []  # local mode: nothing observable, and is_local_mode says why
        assert qdrant_engine.is_local_mode(qdrant)


def test_qdrant_closed_port_is_unreachable() -> None:
    conn = connection.ConnectionInfo.for_engine("qdrant", "127.0.0.1", "api-key", port=procs.free_port())
    assert_unreachable_without_secrets(probe.probe(conn, timeout=2), "api-key")


def test_probe_dispatch_reads_the_connection_secret(postgres_cluster: PostgresCluster) -> None:
    # The path the operator takes: Secret data -> ConnectionInfo -> probe.
    data = postgres_conn(postgres_cluster.primary).to_secret_data()
    obs = probe.probe(connection.ConnectionInfo.from_secret_data({k: v.encode() for k, v in data.items()}))
    assert obs.reachable and obs.members[0].role == "primary"
    assert postgres.EXTENSION_CAPABILITIES["pg_stat_statements"] in obs.capabilities
