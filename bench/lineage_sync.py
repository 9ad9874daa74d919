"""Benchmark: ModelRegistry lineage sync, PostgreSQL outbox -> Neo4j (prints figures; asserts nothing).

~100k outbox events by default (``--events`` scales it): models, versions, datasets, TRAINED_ON and
USES_FEATURE links and deployments, written through the registry tables so the triggers fill the outbox.
Against a PostgreSQL and a Neo4j it starts itself, in one run:

(a) ``lineage.sync`` with batches of ``--batch-size`` events, one Neo4j transaction and one
    ``UNWIND $events AS e ... MERGE`` per run of same-kind events;
(b) the same events, one Neo4j transaction per event (``--baseline-events`` of them; all by default).

Run: ``.venv/bin/python bench/lineage_sync.py --events 100000`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from mlinfra.devenv import procs
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import start_postgres
from mlinfra.registry import lineage, migrate

REGISTRY = "bench/registry"  # the ModelRegistry the graph's nodes belong to (any <namespace>/<name>)


def fill(conn: psycopg.Connection[Any], events: int) -> None:
    """~``events`` outbox events: per model 2 versions, 1 dataset, 2 TRAINED_ON, 2 USES_FEATURE, 1 deployment."""
    models = max(1, events // 10)
    x = conn.execute
    x("INSERT INTO registry.registered_models (name) SELECT 'm' || i FROM generate_series(1, %s) i", (models,))
    x(
        "INSERT INTO registry.model_versions (model_id, version) SELECT id, v FROM registry.registered_models, "
        "generate_series(1, 2) v"
    )
    x("INSERT INTO registry.datasets (name) SELECT 'd' || i FROM generate_series(1, %s) i", (models,))
    x(
        "INSERT INTO registry.model_version_datasets (model_version_id, dataset_id, relation) "
        "SELECT mv.id, d.id, 'TRAINED_ON' FROM registry.model_versions mv JOIN registry.datasets d "
        "ON d.id = mv.model_id"
    )
    x(
        "INSERT INTO registry.model_version_features (model_version_id, feature_view_namespace, feature_view_name) "
        "SELECT id, 'ml', 'view' || (id % 100) FROM registry.model_versions"
    )
    x(
        "INSERT INTO registry.deployments (model_version_id, environment) "
        "SELECT id, 'prod' FROM registry.model_versions WHERE version = 2"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--baseline-events", type=int, default=None, help="events for (b); default: all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, procs.ProcStack() as stack:
        cluster = start_postgres(stack, Path(tmp) / "pg", standbys=0)
        server = Neo4jServer(Path(tmp) / "neo4j").start(stack)
        with cluster.primary.connect() as conn, server.driver() as driver:
            migrate.apply(conn)
            lineage.ensure_schema(driver)
            fill(conn, args.events)
            row = conn.execute("SELECT count(*) FROM registry.outbox").fetchone()
            total = int(str(row[0])) if row else 0
            print(f"outbox events: {total}, batch size {args.batch_size}")

            started = time.monotonic()
            result = lineage.sync(conn, driver, batch_size=args.batch_size, registry=REGISTRY)
            batched = time.monotonic() - started
            print(
                f"(a) batched UNWIND sync: {result.events} events in {batched:.1f}s = "
                f"{result.events / batched:,.0f} events/s ({result.batches} batches)"
            )

            with driver.session() as session:  # CALL ... IN TRANSACTIONS needs an implicit transaction
                # The graph goes, its LineageRegistry node stays: (b) drains the events below, no rebuild.
                session.run(
                    "MATCH (n) WHERE NOT n:LineageRegistry CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS"
                ).consume()
            limit = args.baseline_events or total
            conn.execute(
                "UPDATE registry.outbox SET processed_at = NULL WHERE id IN "
                "(SELECT id FROM registry.outbox ORDER BY id LIMIT %s)",
                (limit,),
            )
            conn.execute(
                "UPDATE registry.outbox SET processed_at = now() WHERE id NOT IN "
                "(SELECT id FROM registry.outbox ORDER BY id LIMIT %s)",
                (limit,),
            )
            started = time.monotonic()
            result = lineage.sync(conn, driver, batch_size=args.batch_size, one_by_one=True, registry=REGISTRY)
            single = time.monotonic() - started
            print(
                f"(b) one transaction per event: {result.events} events in {single:.1f}s = "
                f"{result.events / single:,.0f} events/s"
            )
            print(f"speed-up: {(total / batched) / (result.events / single):.1f}x")


if __name__ == "__main__":
    main()
