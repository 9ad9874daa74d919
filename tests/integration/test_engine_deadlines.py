"""Deadlines on real servers: the operator's PostgreSQL connections carry statement, lock and idle timeouts;
a frozen backend or postmaster ends in DeadlineExceeded instead of a hang; DDL behind a long transaction gives
up fast (and takes no lock when there is nothing to change); Neo4j graph transactions are ended by the
server; every engine's probe of an endpoint that accepts and never answers comes back in time."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
from collections.abc import Iterator
from typing import Any

import neo4j
import psycopg
import pytest

from mlinfra.api import featureview
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster, PostgresServer
from mlinfra.engines import connection, probe
from mlinfra.features import indexbuild, schema
from mlinfra.registry import lineage, migrate

Conn = psycopg.Connection[tuple[Any, ...]]


def info(server: PostgresServer, database: str = "postgres") -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine(
        "postgres", "127.0.0.1", server.password, port=server.port, database=database
    )


def show(conn: Conn, setting: str) -> str:
    row = conn.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture(scope="module")
def database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    name = f"deadlines_{secrets.token_hex(4)}"
    with postgres_cluster.primary.connect() as admin:
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    yield name
    with postgres_cluster.primary.connect() as admin:
        admin.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


# --- PostgreSQL: the timeouts every operator connection carries -------------------------------------------


def test_an_operator_connection_has_statement_lock_and_idle_timeouts(postgres_cluster: PostgresCluster) -> None:
    with connection.postgres(info(postgres_cluster.primary), "mlinfra-operator") as conn:
        assert show(conn, "statement_timeout") == "1min"
        assert show(conn, "lock_timeout") == "10s"
        assert show(conn, "idle_in_transaction_session_timeout") == "5min"


def test_a_sync_job_connection_has_no_server_timeouts(postgres_cluster: PostgresCluster) -> None:
    with connection.postgres(info(postgres_cluster.primary), timeouts=connection.JOB) as conn:
        assert [show(conn, s) for s in ("statement_timeout", "lock_timeout")] == ["0", "0"]


def test_a_statement_past_statement_timeout_fails_naming_it(postgres_cluster: PostgresCluster) -> None:
    limits = connection.PgTimeouts(statement=0.3)
    with (
        pytest.raises(connection.PostgresDeadlineExceeded, match="statement timeout"),
        connection.postgres(info(postgres_cluster.primary), timeouts=limits) as conn,
    ):
        conn.execute("SELECT pg_sleep(5)")


def test_a_frozen_backend_is_cut_by_the_client_deadline(
    postgres_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's statement_timeout cannot fire in a backend that does not run: the client's deadline does.
    monkeypatch.setattr(connection, "CLIENT_GRACE", 0.5)
    limits = connection.PgTimeouts(statement=0.5)
    with connection.postgres(info(postgres_cluster.primary), timeouts=limits) as conn:
        backend = conn.info.backend_pid
        os.kill(backend, signal.SIGSTOP)
        try:
            with pytest.raises(connection.PostgresDeadlineExceeded, match="did not answer within 1 s"):
                conn.execute("SELECT 1")
            assert conn.closed
        finally:
            os.kill(backend, signal.SIGCONT)


def test_a_frozen_postmaster_fails_the_connect_in_time(postgres_cluster: PostgresCluster) -> None:
    standby = postgres_cluster.standbys[0]
    standby.pause()
    try:
        with (
            pytest.raises(connection.PostgresDeadlineExceeded, match="no connection in time") as caught,
            connection.postgres(info(standby), connect_timeout=2),
        ):
            pass
        assert isinstance(caught.value, TimeoutError)
    finally:
        standby.resume()


# --- DDL never queues behind a long transaction -----------------------------------------------------------


def view_spec(table: str, *features: str) -> featureview.FeatureViewSpec:
    return featureview.FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": f, "type": "int64", "description": f"the {f}"} for f in features],
            "offline": {"storeRef": {"name": "offline"}, "table": table},
            "online": {"storeRef": {"name": "online"}},
        }
    )


@contextlib.contextmanager
def writer_in_a_long_transaction(server: PostgresServer, database: str, table: str) -> Iterator[Conn]:
    """A session that inserted a row and has not committed: it holds ROW EXCLUSIVE on the table (a sync
    run, an ingestion job)."""
    with server.connect(database, autocommit=False) as holder:
        holder.execute(
            psycopg.sql.SQL("INSERT INTO {} (user_id, event_timestamp) VALUES (1, now())").format(
                psycopg.sql.Identifier("public", table)
            )
        )
        yield holder
        holder.rollback()


def columns(server: PostgresServer, database: str, table: str) -> set[str]:
    with server.connect(database) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_ddl_blocked_by_a_long_transaction_gives_up_fast_and_changes_nothing(
    postgres_cluster: PostgresCluster, database: str
) -> None:
    primary, table = postgres_cluster.primary, f"ddl_{secrets.token_hex(3)}"
    with connection.postgres(info(primary, database), "mlinfra-operator") as conn:
        schema.ensure_offline_table(conn, view_spec(table, "clicks"), table)
    with writer_in_a_long_transaction(primary, database, table):
        with (
            pytest.raises(connection.PostgresDeadlineExceeded) as caught,
            connection.postgres(info(primary, database), "mlinfra-operator") as conn,
        ):
            schema.ensure_offline_table(conn, view_spec(table, "clicks", "views"), table)
        message = str(caught.value)
        assert f"table public.{table} is locked by another transaction" in message
        assert f"waited {schema.DDL_LOCK_TIMEOUT:g} s and gave up" in message
        # The ALTER did not stay queued: another writer gets in at once.
        with primary.connect(database) as other:
            other.execute("SET lock_timeout = '1s'")
            other.execute(
                psycopg.sql.SQL("INSERT INTO {} (user_id, event_timestamp) VALUES (2, now())").format(
                    psycopg.sql.Identifier("public", table)
                )
            )
    assert "views" not in columns(primary, database, table)
    # Once the long transaction is over, the same change goes through.
    with connection.postgres(info(primary, database), "mlinfra-operator") as conn:
        assert schema.ensure_offline_table(conn, view_spec(table, "clicks", "views"), table).added == ("views",)


def test_an_unchanged_table_is_reconciled_without_taking_a_lock(
    postgres_cluster: PostgresCluster, database: str
) -> None:
    # CREATE INDEX IF NOT EXISTS and COMMENT lock the table even when there is nothing to do: they are skipped.
    primary, table = postgres_cluster.primary, f"same_{secrets.token_hex(3)}"
    spec = view_spec(table, "clicks")
    with connection.postgres(info(primary, database), "mlinfra-operator") as conn:
        schema.ensure_offline_table(conn, spec, table)
    with (
        writer_in_a_long_transaction(primary, database, table),
        connection.postgres(info(primary, database), "mlinfra-operator") as conn,
    ):
        result = schema.ensure_offline_table(conn, spec, table)
    assert (result.created, result.added) == (False, ())


def indexes(server: PostgresServer, database: str, table: str) -> dict[str, bool]:
    """Index name -> valid, of ``public.table``."""
    with server.connect(database) as conn:
        rows = conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = to_regclass(%s)",
            (f"public.{table}",),
        ).fetchall()
    return {str(name): bool(valid) for name, valid in rows}


def preexisting_table(server: PostgresServer, database: str, table: str, rows: int) -> None:
    """A table of the view's shape made by someone else, without the operator's indexes, with data."""
    with server.connect(database) as conn:
        conn.execute(
            psycopg.sql.SQL(
                "CREATE TABLE {} (user_id bigint NOT NULL, clicks bigint, event_timestamp timestamptz NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now())"
            ).format(psycopg.sql.Identifier("public", table))
        )
        conn.execute(
            psycopg.sql.SQL(
                "INSERT INTO {} (user_id, clicks, event_timestamp) "
                "SELECT g, g, now() - g * interval '1 second' FROM generate_series(1, %s) g"
            ).format(psycopg.sql.Identifier("public", table)),
            (rows,),
        )


def test_an_adopted_table_is_indexed_concurrently_while_writers_go_on(
    postgres_cluster: PostgresCluster, database: str
) -> None:
    # A plain CREATE INDEX on an existing table holds a SHARE lock for the whole build: every writer waits.
    primary, table = postgres_cluster.primary, f"adopt_{secrets.token_hex(3)}"
    preexisting_table(primary, database, table, 20_000)
    spec = view_spec(table, "clicks")
    with writer_in_a_long_transaction(primary, database, table):
        with connection.postgres(info(primary, database), "mlinfra-operator") as conn:
            result = schema.ensure_offline_table(conn, spec, table)
        # The build did not start behind the open writer: nothing left behind, tried again later.
        assert result.indexes_built == ()
        assert set(result.indexes_pending) == {
            f"{table}_entity_event_idx",
            f"{table}_created_at_idx",
            f"{table}_event_idx",
        }
        assert result.pending_why == schema.BUSY
        assert indexes(primary, database, table) == {}
        # Other writers were never queued behind it.
        with primary.connect(database) as other:
            other.execute("SET lock_timeout = '1s'")
            other.execute(
                psycopg.sql.SQL("INSERT INTO {} (user_id, event_timestamp) VALUES (2, now())").format(
                    psycopg.sql.Identifier("public", table)
                )
            )
    with connection.postgres(info(primary, database), "mlinfra-operator") as conn:
        result = schema.ensure_offline_table(conn, spec, table)
        assert result.indexes_pending == () and len(result.indexes_built) == 3
        assert indexes(primary, database, table) == dict.fromkeys(result.indexes_built, True)
        # The freshness timer's max(event_timestamp) reads the index, not the table.
        plan = conn.execute(
            psycopg.sql.SQL("EXPLAIN SELECT max(event_timestamp) FROM {}").format(
                psycopg.sql.Identifier("public", table)
            )
        ).fetchall()
        assert f"{table}_event_idx" in "\n".join(str(r[0]) for r in plan)
        assert schema.ensure_offline_table(conn, spec, table).indexes_built == ()  # nothing left to do


def test_an_invalid_index_left_by_a_failed_build_is_rebuilt(postgres_cluster: PostgresCluster, database: str) -> None:
    primary, table = postgres_cluster.primary, f"invalid_{secrets.token_hex(3)}"
    preexisting_table(primary, database, table, 100)
    with primary.connect(database) as conn:
        # A unique index build that fails on duplicates leaves an invalid index of that name behind.
        conn.execute(
            psycopg.sql.SQL(
                "INSERT INTO {} (user_id, event_timestamp) SELECT 1, event_timestamp FROM {} LIMIT 1"
            ).format(psycopg.sql.Identifier("public", table), psycopg.sql.Identifier("public", table))
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                psycopg.sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY {} ON {} (event_timestamp)").format(
                    psycopg.sql.Identifier(f"{table}_event_idx"), psycopg.sql.Identifier("public", table)
                )
            )
    assert indexes(primary, database, table) == {f"{table}_event_idx": False}
    with connection.postgres(info(primary, database), "mlinfra-operator") as conn:
        result = schema.ensure_offline_table(conn, view_spec(table, "clicks"), table)
    assert f"{table}_event_idx" in result.indexes_built
    assert set(indexes(primary, database, table).values()) == {True}


def test_a_build_behind_an_old_snapshot_gives_up_and_leaves_no_index(
    postgres_cluster: PostgresCluster, database: str
) -> None:
    # A CONCURRENTLY build ends by waiting for every transaction of the database that is older than it (a
    # long sync run reading another table): past the lock timeout it gives up and drops what it built.
    primary, table = postgres_cluster.primary, f"snap_{secrets.token_hex(3)}"
    preexisting_table(primary, database, table, 1_000)
    quick = schema.IndexBuild(max_bytes=None, lock_timeout=1.0)
    with primary.connect(database, autocommit=False) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM pg_class").fetchone()  # the snapshot is taken
        with connection.postgres(info(primary, database), "mlinfra-operator") as conn:
            result = schema.ensure_offline_table(conn, view_spec(table, "clicks"), table, indexes=quick)
        assert result.indexes_built == () and len(result.indexes_pending) == 3
        assert result.pending_why == schema.BUSY
        assert indexes(primary, database, table) == {}
        reader.rollback()
    with connection.postgres(info(primary, database), "mlinfra-operator") as conn:
        assert len(schema.ensure_offline_table(conn, view_spec(table, "clicks"), table).indexes_built) == 3


def test_a_table_too_large_for_the_reconcile_is_indexed_by_the_operator_in_the_background(
    postgres_cluster: PostgresCluster, database: str
) -> None:
    # Not by the sync Job: its role may only read the table (features.syncrole); building an index needs the
    # table's ownership. The reconcile returns at once; the operator's own connection, without a statement
    # timeout, builds them.
    primary, table = postgres_cluster.primary, f"large_{secrets.token_hex(3)}"
    preexisting_table(primary, database, table, 2_000)
    spec = view_spec(table, "clicks")
    small = schema.IndexBuild(max_bytes=8192, lock_timeout=schema.DDL_LOCK_TIMEOUT)
    admin = info(primary, database)
    with connection.postgres(admin, "mlinfra-operator") as conn:
        result = schema.ensure_offline_table(conn, spec, table, indexes=small)
    assert len(result.indexes_pending) == 3 and result.large and "in the background" in result.pending_why
    assert indexes(primary, database, table) == {}
    build = indexbuild.start(admin, spec, table)
    assert build is not None
    build.join(timeout=120)
    assert not build.is_alive()
    assert set(indexes(primary, database, table)) == set(result.indexes_pending)
    assert set(indexes(primary, database, table).values()) == {True}
    with connection.postgres(admin, "mlinfra-operator") as conn:
        after = schema.ensure_offline_table(conn, spec, table, indexes=small)
    assert (after.indexes_pending, after.large) == ((), False)


def test_a_migration_blocked_by_a_long_transaction_gives_up_naming_the_file(
    postgres_cluster: PostgresCluster, database: str
) -> None:
    primary, table = postgres_cluster.primary, f"mig_{secrets.token_hex(3)}"
    with primary.connect(database) as admin:
        admin.execute(psycopg.sql.SQL("CREATE TABLE {} (a int)").format(psycopg.sql.Identifier(table)))
    step = migrate.Migration(1, "add_column", f"ALTER TABLE {table} ADD COLUMN b int")
    with primary.connect(database, autocommit=False) as holder:
        holder.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (1)").format(psycopg.sql.Identifier(table)))
        with (
            pytest.raises(connection.PostgresDeadlineExceeded, match=r"migration 0001_add_column\.sql waited 0\.5 s"),
            connection.postgres(info(primary, database), "mlinfra-operator") as conn,
        ):
            migrate.apply(conn, migrations=[step], ddl_lock_timeout_seconds=0.5)
        holder.rollback()
    with connection.postgres(info(primary, database), "mlinfra-operator") as conn:
        assert migrate.applied_version(conn) == 0
        assert migrate.apply(conn, migrations=[step]) == 1
        conn.execute(psycopg.sql.SQL("DROP SCHEMA registry CASCADE"))


# --- Neo4j: the server ends a graph transaction that runs past its timeout --------------------------------


def test_a_lineage_write_blocked_on_a_locked_node_is_ended_by_its_transaction_timeout(
    neo4j_server: Neo4jServer,
) -> None:
    node_id = 900_000 + secrets.randbelow(100_000)
    event = lineage.Event(1, "registered_models.update", {"id": node_id, "name": "m", "description": None}, None)
    with neo4j_server.driver() as driver, driver.session() as holder_session:
        lineage.ensure_schema(driver)  # the unique constraint: a second MERGE of the id waits for the first
        holder = holder_session.begin_transaction()
        try:
            holder.run("MERGE (m:Model {registry: 'ml/deadlines', id: $id}) SET m.name = 'held'", id=node_id).consume()
            with pytest.raises(neo4j.exceptions.Neo4jError) as caught:
                lineage.write_events(driver, [event], tx_timeout=1, registry="ml/deadlines")
            assert "Timed" in (caught.value.code or "") or "timeout" in str(caught.value).lower()
        finally:
            holder.rollback()
        # The lock gone, the same write goes through.
        lineage.write_events(driver, [event], tx_timeout=5, registry="ml/deadlines")
        driver.execute_query("MATCH (m:Model {registry: 'ml/deadlines', id: $id}) DETACH DELETE m", id=node_id)


# --- every engine's probe of an endpoint that accepts and never answers -----------------------------------


@pytest.fixture(scope="module")
def tarpit() -> Iterator[int]:
    """A port whose connections the kernel completes and nobody ever reads or answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield int(server.getsockname()[1])


@pytest.mark.parametrize("engine", ["postgres", "redis", "neo4j", "qdrant"])
def test_a_probe_of_an_endpoint_that_never_answers_reports_a_timeout(engine: connection.Engine, tarpit: int) -> None:
    conn = connection.ConnectionInfo.for_engine(engine, "127.0.0.1", "not-a-secret-pw", port=tarpit)
    obs = probe.probe(conn, timeout=1.0)
    assert not obs.reachable and obs.error is not None
    assert "time" in obs.error.lower(), obs.error  # timeout, timed out, deadline (...timeout=1.0)
    assert "not-a-secret-pw" not in obs.error
