"""registry.migrate and registry.roles on a real PostgreSQL: from empty and from every intermediate version,
re-runs, tampering, downgrades, concurrent appliers, and the privileges of the two roles."""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from mlinfra import problems
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.registry import migrate, roles

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def new_database(postgres_cluster: PostgresCluster) -> Iterator[Callable[[], str]]:
    """Creates empty databases on demand; drops them afterwards."""
    created: list[str] = []

    def make() -> str:
        name = f"registry_{secrets.token_hex(4)}"
        with postgres_cluster.primary.connect() as admin:
            admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        created.append(name)
        return name

    yield make
    with postgres_cluster.primary.connect() as admin:
        for name in created:
            admin.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


@pytest.fixture
def db(postgres_cluster: PostgresCluster, new_database: Callable[[], str]) -> Iterator[tuple[str, Conn]]:
    name = new_database()
    with postgres_cluster.primary.connect(name) as conn:
        yield name, conn


def schema_snapshot(conn: Conn) -> set[tuple[str, ...]]:
    """Tables, columns, indexes and triggers of schema registry: what a migration path must agree on."""
    cols = conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'registry'"
    ).fetchall()
    idx = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'registry'").fetchall()
    trg = conn.execute(
        "SELECT tgname, tgrelid::regclass::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'registry' AND NOT tgisinternal"
    ).fetchall()
    return {("col", *map(str, r)) for r in cols} | {("idx", *r) for r in idx} | {("trg", *r) for r in trg}


def test_from_empty_to_latest_and_rerun_is_noop(db: tuple[str, Conn]) -> None:
    _, conn = db
    latest = migrate.latest_version()
    assert latest >= 2
    assert migrate.applied_version(conn) == 0
    assert migrate.apply(conn) == latest
    rows = conn.execute("SELECT version, name, checksum FROM registry.schema_migrations ORDER BY version").fetchall()
    assert [(v, n, c) for v, n, c in rows] == [(m.version, m.name, m.checksum) for m in migrate.shipped()]
    before = schema_snapshot(conn)
    stamps = conn.execute("SELECT applied_at FROM registry.schema_migrations ORDER BY version").fetchall()
    assert migrate.apply(conn, "latest") == latest
    assert migrate.apply(conn, latest) == latest
    assert schema_snapshot(conn) == before
    assert conn.execute("SELECT applied_at FROM registry.schema_migrations ORDER BY version").fetchall() == stamps


def test_from_every_intermediate_version(postgres_cluster: PostgresCluster, new_database: Callable[[], str]) -> None:
    latest = migrate.latest_version()
    with postgres_cluster.primary.connect(new_database()) as ref:
        migrate.apply(ref)
        expected = schema_snapshot(ref)
    for start in range(1, latest):
        with postgres_cluster.primary.connect(new_database()) as conn:
            assert migrate.apply(conn, start) == start
            assert migrate.applied_version(conn) == start
            assert migrate.apply(conn, "latest") == latest
            assert schema_snapshot(conn) == expected, f"path from {start} differs"


def test_pinned_version_stops_there(db: tuple[str, Conn]) -> None:
    _, conn = db
    assert migrate.apply(conn, 1) == 1
    cols = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'registry' AND table_name = 'deployments'"
        ).fetchall()
    }
    assert "retired_at" not in cols
    assert migrate.apply(conn, 2) == 2


def test_downgrade_and_unknown_target_are_invalid_spec(db: tuple[str, Conn]) -> None:
    _, conn = db
    migrate.apply(conn, 2)
    with pytest.raises(problems.ProblemError) as err:
        migrate.apply(conn, 1)
    assert err.value.problem.reason == problems.INVALID_SPEC
    assert "never downgrade" in err.value.problem.message
    with pytest.raises(problems.ProblemError) as err:
        migrate.apply(conn, migrate.latest_version() + 1)
    assert err.value.problem.reason == problems.INVALID_SPEC
    assert migrate.applied_version(conn) == 2


def test_tampered_migration_is_refused(db: tuple[str, Conn]) -> None:
    _, conn = db
    migrate.apply(conn, 1)
    shipped = migrate.shipped()
    tampered = [dataclasses.replace(shipped[0], sql=shipped[0].sql + "\n-- edited\n"), *shipped[1:]]
    with pytest.raises(problems.ProblemError) as err:
        migrate.apply(conn, "latest", migrations=tampered)
    assert err.value.problem.reason == migrate.MIGRATION_CHECKSUM_MISMATCH
    assert err.value.problem.stalled
    assert "0001_core.sql" in err.value.problem.message
    assert migrate.applied_version(conn) == 1  # nothing applied after the refusal


def test_failing_migration_rolls_back_whole(db: tuple[str, Conn]) -> None:
    _, conn = db
    broken = [*migrate.shipped(), migrate.Migration(99, "broken", "CREATE TABLE registry.x (a int); SELECT 1/0;")]
    broken[-1] = dataclasses.replace(broken[-1], version=len(broken))
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate.apply(conn, "latest", migrations=broken)
    assert migrate.applied_version(conn) == len(broken) - 1
    assert conn.execute("SELECT to_regclass('registry.x')").fetchone() == (None,)


def test_concurrent_appliers_serialise(postgres_cluster: PostgresCluster, new_database: Callable[[], str]) -> None:
    name = new_database()
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            with postgres_cluster.primary.connect(name) as conn:
                barrier.wait(timeout=30)
                results.append(migrate.apply(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results == [migrate.latest_version()] * 2
    with postgres_cluster.primary.connect(name) as conn:
        count = conn.execute("SELECT count(*) FROM registry.schema_migrations").fetchone()
        assert count == (migrate.latest_version(),)


def test_applier_waits_for_the_advisory_lock(db: tuple[str, Conn], postgres_cluster: PostgresCluster) -> None:
    name, conn = db
    with postgres_cluster.primary.connect(name, autocommit=False) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (migrate.LOCK_KEY,))
        with pytest.raises(psycopg.errors.LockNotAvailable):
            migrate.apply(conn, lock_timeout_seconds=0.5)
        holder.rollback()
    assert migrate.applied_version(conn) == 0
    assert migrate.apply(conn) == migrate.latest_version()


# -- roles -------------------------------------------------------------------------------------------------


@pytest.fixture
def with_roles(db: tuple[str, Conn], postgres_cluster: PostgresCluster) -> Iterator[dict[str, Any]]:
    name, conn = db
    migrate.apply(conn)
    suffix = secrets.token_hex(3)
    creds = {"writer": (f"w_{suffix}", secrets.token_urlsafe(16)), "reader": (f"r_{suffix}", secrets.token_urlsafe(16))}
    roles.ensure_roles(conn, name, *creds["writer"], *creds["reader"])
    yield {"db": name, "admin": conn, **creds}
    with postgres_cluster.primary.connect(name) as admin:
        for role, _ in (creds["writer"], creds["reader"]):
            admin.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(role)))
            admin.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


def login(cluster: PostgresCluster, db: str, user: str, password: str) -> Conn:
    return psycopg.connect(cluster.primary.dsn(db, user=user, password=password), autocommit=True)


def test_writer_writes_and_triggers_record(with_roles: dict[str, Any], postgres_cluster: PostgresCluster) -> None:
    with login(postgres_cluster, with_roles["db"], *with_roles["writer"]) as w:
        w.execute("INSERT INTO registry.registered_models (name) VALUES ('churn')")
        w.execute(
            "INSERT INTO registry.model_versions (model_id, version) SELECT id, 1 FROM registry.registered_models"
        )
        w.execute("UPDATE registry.model_versions SET stage = 'production'")
        w.execute("INSERT INTO registry.datasets (name) VALUES ('events')")
        w.execute("DELETE FROM registry.datasets")
        actors = w.execute("SELECT DISTINCT actor FROM registry.audit_log").fetchall()
        assert actors == [(with_roles["writer"][0],)]
        assert w.execute("SELECT count(*) FROM registry.outbox").fetchone() == (5,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute("INSERT INTO registry.audit_log (actor, table_name, operation) VALUES ('x', 'y', 'INSERT')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute("UPDATE registry.outbox SET processed_at = now()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute("CREATE TABLE registry.mine (a int)")


@pytest.mark.parametrize("who", ["writer", "reader"])
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE registry.audit_log SET actor = 'someone else'",
        "DELETE FROM registry.audit_log",
        "TRUNCATE registry.audit_log",
    ],
)
def test_nobody_changes_the_audit_log(
    with_roles: dict[str, Any], postgres_cluster: PostgresCluster, who: str, statement: str
) -> None:
    with login(postgres_cluster, with_roles["db"], *with_roles["writer"]) as w:
        w.execute("INSERT INTO registry.registered_models (name) VALUES ('m')")
    with login(postgres_cluster, with_roles["db"], *with_roles[who]) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            c.execute(statement)
        assert "permission denied" in str(err.value)
    admin = with_roles["admin"]
    # Not even the owner: the trigger raises for everyone.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        admin.execute(statement)
    assert admin.execute("SELECT count(*) FROM registry.audit_log").fetchone() == (1,)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO registry.registered_models (name) VALUES ('nope')",
        "UPDATE registry.registered_models SET description = 'x'",
        "DELETE FROM registry.model_versions",
        "INSERT INTO registry.outbox (event_type, payload) VALUES ('x', '{}')",
        "CREATE TABLE registry.t (a int)",
    ],
)
def test_reader_cannot_write(with_roles: dict[str, Any], postgres_cluster: PostgresCluster, statement: str) -> None:
    with login(postgres_cluster, with_roles["db"], *with_roles["reader"]) as r:
        assert r.execute("SELECT count(*) FROM registry.registered_models").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            r.execute(statement)


def test_ensure_roles_is_idempotent_and_rotates_passwords(
    with_roles: dict[str, Any], postgres_cluster: PostgresCluster
) -> None:
    admin, db_name = with_roles["admin"], with_roles["db"]
    (writer, old_pw), (reader, reader_pw) = with_roles["writer"], with_roles["reader"]
    new_pw = secrets.token_urlsafe(16)
    roles.ensure_roles(admin, db_name, writer, new_pw, reader, reader_pw)
    roles.ensure_roles(admin, db_name, writer, new_pw, reader, reader_pw)
    with pytest.raises(psycopg.OperationalError):
        login(postgres_cluster, db_name, writer, old_pw).close()
    with login(postgres_cluster, db_name, writer, new_pw) as w:
        w.execute("INSERT INTO registry.registered_models (name) VALUES ('rotated')")
    with login(postgres_cluster, db_name, reader, reader_pw) as r:
        assert r.execute("SELECT name FROM registry.registered_models").fetchall() == [("rotated",)]


def test_a_registry_schema_the_operator_did_not_make_is_refused_and_left_alone(db: tuple[str, Conn]) -> None:
    name, conn = db
    conn.execute("CREATE SCHEMA registry")
    conn.execute("CREATE TABLE registry.registered_models (id bigint PRIMARY KEY, owner text)")
    conn.execute("INSERT INTO registry.registered_models VALUES (1, 'someone')")
    before = schema_snapshot(conn)
    with pytest.raises(migrate.ForeignSchema, match=f"database '{name}' already has a schema named registry"):
        migrate.apply(conn)
    assert schema_snapshot(conn) == before
    assert conn.execute("SELECT count(*) FROM registry.registered_models").fetchone() == (1,)
