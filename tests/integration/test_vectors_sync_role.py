"""A VectorIndex's sync role on a real PostgreSQL (+ Qdrant, local mode here, the real server with QDRANT_URL):
it runs its index's sync and rebuild backfill (as ``mlinfra sync vectorindex`` and ``mlinfra rebuild
vectorindex`` do, locks included) and can do nothing else: no other index's runs or watermarks (row level
security), no other table nor a column the spec does not name, no DDL; its password never reaches the server's
log; a role of its name made by someone else is refused and left untouched."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from qdrant_client import QdrantClient

from mlinfra.api import vectorindex
from mlinfra.devenv import qdrant as devenv_qdrant
from mlinfra.devenv import secretscan
from mlinfra.devenv.postgres import PostgresCluster, PostgresServer
from mlinfra.engines import connection, pg_roles
from mlinfra.stores import credentials
from mlinfra.vectors import collection, rebuild, runs, source, sync, syncrole

pytestmark = pytest.mark.integration

NS = "vi-sync-role"
SIZE = 4
OWNER = f"{NS}/test"
Conn = psycopg.Connection[tuple[Any, ...]]


def spec_of(
    table: str, alias: str, *, payload: tuple[str, ...] = ("lang",), distance: str = "Cosine", schema: str | None = None
) -> vectorindex.VectorIndexSpec:
    return vectorindex.VectorIndexSpec.model_validate(
        {
            "storeRef": {"name": "qdrant"},
            "collection": alias,
            "vectors": {"size": SIZE, "distance": distance},
            "source": {
                "storeRef": {"name": "pg"},
                "table": table,
                **({"schema": schema} if schema else {}),
                "idColumn": "id",
                "vectorColumn": "embedding",
                "payloadColumns": list(payload),
                "updatedAtColumn": "updated_at",
                "deletedColumn": "deleted",
            },
            "sync": {"schedule": "*/5 * * * *", "batchSize": 3},
        }
    )


@pytest.fixture(scope="module")
def database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    name = f"visyncrole_{secrets.token_hex(4)}"
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
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(str(role))))


@pytest.fixture
def admin(postgres_cluster: PostgresCluster, database: str) -> Iterator[Conn]:
    info = connection.ConnectionInfo.for_engine(
        "postgres",
        "127.0.0.1",
        postgres_cluster.primary.password,
        port=postgres_cluster.primary.port,
        database=database,
    )
    with connection.postgres(info, "mlinfra-operator") as conn:
        yield conn


class Index:
    """An index as the reconcile leaves it: source table, bookkeeping, sync role (its password tracked)."""

    def __init__(
        self, admin: Conn, server: PostgresServer, database: str, space: devenv_qdrant.QdrantSpace, rows: int = 0
    ) -> None:
        self.name = f"vi-{secrets.token_hex(4)}"
        self.table = self.name.replace("-", "_")
        self.admin, self.server, self.database = admin, server, database
        self.alias = space.name(self.name)
        admin.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, embedding real[], lang text, secret text DEFAULT 'hidden', "
                "updated_at timestamptz NOT NULL DEFAULT clock_timestamp(), deleted boolean DEFAULT false)"
            ).format(sql.Identifier(self.table))
        )
        self.spec = spec_of(self.table, self.alias)
        self.password = credentials.new_password()
        secretscan.track(self.password)
        self.reconcile()
        self.insert(range(1, rows + 1))

    @property
    def source(self) -> vectorindex.Source:
        assert self.spec.source is not None
        return self.spec.source

    def reconcile(self) -> str:
        syncrole.ensure_bookkeeping(self.admin)
        self.role = syncrole.ensure(self.admin, self.database, self.source, NS, self.name, self.password)
        return self.role

    @property
    def info(self) -> connection.ConnectionInfo:
        return connection.ConnectionInfo.for_engine(
            "postgres", "127.0.0.1", self.password, port=self.server.port, database=self.database, username=self.role
        )

    def connect(self) -> Any:
        return connection.postgres(self.info, timeouts=connection.JOB)

    def insert(self, ids: range, seed: int = 1) -> None:
        rng = random.Random(seed)
        with self.admin.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {} (id, embedding, lang) VALUES (%s, %s, 'en')").format(
                    sql.Identifier(self.table)
                ),
                [(i, [rng.uniform(-1, 1) for _ in range(SIZE)]) for i in ids],
            )

    def sync(self, conn: Conn, client: QdrantClient) -> sync.SyncResult:
        """One run as ``mlinfra sync vectorindex`` does it (sync_cli.run), on ``conn``."""
        syncrole.require(conn, self.source)
        with runs.exclusive(conn, NS, self.name):
            run_id = runs.start(conn, NS, self.name)
            shape = source.inspect(conn, self.source)
            result = sync.sync(conn, client, self.spec, NS, self.name, full=True, shape=shape)
            runs.finish(
                conn,
                run_id,
                rows=result.rows,
                upserted=result.upserted,
                deleted=result.deleted + result.removed,
                bad_rows=result.bad,
                watermark=result.watermark.updated_at,
            )
        return result


def denied(conn: Conn, statement: str | sql.SQL | sql.Composed, params: Any = None) -> str:
    """The error of a statement the role may not run (the connection stays usable: autocommit)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute(statement, params)
    return str(caught.value)


def test_the_role_runs_its_sync_and_a_rebuild_backfill(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, qdrant_space: devenv_qdrant.QdrantSpace
) -> None:
    index = Index(admin, postgres_cluster.primary, database, qdrant_space, rows=7)
    client = qdrant_space.client
    collection.ensure(client, index.spec, owner=OWNER)
    with index.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (index.role,)
        first = index.sync(conn, client)
        assert (first.rows, first.upserted, first.batches) == (7, 7, 3)
        admin.execute(
            sql.SQL("UPDATE {} SET deleted = true, updated_at = now() WHERE id = 2").format(sql.Identifier(index.table))
        )
        admin.execute(sql.SQL("DELETE FROM {} WHERE id = 3").format(sql.Identifier(index.table)))
        index.insert(range(8, 10), seed=2)
        # Incremental from the watermark it committed, and the full pass's orphan check (live_among).
        second = index.sync(conn, client)
        assert (second.rows, second.upserted, second.deleted, second.removed) == (3, 2, 1, 1)
        assert sync.rows_behind(admin, index.spec, NS, index.name) == 0
    assert client.count(index.alias, exact=True).count == 7
    outcomes = admin.execute(
        "SELECT outcome, upserted FROM mlinfra.vector_sync_runs WHERE namespace = %s AND name = %s ORDER BY id",
        (NS, index.name),
    ).fetchall()
    assert outcomes == [("Succeeded", 7), ("Succeeded", 2)]

    # The rebuild Job's work (rebuild_cli.run): both locks, a snapshot backfill into the new collection, the swap,
    # the watermark. The operator sees the rebuild lock meanwhile.
    changed = spec_of(index.table, index.alias, distance="Dot")
    old = collection.alias_target(client, index.alias)
    with index.connect() as conn, runs.rebuilding(conn, NS, index.name), runs.exclusive(conn, NS, index.name):
        assert runs.rebuild_running(admin, NS, index.name)
        syncrole.require(conn, index.source)
        shape = source.inspect(conn, index.source)
        filled: list[sync.Backfill] = []

        def backfill(into: str) -> int:
            filled.append(sync.snapshot_backfill(conn, client, changed, into, shape))
            return filled[-1].written

        result = rebuild.rebuild(client, changed, backfill, lambda: filled[-1].expected, owner=OWNER)
        sync.commit_watermark(conn, NS, index.name, filled[-1].watermark)
    assert not runs.rebuild_running(admin, NS, index.name)
    assert (result.previous, result.points) == (old, 7)
    assert collection.alias_target(client, index.alias) == collection.physical_name(changed)
    # A role, not a superuser: no attribute beyond LOGIN.
    attrs = admin.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin FROM pg_roles "
        "WHERE rolname = %s",
        (index.role,),
    ).fetchone()
    assert attrs == (False, False, False, False, False, True)


def test_the_role_sees_and_writes_only_its_own_runs_and_watermarks(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, qdrant_space: devenv_qdrant.QdrantSpace
) -> None:
    mine = Index(admin, postgres_cluster.primary, database, qdrant_space, rows=2)
    other = Index(admin, postgres_cluster.primary, database, qdrant_space, rows=2)
    for index in (mine, other):
        collection.ensure(qdrant_space.client, index.spec, owner=OWNER)
        with index.connect() as conn:
            index.sync(conn, qdrant_space.client)
    run_table, marks = sql.Identifier(*syncrole.RUNS), sql.Identifier(*syncrole.WATERMARKS)
    with mine.connect() as conn:
        for table in (run_table, marks):
            names = conn.execute(sql.SQL("SELECT DISTINCT namespace, name FROM {}").format(table)).fetchall()
            assert names == [(NS, mine.name)]
        assert runs.last(conn, NS, other.name) is None  # what the operator reads of it, invisible to this role
        assert sync.read_watermark(conn, NS, other.name) == sync.Watermark()
        # Another index's rows: invisible to UPDATE and DELETE, refused to INSERT.
        changed = conn.execute(
            sql.SQL("UPDATE {} SET outcome = 'Failed' WHERE name = %s").format(run_table), (other.name,)
        ).rowcount
        assert changed == 0
        assert "row-level security" in denied(
            conn,
            sql.SQL("INSERT INTO {} (namespace, name, outcome) VALUES (%s, %s, 'Succeeded')").format(run_table),
            (NS, other.name),
        )
        assert "row-level security" in denied(
            conn, sql.SQL("INSERT INTO {} (namespace, name) VALUES (%s, %s)").format(marks), (NS, other.name)
        )
        assert "permission denied" in denied(  # the key columns are not the role's to change
            conn, sql.SQL("UPDATE {} SET name = %s WHERE name = %s").format(marks), (other.name, mine.name)
        )
        moved = conn.execute(
            sql.SQL("UPDATE {} SET last_id = '0' WHERE name = %s").format(marks), (other.name,)
        ).rowcount
        assert moved == 0
        assert "permission denied" in denied(conn, sql.SQL("DELETE FROM {}").format(run_table))
        assert "permission denied" in denied(conn, sql.SQL("TRUNCATE {}").format(marks))
    (state,) = admin.execute(
        sql.SQL("SELECT outcome FROM {} WHERE name = %s").format(run_table), (other.name,)
    ).fetchall()
    assert state == ("Succeeded",)


def test_the_role_reads_only_the_columns_its_spec_names_of_its_own_table(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, qdrant_space: devenv_qdrant.QdrantSpace
) -> None:
    mine = Index(admin, postgres_cluster.primary, database, qdrant_space)
    other = Index(admin, postgres_cluster.primary, database, qdrant_space, rows=1)
    mine_table, other_table = sql.Identifier(mine.table), sql.Identifier(other.table)
    with mine.connect() as conn:
        assert "permission denied" in denied(conn, sql.SQL("SELECT id FROM {}").format(other_table))
        conn.execute(sql.SQL("SELECT id, embedding, lang, updated_at, deleted FROM {}").format(mine_table))
        assert "permission denied" in denied(conn, sql.SQL("SELECT secret FROM {}").format(mine_table))
        assert "permission denied" in denied(conn, sql.SQL("INSERT INTO {} (id) VALUES (1)").format(mine_table))
        assert "permission denied" in denied(conn, sql.SQL("UPDATE {} SET lang = 'x'").format(mine_table))
        assert "permission denied" in denied(conn, "SELECT * FROM mlinfra.vector_sync_runs_id_seq")
    # A payload column taken out of the spec stays in the table (users' data), no longer the role's to read.
    mine.spec = spec_of(mine.table, mine.alias, payload=())
    mine.reconcile()
    with mine.connect() as conn:
        conn.execute(sql.SQL("SELECT id, embedding FROM {}").format(mine_table))
        assert "permission denied" in denied(conn, sql.SQL("SELECT lang FROM {}").format(mine_table))
    # Another source table (in another schema): the old table's grants are taken away, the new schema's USAGE
    # given, and a grant made by hand on an unrelated table is revoked too.
    admin.execute("CREATE SCHEMA IF NOT EXISTS embeddings")
    admin.execute(
        sql.SQL("CREATE TABLE embeddings.{} (LIKE {} INCLUDING ALL)").format(sql.Identifier(mine.table), mine_table)
    )
    admin.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(other_table, sql.Identifier(mine.role)))
    mine.spec = spec_of(mine.table, mine.alias, schema="embeddings")
    mine.reconcile()
    with mine.connect() as conn:
        conn.execute(sql.SQL("SELECT id, lang FROM {}").format(sql.Identifier("embeddings", mine.table)))
        assert "permission denied" in denied(conn, sql.SQL("SELECT id FROM {}").format(mine_table))
        assert "permission denied" in denied(conn, sql.SQL("SELECT id FROM {}").format(other_table))
    held = {
        r
        for (r,) in admin.execute(
            "SELECT DISTINCT c.relname FROM pg_class c, aclexplode(c.relacl) x JOIN pg_roles r ON r.oid = x.grantee "
            "WHERE r.rolname = %s UNION SELECT DISTINCT c.relname FROM pg_class c JOIN pg_attribute a "
            "ON a.attrelid = c.oid, aclexplode(a.attacl) x JOIN pg_roles r ON r.oid = x.grantee WHERE r.rolname = %s",
            (mine.role, mine.role),
        ).fetchall()
    }
    assert held == {mine.table, "vector_sync_runs", "vector_watermarks", "vector_sync_runs_id_seq"}


def test_the_role_cannot_create_or_alter_anything(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, qdrant_space: devenv_qdrant.QdrantSpace
) -> None:
    index = Index(admin, postgres_cluster.primary, database, qdrant_space)
    table = sql.Identifier(index.table)
    with index.connect() as conn:
        for statement in (
            "CREATE TABLE public.stolen (a int)",
            "CREATE TABLE mlinfra.stolen (a int)",
            "CREATE SCHEMA stolen",
            "CREATE SCHEMA IF NOT EXISTS mlinfra",  # what the Jobs did before: refused even though it exists
            sql.SQL("CREATE INDEX stolen_idx ON {} (id)").format(table),
            sql.SQL("ALTER TABLE {} ADD COLUMN stolen int").format(table),
            sql.SQL("DROP TABLE {}").format(table),
            "ALTER TABLE mlinfra.vector_sync_runs DISABLE ROW LEVEL SECURITY",
            sql.SQL("DROP POLICY {} ON mlinfra.vector_watermarks").format(sql.Identifier(index.role)),
            "CREATE ROLE stolen",
            sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(table),
        ):
            message = denied(conn, statement)
            assert "permission denied" in message or "must be owner" in message, message


def test_the_job_checks_instead_of_creating_and_the_reconcile_repairs(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, qdrant_space: devenv_qdrant.QdrantSpace
) -> None:
    index = Index(admin, postgres_cluster.primary, database, qdrant_space, rows=2)
    assert syncrole.in_place(admin, index.source, NS, index.name)
    # The table created again by hand (e.g. a restore): the grants are gone with the old one.
    table, copy = sql.Identifier(index.table), sql.Identifier(f"{index.table}_copy")
    admin.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(copy, table))
    admin.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(copy, table))
    admin.execute(sql.SQL("DROP TABLE {}").format(table))
    admin.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(copy, table))
    assert not syncrole.in_place(admin, index.source, NS, index.name)
    with index.connect() as conn, pytest.raises(syncrole.NotReady, match=r"column\(s\) id, embedding, updated_at"):
        syncrole.require(conn, index.source)
    # A bookkeeping privilege taken away by hand.
    admin.execute(sql.SQL("REVOKE INSERT ON mlinfra.vector_watermarks FROM {}").format(sql.Identifier(index.role)))
    with index.connect() as conn, pytest.raises(syncrole.NotReady, match=r"mlinfra\.vector_watermarks do not exist"):
        syncrole.require(conn, index.source)
    index.reconcile()  # what the observation's repair does
    assert syncrole.in_place(admin, index.source, NS, index.name)
    collection.ensure(qdrant_space.client, index.spec, owner=OWNER)
    with index.connect() as conn:
        assert index.sync(conn, qdrant_space.client).upserted == 2


def test_the_password_never_reaches_the_server_log(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, qdrant_space: devenv_qdrant.QdrantSpace
) -> None:
    admin.execute("SET log_statement = 'all'")
    index = Index(admin, postgres_cluster.primary, database, qdrant_space)
    index.password = credentials.new_password()  # rotated: the role's password is set again
    secretscan.track(index.password)
    index.reconcile()
    with index.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    log = (postgres_cluster.primary.workdir / "postgres.log").read_text(errors="replace")
    assert f"ALTER ROLE {index.role}" in log or f'ALTER ROLE "{index.role}"' in log  # the statements were logged
    assert index.password not in log


def test_a_role_of_that_name_made_by_someone_else_is_a_conflict_left_untouched(
    admin: Conn, postgres_cluster: PostgresCluster, database: str
) -> None:
    name = f"vi-{secrets.token_hex(4)}"
    role = syncrole.role_name(NS, name)
    theirs = credentials.new_password()
    secretscan.track(theirs)
    admin.execute(
        sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(sql.Identifier(role), sql.Literal(theirs))
    )
    table = name.replace("-", "_")
    try:
        admin.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint, embedding real[], updated_at timestamptz, lang text, deleted boolean)"
            ).format(sql.Identifier(table))
        )
        spec = spec_of(table, name)
        assert spec.source is not None
        syncrole.ensure_bookkeeping(admin)
        with pytest.raises(pg_roles.RoleConflict, match="made outside the operator"):
            syncrole.ensure(admin, database, spec.source, NS, name, credentials.new_password())
        assert not syncrole.drop(admin, NS, name)  # not the index's: never dropped
        assert not syncrole.in_place(admin, spec.source, NS, name)
        assert admin.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s", (role,)).fetchone() == (True,)
        info = connection.ConnectionInfo.for_engine(
            "postgres", "127.0.0.1", theirs, port=postgres_cluster.primary.port, database=database, username=role
        )
        with connection.postgres(info) as conn:  # its password is still its owner's
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        assert pg_roles.granted_relations(admin, role) == []
        policies = admin.execute("SELECT count(*) FROM pg_policies WHERE policyname = %s", (role,)).fetchone()
        assert policies == (0,)
        # Another index's role is no more this one's: the mark names (namespace, name).
        mine = f"vi-{secrets.token_hex(4)}"
        made = syncrole.ensure(admin, database, spec.source, NS, mine, credentials.new_password())
        admin.execute(
            sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(made), sql.Literal(syncrole.mark(NS, "else")))
        )
        with pytest.raises(pg_roles.RoleConflict, match=f"{NS}/else"):
            syncrole.ensure(admin, database, spec.source, NS, mine, credentials.new_password())
        assert not syncrole.drop(admin, NS, mine)
    finally:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_deletion_drops_the_role_and_its_policies_and_keeps_the_rows(
    admin: Conn, postgres_cluster: PostgresCluster, database: str, qdrant_space: devenv_qdrant.QdrantSpace
) -> None:
    index = Index(admin, postgres_cluster.primary, database, qdrant_space, rows=1)
    collection.ensure(qdrant_space.client, index.spec, owner=OWNER)
    with index.connect() as conn:
        index.sync(conn, qdrant_space.client)
    assert syncrole.drop(admin, NS, index.name)
    assert admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (index.role,)).fetchone() is None
    assert admin.execute("SELECT count(*) FROM pg_policies WHERE policyname = %s", (index.role,)).fetchone() == (0,)
    assert admin.execute(
        "SELECT count(*) FROM mlinfra.vector_watermarks WHERE name = %s", (index.name,)
    ).fetchone() == (1,)
    assert not syncrole.drop(admin, NS, index.name)  # gone: nothing to do
    # The index created again gets its role back, with a new password.
    index.password = credentials.new_password()
    secretscan.track(index.password)
    index.reconcile()
    with index.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (index.role,)


def test_the_bookkeeping_is_made_once_with_row_level_security(admin: Conn) -> None:
    syncrole.ensure_bookkeeping(admin)
    syncrole.ensure_bookkeeping(admin)  # idempotent
    rls = admin.execute(
        "SELECT relname, relrowsecurity FROM pg_class WHERE oid IN "
        "('mlinfra.vector_sync_runs'::regclass, 'mlinfra.vector_watermarks'::regclass) ORDER BY relname"
    ).fetchall()
    assert rls == [("vector_sync_runs", True), ("vector_watermarks", True)]
    assert admin.execute("SELECT to_regclass('mlinfra.vector_sync_runs_name_idx') IS NOT NULL").fetchone() == (True,)
