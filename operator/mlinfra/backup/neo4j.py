"""Neo4j Community: a consistent logical export of one database, and its import into an empty one.

Community has no online backup (``neo4j-admin database dump`` needs the database stopped), so :func:`take`
reads the graph over Bolt: every node (element id, labels, properties) and every relationship (element id,
type, end points, properties) streamed in batches into gzipped JSON lines, and the schema (constraints and
indexes with their ``createStatement``) into a JSON file.

Consistency. A Neo4j read transaction is *not* a snapshot: Neo4j's isolation is read-committed and
Community's record storage has no versions, so a scan sees what other transactions commit while it runs (a
node and a relationship committed together can land on either side of the scan). One read transaction is
therefore not enough. :func:`take` brackets the export with the database's last-transaction marker (the Bolt
bookmark a read transaction gets back, which names the newest closed transaction): one read before the
export transaction begins, one after it ended. Equal markers: nothing committed in between, so every read
saw the same committed state, the one of that transaction id. Different: the attempt is thrown away and
taken again after a pause, up to ``attempts`` times; a database that never pauses for that long gets
:class:`ConcurrentWrites` (clearly, never an inconsistent export). A busy graph is backed up in a quiet
moment, or with its writers paused. (The marker moves when a transaction is closed, just after its changes
were applied, so one applied during the export has moved it by the time the second marker is read. Without
this check, the writer of tests/integration/test_backup_neo4j.py makes the single transaction export
relationships whose end nodes it had missed: pairs committed during the relationship scan.)

Properties round-trip with their exact Cypher types: JSON strings, booleans, integers and finite floats as
themselves; everything else as ``{"$t": tag, ...}`` (a property value is never a map, so a JSON object is
always a tag): bytes, non-finite floats, Date, Time, LocalTime, DateTime (a zone id vs an offset, which the
driver cannot tell apart for offset 0, so the export asks the server for each datetime's ``timezone``),
LocalDateTime, Duration, Point (2D/3D, cartesian/WGS-84). Limits of the Python driver, said here rather than
hidden: dates outside years 1-9999 cannot be read (the export fails naming the driver's error), an empty list
comes back without its element type (it is restored as an empty list), and a Time offset keeps whole minutes.

:func:`restore` loads an export into an EMPTY database (it refuses one with any node): nodes in batches,
each carrying a temporary label and property (its old element id, indexed) so that relationships find their
end points in batches; then the schema; then the temporary label, property and index go. The schema comes
after the data on purpose: populating an index once over all nodes is cheaper than maintaining it on every
insert, and a consistent export cannot violate a constraint its source enforced. Each batch is one
transaction, never retried (a commit whose answer was lost could be applied twice); a failed restore leaves
a partial database, which the next attempt refuses: restore into a new, empty database.

Deadlines: ``timeout`` bounds the whole call. The server ends each transaction at the time left (the
transaction timeout); the driver bounds connecting; and since the driver waits for an answer on a connection
it holds without a limit of its own (see :mod:`mlinfra.engines.probe`), the work runs in a thread that the
caller leaves after ``timeout + GRACE`` with :class:`connection.DeadlineExceeded`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import gzip
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import neo4j as neo4j_lib
import pytz  # type: ignore[import-untyped]  # the driver's own time zones (a dependency of neo4j, no stubs)
from neo4j import spatial
from neo4j import time as neo4j_time

from mlinfra.engines import connection

T = TypeVar("T")

FORMAT = 1
NODES = "nodes.jsonl.gz"
RELATIONSHIPS = "relationships.jsonl.gz"
SCHEMA = "schema.json"
METADATA = "neo4j-export.json"
FILES = (NODES, RELATIONSHIPS, SCHEMA, METADATA)

# Records per driver fetch and per restore transaction: memory stays bounded by this, not by the graph.
BATCH = 2000
# Seconds the caller waits past ``timeout`` for the driver's own limits before leaving the worker thread.
GRACE = 5.0
# The longest one connect may take (within the call's budget).
CONNECT_TIMEOUT = 30.0

# The restore's scaffolding: a label on every restored node and its old element id, indexed.
RESTORE_LABEL = "MlinfraRestoreNode"
RESTORE_KEY = "mlinfra_restore_id"
RESTORE_INDEX = "mlinfra_restore_ids"
_RESTORE_INDEX_DDL = f"CREATE INDEX {RESTORE_INDEX} IF NOT EXISTS FOR (n:{RESTORE_LABEL}) ON (n.{RESTORE_KEY})"

_TX_METADATA = {"app": "mlinfra-backup"}
_WGS84 = frozenset({4326, 4979})
_CARTESIAN = frozenset({7203, 9157})

# Per entity: its properties, and for each datetime property (or list of them) the server's ``timezone``
# (a zone id such as "Europe/Berlin", or an offset such as "Z" / "+05:30"), which the driver loses.
_ZONES = (
    "[k IN keys({v}) WHERE valueType({v}[k]) STARTS WITH 'ZONED DATETIME' "
    "OR valueType({v}[k]) STARTS WITH 'LIST<ZONED DATETIME' | "
    "[k, CASE WHEN valueType({v}[k]) STARTS WITH 'LIST' THEN [x IN {v}[k] | x.timezone] "
    "ELSE {v}[k].timezone END]] AS zones"
)
_NODES_QUERY = "MATCH (n) RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS props, " + _ZONES.format(
    v="n"
)
_RELS_QUERY = (
    "MATCH (a)-[r]->(b) RETURN elementId(r) AS id, type(r) AS type, elementId(a) AS start, elementId(b) AS end, "
    "properties(r) AS props, " + _ZONES.format(v="r")
)


class Neo4jBackupError(Exception):
    """A Neo4j export or import that cannot be done (the message says why; never a password)."""


class ConcurrentWrites(Neo4jBackupError):
    """Every attempt of an export saw transactions commit while it read: no consistent export was taken."""


class NotEmpty(Neo4jBackupError):
    """A restore into a database that already holds nodes (refused: restores go into an empty database)."""


# --- property values <-> JSON, exact types -------------------------------------------------------------


def encode_value(value: Any, zone: Any = None) -> Any:
    """A property value as JSON (see the module docstring); ``zone``: the server's ``timezone`` of a
    datetime (a list of them for a list of datetimes). Pure."""
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$t": "float", "v": repr(value)}
    if isinstance(value, bytes | bytearray):
        # Hex, not base64: base64 is the connection Secret's alone (build/layers.py); byte arrays are rare.
        return {"$t": "bytes", "hex": bytes(value).hex()}
    if isinstance(value, list):
        zones = zone if isinstance(zone, list) else [None] * len(value)
        return [encode_value(item, item_zone) for item, item_zone in zip(value, zones, strict=True)]
    if isinstance(value, neo4j_time.DateTime):
        return _encode_datetime(value, zone)
    if isinstance(value, neo4j_time.Date):
        return {"$t": "date", "v": [value.year, value.month, value.day]}
    if isinstance(value, neo4j_time.Time):
        clock = [value.hour, value.minute, value.second, value.nanosecond]
        if value.tzinfo is None:
            return {"$t": "localtime", "v": clock}
        offset = value.utc_offset()
        return {"$t": "time", "v": clock, "offset": int(offset.total_seconds()) if offset is not None else 0}
    if isinstance(value, neo4j_time.Duration):
        return {"$t": "duration", "v": [value.months, value.days, value.seconds, value.nanoseconds]}
    if isinstance(value, spatial.Point):
        return {"$t": "point", "srid": value.srid, "v": [float(c) for c in value]}
    raise Neo4jBackupError(f"a property value of type {type(value).__name__} has no export encoding")


def _encode_datetime(value: neo4j_time.DateTime, zone: Any) -> dict[str, Any]:
    if value.tzinfo is None:
        return {"$t": "localdatetime", "v": _clock(value)}
    utc = value.astimezone(pytz.utc)
    if not isinstance(zone, str) or not zone:
        # No server answer (a caller encoding a driver value alone): what the driver's tzinfo says.
        zone = getattr(value.tzinfo, "zone", None) or _offset_text(value.utcoffset())
    return {"$t": "datetime", "utc": _clock(utc), "tz": zone}


def _clock(value: neo4j_time.DateTime) -> list[int]:
    return [value.year, value.month, value.day, value.hour, value.minute, value.second, value.nanosecond]


def _offset_text(offset: datetime.timedelta | None) -> str:
    seconds = int(offset.total_seconds()) if offset is not None else 0
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")


def _tz(zone: str) -> datetime.tzinfo:
    """A zone id as a named zone (the driver sends its name), an offset as a ``datetime.timezone`` (the
    driver sends the offset: ``Z`` stays an offset, not the zone ``UTC``)."""
    if zone == "Z":
        return datetime.UTC
    if zone[:1] in "+-":
        sign = -1 if zone[0] == "-" else 1
        parts = [int(p) for p in zone[1:].split(":")]
        seconds = parts[0] * 3600 + (parts[1] if len(parts) > 1 else 0) * 60 + (parts[2] if len(parts) > 2 else 0)
        return datetime.timezone(datetime.timedelta(seconds=sign * seconds))
    return cast(datetime.tzinfo, pytz.timezone(zone))


def decode_value(data: Any) -> Any:
    """The driver value of :func:`encode_value`'s JSON. Pure."""
    if isinstance(data, list):
        return [decode_value(item) for item in data]
    if not isinstance(data, dict):
        return data
    tag = data.get("$t")
    if tag == "float":
        return float(data["v"])
    if tag == "bytes":
        return bytes.fromhex(data["hex"])
    if tag == "date":
        return neo4j_time.Date(*data["v"])
    if tag == "localtime":
        return neo4j_time.Time(*data["v"])
    if tag == "time":
        hour, minute, second, nanosecond = data["v"]
        minutes = int(data["offset"]) // 60  # the driver calls the tzinfo's utcoffset with the Time itself
        return neo4j_time.Time(hour, minute, second, nanosecond, tzinfo=pytz.FixedOffset(minutes))
    if tag == "localdatetime":
        return neo4j_time.DateTime(*data["v"])
    if tag == "datetime":
        year, month, day, hour, minute, second, nanosecond = data["utc"]
        utc = neo4j_time.DateTime(year, month, day, hour, minute, second, nanosecond, tzinfo=pytz.utc)
        return utc.astimezone(_tz(str(data["tz"])))
    if tag == "duration":
        months, days, seconds, nanoseconds = data["v"]
        return neo4j_time.Duration(months=months, days=days, seconds=seconds, nanoseconds=nanoseconds)
    if tag == "point":
        srid, coords = int(data["srid"]), tuple(float(c) for c in data["v"])
        if srid in _WGS84:
            return spatial.WGS84Point(coords)
        if srid in _CARTESIAN:
            return spatial.CartesianPoint(coords)
        raise Neo4jBackupError(f"a point with SRID {srid} is not one Neo4j stores")
    raise Neo4jBackupError(f"an export value with an unknown tag {tag!r}")


def encode_properties(props: Mapping[str, Any], zones: Iterable[Sequence[Any]] = ()) -> dict[str, Any]:
    """Every property encoded; ``zones``: (key, timezone) pairs from the export query. Pure."""
    zone_of = {str(key): zone for key, zone in zones}
    return {key: encode_value(value, zone_of.get(key)) for key, value in props.items()}


def decode_properties(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: decode_value(value) for key, value in data.items()}


def quote(name: str) -> str:
    """A label, relationship type or property name as a Cypher identifier (backticks doubled). Pure."""
    return "`" + name.replace("`", "``") + "`"


# --- deadlines -----------------------------------------------------------------------------------------


def _bounded(work: Callable[[], T], timeout: float, what: str) -> T:
    """``work()`` in a thread of its own; its result or exception when it ends within ``timeout + GRACE``,
    else DeadlineExceeded (the thread is left to end on the driver's terms, see the module docstring)."""
    answer: concurrent.futures.Future[T] = concurrent.futures.Future()

    def target() -> None:
        try:
            answer.set_result(work())
        except neo4j_lib.exceptions.Neo4jError as exc:
            answer.set_exception(_translated(exc, timeout, what))
        except BaseException as exc:  # handed to the caller, which raises it
            answer.set_exception(exc)

    threading.Thread(target=target, name=f"neo4j {what}", daemon=True).start()
    try:
        return answer.result(timeout=timeout + GRACE)
    except concurrent.futures.TimeoutError:
        raise connection.DeadlineExceeded(f"{what}: the server did not answer within {timeout:g} s") from None


def _translated(exc: neo4j_lib.exceptions.Neo4jError, timeout: float, what: str) -> Exception:
    """The server's transaction timeout as DeadlineExceeded; other server errors as they are (their messages
    come from the server and never hold the password)."""
    if "TransactionTimedOut" in (exc.code or ""):
        error = connection.DeadlineExceeded(f"{what}: the server ended the transaction at the deadline ({timeout:g} s)")
        error.__cause__ = exc
        return error
    return exc


@contextlib.contextmanager
def _driver(conn: connection.ConnectionInfo, deadline: connection.Deadline) -> Iterator[neo4j_lib.Driver]:
    # No driver retries: an export attempt is repeated by take() itself; a restore batch must not be.
    with connection.neo4j_driver(
        conn, min(CONNECT_TIMEOUT, deadline.left()), max_transaction_retry_time=0, max_connection_pool_size=2
    ) as driver:
        yield driver


def _marker(driver: neo4j_lib.Driver, database: str | None, deadline: connection.Deadline) -> str:
    """The database's newest closed transaction, as the bookmark a read transaction gets back."""
    with driver.session(database=database, default_access_mode=neo4j_lib.READ_ACCESS) as session:
        session.run(neo4j_lib.Query("RETURN 1", timeout=deadline.left())).consume()
        return ",".join(sorted(session.last_bookmarks().raw_values))


# --- export --------------------------------------------------------------------------------------------


def take(
    conn: connection.ConnectionInfo,
    staging: Path,
    timeout: float,
    database: str | None = None,
    *,
    attempts: int = 5,
    pause: float = 1.0,
) -> dict[str, Any]:
    """Export the database ``database`` (else the connection's) into ``staging`` (see the module
    docstring); returns the metadata (counts, labels, types, version, the transaction's start time,
    the bookmark of the state exported, attempts). Raises ConcurrentWrites when every one of ``attempts``
    saw commits (pausing ``pause`` seconds, doubling, in between), DeadlineExceeded past ``timeout``."""
    staging.mkdir(parents=True, exist_ok=True)
    deadline = connection.Deadline(timeout, f"the Neo4j export from {conn.endpoint}")
    db = database or conn.database or None

    def work() -> dict[str, Any]:
        with _driver(conn, deadline) as driver:
            version = _version(driver, db, deadline)
            wait = pause
            for attempt in range(1, attempts + 1):
                before = _marker(driver, db, deadline)
                meta = _export(driver, db, staging, deadline)
                after = _marker(driver, db, deadline)
                if before == after:
                    meta.update(format=FORMAT, engine="neo4j", database=db, version=version, bookmark=after)
                    meta["attempts"] = attempt
                    (staging / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
                    return meta
                if attempt < attempts:
                    time.sleep(min(wait, max(0.0, deadline.left() - 1)))
                    wait *= 2
            for name in FILES:  # no partial export is left to be mistaken for a backup
                (staging / name).unlink(missing_ok=True)
            raise ConcurrentWrites(
                f"Neo4j at {conn.endpoint}: transactions committed during each of {attempts} export attempts, so "
                "none is consistent (Neo4j reads are not snapshots); back it up when writes pause"
            )

    return _bounded(work, timeout, f"the Neo4j export from {conn.endpoint}")


def _version(driver: neo4j_lib.Driver, db: str | None, deadline: connection.Deadline) -> str | None:
    records, _, _ = driver.execute_query(
        neo4j_lib.Query("CALL dbms.components() YIELD name, versions RETURN name, versions", timeout=deadline.left()),
        database_=db,
        routing_=neo4j_lib.RoutingControl.READ,
    )
    for record in records:
        if record["name"] == "Neo4j Kernel" and record["versions"]:
            return str(record["versions"][0])
    return None


def _export(driver: neo4j_lib.Driver, db: str | None, staging: Path, deadline: connection.Deadline) -> dict[str, Any]:
    """One attempt: nodes, relationships and schema in ONE read transaction, streamed to the files."""
    labels: set[str] = set()
    types: set[str] = set()
    with (
        driver.session(database=db, default_access_mode=neo4j_lib.READ_ACCESS, fetch_size=BATCH) as session,
        session.begin_transaction(timeout=deadline.left(), metadata=_TX_METADATA) as tx,
    ):
        started = tx.run("RETURN datetime.transaction() AS t").single(strict=True)["t"]
        with _jsonl(staging / NODES) as out:
            nodes = 0
            for record in tx.run(_NODES_QUERY):
                labels.update(record["labels"])
                _line(out, {"id": record["id"], "labels": record["labels"], "props": _props(record)})
                nodes += 1
        with _jsonl(staging / RELATIONSHIPS) as out:
            relationships = 0
            for record in tx.run(_RELS_QUERY):
                types.add(record["type"])
                row = {"id": record["id"], "type": record["type"], "start": record["start"], "end": record["end"]}
                _line(out, {**row, "props": _props(record)})
                relationships += 1
        schema = {
            "constraints": tx.run("SHOW CONSTRAINTS YIELD *").data(),
            "indexes": tx.run("SHOW INDEXES YIELD *").data(),
        }
        tx.commit()
    (staging / SCHEMA).write_text(json.dumps(_schema_json(schema), indent=2, sort_keys=True))
    return {
        "nodes": nodes,
        "relationships": relationships,
        "labels": sorted(labels),
        "relationshipTypes": sorted(types),
        "constraints": len(schema["constraints"]),
        "indexes": len(schema["indexes"]),
        "transactionStart": started.iso_format(),
    }


def _props(record: neo4j_lib.Record) -> dict[str, Any]:
    return encode_properties(record["props"], record["zones"])


@contextlib.contextmanager
def _jsonl(path: Path) -> Iterator[IO[str]]:
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as out:
        yield out


def _line(out: IO[str], row: Mapping[str, Any]) -> None:
    out.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
    out.write("\n")


# SHOW ... YIELD * columns kept (the rest are statistics: read counts, tracking times).
_SCHEMA_COLUMNS = (
    "name",
    "type",
    "entityType",
    "labelsOrTypes",
    "properties",
    "ownedIndex",
    "owningConstraint",
    "indexProvider",
    "createStatement",
)


def _schema_json(schema: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        kind: sorted(
            ({key: row.get(key) for key in _SCHEMA_COLUMNS if key in row} for row in rows), key=lambda r: str(r["name"])
        )
        for kind, rows in schema.items()
    }


# --- import --------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of one export file, one at a time."""
    with gzip.open(path, "rt", encoding="utf-8") as source:
        for line in source:
            if line.strip():
                yield json.loads(line)


def _batches(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def restore(
    staging: Path, conn: connection.ConnectionInfo, timeout: float, database: str | None = None
) -> dict[str, Any]:
    """Load the export in ``staging`` into the EMPTY database ``database`` (else the connection's); returns
    the counts created. Raises NotEmpty when the database has a node, DeadlineExceeded past ``timeout``."""
    try:
        meta = json.loads((staging / METADATA).read_text())
        schema = json.loads((staging / SCHEMA).read_text())
    except FileNotFoundError as exc:
        raise Neo4jBackupError(f"not a Neo4j export: {Path(exc.filename).name} is missing") from None
    if meta.get("format") != FORMAT:
        raise Neo4jBackupError(f"Neo4j export format {meta.get('format')!r} is not {FORMAT}")
    if RESTORE_LABEL in meta.get("labels", ()):
        raise Neo4jBackupError(f"the export uses the label {RESTORE_LABEL}, which the restore needs for itself")
    deadline = connection.Deadline(timeout, f"the Neo4j restore into {conn.endpoint}")
    db = database or conn.database or None

    def work() -> dict[str, Any]:
        with _driver(conn, deadline) as driver:
            _refuse_unless_empty(driver, db, conn, deadline)
            _schema_command(driver, db, deadline, _RESTORE_INDEX_DDL)
            _await_indexes(driver, db, deadline)
            nodes = _load_nodes(driver, db, staging, deadline)
            relationships = _load_relationships(driver, db, staging, deadline)
            created = _create_schema(driver, db, schema, deadline)
            _await_indexes(driver, db, deadline)
            _remove_scaffolding(driver, db, deadline)
        if (nodes, relationships) != (meta.get("nodes"), meta.get("relationships")):
            raise Neo4jBackupError(
                f"the restore created {nodes} nodes and {relationships} relationships, the export holds "
                f"{meta.get('nodes')} and {meta.get('relationships')}"
            )
        return {"nodes": nodes, "relationships": relationships, **created}

    return _bounded(work, timeout, f"the Neo4j restore into {conn.endpoint}")


def _refuse_unless_empty(
    driver: neo4j_lib.Driver, db: str | None, conn: connection.ConnectionInfo, deadline: connection.Deadline
) -> None:
    records, _, _ = driver.execute_query(
        neo4j_lib.Query("MATCH (n) RETURN count(n) > 0 AS any LIMIT 1", timeout=deadline.left()),
        database_=db,
        routing_=neo4j_lib.RoutingControl.READ,
    )
    if records and records[0]["any"]:
        where = f"database {db!r}" if db else "the default database"
        raise NotEmpty(
            f"Neo4j at {conn.endpoint}: {where} already holds nodes; a restore goes into an empty database only "
            "(a partial earlier restore included: start again with a new, empty database)"
        )


def _schema_command(driver: neo4j_lib.Driver, db: str | None, deadline: connection.Deadline, statement: str) -> None:
    with driver.session(database=db) as session:
        # Statements from the export's own schema file (the server's createStatement), run as written.
        session.run(neo4j_lib.Query(statement, timeout=deadline.left())).consume()


def _await_indexes(driver: neo4j_lib.Driver, db: str | None, deadline: connection.Deadline) -> None:
    seconds = max(1, int(deadline.left()))
    with driver.session(database=db) as session:
        session.run(
            neo4j_lib.Query("CALL db.awaitIndexes($seconds)", timeout=deadline.left()), seconds=seconds
        ).consume()


def _write(driver: neo4j_lib.Driver, db: str | None, deadline: connection.Deadline, query: str, rows: list[Any]) -> int:
    """One batch in one write transaction (not retried); the count the query returns."""

    def batch(tx: neo4j_lib.ManagedTransaction) -> int:
        return int(tx.run(query, rows=rows).single(strict=True)[0])

    with driver.session(database=db) as session:
        return session.execute_write(neo4j_lib.unit_of_work(timeout=deadline.left(), metadata=_TX_METADATA)(batch))


def _load_nodes(driver: neo4j_lib.Driver, db: str | None, staging: Path, deadline: connection.Deadline) -> int:
    created = 0
    for batch in _batches(read_jsonl(staging / NODES), BATCH):
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in batch:
            groups.setdefault(tuple(row["labels"]), []).append({"id": row["id"], "p": decode_properties(row["props"])})
        for labels, rows in groups.items():
            # Labels cannot be parameters (before Cypher 25's dynamic labels): quoted identifiers, grouped.
            all_labels = "".join(f":{quote(label)}" for label in (*labels, RESTORE_LABEL))
            query = f"UNWIND $rows AS r CREATE (n{all_labels}) SET n = r.p, n.{RESTORE_KEY} = r.id RETURN count(n)"
            created += _write(driver, db, deadline, query, rows)
    return created


def _load_relationships(driver: neo4j_lib.Driver, db: str | None, staging: Path, deadline: connection.Deadline) -> int:
    created = 0
    for batch in _batches(read_jsonl(staging / RELATIONSHIPS), BATCH):
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in batch:
            groups.setdefault(row["type"], []).append(
                {"s": row["start"], "e": row["end"], "p": decode_properties(row["props"])}
            )
        for rel_type, rows in groups.items():
            query = (
                f"UNWIND $rows AS r MATCH (a:{RESTORE_LABEL} {{{RESTORE_KEY}: r.s}}) "
                f"MATCH (b:{RESTORE_LABEL} {{{RESTORE_KEY}: r.e}}) "
                f"CREATE (a)-[x:{quote(rel_type)}]->(b) SET x = r.p RETURN count(x)"
            )
            done = _write(driver, db, deadline, query, rows)
            if done != len(rows):
                raise Neo4jBackupError(
                    f"{len(rows) - done} relationships of type {rel_type} have an end node missing from the export"
                )
            created += done
    return created


def _create_schema(
    driver: neo4j_lib.Driver, db: str | None, schema: Mapping[str, list[dict[str, Any]]], deadline: connection.Deadline
) -> dict[str, int]:
    """The export's constraints, then its indexes (not those a constraint owns: the constraint makes them;
    a token lookup index only when the database has none for that entity yet; none already there by name)."""
    records, _, _ = driver.execute_query(
        neo4j_lib.Query("SHOW INDEXES YIELD name, type, entityType", timeout=deadline.left()), database_=db
    )
    present = {str(r["name"]) for r in records}
    lookups = {str(r["entityType"]) for r in records if r["type"] == "LOOKUP"}
    constraints = indexes = 0
    for row in schema.get("constraints", []):
        if row.get("name") not in present and row.get("createStatement"):
            _schema_command(driver, db, deadline, row["createStatement"])
            constraints += 1
    for row in schema.get("indexes", []):
        if row.get("owningConstraint") or row.get("name") in present or not row.get("createStatement"):
            continue
        if row.get("type") == "LOOKUP" and row.get("entityType") in lookups:
            continue
        _schema_command(driver, db, deadline, row["createStatement"])
        indexes += 1
    return {"constraints": constraints, "indexes": indexes}


def _remove_scaffolding(driver: neo4j_lib.Driver, db: str | None, deadline: connection.Deadline) -> None:
    query = (
        f"MATCH (n:{RESTORE_LABEL}) WITH n LIMIT {BATCH * 5} REMOVE n:{RESTORE_LABEL}, n.{RESTORE_KEY} RETURN count(n)"
    )
    while _write(driver, db, deadline, query, []):
        pass
    _schema_command(driver, db, deadline, f"DROP INDEX {RESTORE_INDEX} IF EXISTS")
