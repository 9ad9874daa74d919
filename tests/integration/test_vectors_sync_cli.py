"""``mlinfra sync vectorindex`` as the Job runs it: a real process, real PostgreSQL, Qdrant through a mounted
connection (qdrant-client local mode on a directory here, via the endpoint map; the real server at
``QDRANT_URL`` when set) and the index's own sync role as the source connection, as the Job mounts it. Covers
the run history, the one-run lock, a SIGKILL between batches, bad input, the bookkeeping missing."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib import parse

import psycopg
import pytest
import yaml
from psycopg import sql

from mlinfra.devenv import qdrant as devenv_qdrant
from mlinfra.devenv import secretscan
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.engines import connection, endpoints
from mlinfra.engines import qdrant as qdrant_engine
from mlinfra.stores import credentials
from mlinfra.vectors import collection, runs, sync_cli, syncrole
from mlinfra.vectors import sync as vsync

pytestmark = [pytest.mark.integration, pytest.mark.qdrant]

Conn = psycopg.Connection[tuple[Any, ...]]
NS, SIZE = "ml", 4


@pytest.fixture(autouse=True)
def _which_qdrant(record_property: Any) -> None:
    record_property("qdrant", devenv_qdrant.mode())


@dataclasses.dataclass
class Setup:
    conn: Conn
    table: str
    name: str
    env: dict[str, str]
    qdrant: connection.ConnectionInfo
    spec_file: Path

    def run(self, *args: str, extra_env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlinfra",
                "sync",
                "vectorindex",
                f"{NS}/{self.name}",
                "--file",
                str(self.spec_file),
                *args,
            ],
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return out.returncode, json.loads(out.stdout.strip().splitlines()[-1])

    def insert(self, ids: range, rng: random.Random, size: int = SIZE) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self.table} (id, embedding, lang) VALUES (%s, %s, %s)",
                [(i, [rng.uniform(-1, 1) for _ in range(size)], "en") for i in ids],
            )


def write_conn_dir(directory: Path, info: connection.ConnectionInfo) -> Path:
    directory.mkdir(parents=True)
    for key, value in info.to_secret_data().items():
        (directory / key).write_text(value)
    return directory


@pytest.fixture
def setup(postgres_cluster: PostgresCluster, tmp_path: Path) -> Iterator[Setup]:
    # The job process opens a local-mode directory itself: this test holds no client on it while it runs, so
    # it names its collection as a QdrantSpace would and removes that prefix at the end.
    suffix = secrets.token_hex(4)
    prefix = f"{devenv_qdrant.TEST_PREFIX}{suffix}-"
    table, name = f"emb_{suffix}", f"{prefix}docs"
    pg = postgres_cluster.primary
    pg_info = connection.ConnectionInfo.for_engine("postgres", "127.0.0.1", pg.password, port=pg.port)
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    url = os.environ.get("QDRANT_URL")
    if url:
        parts = parse.urlsplit(url)
        q_info = connection.ConnectionInfo.for_engine(
            "qdrant",
            parts.hostname or "127.0.0.1",
            os.environ.get("QDRANT_API_KEY", ""),
            port=parts.port or 6333,
            tls=parts.scheme == "https",
        )
    else:
        # As on the local platform: the Secret names the in-cluster Service, the endpoint map a directory.
        q_info = connection.ConnectionInfo.for_engine("qdrant", "vectors.ml.svc", "")
        emap = tmp_path / "endpoint-map.json"
        local = os.environ.get(devenv_qdrant.PATH_ENV) or str(tmp_path / "qdrant")
        emap.write_text(json.dumps({f"{NS}/vectors": {"localPath": local}}))
        env[endpoints.ENV] = str(emap)
        q_info = endpoints.EndpointMap(emap).resolve(q_info, NS, "vectors")
    env[sync_cli.QDRANT_DIR_ENV] = str(
        write_conn_dir(tmp_path / "qdrant-conn", dataclasses.replace(q_info, local_path=None))
    )
    spec_file = tmp_path / "vi.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "VectorIndex",
                "metadata": {"name": name, "namespace": NS},
                "spec": {
                    "storeRef": {"name": "vectors"},
                    "collection": name,
                    "vectors": {"size": SIZE, "distance": "Cosine"},
                    "source": {
                        "storeRef": {"name": "pg"},
                        "table": table,
                        "idColumn": "id",
                        "vectorColumn": "embedding",
                        "payloadColumns": ["lang"],
                        "updatedAtColumn": "updated_at",
                        "deletedColumn": "deleted",
                    },
                    "sync": {"schedule": "*/5 * * * *", "batchSize": 10},
                },
            }
        )
    )
    with pg.connect() as conn:
        conn.execute(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, embedding real[], lang text, "
            "updated_at timestamptz NOT NULL DEFAULT clock_timestamp(), deleted boolean DEFAULT false)"
        )
        vi = sync_cli.load_index(NS, name, spec_file)
        assert vi.spec.source is not None
        # As the reconcile leaves it: the bookkeeping made by the operator, the Job's source connection the
        # index's own sync role (the Secret <index>-sync-source), which may run no DDL.
        syncrole.ensure_bookkeeping(conn)
        password = credentials.new_password()
        secretscan.track(password)
        role = syncrole.ensure(conn, pg_info.database or "postgres", vi.spec.source, NS, name, password)
        role_info = dataclasses.replace(pg_info, username=role, password=password)
        env[sync_cli.SOURCE_DIR_ENV] = str(write_conn_dir(tmp_path / "source", role_info))
        with qdrant_engine.open_client(q_info) as client:
            collection.ensure(client, vi.spec, owner="test/vectors")
        try:
            yield Setup(conn, table, name, env, q_info, spec_file)
        finally:
            syncrole.drop(conn, NS, name)
            conn.execute(f"DROP TABLE {table}")
            with qdrant_engine.open_client(q_info) as client:
                devenv_qdrant.remove_prefixed(client, prefix)


def count(s: Setup) -> int:
    with qdrant_engine.open_client(s.qdrant) as client:
        return client.count(s.name, exact=True).count


def test_a_run_is_recorded_and_bad_rows_are_reported_by_id(setup: Setup) -> None:
    rng = random.Random(1)
    setup.insert(range(1, 26), rng)
    setup.insert(range(26, 28), rng, size=SIZE + 1)
    code, summary = setup.run()
    assert code == 0, summary
    assert (summary["outcome"], summary["upserted"], summary["badRows"]) == ("Succeeded", 25, 2)
    assert [b["id"] for b in summary["badRowIds"]] == ["26", "27"]
    assert summary["badRowIds"][0]["problem"] == f"vector has {SIZE + 1} components, expected {SIZE}"
    assert count(setup) == 25
    last = runs.last(setup.conn, NS, setup.name)
    assert last is not None and (last.outcome, last.rows) == ("Succeeded", 25)
    # A rerun with nothing new does nothing, and says so.
    code, summary = setup.run()
    assert (code, summary["rows"], summary["upserted"]) == (0, 0, 0)


def test_a_second_concurrent_run_does_nothing(setup: Setup, postgres_cluster: PostgresCluster) -> None:
    setup.insert(range(1, 6), random.Random(2))
    with postgres_cluster.primary.connect() as other, runs.exclusive(other, NS, setup.name):
        code, summary = setup.run()
    assert code == 2 and summary["outcome"] == "Skipped" and "another sync" in summary["error"]
    assert count(setup) == 0
    assert setup.run()[0] == 0 and count(setup) == 5


def test_sigkill_between_batches_then_rerun_is_exact(setup: Setup) -> None:
    setup.insert(range(1, 46), random.Random(3))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlinfra", "sync", "vectorindex", f"{NS}/{setup.name}", "--file", str(setup.spec_file)],
        env={**setup.env, sync_cli.PAUSE_ENV: "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "paused after batch 2" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    spec = sync_cli.load_index(NS, setup.name, setup.spec_file).spec
    assert vsync.rows_behind(setup.conn, spec, NS, setup.name) == 25  # two batches of 10 committed
    code, summary = setup.run()
    assert code == 0 and summary["upserted"] == 25
    assert count(setup) == 45
    rows = setup.conn.execute(
        f"SELECT outcome, error FROM {runs.RUNS.as_string(setup.conn)} WHERE namespace = %s AND name = %s ORDER BY id",
        (NS, setup.name),
    ).fetchall()
    assert [r[0] for r in rows] == ["Failed", "Succeeded"]
    assert rows[0][1] == runs.KILLED


def test_a_missing_column_fails_the_run_naming_it(setup: Setup) -> None:
    setup.conn.execute(f"ALTER TABLE {setup.table} DROP COLUMN deleted")
    code, summary = setup.run()
    assert code == 1
    assert "spec.source.deletedColumn: column 'deleted' does not exist" in summary["error"]
    last = runs.last(setup.conn, NS, setup.name)
    assert last is not None and last.outcome == "Failed" and "deletedColumn" in (last.message or "")


def test_without_its_grants_the_run_creates_nothing_and_says_what_is_missing(setup: Setup) -> None:
    setup.insert(range(1, 4), random.Random(4))
    role = sql.Identifier(syncrole.role_name(NS, setup.name))
    setup.conn.execute(sql.SQL("REVOKE SELECT (lang) ON {} FROM {}").format(sql.Identifier(setup.table), role))
    code, summary = setup.run()
    assert code == 2 and summary["outcome"] == "Failed"
    assert f"table public.{setup.table}: column(s) lang not readable by this role" in summary["error"]
    setup.conn.execute(sql.SQL("REVOKE INSERT ON mlinfra.vector_sync_runs FROM {}").format(role))
    code, summary = setup.run()
    assert code == 2 and "mlinfra.vector_sync_runs do not exist or this role may not use them" in summary["error"]
    assert runs.last(setup.conn, NS, setup.name) is None and count(setup) == 0
