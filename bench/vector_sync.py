"""Benchmark: VectorIndex sync, PostgreSQL ``real[]`` -> Qdrant (prints figures; asserts nothing).

100k rows x 384-d by default (``--rows`` scales it): the sample table of ``mlinfra.devenv.vector_sample`` (synthetic
embeddings, see its docstring) in a PostgreSQL the script starts itself, into Qdrant: qdrant-client's local
mode (in process, in memory; ``--local-path DIR`` for its on-disk variant), or the real server at
``QDRANT_URL`` (``QDRANT_API_KEY`` optional). The output says which. All in one run:

(a) ``vectors.sync.sync``: keyset batches read from PostgreSQL, one ``upsert(wait=True)`` per batch, the
    watermark committed after each; once per ``--batch-sizes`` (the first is the spec's default, 500), each
    into a fresh collection behind its own alias;
(b) a naive loop: one ``upsert(wait=True)`` per row, rows read from PostgreSQL with a server-side cursor, on
    ``--naive-rows`` rows (slow; its rate does not depend on the count);
(c) the Qdrant-side ceiling: pre-built points upserted in batches of the default size, no PostgreSQL.

Run: ``.venv/bin/python bench/vector_sync.py --rows 20000 --naive-rows 5000`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient
from qdrant_client.http import models

from mlinfra.api import vectorindex
from mlinfra.devenv import procs
from mlinfra.devenv import qdrant as devenv_qdrant
from mlinfra.devenv import vector_sample as sample
from mlinfra.devenv.postgres import start_postgres
from mlinfra.vectors import collection, sync, syncrole

TABLE = "bench_docs"
NAMESPACE = "bench"


def spec(alias: str, batch_size: int) -> vectorindex.VectorIndexSpec:
    return vectorindex.VectorIndexSpec.model_validate(
        {
            "storeRef": {"name": "vectors"},
            "collection": alias,
            "vectors": {"size": sample.DIM, "distance": "Cosine"},
            "hnsw": {"m": 16},
            "source": {
                "storeRef": {"name": "pg"},
                "table": TABLE,
                "idColumn": "id",
                "vectorColumn": "embedding",
                "payloadColumns": ["title", "lang"],
                "updatedAtColumn": "updated_at",
                "deletedColumn": "deleted",
            },
            "sync": {"schedule": "*/10 * * * *", "batchSize": batch_size},
        }
    )


def open_qdrant(local_path: str | None) -> tuple[QdrantClient, str]:
    if devenv_qdrant.is_real_server():
        return devenv_qdrant.qdrant_client(), "real server at QDRANT_URL"
    if local_path:
        return QdrantClient(path=local_path), f"qdrant-client local mode, on disk at {local_path}"
    return QdrantClient(location=":memory:"), "qdrant-client local mode, in memory"


def drop(client: QdrantClient, alias: str) -> None:
    physical = collection.alias_target(client, alias)
    if physical is not None:
        client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))]
        )
        client.delete_collection(physical)


def bench_ours(conn: Any, client: QdrantClient, batch_size: int) -> tuple[float, int, int]:
    s = spec(f"bench-b{batch_size}", batch_size)
    drop(client, s.collection)
    collection.ensure(client, s, owner="bench/vectors")
    syncrole.ensure_bookkeeping(conn)  # the operator's part (its reconcile): a sync run creates nothing
    started = time.perf_counter()
    result = sync.sync(conn, client, s, NAMESPACE, s.collection)
    secs = time.perf_counter() - started
    points = client.count(s.collection, exact=True).count
    drop(client, s.collection)
    return secs, result.upserted, points


def bench_naive(conn: Any, client: QdrantClient, rows: int) -> tuple[float, int, int]:
    s = spec("bench-naive", 1)
    drop(client, s.collection)
    collection.ensure(client, s, owner="bench/vectors")
    started = time.perf_counter()
    n = 0
    with conn.transaction(), conn.cursor(name="naive") as cur:
        cur.execute(f"SELECT id, embedding, title, lang FROM {TABLE} ORDER BY id LIMIT %s", (rows,))  # noqa: S608
        for key, vector, title, lang in cur:
            point = models.PointStruct(
                id=key, vector=[float(v) for v in vector], payload={"title": title, "lang": lang}
            )
            client.upsert(s.collection, points=[point], wait=True)
            n += 1
    secs = time.perf_counter() - started
    points = client.count(s.collection, exact=True).count
    drop(client, s.collection)
    return secs, n, points


def bench_raw(client: QdrantClient, rows: int, batch_size: int) -> tuple[float, int]:
    s = spec("bench-raw", batch_size)
    drop(client, s.collection)
    collection.ensure(client, s, owner="bench/vectors")
    prebuilt = [
        models.PointStruct(id=d.id, vector=d.embedding.tolist(), payload={"title": d.title, "lang": d.lang})
        for d in sample.documents(rows, seed=1)
    ]
    started = time.perf_counter()
    for start in range(0, rows, batch_size):
        client.upsert(s.collection, points=prebuilt[start : start + batch_size], wait=True)
    secs = time.perf_counter() - started
    drop(client, s.collection)
    return secs, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000, help="Source rows (384-d vectors each).")
    parser.add_argument(
        "--batch-sizes",
        default="500,100,2000",
        help="Sync batch sizes to time, comma-separated; the first is the baseline for ratios.",
    )
    parser.add_argument("--naive-rows", type=int, default=10_000, help="Rows timed for the naive loop (slow).")
    parser.add_argument(
        "--local-path",
        default=None,
        help="Local mode on disk in this directory instead of in memory (ignored with QDRANT_URL).",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    client, which = open_qdrant(args.local_path)
    print(f"qdrant: {which}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start")
    if not devenv_qdrant.is_real_server():
        print(
            "caveat: local mode is qdrant-client's in-process Python implementation (no network, no server, no "
            "HNSW graph built): these figures are our code + PostgreSQL + that implementation, not a Qdrant "
            "server's throughput. Set QDRANT_URL to measure against a real server."
        )
    with tempfile.TemporaryDirectory(prefix="mlinfra-bench-") as tmp, procs.ProcStack() as stack:
        pg = start_postgres(stack, Path(tmp) / "pg", standbys=0)
        with pg.primary.connect() as conn:
            sample.create_table(conn, "public", TABLE)
            t0 = time.perf_counter()
            sample.load(conn, TABLE, args.rows, seed=1)
            conn.execute(f"ANALYZE {TABLE}")
            print(f"loaded {args.rows} rows x {sample.DIM}-d real[] into PostgreSQL in {time.perf_counter() - t0:.1f}s")
            rates: list[float] = []
            for size in sizes:
                secs, n, points = bench_ours(conn, client, size)
                rates.append(n / secs)
                print(
                    f"(a) vectors.sync, batch {size:>5}: {n:>8} rows in {secs:7.2f}s = {n / secs:>8,.0f} rows/s "
                    f"({points} points)"
                )
            naive_rows = min(args.naive_rows, args.rows)
            secs, n, points = bench_naive(conn, client, naive_rows)
            naive = n / secs
            subset = f" (a subset: {n} of {args.rows} rows)" if n < args.rows else ""
            print(
                f"(b) one upsert per row:     {n:>8} rows in {secs:7.2f}s = {naive:>8,.0f} rows/s "
                f"({points} points){subset}"
            )
        secs, n = bench_raw(client, args.rows, sizes[0])
        raw = n / secs
        print(
            f"(c) pre-built points, batch {sizes[0]}: {n:>5} rows in {secs:7.2f}s = {raw:>8,.0f} rows/s (no PostgreSQL)"
        )
        print(
            f"vectors.sync (batch {sizes[0]}) = {rates[0] / naive:.1f}x one upsert per row, "
            f"{rates[0] / raw:.2f} of the Qdrant-side ceiling; load average {os.getloadavg()[0]:.1f} at the end"
        )
    client.close()


if __name__ == "__main__":
    main()
