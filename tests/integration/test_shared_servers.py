"""Tenants sharing one server stay apart (real PostgreSQL and Neo4j): registry roles carry their registry's
mark and are never altered for another registry; a database holds one registry; an offline table holds one
FeatureView. (Qdrant aliases: tests/integration/test_vectors_collection.py.)"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.features import claim as feature_claim
from mlinfra.features import schema
from mlinfra.registry import claim, migrate, roles
from mlinfra.registry.reconcile import role_name

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    name = f"tenancy_{secrets.token_hex(4)}"
    with postgres_cluster.primary.connect() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with postgres_cluster.primary.connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def made_roles(postgres_cluster: PostgresCluster) -> Iterator[Callable[[str], str]]:
    """Role names to use, dropped (with what they own) afterwards."""
    names: list[str] = []

    def make(name: str) -> str:
        names.append(name)
        return name

    yield make
    with postgres_cluster.primary.connect() as admin:
        for name in names:
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                for (db,) in admin.execute("SELECT datname FROM pg_database WHERE datallowconn").fetchall():
                    with postgres_cluster.primary.connect(db) as conn:
                        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def login(cluster: PostgresCluster, db: str, user: str, password: str) -> Conn:
    return psycopg.connect(cluster.primary.dsn(db, user=user, password=password), autocommit=True)


def test_look_alike_registries_get_distinct_roles_and_neither_resets_the_other(
    postgres_cluster: PostgresCluster, database: str, made_roles: Callable[[str], str]
) -> None:
    suffix = secrets.token_hex(3)
    a = (f"team-x{suffix}", "models")  # what used to map to one role name with b
    b = (f"team{suffix}", "x-models")
    with postgres_cluster.primary.connect(database) as conn:
        migrate.apply(conn)
        creds = {}
        for ns, name in (a, b):
            w, r = made_roles(role_name(ns, name, "writer")), made_roles(role_name(ns, name, "reader"))
            creds[(ns, name)] = (w, secrets.token_urlsafe(16), r, secrets.token_urlsafe(16))
        assert creds[a][0] != creds[b][0] and creds[a][2] != creds[b][2]
        roles.ensure_roles(conn, database, *creds[a], owner=f"{a[0]}/{a[1]}")
        # Registry b, told by a hostile Secret or a hash collision to use a's role names, changes nothing.
        with pytest.raises(roles.RoleConflict) as refused:
            roles.ensure_roles(conn, database, creds[a][0], "stolen-pw", creds[a][2], "stolen-pw", owner="b/x")
        assert refused.value.holder == f"{a[0]}/{a[1]}"
    with login(postgres_cluster, database, creds[a][0], creds[a][1]) as w:  # a's password still works
        assert w.execute("SELECT current_user").fetchone() == (creds[a][0],)
    with pytest.raises(psycopg.OperationalError):
        login(postgres_cluster, database, creds[a][0], "stolen-pw").close()


def test_a_role_made_outside_the_operator_is_never_altered(
    postgres_cluster: PostgresCluster, database: str, made_roles: Callable[[str], str]
) -> None:
    theirs = made_roles(f"someone_{secrets.token_hex(3)}")
    ours = made_roles(f"r_{secrets.token_hex(3)}")
    with postgres_cluster.primary.connect(database) as conn:
        migrate.apply(conn)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'theirs' CREATEDB").format(sql.Identifier(theirs)))
        with pytest.raises(roles.RoleConflict) as refused:
            roles.ensure_roles(conn, database, theirs, "new-pw", ours, "new-pw", owner="ns/reg")
        assert refused.value.holder is None
        attrs = conn.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s", (theirs,)).fetchone()
        assert attrs == (True,)  # untouched: not demoted, password not reset
    with login(postgres_cluster, database, theirs, "theirs") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_a_database_holds_one_registry(postgres_cluster: PostgresCluster, database: str) -> None:
    with postgres_cluster.primary.connect(database) as conn:
        claim.claim(conn, database, "team/models")
        claim.claim(conn, database, "team/models")  # idempotent: the same registry, e.g. re-created
        with pytest.raises(claim.DatabaseInUse) as refused:
            claim.claim(conn, database, "other/models")
        assert refused.value.holder == "team/models"
        table = sql.Identifier(*claim.TABLE)
        assert conn.execute(sql.SQL("SELECT holder FROM {}").format(table)).fetchall() == [("team/models",)]


def test_an_offline_table_holds_one_featureview(postgres_cluster: PostgresCluster, database: str) -> None:
    with postgres_cluster.primary.connect(database) as conn:
        schema.ensure_bookkeeping(conn)
        feature_claim.claim(conn, "public", "clicks", "team-a/clicks")
        feature_claim.claim(conn, "public", "clicks", "team-a/clicks")  # idempotent
        feature_claim.claim(conn, "public", "clicks_b", "team-b/clicks")  # another table: fine
        with pytest.raises(feature_claim.TableInUse) as refused:
            feature_claim.claim(conn, "public", "clicks", "team-b/clicks")
        assert (refused.value.table, refused.value.holder) == ("public.clicks", "team-a/clicks")
