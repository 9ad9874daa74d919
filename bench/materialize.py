"""Benchmark: FeatureView materialization, PostgreSQL -> Redis (prints figures; asserts nothing).

1M entity rows x 10 float64 features by default (``--rows`` scales it), against a PostgreSQL and a Redis it
starts itself (the local test platform), all in one run:

(a) our materializer (``mlinfra.features.materialize``: server-side cursor, Lua guard, pipelined);
(b) a naive loop: one ``HSET`` round trip per row (rows read from PostgreSQL the same way);
(c) the raw ceiling: pipelined ``HSET`` of pre-built, pre-encoded data, no PostgreSQL, no guard.

Run: ``.venv/bin/python bench/materialize.py --rows 200000`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from mlinfra.api import featureview
from mlinfra.devenv import procs
from mlinfra.devenv.postgres import start_postgres
from mlinfra.devenv.redis import start_redis
from mlinfra.features import layout, materialize, schema

FEATURES = 10


def spec(batch_size: int) -> featureview.FeatureViewSpec:
    return featureview.FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "entity_id", "type": "int64"}],
            "features": [{"name": f"f{i}", "type": "float64"} for i in range(FEATURES)],
            "offline": {"storeRef": {"name": "pg"}},
            "online": {"storeRef": {"name": "redis"}, "ttl": "24h"},
            "materialization": {"schedule": "@hourly", "batchSize": batch_size},
        }
    )


def load(conn: Any, table: str, rows: int) -> None:
    cols = ", ".join(f"random() AS f{i}" for i in range(FEATURES))
    conn.execute(
        f"INSERT INTO {table} (entity_id, {', '.join(f'f{i}' for i in range(FEATURES))}, event_timestamp) "  # noqa: S608
        f"SELECT g, {', '.join(f'r.f{i}' for i in range(FEATURES))}, now() - (g % 3600) * interval '1 second' "
        f"FROM generate_series(1, {rows}) g, LATERAL (SELECT {cols} OFFSET 0 * g) r"
    )
    conn.execute(f"ANALYZE {table}")


def bench_ours(conn: Any, client: redis.Redis, view_spec: featureview.FeatureViewSpec, view: str) -> tuple[float, int]:
    started = time.perf_counter()
    result = materialize.materialize(view_spec, conn, client, "bench", view)
    return time.perf_counter() - started, result.rows


def bench_naive(conn: Any, client: redis.Redis, table: str, rows_limit: int) -> tuple[float, int]:
    names = [f"f{i}" for i in range(FEATURES)]
    started = time.perf_counter()
    n = 0
    with conn.transaction(), conn.cursor(name="naive") as cur:
        cur.execute(f"SELECT entity_id, {', '.join(names)}, event_timestamp FROM {table} LIMIT %s", (rows_limit,))  # noqa: S608
        for row in cur:
            fields = layout.encode_features([(nm, "float64") for nm in names], row[1:-1], row[-1])
            client.hset(layout.online_key("bench", "naive", (row[0],)), mapping=fields)  # type: ignore[arg-type]
            n += 1
    return time.perf_counter() - started, n


def bench_raw(client: redis.Redis, rows: int, batch: int) -> tuple[float, int]:
    now = datetime.datetime.now(datetime.UTC)
    values = [0.123456789 * i for i in range(FEATURES)]
    typed = [(f"f{j}", "float64") for j in range(FEATURES)]
    prebuilt = [
        (layout.online_key("bench", "raw", (i,)), layout.encode_features(typed, values, now)) for i in range(rows)
    ]
    started = time.perf_counter()
    for start in range(0, rows, batch):
        pipe = client.pipeline(transaction=False)
        for key, fields in prebuilt[start : start + batch]:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.execute()
    return time.perf_counter() - started, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="Entity rows (one row per entity).")
    parser.add_argument("--batch-size", type=int, default=5000, help="Materializer batch size.")
    parser.add_argument("--naive-rows", type=int, default=50_000, help="Rows timed for the naive loop (it is slow).")
    args = parser.parse_args()
    view = "bench-view"
    view_spec = spec(args.batch_size)
    with tempfile.TemporaryDirectory(prefix="mlinfra-bench-") as tmp, procs.ProcStack() as stack:
        pg = start_postgres(stack, Path(tmp) / "pg", standbys=0)
        rc = start_redis(stack, Path(tmp) / "redis", replicas=0)
        client = redis.Redis(host="127.0.0.1", port=rc.primary.port, password=rc.password)
        with pg.primary.connect() as conn:
            schema.ensure_bookkeeping(conn)
            schema.ensure_offline_table(conn, view_spec, view)
            t0 = time.perf_counter()
            load(conn, "bench_view", args.rows)
            loaded = time.perf_counter() - t0
            print(f"loaded {args.rows} rows x {FEATURES} float features into PostgreSQL in {loaded:.1f}s")
            secs, n = bench_ours(conn, client, view_spec, view)
            ours = n / secs
            print(f"(a) materializer:     {n:>9} rows in {secs:7.2f}s = {ours:>10,.0f} rows/s")
            naive_rows = min(args.naive_rows, args.rows)
            secs, n = bench_naive(conn, client, "bench_view", naive_rows)
            naive = n / secs
            print(f"(b) naive HSET loop:  {n:>9} rows in {secs:7.2f}s = {naive:>10,.0f} rows/s")
        client.flushdb()
        secs, n = bench_raw(client, args.rows, args.batch_size)
        raw = n / secs
        print(f"(c) raw pipelined:    {n:>9} rows in {secs:7.2f}s = {raw:>10,.0f} rows/s (no PostgreSQL)")
        print(
            f"materializer = {ours / naive:.1f}x naive (goal >= 10x), {ours / raw:.2f} of the raw ceiling (goal >= 0.5)"
        )
        client.close()


if __name__ == "__main__":
    main()
