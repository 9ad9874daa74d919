"""The client SDK reaches the real servers from a mounted connection Secret and from a dict of its keys."""

from __future__ import annotations

from pathlib import Path

from mlinfra.client import connections
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster
from mlinfra.engines import connection


async def test_secret_directory_and_dict_reach_redis_and_postgres(
    tmp_path: Path, redis_cluster: RedisCluster, postgres_cluster: PostgresCluster
) -> None:
    online = connection.ConnectionInfo.for_engine(
        "redis", "127.0.0.1", redis_cluster.password, port=redis_cluster.primary.port
    )
    offline = connection.ConnectionInfo.for_engine(
        "postgres", "127.0.0.1", postgres_cluster.password, port=postgres_cluster.primary.port
    )
    for key, value in online.to_secret_data().items():
        (tmp_path / key).write_text(value)

    client = connections.redis_client(connections.resolve(tmp_path))
    try:
        assert client.ping()
    finally:
        client.close()
    aclient = connections.redis_async_client(connections.resolve(online.to_secret_data()))
    try:
        assert await aclient.ping()
    finally:
        await aclient.aclose()
    with connections.postgres_connect(connections.resolve(offline.to_secret_data())) as conn:
        assert conn.execute("select current_setting('application_name')").fetchone() == ("mlinfra-client",)
    aconn = await connections.postgres_connect_async(offline)
    try:
        cur = await aconn.execute("select 1")
        assert await cur.fetchone() == (1,)
    finally:
        await aconn.close()
