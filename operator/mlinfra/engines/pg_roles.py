"""Login roles the operator makes on a PostgreSQL server it shares with other tenants: named, marked, guarded.

Roles are server-wide: every tenant of a server sees the same names. So each role the operator makes

- has a name injective over the (namespace, name) of the object it serves (:func:`role_name`), within
  PostgreSQL's 63-byte identifier limit;
- carries a comment naming that object (its *mark*). A role of the name with another comment (another
  object's, or none: made by someone else) is never altered or dropped — :class:`RoleConflict` — so one tenant
  can never reset another's password or take over a role a DBA made;
- gets its password as a SCRAM verifier (``engines.pg_scram``): the password never reaches the server, so no
  ``log_statement`` setting can put it in a log.

Used by the ModelRegistry's writer/reader roles (``registry.roles``) and lineage role
(``registry.lineagerole``), the FeatureView sync roles (``features.syncrole``) and the VectorIndex sync roles
(``vectors.syncrole``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
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
    ``reader``, ``lineage``, ``fv``, ``vi``) never give two objects one name."""
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


# --- privileges, exactly (the sync roles: registry.lineagerole) --------------------------------------------
# A least-privilege role must hold what it needs and nothing else, whatever was granted to it before (by hand,
# or by an older spec). These read what a role holds by grants of its own (never through PUBLIC) and change
# only what differs, so a reconcile that finds everything in place writes no catalog row.

Relation = tuple[str, str]  # (schema, name)
Privileges = frozenset[tuple[str, str | None]]  # (privilege, column or None for the whole relation)


def regclass_text(relation: Relation) -> str:
    return '"{}"."{}"'.format(*(part.replace('"', '""') for part in relation))


def granted_databases(conn: psycopg.Connection[Any], role: str) -> dict[str, frozenset[str]]:
    """Database -> the privileges ``role`` holds on it by grants of its own (pg_database is shared: every
    database of the server)."""
    rows = conn.execute(
        "SELECT o.datname, x.privilege_type FROM pg_database o, aclexplode(o.datacl) x "
        "JOIN pg_roles r ON r.oid = x.grantee WHERE r.rolname = %s",
        (role,),
    ).fetchall()
    return _by_object(rows)


def granted_schemas(conn: psycopg.Connection[Any], role: str) -> dict[str, frozenset[str]]:
    """Schema -> the privileges ``role`` holds on it by grants of its own (this database)."""
    rows = conn.execute(
        "SELECT o.nspname, x.privilege_type FROM pg_namespace o, aclexplode(o.nspacl) x "
        "JOIN pg_roles r ON r.oid = x.grantee WHERE r.rolname = %s",
        (role,),
    ).fetchall()
    return _by_object(rows)


def _by_object(rows: list[tuple[Any, ...]]) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for name, privilege in rows:
        out.setdefault(str(name), set()).add(str(privilege))
    return {name: frozenset(p) for name, p in out.items()}


def granted_relations(conn: psycopg.Connection[Any], role: str) -> list[Relation]:
    """Every relation (table, view, sequence...) of this database on which ``role`` holds a privilege of its
    own, on the whole relation or on one of its columns."""
    rows = conn.execute(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE EXISTS (SELECT 1 FROM aclexplode(c.relacl) x
                         WHERE x.grantee = (SELECT oid FROM pg_roles WHERE rolname = %(r)s))
              OR EXISTS (SELECT 1 FROM pg_attribute a, aclexplode(a.attacl) x WHERE a.attrelid = c.oid
                         AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = %(r)s))""",
        {"r": role},
    ).fetchall()
    return sorted((str(s), str(t)) for s, t in rows)


def held(conn: psycopg.Connection[Any], relation: Relation, role: str) -> Privileges:
    """What ``role`` holds on ``relation`` by grants of its own: table-wide and per column."""
    rows = conn.execute(
        """SELECT x.privilege_type, NULL FROM pg_class c, aclexplode(c.relacl) x
             WHERE c.oid = to_regclass(%(rel)s) AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = %(r)s)
           UNION ALL
           SELECT x.privilege_type, a.attname FROM pg_attribute a, aclexplode(a.attacl) x
             WHERE a.attrelid = to_regclass(%(rel)s) AND a.attnum > 0 AND NOT a.attisdropped
               AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = %(r)s)""",
        {"rel": regclass_text(relation), "r": role},
    ).fetchall()
    return frozenset((str(p), str(c) if c is not None else None) for p, c in rows)


def set_privileges(conn: psycopg.Connection[Any], relation: Relation, role: str, wanted: Privileges) -> bool:
    """Make ``role``'s own privileges on ``relation`` exactly ``wanted``; True when something was changed.
    GRANT and REVOKE wait for no lock of the table's readers and writers."""
    if held(conn, relation, role) == wanted:
        return False
    target, grantee = sql.Identifier(*relation), sql.Identifier(role)
    is_sequence = conn.execute(
        "SELECT relkind = 'S' FROM pg_class WHERE oid = to_regclass(%s)", (regclass_text(relation),)
    ).fetchone()
    kind = sql.SQL("SEQUENCE" if is_sequence and is_sequence[0] else "TABLE")
    # Revoking table-wide privileges revokes them on every column too: start from nothing.
    conn.execute(sql.SQL("REVOKE ALL ON {} {} FROM {}").format(kind, target, grantee))
    by_column: dict[str, list[str]] = {}
    whole = sorted(p for p, column in wanted if column is None)
    for privilege, column in wanted:
        if column is not None and privilege not in whole:
            by_column.setdefault(privilege, []).append(column)
    for privilege in whole:
        conn.execute(sql.SQL("GRANT {} ON {} {} TO {}").format(sql.SQL(privilege), kind, target, grantee))
    for privilege, columns in sorted(by_column.items()):
        cols = sql.SQL(", ").join(map(sql.Identifier, sorted(columns)))
        conn.execute(sql.SQL("GRANT {} ({}) ON {} {} TO {}").format(sql.SQL(privilege), cols, kind, target, grantee))
    return True


# --- a login role's whole privileges in one database (the sync roles: vectors.syncrole), on the helpers above


def grant_exactly(
    conn: psycopg.Connection[Any],
    role: str,
    database: str,
    schemas: Iterable[str],
    wanted: Mapping[Relation, Privileges],
) -> None:
    """Make ``role``'s own privileges in this database exactly: ``CONNECT`` on ``database``, ``USAGE`` on
    ``schemas``, ``wanted`` on each relation; every other relation or schema it holds something on (granted by
    hand, or for an earlier spec) loses it. What ``PUBLIC`` holds is left alone (every role's, the DBA's to
    change). Runs in the caller's transaction."""
    grantee = sql.Identifier(role)
    if "CONNECT" not in granted_databases(conn, role).get(database, frozenset()):
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), grantee))
    wanted_schemas, held_schemas = set(schemas), granted_schemas(conn, role)
    for nsp in sorted(wanted_schemas):
        if held_schemas.get(nsp) != frozenset({"USAGE"}):
            if nsp in held_schemas:  # CREATE as well, granted by hand
                conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(sql.Identifier(nsp), grantee))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(nsp), grantee))
    for relation in sorted(set(wanted) | set(granted_relations(conn, role))):
        set_privileges(conn, relation, role, wanted.get(relation, frozenset()))
    for nsp in sorted(set(held_schemas) - wanted_schemas):
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(sql.Identifier(nsp), grantee))


def serial_sequence(conn: psycopg.Connection[Any], relation: Relation, column: str = "id") -> Relation | None:
    """The sequence behind ``relation``'s serial ``column`` (an INSERT needs its USAGE), or None."""
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = pg_get_serial_sequence(%s, %s)::regclass",
        (regclass_text(relation), column),
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def ensure_row_policy(
    conn: psycopg.Connection[Any], relation: Relation, role: str, rows: sql.Composable, lock_timeout: float
) -> bool:
    """The policy named after ``role`` on ``relation`` (row level security on): ``role`` reads and writes only
    ``rows`` (``USING`` and ``WITH CHECK``). Created once, True then; an existing one is left as it is (its
    condition names the role's object, which a role's name never changes). CREATE POLICY locks the table,
    briefly: it waits at most ``lock_timeout`` seconds for a long holder (``LockNotAvailable`` then). Runs in
    the caller's transaction."""
    found = conn.execute(
        "SELECT 1 FROM pg_policies WHERE schemaname = %s AND tablename = %s AND policyname = %s", (*relation, role)
    ).fetchone()
    if found:
        return False
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout * 1000)}ms",))
    conn.execute(
        sql.SQL("CREATE POLICY {} ON {} FOR ALL TO {} USING ({}) WITH CHECK ({})").format(
            sql.Identifier(role), sql.Identifier(*relation), sql.Identifier(role), rows, rows
        )
    )
    return True


def drop_marked(conn: psycopg.Connection[Any], name: str, mark: str) -> bool:
    """Drop the role ``name`` while it carries ``mark``, its privileges and the policies naming only it in this
    database first (``DROP OWNED BY``); True when dropped. Absent, or without the mark (someone else's): left
    alone, False. Runs in the caller's transaction."""
    exists, comment = comment_of(conn, name)
    if not exists or comment != mark:
        return False
    role = sql.Identifier(name)
    conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
    conn.execute(sql.SQL("DROP ROLE {}").format(role))
    return True


GRANTS_LOCK = "mlinfra:grants"


def lock_grants(conn: psycopg.Connection[Any]) -> None:
    """Serialise the operator's role and privilege changes in this database until the transaction ends.

    Two transactions granting on the same object (the bookkeeping schema, a shared table, the database row)
    at once make PostgreSQL fail one of them ("tuple concurrently updated"): several views reconciled together
    would fail each other's grants. A per-role lock cannot prevent that; this one key, per database, does."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (GRANTS_LOCK,))


def public_holds(conn: psycopg.Connection[Any], schema: str, privilege: str) -> bool:
    """Whether PUBLIC (every role) holds ``privilege`` on ``schema`` (an ACL entry for grantee 0)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a "
        "WHERE n.nspname = %s AND a.grantee = 0 AND a.privilege_type = %s)",
        (schema, privilege),
    ).fetchone()
    return bool(row and row[0])
