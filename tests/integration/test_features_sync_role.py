"""A FeatureView's sync role on real PostgreSQL (+ Redis for the runs): it materializes its own view — the
library call and the sync command as a process, with the connection-Secret format the Job mounts — and can do
nothing else: no other view's table, no other view's bookkeeping rows (row level security), no DDL; its
password never reaches the server's log; a role of its name made by someone else is refused and untouched."""

from __future__ import annotations

import datetime
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from mlinfra.api import featureview
from mlinfra.devenv import secretscan
from mlinfra.devenv.postgres import PostgresCluster, PostgresServer
from mlinfra.devenv.redis import RedisCluster
from mlinfra.engines import connection, pg_roles
from mlinfra.features import claim, layout, materialize, schema, sync_cli, syncrole
from mlinfra.stores import credentials

pytestmark = pytest.mark.integration

NS = "sync-role"
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
Conn = psycopg.Connection[tuple[Any, ...]]


def spec_of(table: str, *features: str, schema_name: str | None = None) -> featureview.FeatureViewSpec:
    return featureview.FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": f, "type": "int64"} for f in features or ("clicks",)],
            "offline": {"storeRef": {"name": "pg"}, "table": table, **({"schema": schema_name} if schema_name else {})},
            "online": {"storeRef": {"name": "kv"}},
        }
    )


def admin_info(server: PostgresServer, database: str) -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine(
        "postgres", "127.0.0.1", server.password, port=server.port, database=database
    )


@pytest.fixture(scope="module")
def database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    name = f"syncrole_{secrets.token_hex(4)}"
    with postgres_cluster.primary.connect() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with postgres_cluster.primary.connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        # Roles are server-wide: whatever a test left of this module's goes with the database.
        for (role,) in admin.execute(
            "SELECT rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') LIKE %s",
            (f"{syncrole.COMMENT_PREFIX}{NS}/%",),
        ).fetchall():
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def admin(postgres_cluster: PostgresCluster, database: str) -> Iterator[Conn]:
    with connection.postgres(admin_info(postgres_cluster.primary, database), "mlinfra-operator") as conn:
        yield conn


@pytest.fixture
def rds(redis_cluster: RedisCluster) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=redis_cluster.primary.port, password=redis_cluster.password)
    yield client
    client.close()


class View:
    """A view as the reconcile leaves it: table, bookkeeping, claim, sync role (its password tracked)."""

    def __init__(self, admin: Conn, server: PostgresServer, database: str, *features: str) -> None:
        self.name = f"fv-{secrets.token_hex(4)}"
        self.table = self.name.replace("-", "_")
        self.spec = spec_of(self.table, *features)
        self.admin, self.server, self.database = admin, server, database
        self.password = credentials.new_password()
        secretscan.track(self.password)
        self.reconcile()

    def reconcile(self) -> str:
        schema.ensure_bookkeeping(self.admin)
        claim.claim(self.admin, "public", self.table, f"{NS}/{self.name}")
        schema.ensure_offline_table(self.admin, self.spec, self.name)
        self.role = syncrole.ensure(self.admin, self.database, self.spec, NS, self.name, self.password)
        return self.role

    @property
    def info(self) -> connection.ConnectionInfo:
        return connection.ConnectionInfo.for_engine(
            "postgres", "127.0.0.1", self.password, port=self.server.port, database=self.database, username=self.role
        )

    def connect(self) -> Any:
        return connection.postgres(self.info, timeouts=connection.JOB)

    def insert(self, rows: list[tuple[int, int, float]]) -> None:
        with self.admin.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {} (user_id, clicks, event_timestamp) VALUES (%s, %s, %s)").format(
                    sql.Identifier("public", self.table)
                ),
                [(uid, clicks, NOW - datetime.timedelta(minutes=age)) for uid, clicks, age in rows],
            )


def denied(conn: Conn, statement: str | sql.Composable, params: Any = None) -> str:
    """The error of a statement the role may not run (the connection stays usable)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute(statement, params)
    return str(caught.value)


def test_the_role_materializes_its_view(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, rds: redis.Redis
) -> None:
    view = View(admin, postgres_cluster.primary, database)
    view.insert([(1, 10, 30), (1, 11, 20), (2, 5, 10)])
    with view.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (view.role,)
        result = materialize.materialize(view.spec, conn, rds, NS, view.name)
        assert (result.outcome, result.rows) == ("Succeeded", 2)
        view.insert([(3, 7, 5)])
        # Incremental (no overlap): only the new row, so the role read its watermark back.
        again = materialize.materialize(view.spec, conn, rds, NS, view.name, overlap=datetime.timedelta(0))
        assert again.rows == 1
    assert rds.hget(layout.online_key(NS, view.name, [1]), "clicks") == b"11"
    outcomes = admin.execute(
        sql.SQL("SELECT outcome FROM {} WHERE namespace = %s AND view = %s ORDER BY id").format(
            sql.Identifier("mlinfra", "sync_runs")
        ),
        (NS, view.name),
    ).fetchall()
    assert outcomes == [("Succeeded",), ("Succeeded",)]
    # A role, not a superuser: no attribute beyond LOGIN.
    attrs = admin.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin FROM pg_roles "
        "WHERE rolname = %s",
        (view.role,),
    ).fetchone()
    assert attrs == (False, False, False, False, False, True)


def test_the_sync_command_runs_with_the_mounted_role_secret(
    admin: Conn, postgres_cluster: PostgresCluster, redis_cluster: RedisCluster, database: str, tmp_path: Path
) -> None:
    """The Job's command as a process, reading the offline connection from a directory in the connection-Secret
    format (what the view's Secret mounts), with the role's user name and password."""
    view = View(admin, postgres_cluster.primary, database)
    view.insert([(1, 10, 30), (2, 5, 10)])
    dirs = {}
    online = connection.ConnectionInfo.for_engine(
        "redis", "127.0.0.1", redis_cluster.password, port=redis_cluster.primary.port
    )
    for what, info in (("offline", view.info), ("online", online)):
        dirs[what] = tmp_path / what
        dirs[what].mkdir()
        for key, value in info.to_secret_data().items():
            (dirs[what] / key).write_text(value)
    env = {
        **os.environ,
        sync_cli.SPEC_ENV: json.dumps(view.spec.model_dump(mode="json", by_alias=True, exclude_none=True)),
        sync_cli.OFFLINE_DIR_ENV: str(dirs["offline"]),
        sync_cli.ONLINE_DIR_ENV: str(dirs["online"]),
    }
    env.pop("KUBECONFIG", None)
    run = subprocess.run(
        [sys.executable, "-m", "mlinfra", "sync", "featureview", f"{NS}/{view.name}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert (summary["outcome"], summary["rows"]) == ("Succeeded", 2)
    assert view.password not in run.stdout + run.stderr


def test_the_role_cannot_read_another_views_table_nor_a_column_it_does_not_sync(
    admin: Conn, postgres_cluster: PostgresCluster, database: str
) -> None:
    mine = View(admin, postgres_cluster.primary, database, "clicks", "views")
    other = View(admin, postgres_cluster.primary, database)
    other.insert([(1, 99, 1)])
    with mine.connect() as conn:
        assert "permission denied" in denied(conn, sql.SQL("SELECT * FROM {}").format(sql.Identifier(other.table)))
        conn.execute(sql.SQL("SELECT user_id, clicks, views FROM {}").format(sql.Identifier(mine.table)))
        assert "permission denied" in denied(
            conn,
            sql.SQL("INSERT INTO {} (user_id, event_timestamp) VALUES (1, now())").format(sql.Identifier(mine.table)),
        )
    # A removed feature's column stays in the table (users' data) and is no longer the role's to read.
    mine.spec = spec_of(mine.table, "clicks")
    mine.reconcile()
    with mine.connect() as conn:
        conn.execute(sql.SQL("SELECT user_id, clicks FROM {}").format(sql.Identifier(mine.table)))
        assert "permission denied" in denied(conn, sql.SQL("SELECT views FROM {}").format(sql.Identifier(mine.table)))


def test_the_role_sees_and_writes_only_its_own_bookkeeping_rows(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, rds: redis.Redis
) -> None:
    mine = View(admin, postgres_cluster.primary, database)
    other = View(admin, postgres_cluster.primary, database)
    for view in (mine, other):
        view.insert([(1, 10, 5)])
        with view.connect() as conn:
            materialize.materialize(view.spec, conn, rds, NS, view.name)
    runs, marks = sql.Identifier("mlinfra", "sync_runs"), sql.Identifier("mlinfra", "watermarks")
    with mine.connect() as conn:
        for table in (runs, marks):
            views = conn.execute(sql.SQL("SELECT DISTINCT namespace, view FROM {}").format(table)).fetchall()
            assert views == [(NS, mine.name)]
        # Another view's rows: invisible to UPDATE and DELETE, refused to INSERT.
        changed = conn.execute(
            sql.SQL("UPDATE {} SET outcome = 'Failed' WHERE view = %s").format(runs), (other.name,)
        ).rowcount
        assert changed == 0
        assert "row-level security" in denied(
            conn,
            sql.SQL("INSERT INTO {} (namespace, view, start_time, outcome) VALUES (%s, %s, now(), 'Succeeded')").format(
                runs
            ),
            (NS, other.name),
        )
        assert "row-level security" in denied(
            conn, sql.SQL("INSERT INTO {} (namespace, view) VALUES (%s, %s)").format(marks), (NS, other.name)
        )
        assert "permission denied" in denied(  # the key columns are not the role's to change
            conn, sql.SQL("UPDATE {} SET view = %s WHERE view = %s").format(marks), (other.name, mine.name)
        )
        moved = conn.execute(
            sql.SQL("UPDATE {} SET watermark = now() WHERE view = %s").format(marks), (other.name,)
        ).rowcount
        assert moved == 0
        assert "permission denied" in denied(conn, sql.SQL("DELETE FROM {}").format(runs))
        assert "permission denied" in denied(conn, sql.SQL("TRUNCATE {}").format(marks))
        assert "permission denied" in denied(conn, "SELECT * FROM mlinfra.offline_tables")
    (state,) = admin.execute(sql.SQL("SELECT outcome FROM {} WHERE view = %s").format(runs), (other.name,)).fetchall()
    assert state == ("Succeeded",)


def test_the_role_cannot_create_or_alter_anything(
    admin: Conn, postgres_cluster: PostgresCluster, database: str
) -> None:
    view = View(admin, postgres_cluster.primary, database)
    table = sql.Identifier(view.table)
    with view.connect() as conn:
        for statement in (
            "CREATE TABLE public.stolen (a int)",
            "CREATE TABLE mlinfra.stolen (a int)",
            "CREATE SCHEMA stolen",
            sql.SQL("CREATE INDEX stolen_idx ON {} (user_id)").format(table),
            sql.SQL("ALTER TABLE {} ADD COLUMN stolen int").format(table),
            sql.SQL("DROP TABLE {}").format(table),
            "ALTER TABLE mlinfra.sync_runs DISABLE ROW LEVEL SECURITY",
            sql.SQL("CREATE ROLE stolen"),
            sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(table),
        ):
            message = denied(conn, statement)
            assert "permission denied" in message or "must be owner" in message, message


def test_the_job_runs_no_ddl_and_says_what_is_missing(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, rds: redis.Redis
) -> None:
    view = View(admin, postgres_cluster.primary, database)
    # A feature the reconcile has not added yet (the Job's spec is newer than the table).
    newer = spec_of(view.table, "clicks", "views")
    with view.connect() as conn, pytest.raises(schema.NotReady, match=r"column\(s\) views missing or not readable"):
        materialize.materialize(newer, conn, rds, NS, view.name)
    admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(view.table)))
    with view.connect() as conn, pytest.raises(schema.NotReady, match="does not exist or this role may not read it"):
        materialize.materialize(view.spec, conn, rds, NS, view.name)
    assert admin.execute("SELECT to_regclass(%s)", (f"public.{view.table}",)).fetchone() == (None,)


def test_a_changed_table_takes_the_old_tables_grants_away(
    admin: Conn, postgres_cluster: PostgresCluster, database: str
) -> None:
    view = View(admin, postgres_cluster.primary, database)
    old = view.table
    view.table = f"{old}_v2"
    view.spec = spec_of(view.table, schema_name="feats")
    view.reconcile()
    with view.connect() as conn:
        conn.execute(sql.SQL("SELECT clicks FROM {}").format(sql.Identifier("feats", view.table)))
        assert "permission denied" in denied(conn, sql.SQL("SELECT clicks FROM {}").format(sql.Identifier(old)))
    schemas = admin.execute(
        "SELECT nspname FROM pg_namespace WHERE has_schema_privilege(%s, oid, 'USAGE') AND nspname IN "
        "('public', 'feats', 'mlinfra')",
        (view.role,),
    ).fetchall()
    assert sorted(s for (s,) in schemas) == ["feats", "mlinfra", "public"]  # public: PUBLIC's own USAGE


def test_the_password_never_reaches_the_server_log(
    admin: Conn, postgres_cluster: PostgresCluster, database: str
) -> None:
    admin.execute("SET log_statement = 'all'")
    view = View(admin, postgres_cluster.primary, database)
    view.password = credentials.new_password()  # rotated: the role's password is set again
    secretscan.track(view.password)
    view.reconcile()
    with view.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    log = (postgres_cluster.primary.workdir / "postgres.log").read_text(errors="replace")
    assert f"ALTER ROLE {view.role}" in log or f'ALTER ROLE "{view.role}"' in log  # the statements were logged
    assert view.password not in log


def test_a_role_of_that_name_made_by_someone_else_is_refused_and_untouched(
    admin: Conn, postgres_cluster: PostgresCluster, database: str
) -> None:
    name = f"fv-{secrets.token_hex(4)}"
    role = syncrole.role_name(NS, name)
    theirs = credentials.new_password()
    secretscan.track(theirs)
    admin.execute(
        sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(sql.Identifier(role), sql.Literal(theirs))
    )
    try:
        spec = spec_of(name.replace("-", "_"))
        schema.ensure_bookkeeping(admin)
        schema.ensure_offline_table(admin, spec, name)
        with pytest.raises(pg_roles.RoleConflict, match="made outside the operator"):
            syncrole.ensure(admin, database, spec, NS, name, credentials.new_password())
        assert not syncrole.drop(admin, NS, name)  # not the view's: never dropped
        assert admin.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s", (role,)).fetchone() == (True,)
        info = connection.ConnectionInfo.for_engine(
            "postgres", "127.0.0.1", theirs, port=postgres_cluster.primary.port, database=database, username=role
        )
        with connection.postgres(info) as conn:  # its password is still its owner's
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        policies = admin.execute("SELECT count(*) FROM pg_policies WHERE policyname = %s", (role,)).fetchone()
        assert policies == (0,)
    finally:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_deletion_drops_the_role_and_its_policies_and_keeps_the_data(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, rds: redis.Redis
) -> None:
    view = View(admin, postgres_cluster.primary, database)
    view.insert([(1, 10, 5)])
    with view.connect() as conn:
        materialize.materialize(view.spec, conn, rds, NS, view.name)
    assert syncrole.drop(admin, NS, view.name)
    assert admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (view.role,)).fetchone() is None
    assert admin.execute("SELECT count(*) FROM pg_policies WHERE policyname = %s", (view.role,)).fetchone() == (0,)
    assert admin.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(view.table))).fetchone() == (1,)
    assert admin.execute("SELECT count(*) FROM mlinfra.watermarks WHERE view = %s", (view.name,)).fetchone() == (1,)
    assert not syncrole.drop(admin, NS, view.name)  # gone: nothing to do
    # The view created again gets its role back, with a new password.
    view.password = credentials.new_password()
    secretscan.track(view.password)
    view.reconcile()
    with view.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (view.role,)


def test_role_names_are_bounded_and_distinct_from_the_registrys() -> None:
    long_ns, long_name = "n" * 63, "v" * 253
    assert len(syncrole.role_name(long_ns, long_name).encode()) <= 63
    assert syncrole.role_name("team-x", "models") != syncrole.role_name("team", "x-models")
    assert syncrole.role_name("a", "b") not in {pg_roles.role_name("a", "b", k) for k in ("writer", "reader")}
    assert syncrole.secret_name("v" * 253).endswith("-sync-offline") and len(syncrole.secret_name("v" * 253)) <= 253


def test_a_table_created_again_by_hand_loses_the_grants_until_they_are_given_again(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, rds: redis.Redis
) -> None:
    view = View(admin, postgres_cluster.primary, database)
    assert syncrole.in_place(admin, view.spec, NS, view.name)
    table = sql.Identifier("public", view.table)
    copy = sql.Identifier("public", f"{view.table}_copy")
    admin.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(copy, table))
    admin.execute(sql.SQL("DROP TABLE {}").format(table))
    admin.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(copy, sql.Identifier(view.table)))
    assert not syncrole.in_place(admin, view.spec, NS, view.name)
    view.insert([(1, 10, 5)])
    with view.connect() as conn, pytest.raises(schema.NotReady, match="not readable by this role"):
        materialize.materialize(view.spec, conn, rds, NS, view.name)
    syncrole.ensure(admin, database, view.spec, NS, view.name, view.password)  # what the observation does
    assert syncrole.in_place(admin, view.spec, NS, view.name)
    with view.connect() as conn:
        assert materialize.materialize(view.spec, conn, rds, NS, view.name).rows == 1


def test_views_reconciled_at_once_do_not_fail_each_others_grants(
    admin: Conn, postgres_cluster: PostgresCluster, database: str
) -> None:
    """Six views' roles made and re-made at the same moment, each on a connection of its own (as the operator's
    workers do): every grant lands; none fails with PostgreSQL's "tuple concurrently updated" (found when six
    FeatureViews were reconciled together on one database)."""
    views = [View(admin, postgres_cluster.primary, database) for _ in range(6)]
    errors: list[BaseException] = []

    def ensure(view: View, start: threading.Barrier) -> None:
        try:
            with connection.postgres(admin_info(postgres_cluster.primary, database)) as conn:
                start.wait(timeout=30)
                syncrole.ensure(conn, database, view.spec, NS, view.name, view.password)
        except BaseException as exc:
            errors.append(exc)

    for _ in range(3):
        for view in views:  # privileges taken away by hand: every role's ensure() writes the catalog again
            admin.execute(
                sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(sql.Identifier("mlinfra"), sql.Identifier(view.role))
            )
            admin.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(database), sql.Identifier(view.role))
            )
        start = threading.Barrier(len(views))
        threads = [threading.Thread(target=ensure, args=(view, start)) for view in views]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
    for view in views:
        with view.connect() as conn:  # each role as ensure() left it: it reads its own watermark rows
            conn.execute("SELECT count(*) FROM mlinfra.watermarks").fetchone()
