"""A FeatureView whose online data went away, on real PostgreSQL and real Redis servers of the test's own:
FLUSHALL, a restart without persistence, another Redis, a switched offline table, a FLUSHALL during a run.
Each time the freshness check says the data is not there (lag unknown, never 0), the next run is a full one
that says why and restores every key, and the view is fresh again. Rows written before the identity was
recorded are adopted without a full re-sync.

The session Redis is shared with other tests, so the FLUSHALLs and restarts go to servers started here."""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from mlinfra.api import datastore, featureview
from mlinfra.devenv import procs
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisServer, start_redis
from mlinfra.engines import connection, render
from mlinfra.features import identity, layout, materialize, reconcile, schema

pytestmark = pytest.mark.integration

UTC = datetime.UTC
NOW = datetime.datetime.now(UTC).replace(microsecond=0)
NS = "test"
FEATURES = [("clicks", "int64")]
# No snapshots, no AOF: a restart starts empty, as a cache-configured Redis does.
NO_PERSISTENCE = 'save ""\nappendonly no'


def spec_of(table: str) -> featureview.FeatureViewSpec:
    return featureview.FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": "clicks", "type": "int64"}],
            "offline": {"storeRef": {"name": "pg"}, "table": table},
            "online": {"storeRef": {"name": "redis"}, "ttl": "24h"},
            "materialization": {"schedule": "*/5 * * * *", "batchSize": 3},
        }
    )


@pytest.fixture
def pg(postgres_cluster: PostgresCluster) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with postgres_cluster.primary.connect() as conn:
        yield conn


@pytest.fixture
def stack() -> Iterator[procs.ProcStack]:
    with procs.ProcStack() as s:
        yield s


def own_redis(stack: procs.ProcStack, workdir: Path) -> RedisServer:
    return start_redis(stack, workdir, replicas=0, config=NO_PERSISTENCE).primary


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=server.password, socket_timeout=10)


def info(server: RedisServer) -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine("redis", "127.0.0.1", server.password, port=server.port)


class View:
    """One view with its own table: rows offline, runs, and what the status would say."""

    def __init__(self, pg: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.pg = pg
        self.name = f"fv-{secrets.token_hex(4)}"
        self.table = self.name.replace("-", "_")
        self.spec = spec_of(self.table)
        schema.ensure_bookkeeping(pg)
        schema.ensure_offline_table(pg, self.spec, self.name)

    def insert(self, rows: list[tuple[int, int, float]], table: str | None = None) -> None:
        with self.pg.cursor() as cur:
            cur.executemany(
                f"INSERT INTO public.{table or self.table} (user_id, clicks, event_timestamp) VALUES (%s, %s, %s)",
                [(uid, clicks, NOW - datetime.timedelta(minutes=age)) for uid, clicks, age in rows],
            )

    def run(self, server: RedisServer, **kwargs: Any) -> materialize.Result:
        online = client(server)
        try:
            return materialize.materialize(self.spec, self.pg, online, NS, self.name, **kwargs)
        finally:
            online.close()

    def state(self, server: RedisServer) -> reconcile.DataState:
        return reconcile.data_state(self.pg, info(server), self.spec, NS, self.name)

    def online(self, server: RedisServer) -> dict[int, int]:
        """user_id -> clicks of every entity key of the view in ``server``."""
        rds = client(server)
        try:
            out = {}
            for key in rds.scan_iter(match=layout.key_pattern(NS, self.name), count=1000):
                (uid,) = layout.parse_online_key(key.decode(), NS, self.name, ["int64"])
                out[int(uid)] = layout.decode_features(FEATURES, rds.hgetall(key))["clicks"]
            return out
        finally:
            rds.close()


ROWS = [(1, 10, 30), (1, 11, 20), (2, 20, 10), (3, 30, 5), (4, 40, 4), (5, 50, 3)]
EXPECTED = {1: 11, 2: 20, 3: 30, 4: 40, 5: 50}


def assert_fresh(view: View, server: RedisServer) -> None:
    state = view.state(server)
    assert state.mismatches == ()
    assert state.freshness.lag_seconds == 0


def assert_lost(view: View, server: RedisServer, reason: str, says: str) -> None:
    state = view.state(server)
    assert [m.status_reason for m in state.mismatches] == [reason]
    assert says in state.mismatches[0].message
    # Not fresh: the lag and the online watermark are unknown, never 0.
    assert (state.freshness.lag_seconds, state.freshness.online_watermark) == (None, None)
    assert state.freshness.source_watermark is not None


def test_flushall_is_seen_and_the_next_run_restores_every_key(
    pg: psycopg.Connection[tuple[Any, ...]], stack: procs.ProcStack, tmp_path: Path
) -> None:
    server = own_redis(stack, tmp_path / "redis")
    view = View(pg)
    view.insert(ROWS)
    first = view.run(server)
    assert (first.rows, first.full_resync) == (5, ())
    assert view.online(server) == EXPECTED
    assert_fresh(view, server)

    client(server).flushall()
    assert_lost(view, server, identity.ONLINE_DATA_LOST, "has no materialization marker")

    # Incremental would read nothing new (no row arrived since): the full run rewrites every key.
    again = view.run(server)
    assert (again.rows, again.written, again.full_resync) == (5, 5, (identity.ONLINE_STORE_LOST,))
    assert again.summary()["fullResync"] == ["OnlineStoreLost"]
    assert view.online(server) == EXPECTED
    assert_fresh(view, server)

    # Back to incremental once the marker is in place again (no overlap: only the new row is read).
    view.insert([(6, 60, 1)])
    third = view.run(server, overlap=datetime.timedelta(0))
    assert (third.rows, third.full_resync) == (1, ())
    assert "fullResync" not in third.summary()


def test_a_restart_without_persistence_is_a_loss(
    pg: psycopg.Connection[tuple[Any, ...]], stack: procs.ProcStack, tmp_path: Path
) -> None:
    server = own_redis(stack, tmp_path / "redis")
    view = View(pg)
    view.insert(ROWS)
    view.run(server)
    assert_fresh(view, server)

    # Stop the server and start a new one on the same port, with the same (non-persistent) configuration.
    assert server.proc is not None
    server.proc.stop()
    restarted = RedisServer(
        tmp_path / "redis" / "restarted", "restarted", server.password, config=NO_PERSISTENCE, port=server.port
    ).start(stack)
    assert client(restarted).dbsize() == 0
    assert_lost(view, restarted, identity.ONLINE_DATA_LOST, "has no materialization marker")

    result = view.run(restarted)
    assert result.full_resync == (identity.ONLINE_STORE_LOST,)
    assert view.online(restarted) == EXPECTED
    assert_fresh(view, restarted)


def test_another_redis_gets_a_full_run_and_the_first_one_then_holds_a_foreign_marker(
    pg: psycopg.Connection[tuple[Any, ...]], stack: procs.ProcStack, tmp_path: Path
) -> None:
    a = own_redis(stack, tmp_path / "a")
    b = own_redis(stack, tmp_path / "b")
    view = View(pg)
    view.insert(ROWS)
    view.run(a)
    assert_fresh(view, a)

    # storeRef now points at b: nothing of the view is there, whatever the watermark says.
    assert_lost(view, b, identity.ONLINE_DATA_LOST, "has no materialization marker")
    moved = view.run(b)
    assert (moved.rows, moved.full_resync) == (5, (identity.ONLINE_STORE_LOST,))
    assert view.online(b) == EXPECTED

    # Back to a, which missed what b got since: its marker is from an older materialization.
    view.insert([(1, 12, 1)])
    view.run(b)
    assert_lost(view, a, identity.ONLINE_DATA_LOST, "holds the marker of another materialization")
    back = view.run(a)
    assert back.full_resync == (identity.ONLINE_STORE_LOST,)
    assert view.online(a) == {**EXPECTED, 1: 12}
    assert_fresh(view, a)


def test_a_switched_offline_table_is_read_in_full_and_the_watermark_follows_it(
    pg: psycopg.Connection[tuple[Any, ...]], stack: procs.ProcStack, tmp_path: Path
) -> None:
    server = own_redis(stack, tmp_path / "redis")
    view = View(pg)
    view.insert(ROWS)
    first = view.run(server)
    assert first.watermark == NOW - datetime.timedelta(minutes=3)

    # spec.offline.table changed to a table whose rows were ingested *before* the first run's created_at
    # high-water mark and whose events are older: an incremental run would read none of them.
    other = f"{view.table}_v2"
    switched = spec_of(other)
    schema.ensure_offline_table(pg, switched, view.name)
    view.insert([(7, 70, 40), (8, 80, 50)], table=other)
    pg.execute(f"UPDATE public.{other} SET created_at = now() - interval '1 hour'")
    view.spec = switched
    assert_lost(view, server, identity.OFFLINE_TABLE_CHANGED, f"taken from table public.{view.table}")

    result = view.run(server)
    assert (result.rows, result.full_resync) == (2, (identity.OFFLINE_TABLE_CHANGED,))
    # The watermark now describes the new table (older than the old table's: it went back).
    assert result.watermark == NOW - datetime.timedelta(minutes=40)
    assert {7: 70, 8: 80}.items() <= view.online(server).items()
    assert_fresh(view, server)

    # The same name dropped and created again is another table too.
    pg.execute(f"DROP TABLE public.{other}")
    schema.ensure_offline_table(pg, switched, view.name)
    view.insert([(9, 90, 2)], table=other)
    assert_lost(view, server, identity.OFFLINE_TABLE_CHANGED, "was dropped and created again")
    assert view.run(server).full_resync == (identity.OFFLINE_TABLE_CHANGED,)


def test_a_flushall_during_a_run_fails_it_and_the_next_run_is_full(
    pg: psycopg.Connection[tuple[Any, ...]], stack: procs.ProcStack, tmp_path: Path
) -> None:
    server = own_redis(stack, tmp_path / "redis")
    view = View(pg)
    view.insert(ROWS)
    view.run(server)
    view.insert([(6, 60, 1), (7, 70, 1), (8, 80, 1), (9, 90, 1)])

    def flush_after_first_batch(batches: int, rows: int) -> None:
        if batches == 1:
            client(server).flushall()

    with pytest.raises(materialize.OnlineStoreChanged, match="nothing was committed"):
        view.run(server, on_batch=flush_after_first_batch)
    last = pg.execute(
        "SELECT outcome, error FROM mlinfra.sync_runs WHERE namespace = %s AND view = %s ORDER BY id DESC LIMIT 1",
        (NS, view.name),
    ).fetchone()
    assert last is not None and last[0] == "Failed" and "OnlineStoreChanged" in last[1]
    assert_lost(view, server, identity.ONLINE_DATA_LOST, "has no materialization marker")

    result = view.run(server)
    assert (result.rows, result.full_resync) == (9, (identity.ONLINE_STORE_LOST,))
    assert view.online(server) == {**EXPECTED, 6: 60, 7: 70, 8: 80, 9: 90}
    assert_fresh(view, server)


def test_a_watermark_from_before_identity_is_adopted_without_a_full_run(
    pg: psycopg.Connection[tuple[Any, ...]], stack: procs.ProcStack, tmp_path: Path
) -> None:
    server = own_redis(stack, tmp_path / "redis")
    view = View(pg)
    view.insert(ROWS)
    view.run(server)
    # As an installation from before the identity columns left it: no marker, no identity.
    pg.execute(
        "UPDATE mlinfra.watermarks SET online_epoch = NULL, offline_table = NULL, offline_oid = NULL "
        "WHERE namespace = %s AND view = %s",
        (NS, view.name),
    )
    client(server).delete(layout.marker_key(NS, view.name))
    assert_fresh(view, server)  # unknown identity: trusted once

    view.insert([(6, 60, 1)])
    adopted = view.run(server, overlap=datetime.timedelta(0))
    assert (adopted.rows, adopted.full_resync) == (1, ())  # incremental
    assert client(server).get(layout.marker_key(NS, view.name)) is not None
    assert_fresh(view, server)
    client(server).flushall()
    assert_lost(view, server, identity.ONLINE_DATA_LOST, "has no materialization marker")


def test_bookkeeping_from_before_identity_gets_the_columns_and_keeps_its_rows(
    postgres_cluster: PostgresCluster,
) -> None:
    db = f"old_{secrets.token_hex(4)}"
    with postgres_cluster.primary.connect() as admin:
        admin.execute(f"CREATE DATABASE {db}")
    try:
        with postgres_cluster.primary.connect(dbname=db) as conn:
            conn.execute("CREATE SCHEMA mlinfra")
            conn.execute(
                "CREATE TABLE mlinfra.watermarks (namespace text NOT NULL, view text NOT NULL, "
                "watermark timestamptz, ingested_through timestamptz, "
                "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (namespace, view))"
            )
            conn.execute("INSERT INTO mlinfra.watermarks (namespace, view, watermark) VALUES ('ns', 'v', now())")
            schema.ensure_bookkeeping(conn)
            schema.ensure_bookkeeping(conn)  # idempotent
            columns = {
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = 'mlinfra' AND table_name = 'watermarks'"
                ).fetchall()
            }
            assert set(schema.WATERMARK_IDENTITY_COLUMNS) <= columns
            assert identity.recorded(conn, "ns", "v") == identity.Recorded()  # kept, identity unknown
    finally:
        with postgres_cluster.primary.connect() as admin:
            admin.execute(f"DROP DATABASE {db} WITH (FORCE)")


def test_a_managed_redis_does_not_evict_features_unless_its_user_says_so(
    stack: procs.ProcStack, tmp_path: Path
) -> None:
    def managed(config: dict[str, str] | None) -> datastore.DataStore:
        return datastore.DataStore.model_validate(
            {
                "metadata": {"name": "online", "namespace": NS},
                "spec": {"engine": "redis", "managed": {"replicas": 1, **({"config": config} if config else {})}},
            }
        )

    # Nothing rendered: the server's own default applies, and a real redis-server's default is noeviction.
    assert "maxmemory-policy" not in dict(render.settings(managed(None)))
    rds = client(own_redis(stack, tmp_path / "redis"))
    assert rds.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    # What a user set explicitly is kept.
    assert ("maxmemory-policy", "allkeys-lru") in render.settings(managed({"maxmemory-policy": "allkeys-lru"}))
