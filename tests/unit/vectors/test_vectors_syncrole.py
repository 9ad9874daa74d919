"""The VectorIndex sync role's pure parts: its name and Secret's, the columns and privileges it is given, the
statements that give them and its row policy (rendered on a recording connection, no server)."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from mlinfra.api import vectorindex
from mlinfra.engines import pg_roles
from mlinfra.features import syncrole as fv_syncrole
from mlinfra.features import syncuser as fv_syncuser
from mlinfra.vectors import syncrole

pytestmark = pytest.mark.unit

# Every kind of role the operator makes: the FeatureView's, the registry's writer/reader/lineage roles.
OTHER_KINDS = (fv_syncrole.KIND, "writer", "reader", "lineage")


def source_of(**fields: Any) -> vectorindex.Source:
    return vectorindex.Source.model_validate(
        {
            "storeRef": {"name": "pg"},
            "table": "docs",
            "idColumn": "id",
            "vectorColumn": "embedding",
            "updatedAtColumn": "updated_at",
            **fields,
        }
    )


class Recorder:
    """A connection that renders every statement and answers every query with no row."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute(self, query: str | sql.Composable, params: Any = None) -> Recorder:
        self.statements.append(query if isinstance(query, str) else query.as_string())
        return self

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[Any]:
        return []


def test_names_are_bounded_injective_and_apart_from_every_other_kinds() -> None:
    assert len(syncrole.role_name("n" * 63, "v" * 253).encode()) <= pg_roles.MAX_IDENTIFIER
    assert syncrole.role_name("team-x", "docs") != syncrole.role_name("team", "x-docs")
    assert syncrole.role_name("a", "b").endswith("_vi")
    assert syncrole.role_name("a", "b") not in {pg_roles.role_name("a", "b", k) for k in OTHER_KINDS}
    # No kind's ending ends another's: two objects of two kinds never share a role name, whatever their names.
    assert not any(f"_{k}".endswith(f"_{syncrole.KIND}") or f"_{syncrole.KIND}".endswith(f"_{k}") for k in OTHER_KINDS)
    assert syncrole.mark("ns", "docs") == "mlinfra-operator: sync role of VectorIndex ns/docs"


def test_the_secret_name_is_bounded_and_ends_no_other_kinds() -> None:
    assert syncrole.secret_name("docs") == "docs-sync-source"
    long = syncrole.secret_name("v" * 253)
    assert len(long) <= 253 and long.endswith("-sync-source") and long != syncrole.secret_name("w" * 253)
    others = ("-conn", "-credentials", "-writer", "-reader", f"-{fv_syncrole.SECRET_SUFFIX}")
    assert not any(syncrole.secret_name("x").endswith(o) for o in (*others, f"-{fv_syncuser.SECRET_SUFFIX}"))


def test_the_columns_read_are_the_ones_the_spec_names_each_once() -> None:
    assert syncrole.read_columns(source_of()) == ("id", "embedding", "updated_at")
    full = source_of(deletedColumn="gone", payloadColumns=["lang", "id", "title"])
    assert syncrole.read_columns(full) == ("id", "embedding", "updated_at", "gone", "lang", "title")
    assert syncrole.source_table(source_of()) == ("public", "docs")
    assert syncrole.source_table(source_of(schema="emb")) == ("emb", "docs")


def test_the_privileges_are_column_reads_of_the_source_and_the_runs_bookkeeping() -> None:
    wanted = syncrole.wanted_privileges(source_of(payloadColumns=["lang"]), ("mlinfra", "vector_sync_runs_id_seq"))
    assert wanted[("public", "docs")] == {("SELECT", c) for c in ("id", "embedding", "updated_at", "lang")}
    assert wanted[syncrole.RUNS] == {
        ("SELECT", None),
        ("INSERT", None),
        *(
            ("UPDATE", c)
            for c in ("end_time", "rows", "upserted", "deleted", "bad_rows", "watermark", "outcome", "error")
        ),
    }
    assert wanted[syncrole.WATERMARKS] == {
        ("SELECT", None),
        ("INSERT", None),
        ("UPDATE", "updated_at_mark"),
        ("UPDATE", "last_id"),
        ("UPDATE", "updated_at"),
    }
    assert wanted[("mlinfra", "vector_sync_runs_id_seq")] == {("USAGE", None)}
    assert len(wanted) == 4
    granted = {p for privileges in wanted.values() for p, _ in privileges}
    assert granted == {"SELECT", "INSERT", "UPDATE", "USAGE"}  # no DELETE, TRUNCATE, REFERENCES, TRIGGER
    # The key columns a policy checks are never the role's to change.
    assert not {("UPDATE", "namespace"), ("UPDATE", "name")} & (wanted[syncrole.RUNS] | wanted[syncrole.WATERMARKS])
    assert ("mlinfra", "vector_sync_runs_id_seq") not in syncrole.wanted_privileges(source_of(), None)


def test_the_grants_are_exact_statements() -> None:
    conn: Any = Recorder()
    source = source_of(schema="emb", payloadColumns=["lang"])
    table = syncrole.source_table(source)
    assert pg_roles.set_privileges(conn, table, "role_vi", syncrole.wanted_privileges(source, None)[table])
    assert conn.statements[-2:] == [
        'REVOKE ALL ON TABLE "emb"."docs" FROM "role_vi"',
        'GRANT SELECT ("embedding", "id", "lang", "updated_at") ON TABLE "emb"."docs" TO "role_vi"',
    ]
    conn = Recorder()
    assert pg_roles.set_privileges(
        conn, syncrole.RUNS, "role_vi", syncrole.wanted_privileges(source, None)[syncrole.RUNS]
    )
    assert conn.statements[-3:] == [
        'GRANT INSERT ON TABLE "mlinfra"."vector_sync_runs" TO "role_vi"',
        'GRANT SELECT ON TABLE "mlinfra"."vector_sync_runs" TO "role_vi"',
        'GRANT UPDATE ("bad_rows", "deleted", "end_time", "error", "outcome", "rows", "upserted", "watermark") '
        'ON TABLE "mlinfra"."vector_sync_runs" TO "role_vi"',
    ]


def test_the_row_policy_names_the_index_literally_for_reads_and_writes() -> None:
    assert syncrole.own_rows("ns", "it's").as_string() == "namespace = 'ns' AND name = 'it''s'"
    conn: Any = Recorder()
    made = pg_roles.ensure_row_policy(conn, syncrole.WATERMARKS, "r_vi", syncrole.own_rows("ns", "d"), 3.0)
    assert made
    assert conn.statements[-1] == (
        'CREATE POLICY "r_vi" ON "mlinfra"."vector_watermarks" FOR ALL TO "r_vi" '
        "USING (namespace = 'ns' AND name = 'd') WITH CHECK (namespace = 'ns' AND name = 'd')"
    )
    assert any("lock_timeout" in s for s in conn.statements)  # the table lock is waited for briefly only
