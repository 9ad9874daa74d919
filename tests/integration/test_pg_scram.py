"""Passwords the operator sets on PostgreSQL roles reach the server only as SCRAM verifiers: the same verifier
PostgreSQL computes itself, a role that logs in with the password, and no password in the server's log even
when it logs every statement."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.engines import pg_scram
from mlinfra.registry import migrate, roles


@pytest.fixture
def role_names(postgres_cluster: PostgresCluster) -> Iterator[list[str]]:
    """Roles the test makes, dropped after it (after its database: the roles hold grants there)."""
    made: list[str] = []
    yield made
    with postgres_cluster.primary.connect() as conn:
        for name in made:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_the_verifier_is_the_one_postgresql_computes(postgres_cluster: PostgresCluster, role_names: list[str]) -> None:
    name, password = f"scram_{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    role_names.append(name)
    with postgres_cluster.primary.connect() as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,)).fetchone()
    assert row is not None
    stored = str(row[0])
    iterations, salt = stored.split("$")[1].split(":")
    assert pg_scram.verifier(password, salt=base64.b64decode(salt), iterations=int(iterations)) == stored


@pytest.fixture
def database(postgres_cluster: PostgresCluster, role_names: list[str]) -> Iterator[str]:
    name = f"scram_{secrets.token_hex(4)}"
    with postgres_cluster.primary.connect() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with postgres_cluster.primary.connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_registry_roles_log_in_and_their_passwords_are_never_logged(
    postgres_cluster: PostgresCluster, role_names: list[str], database: str
) -> None:
    primary = postgres_cluster.primary
    writer, reader = f"w_{secrets.token_hex(4)}", f"r_{secrets.token_hex(4)}"
    role_names += [writer, reader]
    writer_pw, reader_pw = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    log = primary.workdir / "postgres.log"
    with primary.connect(database) as conn:
        migrate.apply(conn)
        start = log.stat().st_size
        # What an external server's administrator may have configured: every statement logged.
        conn.execute("SET log_statement = 'all'")
        roles.ensure_roles(conn, database, writer, writer_pw, reader, reader_pw)
        roles.ensure_roles(conn, database, writer, writer_pw, reader, reader_pw)  # the ALTER path too
    for user, password in ((writer, writer_pw), (reader, reader_pw)):
        with psycopg.connect(primary.dsn(database, user=user, password=password)) as login:
            assert login.execute("SELECT current_user").fetchone() == (user,)
    with log.open("rb") as handle:
        handle.seek(start)
        logged = handle.read().decode(errors="replace")
    assert "SCRAM-SHA-256$" in logged  # the statements were logged...
    assert writer_pw not in logged and reader_pw not in logged  # ...without the passwords


def test_passwords_a_verifier_cannot_be_computed_for_here_are_refused() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        pg_scram.verifier("pässwort")
