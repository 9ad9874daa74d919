"""Materialization: copy the latest value per entity of a FeatureView from PostgreSQL into Redis.

Called by ``mlinfra sync featureview NS/NAME`` (the CronJob / on-demand Job) and by the benchmark.

Semantics (docs/featureview.md says the same for users):

- **What is read.** Rows *ingested* since the last successful run — ``created_at > ingested_through - overlap``
  — and not older than the TTL (``event_timestamp > now - ttl``); of those, the latest per entity
  (``DISTINCT ON`` entities, newest ``event_timestamp``, ties broken by newest ``created_at``). Selecting by
  ingestion time rather than event time means late data (a row arriving after the watermark with an older
  event time) is not skipped: it is read, and written if it is newer than what is online. The overlap
  (default 5 minutes) re-reads rows whose ``created_at`` (the inserting transaction's start time) is older
  than a row already seen because their transaction committed later; a writing transaction open longer than
  the overlap can still be missed by incremental runs.
- **How it is written.** One Lua script call per chunk of keys, pipelined: per key, if the hash's
  ``_event_ts`` is newer than the row's, nothing happens (an older event never overwrites a newer one);
  otherwise the hash is replaced (``DEL`` + ``HSET``: NULL and removed features disappear) and expires at
  ``event time + ttl``. Replaying a row is a no-op, so writes are idempotent.
- **What is committed.** Only after every write succeeded, in one transaction: ``mlinfra.watermarks``
  (``watermark`` = newest event time read, ``ingested_through`` = newest ``created_at`` read) and the run's
  ``mlinfra.sync_runs`` row (``Succeeded``). A run killed half way commits nothing; the rerun reads the same
  rows again and the guarded writes make the result exact. A failure is recorded as ``Failed`` with its error.
- **Identity.** The watermark holds only for the Redis written to and the offline table read
  (``features.identity``): a run finding the view's marker key missing or foreign (the Redis lost its data, or
  is another one) or another offline table (``offline.table`` changed, the table created again) is a *full*
  run: everything within the TTL, the watermark ignored. Its result says why (``fullResync``). A full run
  writes a new marker before its first write; every run checks, after its last write, that the marker is
  still its own (a ``FLUSHALL`` during the run fails it, commits nothing, and makes the next run full) and
  commits the marker's token and the table's identity with the watermark.
- **Failover.** A run writes over one connection and never reconnects: were the connection lost half way (the
  primary died, a failover moved the client Service), a silent reconnect would carry on on another server
  that may lack the batches the old primary had not passed on yet. The run fails instead, commits nothing,
  and the Job's retry starts again from the committed watermark. With replicas (``replica_acks``), the run
  commits only once that many replicas acknowledged every write (``WAIT``): a failover after the commit
  promotes the most advanced replica, which holds them.
- **Concurrency.** One run per view at a time (a session advisory lock); a run finding the lock taken fails
  with :class:`SyncInProgress`. ``Running`` rows left by killed runs are closed as ``Failed`` by the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import redis
from psycopg import sql
from redis import backoff as redis_backoff
from redis import retry as redis_retry

from mlinfra.api import common, featureview
from mlinfra.features import identity, layout, schema

_RUNS = sql.Identifier(layout.BOOKKEEPING_SCHEMA, layout.SYNC_RUNS_TABLE)
_MARKS = sql.Identifier(layout.BOOKKEEPING_SCHEMA, layout.WATERMARKS_TABLE)

DEFAULT_OVERLAP = datetime.timedelta(minutes=5)
REPLICA_ACK_TIMEOUT_MS = 5000  # how long a run waits for replicas to acknowledge its writes (WAIT)
SCRIPT_CHUNK = 500  # keys per script call; a batch is sent as one pipeline of chunks
_MAX_ERROR = 1024

# KEYS: the hashes. ARGV per key: event_ts (µs), expire_at (ms, 0 = never), field count, fields/values...
# Returns how many hashes were written (the rest held a newer event).
WRITE_SCRIPT = """
local a = 1
local written = 0
for i = 1, #KEYS do
  local key = KEYS[i]
  local ts = tonumber(ARGV[a])
  local expire_at = tonumber(ARGV[a + 1])
  local n = tonumber(ARGV[a + 2])
  local first = a + 3
  a = first + 2 * n
  local current = redis.call('HGET', key, '_event_ts')
  if (not current) or tonumber(current) <= ts then
    redis.call('DEL', key)
    redis.call('HSET', key, '_event_ts', ARGV[first - 3], unpack(ARGV, first, a - 1))
    if expire_at > 0 then
      redis.call('PEXPIREAT', key, expire_at)
    end
    written = written + 1
  end
end
return written
"""


class SyncInProgress(RuntimeError):
    """Another materialization of the same view holds the lock."""


class OnlineStoreChanged(RuntimeError):
    """The view's marker changed in Redis while the run wrote (FLUSHALL, restart): nothing was committed."""


class NotReplicated(RuntimeError):
    """Fewer replicas than required acknowledged the run's writes in time: nothing was committed."""


@dataclasses.dataclass(frozen=True)
class Watermarks:
    """The committed progress of a view: newest event time materialized, newest ``created_at`` read."""

    watermark: datetime.datetime | None = None
    ingested_through: datetime.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    """One run, as recorded in ``mlinfra.sync_runs``."""

    run_id: int
    namespace: str
    view: str
    start_time: datetime.datetime
    end_time: datetime.datetime
    rows: int  # rows read (latest per entity) and sent to Redis
    written: int  # hashes replaced (rows - written held a newer event online)
    batches: int
    watermark: datetime.datetime | None
    outcome: common.SyncOutcome
    # Why the run ignored the watermark (identity.OFFLINE_TABLE_CHANGED, ONLINE_STORE_LOST); empty otherwise.
    full_resync: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """The JSON-able one-line summary the CLI prints."""
        return {
            "featureView": f"{self.namespace}/{self.view}",
            "outcome": self.outcome,
            "runId": self.run_id,
            "rows": self.rows,
            "written": self.written,
            "batches": self.batches,
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "startTime": self.start_time.isoformat(),
            "endTime": self.end_time.isoformat(),
            **({"fullResync": list(self.full_resync)} if self.full_resync else {}),
        }


BatchHook = Callable[[int, int], None]  # (batches done, rows done), called after each batch was written


def read_watermarks(conn: psycopg.Connection[tuple[Any, ...]], namespace: str, view: str) -> Watermarks:
    """The committed watermarks of a view (empty before its first successful run)."""
    row = conn.execute(
        sql.SQL("SELECT watermark, ingested_through FROM {marks} WHERE namespace = %s AND view = %s").format(
            marks=_MARKS
        ),
        (namespace, view),
    ).fetchone()
    return Watermarks(*row) if row else Watermarks()


def select_latest(spec: featureview.FeatureViewSpec, view: str, with_ttl: bool) -> tuple[sql.Composed, sql.Composed]:
    """The two queries of a run: (bounds: max event time and created_at read, latest row per entity).

    Parameters: ``since`` (created_at lower bound, exclusive) and, with a TTL, ``cutoff`` (event time lower
    bound, exclusive).
    """
    schema_name, table = layout.offline_table(view, spec.offline.schema_name, spec.offline.table)
    ident = sql.Identifier(schema_name, table)
    entities = [sql.Identifier(e.name) for e in spec.entities]
    features = [sql.Identifier(f.name) for f in spec.features]
    ts, created = sql.Identifier(layout.EVENT_TIMESTAMP), sql.Identifier(layout.CREATED_AT)
    ttl = sql.SQL(" AND {} > %(cutoff)s").format(ts) if with_ttl else sql.SQL("")
    bounds = sql.SQL("SELECT max({ts}), max({created}) FROM {t} WHERE {created} > %(since)s").format(
        ts=ts, created=created, t=ident
    )
    latest = sql.SQL(
        "SELECT DISTINCT ON ({keys}) {cols} FROM {t} WHERE {created} > %(since)s{ttl} "
        "ORDER BY {keys}, {ts} DESC, {created} DESC"
    ).format(
        keys=sql.SQL(", ").join(entities),
        cols=sql.SQL(", ").join([*entities, *features, ts]),
        t=ident,
        created=created,
        ttl=ttl,
        ts=ts,
    )
    return bounds, latest


def _ttl(spec: featureview.FeatureViewSpec) -> datetime.timedelta | None:
    return common.parse_duration(spec.online.ttl) if spec.online.ttl else None


class _Writer:
    """Encodes rows ``(entities..., features..., event_timestamp)`` and writes them with the guard script."""

    def __init__(self, spec: featureview.FeatureViewSpec, online: redis.Redis, namespace: str, view: str) -> None:
        self.online = online
        self.prefix = layout.key_prefix(namespace, view)
        self.n_entities = len(spec.entities)
        self.names = [f.name.encode() for f in spec.features]
        self.encoders = [layout.encoder(f.type) for f in spec.features]
        ttl = _ttl(spec)
        self.ttl_ms = int(ttl.total_seconds() * 1000) if ttl else 0

    def write(self, rows: Sequence[Sequence[Any]]) -> int:
        """Write one batch: one ``EVAL`` per chunk of keys, all chunks pipelined on one connection."""
        n_ent, names, encoders, prefix = self.n_entities, self.names, self.encoders, self.prefix
        commands: list[bytes] = []
        for start in range(0, len(rows), SCRIPT_CHUNK):
            chunk = rows[start : start + SCRIPT_CHUNK]
            keys: list[bytes] = []
            args: list[bytes] = []
            for row in chunk:
                keys.append((prefix + layout.entity_key(row[:n_ent])).encode())
                micros = layout.event_ts_micros(row[-1])
                fields: list[bytes] = []
                for name, enc, value in zip(names, encoders, row[n_ent:-1], strict=True):
                    if value is not None:
                        fields.append(name)
                        fields.append(enc(value))
                expire_at = micros // 1000 + self.ttl_ms if self.ttl_ms else 0
                args.append(b"%d" % micros)
                args.append(b"%d" % expire_at)
                args.append(b"%d" % (len(fields) // 2))
                args.extend(fields)
            commands.append(_pack([b"EVAL", _SCRIPT, b"%d" % len(keys), *keys, *args]))
        return sum(int(n) for n in self._send(commands))

    def _send(self, commands: list[bytes]) -> list[Any]:
        # redis-py's own packing costs more than everything else of a run: the commands are packed above
        # (every argument is already bytes) and pipelined on one pooled connection.
        pool = self.online.connection_pool
        pinned = self.online.connection  # a run's own (materialize()); a pooled one otherwise (the benchmark)
        conn = pinned or pool.get_connection()
        try:
            conn.send_packed_command(commands)  # type: ignore[no-untyped-call]
            replies = [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            if pinned is None:
                pool.release(conn)
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if errors:
            raise errors[0]
        return replies


_SCRIPT = WRITE_SCRIPT.encode()


def _pack(args: list[bytes]) -> bytes:
    """One command in the Redis protocol (RESP2 array of bulk strings)."""
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args])


def _start_run(conn: psycopg.Connection[tuple[Any, ...]], namespace: str, view: str) -> tuple[int, datetime.datetime]:
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "UPDATE {runs} SET outcome = 'Failed', end_time = now(), "
                "error = 'abandoned: the run ended without recording an outcome (killed?)' "
                "WHERE namespace = %s AND view = %s AND outcome = 'Running'"
            ).format(runs=_RUNS),
            (namespace, view),
        )
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {runs} (namespace, view, start_time, outcome) "
                "VALUES (%s, %s, clock_timestamp(), 'Running') RETURNING id, start_time"
            ).format(runs=_RUNS),
            (namespace, view),
        ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def _fail_run(conn: psycopg.Connection[tuple[Any, ...]], run_id: int, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}"[:_MAX_ERROR]
    conn.execute(
        sql.SQL("UPDATE {runs} SET outcome = 'Failed', end_time = clock_timestamp(), error = %s WHERE id = %s").format(
            runs=_RUNS
        ),
        (message, run_id),
    )


@contextlib.contextmanager
def one_connection(online: redis.Redis) -> Iterator[redis.Redis]:
    """A client of ``online``'s pool that holds one connection and never reconnects nor retries: a lost
    connection fails the call (see "Failover" in the module docstring)."""
    client = redis.Redis(connection_pool=online.connection_pool, single_connection_client=True)
    conn = client.connection
    assert conn is not None
    kept = conn.retry
    conn.retry = redis_retry.Retry(redis_backoff.NoBackoff(), 0)
    try:
        yield client
    finally:
        conn.retry = kept
        client.close()


def materialize(
    spec: featureview.FeatureViewSpec,
    offline: psycopg.Connection[tuple[Any, ...]],
    online: redis.Redis,
    namespace: str,
    name: str,
    batch_size: int | None = None,
    now: datetime.datetime | None = None,
    overlap: datetime.timedelta = DEFAULT_OVERLAP,
    on_batch: BatchHook | None = None,
    replica_acks: int = 0,
) -> Result:
    """Run one materialization of the view ``namespace/name`` (see the module docstring).

    ``offline`` must be an autocommit connection; ``batch_size`` defaults to the spec's (1000); ``now`` (for
    the TTL cutoff) to the current time; ``replica_acks``: how many replicas must hold the writes before the
    run commits (0: none, a store without replicas). Raises on failure, after recording it in
    ``mlinfra.sync_runs``; :class:`schema.NotReady` (nothing recorded) when the table or the bookkeeping is not
    in place.
    """
    size = batch_size or (spec.materialization.batch_size if spec.materialization else 1000)
    # No DDL here: the Job's role may not run any (features.syncrole); the operator's reconcile makes both.
    schema.require(offline, spec, name)
    lock_key = f"mlinfra:sync:{namespace}/{name}"
    got = offline.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (lock_key,)).fetchone()
    if not (got and got[0]):
        raise SyncInProgress(f"another materialization of {namespace}/{name} is running")
    try:
        run_id, start_time = _start_run(offline, namespace, name)
        try:
            with one_connection(online) as pinned:
                return _run(
                    spec, offline, pinned, namespace, name, size, now, overlap, on_batch, run_id, start_time,
                    replica_acks,
                )  # fmt: skip
        except BaseException as error:
            try:
                _fail_run(offline, run_id, error)
            except psycopg.Error as record_error:  # the original error matters more
                error.add_note(f"recording the failure in {layout.SYNC_RUNS} failed too: {record_error}")
            raise
    finally:
        offline.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock_key,))


def _run(
    spec: featureview.FeatureViewSpec,
    offline: psycopg.Connection[tuple[Any, ...]],
    online: redis.Redis,
    namespace: str,
    name: str,
    size: int,
    now: datetime.datetime | None,
    overlap: datetime.timedelta,
    on_batch: BatchHook | None,
    run_id: int,
    start_time: datetime.datetime,
    replica_acks: int,
) -> Result:
    previous = read_watermarks(offline, namespace, name)
    known = identity.recorded(offline, namespace, name)
    table_id = identity.offline_table(offline, spec, name)
    marker_key = layout.marker_key(namespace, name)
    found = identity.judge(known, identity.marker(online, namespace, name), table_id)
    if found:  # the watermark describes other data: read everything within the TTL, forget the old bounds
        previous = Watermarks()
    # The same token while the store keeps it; a new one for a full run, a first run or an adopted row.
    epoch = known.epoch if known is not None and known.epoch and not found else identity.new_epoch()
    if known is None or known.epoch != epoch:
        # Before the first write: a run that dies half way leaves a marker the bookkeeping does not hold,
        # so the next run is full too.
        online.set(marker_key, epoch)
    since = (
        previous.ingested_through - overlap
        if previous.ingested_through
        else datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)
    )
    ttl = _ttl(spec)
    params: dict[str, Any] = {"since": since}
    if ttl is not None:
        params["cutoff"] = layout.to_utc(now or datetime.datetime.now(datetime.UTC)) - ttl
    bounds_query, latest_query = select_latest(spec, name, with_ttl=ttl is not None)
    writer = _Writer(spec, online, namespace, name)
    rows = written = batches = 0
    with offline.transaction():
        # One snapshot for the bounds and the rows: what is committed is exactly what was read.
        offline.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        bounds = offline.execute(bounds_query, params).fetchone()
        max_event, max_created = bounds if bounds else (None, None)
        with offline.cursor(name=f"mlinfra_sync_{run_id}") as cursor:
            cursor.itersize = size
            cursor.execute(latest_query, params)
            while batch := cursor.fetchmany(size):
                written += writer.write(batch)
                rows += len(batch)
                batches += 1
                if on_batch is not None:
                    on_batch(batches, rows)
    if identity.marker(online, namespace, name) != epoch:
        raise OnlineStoreChanged(
            f"the online store lost this run's marker {marker_key} while the run wrote (FLUSHALL, a restart "
            "without persistence, eviction): nothing was committed; the next run rewrites every key"
        )
    if replica_acks:
        acked = int(online.wait(replica_acks, REPLICA_ACK_TIMEOUT_MS))
        if acked < replica_acks:
            raise NotReplicated(
                f"{acked} of the {replica_acks} replicas required acknowledged this run's writes within "
                f"{REPLICA_ACK_TIMEOUT_MS / 1000:g} s (are the online store's replicas streaming?): nothing was "
                "committed; the next run writes them again"
            )
    watermark = max((w for w in (previous.watermark, max_event) if w is not None), default=None)
    ingested = max((w for w in (previous.ingested_through, max_created) if w is not None), default=None)
    with offline.transaction():
        offline.execute(
            sql.SQL(
                "INSERT INTO {marks} (namespace, view, watermark, ingested_through, online_epoch, offline_table, "
                "offline_oid) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (namespace, view) DO UPDATE SET "
                "watermark = EXCLUDED.watermark, ingested_through = EXCLUDED.ingested_through, "
                "online_epoch = EXCLUDED.online_epoch, offline_table = EXCLUDED.offline_table, "
                "offline_oid = EXCLUDED.offline_oid, updated_at = now()"
            ).format(marks=_MARKS),
            (namespace, name, watermark, ingested, epoch, table_id.table, table_id.oid),
        )
        row = offline.execute(
            sql.SQL(
                "UPDATE {runs} SET outcome = 'Succeeded', end_time = clock_timestamp(), rows = %s, "
                "watermark = %s WHERE id = %s RETURNING end_time"
            ).format(runs=_RUNS),
            (rows, watermark, run_id),
        ).fetchone()
    assert row is not None
    return Result(
        run_id=run_id,
        namespace=namespace,
        view=name,
        start_time=start_time,
        end_time=row[0],
        rows=rows,
        written=written,
        batches=batches,
        watermark=watermark,
        outcome="Succeeded",
        full_resync=tuple(m.run_reason for m in found),
    )
