"""features.materialize on real PostgreSQL + Redis: latest per entity, TTL, event-time guard, composite keys,
type round trips, bookkeeping, a run killed between batches (the CLI as a subprocess, SIGKILL), a run whose
connection is lost half way (it must not carry on over a new one), and a run that commits only once a replica
holds its writes (``WAIT``)."""

from __future__ import annotations

import datetime
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml

from mlinfra.api import featureview
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster
from mlinfra.engines import connection
from mlinfra.features import freshness, layout, materialize, schema

pytestmark = pytest.mark.integration

UTC = datetime.UTC
NOW = datetime.datetime.now(UTC).replace(microsecond=0)
REPO = Path(__file__).resolve().parents[2]


def make_spec(
    features: list[dict[str, Any]],
    entities: list[dict[str, str]] | None = None,
    ttl: str | None = None,
    batch_size: int = 1000,
) -> featureview.FeatureViewSpec:
    return featureview.FeatureViewSpec.model_validate(
        {
            "entities": entities or [{"name": "user_id", "type": "int64"}],
            "features": features,
            "offline": {"storeRef": {"name": "pg"}},
            "online": {"storeRef": {"name": "redis"}, **({"ttl": ttl} if ttl else {})},
            "materialization": {"schedule": "*/5 * * * *", "batchSize": batch_size},
        }
    )


@pytest.fixture
def pg(postgres_cluster: PostgresCluster) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with postgres_cluster.primary.connect() as conn:
        yield conn


@pytest.fixture
def rds(redis_cluster: RedisCluster) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=redis_cluster.primary.port, password=redis_cluster.password)
    yield client
    client.close()


def view_name() -> str:
    return f"fv-{secrets.token_hex(4)}"


def setup_view(pg: psycopg.Connection[tuple[Any, ...]], spec: featureview.FeatureViewSpec, view: str) -> str:
    schema.ensure_bookkeeping(pg)
    schema.ensure_offline_table(pg, spec, view)
    return view.replace("-", "_")


def insert(
    pg: psycopg.Connection[tuple[Any, ...]], table: str, columns: list[str], rows: list[tuple[Any, ...]]
) -> None:
    cols = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    with pg.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)


def online(rds: redis.Redis, view: str, key: tuple[Any, ...], features: list[tuple[str, str]]) -> dict[str, Any]:
    fields = rds.hgetall(layout.online_key("test", view, key))
    return layout.decode_features(features, fields) if fields else {}


def ts(minutes_ago: float) -> datetime.datetime:
    return NOW - datetime.timedelta(minutes=minutes_ago)


def test_latest_per_entity_and_bookkeeping(pg: psycopg.Connection[tuple[Any, ...]], rds: redis.Redis) -> None:
    view = view_name()
    spec = make_spec([{"name": "clicks", "type": "int64"}, {"name": "name", "type": "string"}], batch_size=2)
    table = setup_view(pg, spec, view)
    insert(
        pg,
        table,
        ["user_id", "clicks", "name", "event_timestamp"],
        [
            (1, 10, "old", ts(30)),
            (1, 11, "new", ts(10)),
            (1, 9, "older", ts(50)),
            (2, 20, None, ts(5)),
            (3, 30, "c", ts(1)),
            (4, 40, "d", ts(2)),
            (5, 50, "e", ts(3)),
        ],
    )
    result = materialize.materialize(spec, pg, rds, "test", view)
    assert (result.rows, result.written, result.batches, result.outcome) == (5, 5, 3, "Succeeded")
    assert result.watermark == ts(1)
    feats = [("clicks", "int64"), ("name", "string")]
    assert online(rds, view, (1,), feats) == {"clicks": 11, "name": "new"}
    assert online(rds, view, (2,), feats) == {"clicks": 20, "name": None}
    assert rds.hget(layout.online_key("test", view, (1,)), "_event_ts") == str(layout.event_ts_micros(ts(10))).encode()
    assert rds.ttl(layout.online_key("test", view, (1,))) == -1  # no TTL configured: never expires
    fresh = freshness.compute(pg, spec, "test", view)
    assert fresh == freshness.Freshness(ts(1), ts(1), 0.0)
    last = freshness.last_run(pg, "test", view)
    assert last is not None and last.outcome == "Succeeded" and last.rows == 5 and last.watermark == ts(1)
    # New data: lag shows until the next run.
    insert(pg, table, ["user_id", "clicks", "event_timestamp"], [(6, 60, NOW)])
    assert freshness.compute(pg, spec, "test", view).lag_seconds == 60.0
    materialize.materialize(spec, pg, rds, "test", view)
    assert freshness.compute(pg, spec, "test", view).lag_seconds == 0.0
    assert pg.execute(
        "SELECT count(*) FROM mlinfra.watermarks WHERE namespace = 'test' AND view = %s", (view,)
    ).fetchone() == (1,)


def test_ttl_is_respected(pg: psycopg.Connection[tuple[Any, ...]], rds: redis.Redis) -> None:
    view = view_name()
    spec = make_spec([{"name": "x", "type": "float64"}], ttl="1h")
    table = setup_view(pg, spec, view)
    insert(pg, table, ["user_id", "x", "event_timestamp"], [(1, 1.5, ts(90)), (2, 2.5, ts(30))])
    result = materialize.materialize(spec, pg, rds, "test", view, now=NOW)
    assert result.rows == 1
    assert online(rds, view, (1,), [("x", "float64")]) == {}
    key2 = layout.online_key("test", view, (2,))
    assert online(rds, view, (2,), [("x", "float64")]) == {"x": 2.5}
    # Expires one hour after the event time, not after the write.
    expected_ms = (ts(30) + datetime.timedelta(hours=1) - datetime.datetime.now(UTC)).total_seconds() * 1000
    assert abs(rds.pttl(key2) - expected_ms) < 5000


def test_older_never_overwrites_newer_and_late_data_is_not_skipped(
    pg: psycopg.Connection[tuple[Any, ...]], rds: redis.Redis
) -> None:
    view = view_name()
    spec = make_spec([{"name": "v", "type": "string"}])
    table = setup_view(pg, spec, view)
    insert(pg, table, ["user_id", "v", "event_timestamp"], [(1, "newest", ts(1)), (2, "two", ts(1))])
    materialize.materialize(spec, pg, rds, "test", view)
    # Late rows (event time older than the watermark) arriving after the run.
    insert(pg, table, ["user_id", "v", "event_timestamp"], [(1, "late-older", ts(20)), (3, "late-new-entity", ts(20))])
    result = materialize.materialize(spec, pg, rds, "test", view)
    assert online(rds, view, (1,), [("v", "string")]) == {"v": "newest"}
    assert online(rds, view, (3,), [("v", "string")]) == {"v": "late-new-entity"}
    assert result.watermark == ts(1)
    # A newer value than online: written.
    insert(pg, table, ["user_id", "v", "event_timestamp"], [(2, "two-updated", NOW)])
    materialize.materialize(spec, pg, rds, "test", view)
    assert online(rds, view, (2,), [("v", "string")]) == {"v": "two-updated"}
    # Guard also holds against a hash written by someone else with a newer event time.
    key = layout.online_key("test", view, (3,))
    future = layout.event_ts_micros(NOW + datetime.timedelta(days=1))
    rds.hset(key, mapping={"v": "from-the-future", "_event_ts": future})
    insert(pg, table, ["user_id", "v", "event_timestamp"], [(3, "now", NOW)])
    materialize.materialize(spec, pg, rds, "test", view)
    assert online(rds, view, (3,), [("v", "string")]) == {"v": "from-the-future"}


def test_composite_keys(pg: psycopg.Connection[tuple[Any, ...]], rds: redis.Redis) -> None:
    view = view_name()
    entities = [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}, {"name": "n", "type": "int32"}]
    spec = make_spec([{"name": "v", "type": "int32"}], entities)
    table = setup_view(pg, spec, view)
    insert(
        pg,
        table,
        ["a", "b", "n", "v", "event_timestamp"],
        [
            ("a:b", "c", 1, 1, NOW),
            ("a", "b:c", 1, 2, NOW),
            ("a%3A", "", -1, 3, NOW),
            ("ü b", "*", 0, 4, NOW),
        ],
    )
    assert materialize.materialize(spec, pg, rds, "test", view).rows == 4
    for key, v in [(("a:b", "c", 1), 1), (("a", "b:c", 1), 2), (("a%3A", "", -1), 3), (("ü b", "*", 0), 4)]:
        assert online(rds, view, key, [("v", "int32")]) == {"v": v}
    keys = sorted(k.decode() for k in rds.scan_iter(match=layout.key_pattern("test", view)))
    decoded = sorted(
        layout.parse_online_key(k, "test", view, ["string", "string", "int32"])
        for k in keys  # type: ignore[type-var]
    )
    assert len(decoded) == 4 and ("a", "b:c", 1) in decoded


def test_type_round_trips(pg: psycopg.Connection[tuple[Any, ...]], rds: redis.Redis) -> None:
    view = view_name()
    features = [{"name": f"f_{t}", "type": t} for t in layout.feature_types()]
    spec = make_spec(features, [{"name": "id", "type": "string"}])
    table = setup_view(pg, spec, view)
    values = {
        "string": "héllo, wörld: ✓",
        "int32": -(2**31),
        "int64": 2**63 - 1,
        "float32": 0.1,
        "float64": 0.1 + 0.2,
        "bool": True,
        "timestamp": datetime.datetime(2020, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        "bytes": b"\x00\xff\x01:raw",
        "float32_list": [0.5, -1.25, 3.0e-8, 1e30],
    }
    names = [f["name"] for f in features]
    insert(pg, table, ["id", *names, "event_timestamp"], [("all", *[values[t] for t in layout.feature_types()], NOW)])
    insert(pg, table, ["id", "event_timestamp"], [("nulls", NOW)])
    materialize.materialize(spec, pg, rds, "test", view)
    typed = [(f["name"], f["type"]) for f in features]
    got = online(rds, view, ("all",), typed)
    offline_row = pg.execute(f"SELECT {', '.join(names)} FROM {table} WHERE id = 'all'").fetchone()
    assert offline_row is not None
    for (name, type_), from_pg in zip(typed, offline_row, strict=True):
        if type_ == "float32_list":  # float32 precision online, exact float32 values
            assert got[name] == pytest.approx(from_pg, rel=1e-6)
        elif type_ == "bytes":
            assert got[name] == bytes(from_pg)
        else:
            assert got[name] == from_pg, name
        assert type(got[name]) is type(values[type_]), name
    assert got["f_float64"] == 0.1 + 0.2 and got["f_string"] == values["string"]
    assert online(rds, view, ("nulls",), typed) == {name: None for name, _ in typed}
    assert not math.isnan(got["f_float32"])


def test_failure_is_recorded(pg: psycopg.Connection[tuple[Any, ...]]) -> None:
    view = view_name()
    spec = make_spec([{"name": "v", "type": "int64"}])
    table = setup_view(pg, spec, view)
    insert(pg, table, ["user_id", "v", "event_timestamp"], [(1, 1, NOW)])
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError):
        materialize.materialize(spec, pg, dead, "test", view)
    last = freshness.last_run(pg, "test", view)
    assert last is not None and last.outcome == "Failed" and "ConnectionError" in (last.message or "")
    assert freshness.online_watermark(pg, "test", view) is None


# -- failover: one connection per run, replicas acknowledge before the commit -------------------------------


def test_a_lost_connection_fails_the_run_and_the_rerun_is_exact(
    pg: psycopg.Connection[tuple[Any, ...]], rds: redis.Redis
) -> None:
    """The connection dies after the first batch (as when the primary goes and the Service moves): the run
    must not reconnect and carry on — another server may lack what the first one had not passed on — so it
    fails with nothing committed, and the next run writes every row."""
    view = view_name()
    spec = make_spec([{"name": "v", "type": "int64"}], batch_size=5)
    table = setup_view(pg, spec, view)
    insert(pg, table, ["user_id", "v", "event_timestamp"], [(i, i * 10, ts(1)) for i in range(20)])
    killed: list[int] = []

    def kill_the_run_connection(batches: int, rows: int) -> None:
        if batches == 1:  # the run's connection is the one whose last command was the write script
            for client in rds.client_list():
                if client.get("cmd") == "eval":
                    rds.client_kill_filter(_id=int(client["id"]))
                    killed.append(int(client["id"]))

    with pytest.raises(redis.ConnectionError):
        materialize.materialize(spec, pg, rds, "test", view, on_batch=kill_the_run_connection)
    assert killed
    last = freshness.last_run(pg, "test", view)
    assert last is not None and last.outcome == "Failed"
    assert freshness.online_watermark(pg, "test", view) is None  # nothing committed
    result = materialize.materialize(spec, pg, rds, "test", view)
    assert result.outcome == "Succeeded" and result.rows == 20
    assert all(online(rds, view, (i,), [("v", "int64")]) == {"v": i * 10} for i in range(20))


def test_a_run_commits_once_a_replica_holds_its_writes(
    pg: psycopg.Connection[tuple[Any, ...]], rds: redis.Redis, redis_cluster: RedisCluster
) -> None:
    view = view_name()
    spec = make_spec([{"name": "v", "type": "int64"}])
    table = setup_view(pg, spec, view)
    insert(pg, table, ["user_id", "v", "event_timestamp"], [(i, i, ts(1)) for i in range(50)])
    result = materialize.materialize(spec, pg, rds, "test", view, replica_acks=1)
    assert result.outcome == "Succeeded" and result.rows == 50
    # Acknowledged by the replica before the commit: it holds every key the moment the run returns.
    replica = redis.Redis(host="127.0.0.1", port=redis_cluster.replicas[0].port, password=redis_cluster.password)
    try:
        assert all(online(replica, view, (i,), [("v", "int64")]) == {"v": i} for i in range(50))
    finally:
        replica.close()


def test_a_run_without_enough_replica_acks_commits_nothing(
    pg: psycopg.Connection[tuple[Any, ...]],
    rds: redis.Redis,
    redis_cluster: RedisCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(materialize, "REPLICA_ACK_TIMEOUT_MS", 200)
    view = view_name()
    spec = make_spec([{"name": "v", "type": "int64"}])
    table = setup_view(pg, spec, view)
    insert(pg, table, ["user_id", "v", "event_timestamp"], [(1, 1, ts(1))])
    wanted = len(redis_cluster.replicas) + 1  # more than there are
    with pytest.raises(materialize.NotReplicated, match=f"of the {wanted} replicas required"):
        materialize.materialize(spec, pg, rds, "test", view, replica_acks=wanted)
    last = freshness.last_run(pg, "test", view)
    assert last is not None and last.outcome == "Failed" and "NotReplicated" in (last.message or "")
    assert freshness.online_watermark(pg, "test", view) is None


# -- a run killed between batches -------------------------------------------------------------------------


def conn_dir(tmp: Path, info: connection.ConnectionInfo) -> Path:
    tmp.mkdir()
    for key, value in info.to_secret_data().items():
        (tmp / key).write_text(value)
    return tmp


def run_cli(view_file: Path, view: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlinfra", "sync", "featureview", f"test/{view}", "--file", str(view_file)],
        env={**os.environ, "PYTHONPATH": str(REPO / "operator"), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_killed_run_loses_and_duplicates_nothing(
    pg: psycopg.Connection[tuple[Any, ...]],
    rds: redis.Redis,
    postgres_cluster: PostgresCluster,
    redis_cluster: RedisCluster,
    tmp_path: Path,
) -> None:
    view = view_name()
    spec = make_spec([{"name": "v", "type": "int64"}, {"name": "s", "type": "string"}], batch_size=10)
    table = setup_view(pg, spec, view)
    body = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": view, "namespace": "test"},
        "spec": spec.model_dump(by_alias=True, exclude_none=True),
    }
    view_file = tmp_path / "fv.yaml"
    view_file.write_text(yaml.safe_dump(body))
    env = {
        "MLINFRA_OFFLINE_CONN_DIR": str(
            conn_dir(
                tmp_path / "offline",
                connection.ConnectionInfo.for_engine(
                    "postgres", "127.0.0.1", postgres_cluster.password, port=postgres_cluster.primary.port
                ),
            )
        ),
        "MLINFRA_ONLINE_CONN_DIR": str(
            conn_dir(
                tmp_path / "online",
                connection.ConnectionInfo.for_engine(
                    "redis", "127.0.0.1", redis_cluster.password, port=redis_cluster.primary.port
                ),
            )
        ),
    }
    # A first successful run, then new data (updates and new entities) for the run that gets killed.
    insert(pg, table, ["user_id", "v", "s", "event_timestamp"], [(i, i, "first", ts(60)) for i in range(50)])
    first = run_cli(view_file, view, env)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    first_summary = json.loads(out)
    assert first_summary["rows"] == 50 and first_summary["outcome"] == "Succeeded"
    rows = [(i, i * 100 + k, f"second-{k}", ts(30 - k)) for i in range(25, 100) for k in range(3)]
    insert(pg, table, ["user_id", "v", "s", "event_timestamp"], rows)
    marks_query = "SELECT watermark, ingested_through FROM mlinfra.watermarks WHERE view = %s"
    mark_before = pg.execute(marks_query, (view,)).fetchone()

    killed = run_cli(view_file, view, {**env, "MLINFRA_SYNC_PAUSE_AFTER_BATCHES": "3"})
    assert killed.stderr is not None
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline and "paused after batch 3" not in line:
        line = killed.stderr.readline()
        if not line and killed.poll() is not None:
            pytest.fail(f"the run ended before pausing: {killed.returncode}")
    assert "paused after batch 3 (30 rows)" in line
    # Half way: some hashes are new, the rest still hold the first run's values; nothing committed.
    partial = [online(rds, view, (i,), [("s", "string")]).get("s") for i in range(100)]
    assert 0 < sum(1 for s in partial if s == "second-2") < 75
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    killed.communicate()
    assert pg.execute(marks_query, (view,)).fetchone() == mark_before
    running = pg.execute("SELECT outcome FROM mlinfra.sync_runs WHERE view = %s ORDER BY id", (view,)).fetchall()
    assert running == [("Succeeded",), ("Running",)]

    rerun = run_cli(view_file, view, env)
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err
    summary = json.loads(out)
    assert summary["outcome"] == "Succeeded" and summary["watermark"] == ts(28).isoformat()

    feats = [("v", "int64"), ("s", "string")]
    for i in range(100):
        expected = {"v": i, "s": "first"} if i < 25 else {"v": i * 100 + 2, "s": "second-2"}
        assert online(rds, view, (i,), feats) == expected, i
        assert (
            rds.hget(layout.online_key("test", view, (i,)), "_event_ts")
            == str(layout.event_ts_micros(ts(60) if i < 25 else ts(28))).encode()
        )
    assert len(list(rds.scan_iter(match=layout.key_pattern("test", view), count=1000))) == 100
    marks = pg.execute("SELECT watermark FROM mlinfra.watermarks WHERE view = %s", (view,)).fetchall()
    assert marks == [(ts(28),)]
    runs_query = "SELECT outcome, rows, error FROM mlinfra.sync_runs WHERE view = %s ORDER BY id"
    runs = pg.execute(runs_query, (view,)).fetchall()
    assert [r[0] for r in runs] == ["Succeeded", "Failed", "Succeeded"]
    assert "abandoned" in runs[1][2]


def test_cli_reports_unusable_target(tmp_path: Path) -> None:
    proc = run_cli(tmp_path / "missing.yaml", "x", {})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert json.loads(out)["outcome"] == "Failed"
