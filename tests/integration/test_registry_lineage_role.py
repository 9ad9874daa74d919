"""A ModelRegistry's lineage role on real PostgreSQL + Neo4j: it runs the lineage sync of its registry — the
library call and the Job's command as a process, with the Secret the Job mounts — and can do nothing else: no
registry table but the three the sync uses, no DDL, no other registry's database; privileges granted to it by
hand are taken away again; a role of its name made by someone else is refused and untouched; deletion drops
it and keeps the data."""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neo4j
import psycopg
import pytest
from psycopg import sql

from mlinfra import problems
from mlinfra.api import modelregistry
from mlinfra.context import Obj, Recorder
from mlinfra.devenv import secretscan
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster, PostgresServer
from mlinfra.engines import connection, pg_roles
from mlinfra.registry import claim, lineage, lineagerole, migrate, reconcile, roles, sync_cli
from mlinfra.stores import credentials

pytestmark = pytest.mark.integration

NS = f"lineage-role-{secrets.token_hex(3)}"
Conn = psycopg.Connection[tuple[Any, ...]]


def admin_info(server: PostgresServer, database: str = "postgres") -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine(
        "postgres", "127.0.0.1", server.password, port=server.port, database=database
    )


@pytest.fixture(scope="module", autouse=True)
def cleanup(postgres_cluster: PostgresCluster) -> Iterator[None]:
    yield
    # Roles are server-wide: whatever a test left of this module's goes (its databases first).
    with postgres_cluster.primary.connect() as admin:
        for (db,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'lineage_role_%'").fetchall():
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
        for (role,) in admin.execute(
            "SELECT rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') LIKE %s",
            (f"{roles.COMMENT_PREFIX}{NS}/%",),
        ).fetchall():
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def driver(neo4j_server: Neo4jServer) -> Iterator[neo4j.Driver]:
    with neo4j_server.driver() as drv:
        lineage.ensure_schema(drv)
        yield drv


class Registry:
    """A registry as the reconcile leaves it with a schedule: its own database (made as the operator makes
    it), migrated, claimed, writer/reader roles, the lineage role (its password tracked)."""

    def __init__(self, server: PostgresServer, schema_version: int | str = "latest") -> None:
        self.name = f"mr-{secrets.token_hex(4)}"
        self.database = f"lineage_role_{secrets.token_hex(4)}"
        self.server = server
        admin = admin_info(server)
        stores = reconcile.Stores(admin, admin, self.database, None, None)
        assert reconcile._ensure_database(stores)
        self.password = credentials.new_password()
        self.passwords = [credentials.new_password(), credentials.new_password()]
        for password in (self.password, *self.passwords):
            secretscan.track(password)
        self.reconcile(schema_version)

    @property
    def owner(self) -> str:
        return f"{NS}/{self.name}"

    def admin(self) -> Any:
        return connection.postgres(admin_info(self.server, self.database), "mlinfra-operator")

    def reconcile(self, schema_version: int | str = "latest") -> None:
        with self.admin() as conn:
            claim.claim(conn, self.database, self.owner)
            migrate.apply(conn, schema_version)
            writer, reader = (reconcile.role_name(NS, self.name, kind) for kind in ("writer", "reader"))
            roles.ensure_roles(conn, self.database, writer, self.passwords[0], reader, self.passwords[1], self.owner)
            self.role = lineagerole.ensure(conn, self.database, NS, self.name, self.password)

    @property
    def info(self) -> connection.ConnectionInfo:
        return connection.ConnectionInfo.for_engine(
            "postgres",
            "127.0.0.1",
            self.password,
            port=self.server.port,
            database=self.database,
            username=self.role,
        )

    def connect(self, database: str | None = None) -> Any:
        return connection.postgres(self.info, "mlinfra-lineage-sync", database=database, timeouts=connection.JOB)

    def write(self, *models: str) -> None:
        with self.admin() as conn:
            for model in models:
                conn.execute("INSERT INTO registry.registered_models (name) VALUES (%s)", (model,))


def denied(conn: Conn, statement: str | sql.Composable) -> str:
    """The error of a statement the role may not run (the connection stays usable: autocommit)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute(statement)
    return str(caught.value)


def graph_models(driver: neo4j.Driver, registry: str) -> set[str]:
    records, _, _ = driver.execute_query("MATCH (m:Model {registry: $r}) RETURN m.name AS name", r=registry)
    return {str(r["name"]) for r in records}


def test_the_lineage_role_syncs_its_registry(postgres_cluster: PostgresCluster, driver: neo4j.Driver) -> None:
    reg = Registry(postgres_cluster.primary)
    reg.write("churn", "fraud")
    try:
        with reg.connect() as conn:
            assert conn.execute("SELECT current_user").fetchone() == (reg.role,)
            first = lineage.sync(conn, driver, registry=reg.owner)  # the first: a rebuild (resets the outbox)
            assert (first.rebuilt, first.events) == (True, 2)
            reg.write("ranker")
            again = lineage.sync(conn, driver, registry=reg.owner)  # the bookkeeping row updated this time
            assert (again.rebuilt, again.events) == (False, 1)
        assert graph_models(driver, reg.owner) == {"churn", "fraud", "ranker"}
        with reg.admin() as admin:
            assert admin.execute("SELECT count(*) FROM registry.outbox WHERE processed_at IS NULL").fetchone() == (0,)
            assert admin.execute("SELECT last_event_id FROM registry.lineage_sync_state").fetchone() == (3,)
            attrs = admin.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
                "FROM pg_roles WHERE rolname = %s",
                (reg.role,),
            ).fetchone()
        assert attrs == (False, False, False, False, False, True)
    finally:
        lineage.delete_registry_nodes(driver, reg.owner)


def test_the_sync_command_runs_with_the_mounted_lineage_secret(
    postgres_cluster: PostgresCluster, neo4j_server: Neo4jServer, driver: neo4j.Driver, tmp_path: Path
) -> None:
    """The Job's command as a process, its metadata connection from the Secret the reconcile writes
    (``credentials.login_secret`` with the registry's database and the lineage role), as mounted."""
    reg = Registry(postgres_cluster.primary)
    reg.write("churn")
    published = admin_info(postgres_cluster.primary, "postgres")
    stores = reconcile.Stores(published, published, reg.database, None, None)
    secret = reconcile._lineage_secret(_obj(reg.name), stores, reg.role, reg.password)
    assert [r["uid"] for r in secret["metadata"]["ownerReferences"]] == ["u"]
    assert (secret["stringData"]["username"], secret["stringData"]["database"]) == (reg.role, reg.database)
    assert postgres_cluster.primary.password not in json.dumps(secret)  # the admin's is nowhere in it
    graph = connection.ConnectionInfo.for_engine("neo4j", "127.0.0.1", neo4j_server.password, port=neo4j_server.port)
    dirs = {"metadata": tmp_path / "metadata", "lineage": tmp_path / "lineage"}
    for what, data in (("metadata", secret["stringData"]), ("lineage", graph.to_secret_data())):
        dirs[what].mkdir()
        for key, value in data.items():
            (dirs[what] / key).write_text(value)
    spec = {"metadataStoreRef": {"name": "meta"}, "lineageStoreRef": {"name": "graph"}}
    env = {
        **os.environ,
        sync_cli.SPEC_ENV: json.dumps(spec),
        sync_cli.METADATA_DIR_ENV: str(dirs["metadata"]),
        sync_cli.LINEAGE_DIR_ENV: str(dirs["lineage"]),
    }
    env.pop("KUBECONFIG", None)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "mlinfra", "sync", "modelregistry", reg.owner],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert json.loads(run.stdout.strip().splitlines()[-1])["outcome"] == "Synced"
        assert reg.password not in run.stdout + run.stderr
        assert graph_models(driver, reg.owner) == {"churn"}
    finally:
        lineage.delete_registry_nodes(driver, reg.owner)


def _obj(name: str) -> Obj[modelregistry.ModelRegistry]:
    body = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "ModelRegistry",
        "metadata": {"name": name, "namespace": NS, "uid": "u"},
        "spec": {"metadataStoreRef": {"name": "meta"}},
    }
    return Obj(body, problems.parse(modelregistry.ModelRegistry, body), Recorder())


def test_the_lineage_role_reads_and_writes_only_what_the_sync_needs(postgres_cluster: PostgresCluster) -> None:
    reg = Registry(postgres_cluster.primary)
    reg.write("churn")
    with reg.connect() as conn:
        # What the sync does.
        conn.execute("SELECT id, event_type, payload, old_payload FROM registry.outbox WHERE processed_at IS NULL")
        conn.execute("SELECT applied_at FROM registry.schema_migrations WHERE version = 1")
        conn.execute("SELECT last_sync_at FROM registry.lineage_sync_state")
        # Anything else.
        for statement in (
            "SELECT * FROM registry.registered_models",
            "SELECT * FROM registry.model_versions",
            "SELECT * FROM registry.audit_log",
            "SELECT * FROM public.mlinfra_registry_owner",
            "INSERT INTO registry.registered_models (name) VALUES ('forged')",
            "UPDATE registry.registered_models SET name = 'x'",
            "DELETE FROM registry.registered_models",
            "INSERT INTO registry.outbox (event_type, payload) VALUES ('registered_models.insert', '{}')",
            "UPDATE registry.outbox SET payload = '{}'",
            "UPDATE registry.outbox SET event_type = 'x'",
            "DELETE FROM registry.outbox",
            "TRUNCATE registry.outbox",
            "DELETE FROM registry.lineage_sync_state",
            "UPDATE registry.lineage_sync_state SET singleton = true",
            "INSERT INTO registry.schema_migrations (version, name, checksum) VALUES (99, 'x', 'x')",
            "DELETE FROM registry.schema_migrations",
            "TRUNCATE registry.lineage_sync_state",
        ):
            assert "permission denied" in denied(conn, statement), statement
    with reg.admin() as admin:
        assert admin.execute("SELECT count(*) FROM registry.registered_models").fetchone() == (1,)
        assert admin.execute("SELECT count(*) FROM registry.outbox").fetchone() == (1,)


def test_the_lineage_role_cannot_create_or_alter_anything(postgres_cluster: PostgresCluster) -> None:
    reg = Registry(postgres_cluster.primary)
    with reg.connect() as conn:
        for statement in (
            "CREATE TABLE registry.stolen (a int)",
            "CREATE TABLE public.stolen (a int)",  # the registry's database: PUBLIC may not create in public
            "CREATE SCHEMA stolen",
            "CREATE INDEX stolen_idx ON registry.outbox (event_type)",
            "ALTER TABLE registry.outbox ADD COLUMN stolen int",
            "DROP TABLE registry.outbox",
            "DROP FUNCTION registry.write_outbox()",
            "CREATE ROLE stolen",
            "ALTER DATABASE postgres OWNER TO CURRENT_USER",
            "ALTER ROLE CURRENT_USER CREATEROLE",
        ):
            message = denied(conn, statement)
            assert "permission denied" in message or "must be owner" in message, (statement, message)
        conn.execute("GRANT SELECT ON registry.outbox TO PUBLIC")  # PostgreSQL only warns: nothing granted
    with reg.admin() as admin:
        public = admin.execute(
            "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) x WHERE c.oid = 'registry.outbox'::regclass "
            "AND x.grantee = 0"
        ).fetchone()
    assert public == (0,)


def test_the_lineage_role_cannot_read_another_registrys_database(postgres_cluster: PostgresCluster) -> None:
    mine, other = Registry(postgres_cluster.primary), Registry(postgres_cluster.primary)
    other.write("secret-model")
    # A database the operator made for a registry takes connections only from its grantees.
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"), mine.connect(other.database):
        pass
    with mine.admin() as admin:
        granted = admin.execute(
            "SELECT datname FROM pg_database WHERE has_database_privilege(%s, oid, 'CONNECT') "
            "AND datname LIKE 'lineage_role_%%'",
            (mine.role,),
        ).fetchall()
    assert granted == [(mine.database,)]
    # One made by someone else may still give PUBLIC CONNECT: the role connects and can read nothing there.
    with psycopg.connect(postgres_cluster.primary.dsn(other.database), autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(sql.Identifier(other.database)))
    with mine.connect(other.database) as conn:
        for statement in ("SELECT * FROM registry.outbox", "SELECT * FROM registry.registered_models"):
            assert "permission denied for schema registry" in denied(conn, statement)


def test_privileges_granted_by_hand_are_taken_away(postgres_cluster: PostgresCluster) -> None:
    reg = Registry(postgres_cluster.primary)
    elsewhere = Registry(postgres_cluster.primary)
    role = sql.Identifier(reg.role)
    mine, theirs = sql.Identifier(reg.database), sql.Identifier(elsewhere.database)
    with reg.admin() as admin:
        for grant in (
            sql.SQL("GRANT SELECT, INSERT ON registry.registered_models TO {}").format(role),
            sql.SQL("GRANT UPDATE (payload) ON registry.outbox TO {}").format(role),
            sql.SQL("GRANT DELETE ON registry.outbox TO {}").format(role),
            sql.SQL("GRANT CREATE ON SCHEMA registry TO {}").format(role),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role),
            sql.SQL("GRANT SELECT ON public.mlinfra_registry_owner TO {}").format(role),
            sql.SQL("GRANT TEMP ON DATABASE {} TO {}").format(mine, role),
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(theirs, role),
        ):
            admin.execute(grant)
    reg.reconcile()
    with reg.admin() as admin:
        relations = {rel: pg_roles.held(admin, rel, reg.role) for rel in pg_roles.granted_relations(admin, reg.role)}
        schemas = pg_roles.granted_schemas(admin, reg.role)
        databases = pg_roles.granted_databases(admin, reg.role)
        wanted = lineagerole.wanted(admin)
    assert set(wanted) == {("registry", t) for t in ("schema_migrations", "outbox", "lineage_sync_state")}
    assert relations == wanted
    assert schemas == {"registry": frozenset({"USAGE"})}
    assert databases == {reg.database: frozenset({"CONNECT"})}


def test_a_registry_before_migration_3_gets_the_state_table_once_migrated(
    postgres_cluster: PostgresCluster, driver: neo4j.Driver
) -> None:
    reg = Registry(postgres_cluster.primary, schema_version=2)
    reg.write("churn")
    try:
        with reg.connect() as conn:
            assert lineage.sync(conn, driver, registry=reg.owner).events == 1
        reg.reconcile("latest")  # migration 3: the state table, granted in the same reconcile
        reg.write("fraud")
        with reg.connect() as conn:
            assert lineage.sync(conn, driver, registry=reg.owner).events == 1
        with reg.admin() as admin:
            assert admin.execute("SELECT count(*) FROM registry.lineage_sync_state").fetchone() == (1,)
    finally:
        lineage.delete_registry_nodes(driver, reg.owner)


def test_a_role_of_that_name_made_by_someone_else_is_refused_and_untouched(postgres_cluster: PostgresCluster) -> None:
    reg = Registry(postgres_cluster.primary)
    name = f"mr-{secrets.token_hex(4)}"
    role = lineagerole.role_name(NS, name)
    theirs = credentials.new_password()
    secretscan.track(theirs)
    with reg.admin() as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(sql.Identifier(role), sql.Literal(theirs))
        )
        try:
            with pytest.raises(pg_roles.RoleConflict, match="made outside the operator"):
                lineagerole.ensure(admin, reg.database, NS, name, credentials.new_password())
            assert not lineagerole.drop(admin, NS, name)  # not the registry's: never dropped
            assert not lineagerole.present(admin, NS, name)
            assert admin.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s", (role,)).fetchone() == (True,)
            assert pg_roles.granted_databases(admin, role) == {}
        finally:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_deletion_drops_the_role_and_keeps_the_data(postgres_cluster: PostgresCluster) -> None:
    reg = Registry(postgres_cluster.primary)
    reg.write("churn")
    with psycopg.connect(postgres_cluster.primary.dsn(), autocommit=True) as elsewhere:  # roles: server-wide
        assert lineagerole.present(elsewhere, NS, reg.name)
    with reg.admin() as admin:
        assert lineagerole.drop(admin, NS, reg.name)
        assert not lineagerole.present(admin, NS, reg.name)
        assert admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (reg.role,)).fetchone() is None
        assert admin.execute("SELECT count(*) FROM registry.registered_models").fetchone() == (1,)
        assert not lineagerole.drop(admin, NS, reg.name)  # gone: nothing to do
        writer = reconcile.role_name(NS, reg.name, "writer")
        assert admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (writer,)).fetchone() == (1,)  # stays
    # The registry created again gets its role back, with a new password.
    reg.password = credentials.new_password()
    secretscan.track(reg.password)
    reg.reconcile()
    with reg.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (reg.role,)


def test_roles_granted_at_once_on_one_database_do_not_fail_each_other(postgres_cluster: PostgresCluster) -> None:
    """Other objects' roles are granted on the same database row and schema (a FeatureView's on a registry
    that uses the store's own database): concurrent grants on one object would fail with "tuple concurrently
    updated" but for the database's grants lock. Here: six lineage roles made at once on one database."""
    reg = Registry(postgres_cluster.primary)
    names = [f"mr-{secrets.token_hex(4)}" for _ in range(6)]
    barrier = threading.Barrier(len(names))

    def make(name: str) -> str:
        with reg.admin() as conn:
            barrier.wait()
            return lineagerole.ensure(conn, reg.database, NS, name, reg.password)

    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        made = list(pool.map(make, names))
    assert made == [lineagerole.role_name(NS, n) for n in names]
    with reg.admin() as admin:
        for name in names:
            assert pg_roles.granted_databases(admin, lineagerole.role_name(NS, name)) == {
                reg.database: frozenset({"CONNECT"})
            }
            assert lineagerole.drop(admin, NS, name)
