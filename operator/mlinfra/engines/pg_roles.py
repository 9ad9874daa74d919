"""Login roles the operator makes on a PostgreSQL server it shares with other tenants: named, marked, guarded.

Roles are server-wide: every tenant of a server sees the same names. So each role the operator makes

- has a name injective over the (namespace, name) of the object it serves (:func:`role_name`), within
  PostgreSQL's 63-byte identifier limit;
- carries a comment naming that object (its *mark*). A role of the name with another comment (another
  object's, or none: made by someone else) is never altered or dropped — :class:`RoleConflict` — so one tenant
  can never reset another's password or take over a role a DBA made;
- gets its password as a SCRAM verifier (``engines.pg_scram``): the password never reaches the server, so no
  ``log_statement`` setting can put it in a log.

Used by the ModelRegistry's writer/reader roles (``registry.roles``) and the FeatureView sync roles
(``features.syncrole``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import psycopg
from psycopg import sql

from mlinfra.engines import pg_scram

MAX_IDENTIFIER = 63  # bytes: PostgreSQL truncates longer names (NAMEDATALEN - 1)


class RoleConflict(Exception):
    """A role of the name exists and belongs to someone else; nothing was changed."""

    def __init__(self, role: str, holder: str | None, what: str = "registry") -> None:
        super().__init__(f"role {role!r} exists and is not this {what}'s ({holder or 'made outside the operator'})")
        self.role, self.holder = role, holder


def role_name(namespace: str, name: str, kind: str) -> str:
    """``mlinfra_<ns>_<name>_<digest>_<kind>``: injective over (namespace, name) — ``team-x/models`` and
    ``team/x-models`` read alike once made an identifier — by a 64-bit digest of the exact pair; the readable
    part is only for people. Kinds whose ``_<kind>`` endings differ and none ends another (``writer``,
    ``reader``, ``fv``) never give two objects one name."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:16]
    readable = re.sub(r"[^a-z0-9_]", "_", f"{namespace}_{name}".lower())
    room = MAX_IDENTIFIER - len("mlinfra_") - len(digest) - len(kind) - 2
    return f"mlinfra_{readable[:room].rstrip('_')}_{digest}_{kind}"


def comment_of(conn: psycopg.Connection[Any], name: str) -> tuple[bool, str | None]:
    """(the role exists, its comment)."""
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", (name,)
    ).fetchone()
    return (row is not None, str(row[0]) if row is not None and row[0] is not None else None)


def ensure_login_role(
    conn: psycopg.Connection[Any], name: str, password: str, mark: str | None, prefix: str, what: str = "registry"
) -> None:
    """Create the login role ``name`` marked ``mark`` (its comment), or check that the existing one carries
    ``mark`` (RoleConflict otherwise, nothing changed); then set its password and strip every attribute a
    login role of the operator must not have. ``prefix``: how the operator's marks of this kind begin (the
    holder named in the conflict is the mark without it). Runs in the caller's transaction."""
    role = sql.Identifier(name)
    exists, comment = comment_of(conn, name)
    if not exists:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        if mark:
            conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(mark)))
    elif mark and comment != mark:
        holder = comment.removeprefix(prefix) if comment else None
        raise RoleConflict(name, holder, what)
    conn.execute(
        sql.SQL(
            "ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}"
        ).format(role, sql.Literal(pg_scram.verifier(password)))  # the verifier: the password stays out of logs
    )
