"""mlinfra.backup.neo4j against real Neo4j Community servers: export -> restore into an empty server gives
the same graph (every property with its exact Cypher type, labels, self-loops, parallel relationships, the
schema); an export taken while a writer commits holds whole transactions only, or is refused.

The export covers a whole database, and the session's shared server is wiped by other test modules, so this
module starts two servers of its own: the source and the restore target.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import neo4j
import pytest

from mlinfra.backup import neo4j as backup_neo4j
from mlinfra.devenv import procs
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.engines import connection

pytestmark = pytest.mark.integration

Servers = tuple[Neo4jServer, Neo4jServer]


def conn_of(server: Neo4jServer) -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine(
        "neo4j", "127.0.0.1", server.password, port=server.port, username=server.user
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with procs.ProcStack() as stack:
        # One after the other, from this thread: a server started from a worker thread would be stopped when
        # that thread ends (the platform's processes die with the thread that started them).
        yield (
            Neo4jServer(tmp_path_factory.mktemp("neo4j-src")).start(stack),
            Neo4jServer(tmp_path_factory.mktemp("neo4j-dst")).start(stack),
        )


def wipe(driver: neo4j.Driver) -> None:
    """Nothing left: no node, no constraint, no index but the two token lookup indexes."""
    while driver.execute_query("MATCH (n) WITH n LIMIT 10000 DETACH DELETE n RETURN count(*) AS c").records[0]["c"]:
        pass
    for record in driver.execute_query("SHOW CONSTRAINTS YIELD name").records:
        driver.execute_query(f"DROP CONSTRAINT {backup_neo4j.quote(record['name'])}")
    for record in driver.execute_query("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP'").records:
        driver.execute_query(f"DROP INDEX {backup_neo4j.quote(record['name'])}")


@pytest.fixture
def source(servers: Servers) -> Iterator[neo4j.Driver]:
    with servers[0].driver() as driver:
        wipe(driver)
        yield driver


@pytest.fixture
def target(servers: Servers) -> Iterator[neo4j.Driver]:
    with servers[1].driver() as driver:
        wipe(driver)
        yield driver


# --- the graph -----------------------------------------------------------------------------------------

# Every property type Neo4j stores, as Cypher literals (so the server, not the driver, decides each type).
EVERY_TYPE = """{
  int: 42, neg: -7, big: 9223372036854775807, small: -9223372036854775808,
  float: 1.0, frac: 0.1, neg0: -0.0, huge: 1.7976931348623157e308, inf: 1.0/0.0, nan: 0.0/0.0,
  str: 'héllo \\u2603 "quoted" `tick`', empty: '', yes: true, no: false,
  ints: [1, 2, 3], floats: [1.0, 2.5], strs: ['a', 'b'], bools: [true, false],
  date: date('2024-02-29'), old: date('0001-01-01'),
  time: time('12:34:56.123456789+02:00'), time_z: time('01:00Z'), ltime: localtime('23:59:59.999999999'),
  dt_zone: datetime('2024-03-31T02:30:00.123456789[Europe/Berlin]'),
  dt_fold: datetime('2024-10-27T02:30:00.000000005+01:00[Europe/Berlin]'),
  dt_offset: datetime('2024-01-01T00:00:00.000000001-05:30'), dt_z: datetime('2024-01-01T12:00:00Z'),
  dt_utc: datetime('2024-01-01T12:00:00[UTC]'),
  ldt: localdatetime('2024-01-01T23:59:59.999999999'),
  dur: duration('P1Y2M3DT4H5M6.000000007S'), dur_neg: duration({days: -1, seconds: 5}), dur_zero: duration('PT0S'),
  p2: point({x: 1.5, y: -2}), p3: point({x: 1, y: 2, z: 3}),
  g2: point({longitude: 12.5, latitude: 55.1}), g3: point({longitude: 1, latitude: 2, height: 3}),
  dates: [date('2020-01-01'), date('2021-12-31')], times: [time('10:00+01:00')], ltimes: [localtime('10:00')],
  dts: [datetime('2024-01-01T00:00Z'), datetime('2024-06-01T00:00[Europe/Paris]')],
  ldts: [localdatetime('2024-01-01T00:00')], durs: [duration('P1D')], points: [point({x: 1, y: 2})],
  gpoints: [point({longitude: 1, latitude: 2})]
}"""


def build(driver: neo4j.Driver, bulk: int = 0) -> None:
    """The graph of the round-trip test: every property type on nodes and relationships, multiple labels,
    labels and types that need quoting, a node without labels or properties, self-loops, parallel
    relationships (equal and different properties), a constraint, indexes, and ``bulk`` plain nodes in a
    chain (more than one batch)."""
    driver.execute_query("CREATE CONSTRAINT person_email FOR (p:Person) REQUIRE p.email IS UNIQUE")
    driver.execute_query("CREATE INDEX person_name FOR (p:Person) ON (p.name, p.born)")
    driver.execute_query("CREATE INDEX knows_since FOR ()-[k:KNOWS]-() ON (k.since)")
    driver.execute_query("CREATE TEXT INDEX thing_str FOR (t:Thing) ON (t.str)")
    driver.execute_query(f"CREATE (:Thing:`Odd label`:`back``tick` {EVERY_TYPE})")
    driver.execute_query(
        "CREATE (a:Person {email: 'a@x', name: 'Ann', born: 1990}), (b:Person:Admin {email: 'b@x', name: 'Bob'}), "
        "(c {only: 'no label'}), (d), (e:Person {email: 'e@x', name: 'Eve', tags: []}) "
        "CREATE (a)-[:KNOWS {since: 2001}]->(b), (a)-[:KNOWS {since: 2001}]->(b), (a)-[:KNOWS {since: 2002}]->(b), "
        "(b)-[:KNOWS]->(a), (a)-[:SELF {n: 1}]->(a), (a)-[:SELF {n: 1}]->(a), (d)-[:`odd type ``x`]->(d), "
        "(c)-[:TO]->(d), (e)-[:KNOWS]->(c)"
    )
    driver.execute_query(
        f"MATCH (t:Thing), (a:Person {{email: 'a@x'}}) CREATE (t)-[:HAS {EVERY_TYPE}]->(a), (t)-[:HAS]->(t)"
    )
    if bulk:
        driver.execute_query(
            "UNWIND range(1, $bulk) AS i CREATE (:Bulk {i: i, f: toFloat(i) / 7, s: 'n' + i, "
            "at: datetime({epochSeconds: i, nanosecond: i, timezone: 'Asia/Tokyo'})})",
            bulk=bulk,
        )
        driver.execute_query("MATCH (a:Bulk), (b:Bulk) WHERE b.i = a.i + 1 CREATE (a)-[:NEXT {gap: b.i - a.i}]->(b)")


# --- what a graph is, in a comparable form -----------------------------------------------------------


def describe(value: Any) -> Any:
    """A driver value with its exact type: int 1 and float 1.0 differ, -0.0 and 0.0 differ, NaN equals NaN,
    a datetime carries its zone or offset."""
    if isinstance(value, list):
        return ("list", tuple(describe(item) for item in value))
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(value))
    tz = getattr(value, "tzinfo", None)
    return (type(value).__name__, repr(value), str(tz) if tz is not None else None)


# Per property, the server's own type name and, for datetimes, the server's timezone (a zone id or an
# offset): the driver cannot tell 'Z' from '[UTC]'.
_SERVER_TYPES = (
    "[k IN keys({v}) | [k, valueType({v}[k]), CASE WHEN valueType({v}[k]) STARTS WITH 'ZONED DATETIME' "
    "THEN {v}[k].timezone WHEN valueType({v}[k]) STARTS WITH 'LIST<ZONED DATETIME' "
    "THEN reduce(s = '', x IN {v}[k] | s + x.timezone + ';') END]]"
)


def props_of(props: dict[str, Any], types: list[list[Any]]) -> tuple[Any, ...]:
    server = {row[0]: (row[1], row[2]) for row in types}
    return tuple(sorted((key, describe(value), server[key]) for key, value in props.items()))


def snapshot(driver: neo4j.Driver) -> tuple[collections.Counter[Any], collections.Counter[Any]]:
    """Every node as (labels, properties) and every relationship as (type, start node, end node,
    properties); the graph is built so that every node's description is unique (checked)."""
    nodes = {
        r["id"]: (tuple(sorted(r["labels"])), props_of(r["props"], r["types"]))
        for r in driver.execute_query(
            "MATCH (n) RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS props, "
            + _SERVER_TYPES.format(v="n")
            + " AS types"
        ).records
    }
    assert len(set(nodes.values())) == len(nodes), "test graph: every node must be told apart by its content"
    rels = collections.Counter(
        (r["type"], nodes[r["a"]], nodes[r["b"]], props_of(r["props"], r["types"]))
        for r in driver.execute_query(
            "MATCH (a)-[r]->(b) RETURN type(r) AS type, elementId(a) AS a, elementId(b) AS b, "
            "properties(r) AS props, " + _SERVER_TYPES.format(v="r") + " AS types"
        ).records
    )
    return collections.Counter(nodes.values()), rels


def schema(driver: neo4j.Driver) -> set[tuple[Any, ...]]:
    constraints = driver.execute_query(
        "SHOW CONSTRAINTS YIELD name, type, entityType, labelsOrTypes, properties"
    ).records
    indexes = driver.execute_query(
        "SHOW INDEXES YIELD name, type, entityType, labelsOrTypes, properties, owningConstraint, state "
        "WHERE type <> 'LOOKUP'"
    ).records
    lookups = driver.execute_query("SHOW INDEXES YIELD type, entityType WHERE type = 'LOOKUP'").records
    return (
        {("constraint", *(tuple(v) if isinstance(v, list) else v for v in r.values())) for r in constraints}
        | {("index", *(tuple(v) if isinstance(v, list) else v for v in r.values())) for r in indexes}
        | {("lookup", r["entityType"]) for r in lookups}
    )


# --- round trip ------------------------------------------------------------------------------------------


def test_export_and_restore_give_the_same_graph(
    servers: Servers, source: neo4j.Driver, target: neo4j.Driver, tmp_path: Path
) -> None:
    build(source, bulk=backup_neo4j.BATCH + 500)
    want_nodes, want_rels = snapshot(source)
    want_schema = schema(source)

    meta = backup_neo4j.take(conn_of(servers[0]), tmp_path, timeout=120)
    assert meta["nodes"] == sum(want_nodes.values()) and meta["relationships"] == sum(want_rels.values())
    assert set(meta["labels"]) == {"Thing", "Odd label", "back`tick", "Person", "Admin", "Bulk"}
    assert set(meta["relationshipTypes"]) == {"KNOWS", "SELF", "odd type `x", "TO", "HAS", "NEXT"}
    assert meta["attempts"] == 1 and meta["version"].startswith("5.") and meta["transactionStart"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(backup_neo4j.FILES)
    assert json.loads((tmp_path / backup_neo4j.METADATA).read_text()) == meta

    counts = backup_neo4j.restore(tmp_path, conn_of(servers[1]), timeout=180)
    assert counts == {"nodes": meta["nodes"], "relationships": meta["relationships"], "constraints": 1, "indexes": 3}
    got_nodes, got_rels = snapshot(target)
    assert got_nodes == want_nodes
    assert got_rels == want_rels
    assert schema(target) == want_schema
    # The scaffolding is gone: no temporary label, property or index.
    leftovers = target.execute_query(
        f"MATCH (n) WHERE n:{backup_neo4j.RESTORE_LABEL} OR n.{backup_neo4j.RESTORE_KEY} IS NOT NULL "
        "RETURN count(n) AS c"
    ).records[0]["c"]
    assert leftovers == 0
    assert not target.execute_query(
        "SHOW INDEXES YIELD name WHERE name = $name", name=backup_neo4j.RESTORE_INDEX
    ).records
    # The constraint is enforced on the restored graph.
    with pytest.raises(neo4j.exceptions.ConstraintError):
        target.execute_query("CREATE (:Person {email: 'a@x'})")


def test_restore_refuses_a_database_with_nodes(
    servers: Servers, source: neo4j.Driver, target: neo4j.Driver, tmp_path: Path
) -> None:
    build(source)
    backup_neo4j.take(conn_of(servers[0]), tmp_path, timeout=60)
    target.execute_query("CREATE (:Precious {keep: true})")
    before = schema(target)
    with pytest.raises(backup_neo4j.NotEmpty) as refused:
        backup_neo4j.restore(tmp_path, conn_of(servers[1]), timeout=60)
    assert "empty database" in str(refused.value) and servers[1].password not in str(refused.value)
    nodes, rels = snapshot(target)
    assert list(nodes) == [(("Precious",), (("keep", describe(True), ("BOOLEAN NOT NULL", None)),))]
    assert not rels and schema(target) == before


def test_restore_refuses_what_is_not_an_export(servers: Servers, target: neo4j.Driver, tmp_path: Path) -> None:
    with pytest.raises(backup_neo4j.Neo4jBackupError, match="not a Neo4j export"):
        backup_neo4j.restore(tmp_path, conn_of(servers[1]), timeout=30)
    assert snapshot(target) == (collections.Counter(), collections.Counter())


# --- consistency under concurrent writes ---------------------------------------------------------------


class PairWriter(threading.Thread):
    """Waits until an export transaction runs, then commits ``pairs`` transactions of two nodes and a
    relationship each, ``gap`` seconds apart (so that commits land in the node scan and in the relationship
    scan alike). ``proven``: right after its first commit, the export transaction it saw was still running,
    so that commit happened inside it."""

    def __init__(self, server: Neo4jServer, pairs: int, gap: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.server, self.pairs, self.gap = server, pairs, gap
        self.proven = False
        self.written = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def _export_txs(self, driver: neo4j.Driver) -> set[str]:
        records = driver.execute_query("SHOW TRANSACTIONS YIELD transactionId, metaData, status").records
        return {r["transactionId"] for r in records if (r["metaData"] or {}).get("app") == "mlinfra-backup"}

    def run(self) -> None:
        try:
            with self.server.driver() as driver:
                seen: set[str] = set()
                while not seen and not self.stop.is_set():
                    seen = self._export_txs(driver)
                for i in range(self.pairs):
                    if i and self.stop.wait(self.gap):
                        return
                    driver.execute_query("CREATE (:PairA {n: $n})-[:PAIR {n: $n}]->(:PairB {n: $n})", n=i)
                    self.written += 1
                    if i == 0:
                        self.proven = bool(seen & self._export_txs(driver))
        except BaseException as exc:
            self.error = exc


def check_whole_pairs(staging: Path) -> int:
    """The export holds whole pairs only (both nodes and their relationship, or none), and every relationship's
    end nodes; the number of pairs."""
    nodes = {row["id"]: row for row in backup_neo4j.read_jsonl(staging / backup_neo4j.NODES)}
    a = {row["props"]["n"]: node_id for node_id, row in nodes.items() if row["labels"] == ["PairA"]}
    b = {row["props"]["n"]: node_id for node_id, row in nodes.items() if row["labels"] == ["PairB"]}
    pairs = {}
    for row in backup_neo4j.read_jsonl(staging / backup_neo4j.RELATIONSHIPS):
        assert row["start"] in nodes and row["end"] in nodes, f"relationship {row['id']} has an end node missing"
        if row["type"] == "PAIR":
            pairs[row["props"]["n"]] = (row["start"], row["end"])
    assert set(a) == set(b) == set(pairs)
    assert all(pairs[n] == (a[n], b[n]) for n in pairs)
    return len(pairs)


def base_graph(driver: neo4j.Driver, size: int) -> None:
    driver.execute_query(
        "UNWIND range(1, $size) AS i CREATE (a:Base {i: i, s: 'padding ' + i})-[:NEXT]->(b:Base {i: -i})", size=size
    )


def test_an_export_during_writes_holds_whole_transactions_only(
    servers: Servers, source: neo4j.Driver, tmp_path: Path
) -> None:
    base_graph(source, 20_000)
    writer = PairWriter(servers[0], pairs=100, gap=0.02)
    writer.start()
    try:
        meta = backup_neo4j.take(conn_of(servers[0]), tmp_path, timeout=300, attempts=20, pause=0.2)
    finally:
        writer.join(60)  # it ends by itself once it has written all its pairs
        writer.stop.set()
    assert writer.error is None and writer.written == 100  # it saw the export running and wrote all
    exported = check_whole_pairs(tmp_path)
    assert meta["nodes"] == 40_000 + 2 * exported and meta["relationships"] == 20_000 + exported
    if writer.proven:  # a commit inside the first attempt: that attempt was thrown away
        assert meta["attempts"] >= 2


def test_an_export_that_saw_commits_is_refused_not_kept(servers: Servers, source: neo4j.Driver, tmp_path: Path) -> None:
    """With one attempt allowed, a commit proven to happen inside the export transaction must fail the
    export: nothing is left in the staging directory. The round is repeated on a bigger graph when the
    writer could not prove its commit landed inside (the export was faster than the writer)."""
    size = 20_000
    for _ in range(3):
        base_graph(source, size)
        writer = PairWriter(servers[0], pairs=1)
        writer.start()
        try:
            meta: dict[str, Any] | None = None
            try:
                meta = backup_neo4j.take(conn_of(servers[0]), tmp_path, timeout=300, attempts=1)
            except backup_neo4j.ConcurrentWrites as exc:
                assert "1 export attempts" in str(exc)
                assert not any(tmp_path.iterdir())
        finally:
            writer.stop.set()
            writer.join(60)
        assert writer.error is None
        if writer.proven:
            assert meta is None, "a commit inside the export transaction went unnoticed"
            return
        assert meta is not None
        check_whole_pairs(tmp_path)
        size *= 2
    pytest.fail("the writer never committed inside an export transaction: the check was not exercised")


def test_export_files_are_gzipped_json_lines(servers: Servers, source: neo4j.Driver, tmp_path: Path) -> None:
    source.execute_query("CREATE (:A {x: 1})-[:R {y: 2.0}]->(:B {z: date('2024-01-01')})")
    backup_neo4j.take(conn_of(servers[0]), tmp_path, timeout=60)
    with gzip.open(tmp_path / backup_neo4j.NODES, "rt") as lines:
        rows = sorted((json.loads(line) for line in lines), key=lambda r: r["labels"])
    assert [(r["labels"], r["props"]) for r in rows] == [
        (["A"], {"x": 1}),
        (["B"], {"z": {"$t": "date", "v": [2024, 1, 1]}}),
    ]
    (rel,) = list(backup_neo4j.read_jsonl(tmp_path / backup_neo4j.RELATIONSHIPS))
    assert rel["type"] == "R" and rel["props"] == {"y": 2.0} and isinstance(rel["props"]["y"], float)
    assert (rel["start"], rel["end"]) == (rows[0]["id"], rows[1]["id"])


# --- deadlines -----------------------------------------------------------------------------------------------


def test_an_export_longer_than_its_timeout_ends_with_a_deadline_error(
    servers: Servers, source: neo4j.Driver, tmp_path: Path
) -> None:
    base_graph(source, 50_000)
    with pytest.raises(connection.DeadlineExceeded) as late:
        backup_neo4j.take(conn_of(servers[0]), tmp_path, timeout=0.5)
    assert "Neo4j export" in str(late.value) and servers[0].password not in str(late.value)
    # The server ended the transaction: nothing of the export is still running there.
    assert not [
        r
        for r in source.execute_query("SHOW TRANSACTIONS YIELD metaData").records
        if (r["metaData"] or {}).get("app") == "mlinfra-backup"
    ]


def test_a_frozen_server_cannot_hold_an_export_or_a_restore(
    servers: Servers, target: neo4j.Driver, tmp_path: Path
) -> None:
    """SIGSTOP: the server accepts connections (the kernel does) and never answers. Both calls end with
    DeadlineExceeded (the driver's limits or, past them, the caller leaving the worker thread)."""
    with servers[0].driver() as driver:
        driver.execute_query("CREATE (:A)-[:R]->(:B)")
    backup_neo4j.take(conn_of(servers[0]), tmp_path / "ok", timeout=60)
    calls: list[tuple[Neo4jServer, Callable[[], object]]] = [
        (servers[0], lambda: backup_neo4j.take(conn_of(servers[0]), tmp_path / "frozen", timeout=3)),
        (servers[1], lambda: backup_neo4j.restore(tmp_path / "ok", conn_of(servers[1]), timeout=3)),
    ]
    for server, call in calls:
        assert server.proc is not None
        server.proc.signal(signal.SIGSTOP)
        try:
            with pytest.raises((connection.DeadlineExceeded, neo4j.exceptions.DriverError)) as stuck:
                call()
        finally:
            server.proc.signal(signal.SIGCONT)
        assert server.password not in str(stuck.value)
