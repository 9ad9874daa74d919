"""The platform's databases are real servers with real replication."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from qdrant_client import QdrantClient, models

from mlinfra.devenv import procs
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster, start_postgres
from mlinfra.devenv.qdrant import QdrantSpace
from mlinfra.devenv.redis import RedisCluster, start_redis


def test_redis_writes_reach_the_replica(redis_cluster: RedisCluster) -> None:
    primary, replica = redis_cluster.primary.client(), redis_cluster.replicas[0].client()
    key, value = f"k-{secrets.token_hex(4)}", secrets.token_hex(8)
    primary.set(key, value)
    procs.wait_until("the key on the replica", lambda: replica.get(key) == value, 10)

    info = primary.info("replication")
    assert info["role"] == "master"
    assert info["connected_slaves"] == 1
    slave = info["slave0"]
    assert slave["port"] == redis_cluster.replicas[0].port
    assert slave["state"] == "online"
    assert info["master_repl_offset"] > 0
    assert replica.info("replication")["role"] == "slave"


def test_redis_replica_is_read_only(redis_cluster: RedisCluster) -> None:
    import redis

    with pytest.raises(redis.exceptions.ReadOnlyError):
        redis_cluster.replicas[0].client().set("nope", "1")


def test_redis_requires_the_password(redis_cluster: RedisCluster) -> None:
    import redis

    anonymous = redis.Redis(host="127.0.0.1", port=redis_cluster.primary.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.get("x")


def test_postgres_standby_streams_from_the_primary(postgres_cluster: PostgresCluster) -> None:
    primary, standby = postgres_cluster.primary, postgres_cluster.standbys[0]
    with primary.connect() as conn:
        rows = conn.execute(
            "select application_name, state, sync_state,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) from pg_stat_replication"
        ).fetchall()
    assert len(rows) == 1
    name, state, sync_state, lag_bytes = rows[0]
    assert (name, state, sync_state) == ("standby-0", "streaming", "async")
    assert lag_bytes is not None and lag_bytes >= 0

    table = f"t_{secrets.token_hex(4)}"
    with primary.connect() as conn:
        conn.execute(f"create table {table} (id int primary key, v text)")
        conn.execute(f"insert into {table} values (1, 'written on the primary')")

    def visible() -> bool:
        with standby.connect() as conn:
            row = conn.execute(f"select v from {table} where id = 1").fetchone()
        return row is not None and row[0] == "written on the primary"

    procs.wait_until("the row on the standby", visible, 15)
    with standby.connect() as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)


def test_postgres_rejects_a_wrong_password(postgres_cluster: PostgresCluster) -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres_cluster.primary.dsn(password="wrong"))


def test_neo4j_cypher_round_trip(neo4j_server: Neo4jServer) -> None:
    tag = secrets.token_hex(4)
    with neo4j_server.driver() as driver:
        driver.verify_connectivity()
        driver.execute_query(
            "CREATE (:Model {name: $n})-[:TRAINED_ON]->(:Dataset {name: $d})", n=f"m-{tag}", d=f"d-{tag}"
        )
        records, _, _ = driver.execute_query(
            "MATCH (m:Model {name: $n})-[:TRAINED_ON]->(d:Dataset) RETURN d.name AS d", n=f"m-{tag}"
        )
        assert [r["d"] for r in records] == [f"d-{tag}"]
        info = driver.get_server_info()
        assert info.agent.startswith("Neo4j/5.26")


def test_neo4j_requires_the_password(neo4j_server: Neo4jServer) -> None:
    import neo4j

    with (
        neo4j.GraphDatabase.driver(neo4j_server.uri, auth=("neo4j", "wrong-password")) as driver,
        pytest.raises(neo4j.exceptions.AuthError),
    ):
        driver.verify_connectivity()


def test_qdrant_round_trip(qdrant: QdrantClient, qdrant_space: QdrantSpace) -> None:
    name = qdrant_space.name("round-trip")
    qdrant.create_collection(name, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    qdrant.upsert(
        name,
        points=[
            models.PointStruct(id=1, vector=[1, 0, 0, 0], payload={"k": "a"}),
            models.PointStruct(id=2, vector=[0, 1, 0, 0], payload={"k": "b"}),
        ],
        wait=True,
    )
    hits = qdrant.query_points(name, query=[0.9, 0.1, 0, 0], limit=1).points
    assert [(h.id, h.payload) for h in hits] == [(1, {"k": "a"})]
    assert qdrant.count(name).count == 2


def test_servers_and_their_children_are_stopped(tmp_path: Path) -> None:
    """Stopping a stack leaves nothing behind: not the servers, nor the processes they forked."""
    with procs.ProcStack() as stack:
        redis = start_redis(stack, tmp_path / "redis", replicas=1)
        pg = start_postgres(stack, tmp_path / "pg", standbys=1)
        groups = [p.pid for p in stack.procs]
        assert len(groups) == 4
        # PostgreSQL forks backends, WAL sender/receiver: more processes than we started.
        assert all(procs.group_alive(g) for g in groups)
        assert redis.primary.client().ping()
        assert pg.primary.connect().execute("select 1").fetchone() == (1,)
    assert procs.leaked(groups) == []
