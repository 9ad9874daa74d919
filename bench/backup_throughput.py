"""Benchmark: PostgreSQL backup and restore throughput, ours vs pg_basebackup / pg_dump (prints figures; asserts
nothing about time).

Against a PostgreSQL and a MinIO it starts itself (the local test platform, S3 on loopback), a database of
``--gb`` GB (default 2) filled with generate_series into three indexed tables, all in one run:

(a) ours, backup: ``mlinfra.backup.postgres.take_base`` into a staging directory, then
    ``mlinfra.backup.catalog.upload_backup`` to S3, without and with client-side encryption
    (``sealed.EncryptionKey``); also the parts alone: sealing with no target (CPU only) and a plain S3 put of
    the staged files with no sealing (the transfer ceiling); and the encrypted upload to a volume target's
    server (``backup.volume_server`` on loopback) against a plain copy of the staged files to local disk;
(b) ours, restore: ``catalog.download_backup`` (plain and encrypted; the encrypted one also from the served
    volume) and ``postgres.restore`` into a new data
    directory, then starting a server on it until it has promoted (``finish_restore``), reported apart;
(c) peers: ``pg_basebackup -Ft -X stream`` to local disk (and ``tar -x`` of it: its restore),
    ``pg_dump -Fc`` to local disk and ``pg_restore`` into a new database.

MB are 10^6 bytes; MB/s is the database size (``pg_database_size``) over the seconds, and for steps that
store something also the bytes stored over the seconds. CPU seconds per step: this process, the tools it ran
(pg_basebackup, pg_dump, tar, ...), the PostgreSQL servers and MinIO; and the 1-minute load average at the
step's end (the two cores are shared: compare figures within a run).

Run: ``PYTHONPATH=operator .venv/bin/python bench/backup_throughput.py --gb 2`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mlinfra.backup import catalog, postgres
from mlinfra.backup.http_target import HttpTarget
from mlinfra.backup.s3 import S3Target
from mlinfra.backup.sealed import EncryptionKey, seal
from mlinfra.backup.target import ObjectInfo
from mlinfra.backup.volume_server import VolumeServer
from mlinfra.devenv import procs, tools
from mlinfra.devenv.minio import MinioServer, start_minio
from mlinfra.devenv.postgres import PostgresServer, start_postgres
from mlinfra.engines.connection import ConnectionInfo

DB = "bench"
TABLES = ("customers", "orders", "order_events")
STORE = catalog.StoreRef("bench", "pg", "00000000-0000-0000-0000-000000000000")
PREFIX = "bench/pg/uid"
HEAP_SHARE = 0.7  # load tables without indexes up to this share of the target size; indexes add the rest
CHUNK_CUSTOMERS = 100_000  # at most, per chunk: 1 customer, 4 orders, 8 order events each
BYTES_PER_CUSTOMER = 2_600  # with its orders, events and their index entries (measured: 2,070 MB / 800k)
TIMEOUT = 3600.0

SCHEMA = """
CREATE TABLE customers (id bigint NOT NULL, email text NOT NULL, name text NOT NULL, country text NOT NULL,
                        created_at timestamptz NOT NULL);
CREATE TABLE orders (id bigint NOT NULL, customer_id bigint NOT NULL, status text NOT NULL, total numeric(12, 2),
                     created_at timestamptz NOT NULL, note text);
CREATE TABLE order_events (id bigint NOT NULL, order_id bigint NOT NULL, kind text NOT NULL, payload jsonb,
                           at timestamptz NOT NULL);
"""
INDEXES = """
ALTER TABLE customers ADD PRIMARY KEY (id);
CREATE UNIQUE INDEX customers_email ON customers (email);
ALTER TABLE orders ADD PRIMARY KEY (id);
CREATE INDEX orders_customer_created ON orders (customer_id, created_at);
ALTER TABLE order_events ADD PRIMARY KEY (id);
CREATE INDEX order_events_order ON order_events (order_id);
CREATE INDEX order_events_at ON order_events (at);
"""
# %(c)s, %(n)s: the first customer id of the chunk minus one, and its size. Orders and events ids follow.
CHUNK_SQL = (
    """INSERT INTO customers SELECT %(c)s + g, 'user' || (%(c)s + g) || '@example.com', initcap(md5(g::text)),
    (ARRAY['DE','FR','US','JP','BR','IN'])[1 + g %% 6], now() - g * interval '1 minute'
    FROM generate_series(1, %(n)s::bigint) g""",
    """INSERT INTO orders SELECT 4 * %(c)s + g, %(c)s + 1 + (g * 7919) %% %(n)s,
    (ARRAY['new','paid','shipped','delivered','returned'])[1 + g %% 5], round((random() * 500)::numeric, 2),
    now() - random() * interval '365 days', CASE WHEN g %% 3 = 0 THEN md5(random()::text) || md5(g::text) END
    FROM generate_series(1, 4 * %(n)s::bigint) g""",
    """INSERT INTO order_events SELECT 8 * %(c)s + g, 4 * %(c)s + 1 + (g - 1) / 2,
    (ARRAY['created','paid','packed','shipped','delivered','viewed'])[1 + g %% 6],
    jsonb_build_object('ip', '10.' || g %% 250 || '.' || g %% 199 || '.7', 'agent', md5(g::text),
                       'amount', round((random() * 100)::numeric, 2)),
    now() - random() * interval '365 days'
    FROM generate_series(1, 8 * %(n)s::bigint) g""",
)

MB = 1_000_000
_CLK = os.sysconf("SC_CLK_TCK")


# --- CPU accounting: where the time goes -------------------------------------------------------------


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants, including their reaped children (cutime/cstime)."""
    total = 0
    for p in [pid, *procs.descendants(pid)]:
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{p}/stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()  # field 3 (state) is fields[0]
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / _CLK


@dataclasses.dataclass(frozen=True)
class Cpu:
    bench: float
    tools: float
    pg: float
    minio: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.bench - other.bench, self.tools - other.tools, self.pg - other.pg, self.minio - other.minio)


@dataclasses.dataclass
class Meter:
    minio_pid: int
    pg_pids: list[int]

    def now(self) -> Cpu:
        t = os.times()
        return Cpu(
            t.user + t.system,
            t.children_user + t.children_system,
            sum(_tree_cpu(p) for p in self.pg_pids),
            _tree_cpu(self.minio_pid),
        )


@dataclasses.dataclass
class Row:
    name: str
    seconds: float
    cpu: Cpu
    stored: int | None = None  # bytes written by the step (stored on S3, on disk), when it writes any
    rate: bool = True  # MB/s of the database size means something for this step
    load: float = 0.0  # 1-minute load average at its end: the two cores are shared


class Bench:
    def __init__(self, meter: Meter, db_bytes: int) -> None:
        self.meter = meter
        self.db_bytes = db_bytes
        self.rows: list[Row] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Row]:
        print(f"... {name}", flush=True)
        row = Row(name, 0.0, Cpu(0, 0, 0, 0))
        cpu0, t0 = self.meter.now(), time.perf_counter()
        yield row
        row.seconds = time.perf_counter() - t0
        row.cpu = self.meter.now() - cpu0
        row.load = os.getloadavg()[0]
        self.rows.append(row)
        print(f"    {self.format(row)}", flush=True)

    def format(self, row: Row) -> str:
        stored = f"{row.stored / MB:>9,.0f} MB {row.stored / MB / row.seconds:>7,.1f} MB/s" if row.stored else " " * 27
        c = row.cpu
        rate = f"{self.db_bytes / MB / row.seconds:>8,.1f} MB/s" if row.rate else " " * 13
        return (
            f"{row.name:<44} {row.seconds:>8.2f} s {rate} {stored}"
            f"   cpu {c.bench:6.1f} {c.tools:6.1f} {c.pg:6.1f} {c.minio:6.1f}   load {row.load:4.1f}"
        )

    def table(self) -> None:
        print()
        print(f"database {DB}: {self.db_bytes / MB:,.0f} MB (pg_database_size); MB/s below are of that size")
        print(
            f"{'step':<44} {'seconds':>10} {'MB/s':>13} {'stored / written':>27}"
            f"   cpu s: {'bench':>6} {'tools':>6} {'pg':>6} {'minio':>6}   load"
        )
        for row in self.rows:
            print(self.format(row))


# --- the database --------------------------------------------------------------------------------------


def db_size(server: PostgresServer) -> int:
    with server.connect(DB) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(str(row[0]))


def fill(server: PostgresServer, target_bytes: int) -> None:
    """Chunks of customers with their orders and events: heap first (fast, no index upkeep), then the indexes,
    then smaller chunks with the indexes in place until the database reaches ``target_bytes``."""
    with server.connect() as conn:
        conn.execute(f"CREATE DATABASE {DB}")
    with server.connect(DB) as conn:
        conn.execute(SCHEMA)
    customers, chunks = 0, 0
    t0 = time.perf_counter()

    def chunk(n: int) -> None:
        nonlocal customers, chunks
        with server.connect(DB) as conn:
            for sql in CHUNK_SQL:
                conn.execute(sql, {"c": customers, "n": n})
        customers += n
        chunks += 1

    # About seven chunks at most sizes: small targets are not overshot by a whole large chunk.
    per_chunk = max(1000, min(CHUNK_CUSTOMERS, target_bytes // BYTES_PER_CUSTOMER // 7))
    while db_size(server) < target_bytes * HEAP_SHARE:
        chunk(per_chunk)
    heap = db_size(server)
    t1 = time.perf_counter()
    with server.connect(DB) as conn:
        conn.execute(INDEXES)
    t2 = time.perf_counter()
    while db_size(server) < target_bytes:
        chunk(max(1000, per_chunk // 4))
    t3 = time.perf_counter()
    with server.connect(DB) as conn:
        conn.execute("VACUUM ANALYZE")  # hint bits set and statistics in place, as in a database in use
        conn.execute("CHECKPOINT")
    t4 = time.perf_counter()
    with server.connect(DB) as conn:
        row = conn.execute(
            "SELECT sum(pg_table_size(c.oid)), sum(pg_indexes_size(c.oid)) FROM pg_class c"
            " WHERE c.relname = ANY(%s) AND c.relkind = 'r'",
            (list(TABLES),),
        ).fetchone()
    assert row is not None
    print(f"tables {int(str(row[0])) / MB:,.0f} MB (with TOAST), indexes {int(str(row[1])) / MB:,.0f} MB")
    print(
        f"filled {DB}: {customers:,} customers, {4 * customers:,} orders, {8 * customers:,} order events in "
        f"{t4 - t0:.1f} s (heap to {heap / MB:,.0f} MB {t1 - t0:.1f} s, 7 indexes {t2 - t1:.1f} s, "
        f"top-up with indexes {t3 - t2:.1f} s, VACUUM ANALYZE + CHECKPOINT {t4 - t3:.1f} s)",
        flush=True,
    )


def counts(server: PostgresServer, dbname: str = DB) -> dict[str, int]:
    got = {}
    with server.connect(dbname) as conn:
        for table in TABLES:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
            assert row is not None
            got[table] = int(str(row[0]))
    return got


def same_rows(expected: dict[str, int], got: dict[str, int], what: str) -> None:
    # Correctness, not timing: a restore that lost rows must not be reported as fast.
    if got != expected:
        raise RuntimeError(f"{what}: row counts {got} differ from the source's {expected}")
    print(f"    {what}: row counts match the source ({sum(got.values()):,} rows)", flush=True)


# --- the parts of ours alone -------------------------------------------------------------------------------


class NullTarget:
    """A target that reads every object to its end and keeps nothing: sealing alone, no transfer."""

    def __init__(self) -> None:
        self.bytes = 0

    def describe(self) -> str:
        return "null"

    def put(self, key: str, source: BinaryIO, size: int | None = None) -> None:
        while block := source.read(1 << 20):
            self.bytes += len(block)

    def get(self, key: str, sink: BinaryIO) -> None:
        raise NotImplementedError

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(())

    def delete(self, key: str) -> None:
        pass

    def check(self) -> None:
        pass


def files_of(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in files_of(d))


def delete_prefix(target: S3Target, prefix: str) -> None:
    for o in list(target.list(prefix)):
        target.delete(o.key)


# --- the peers ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def pg_env(server: PostgresServer) -> Iterator[dict[str, str]]:
    """libpq environment for the peer tools: the password in a 0600 passfile, never in argv."""
    with tempfile.TemporaryDirectory(prefix="bench-pgpass-") as d:
        passfile = Path(d) / "pgpass"
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            escaped = server.password.replace("\\", "\\\\").replace(":", "\\:")  # libpq passfile escaping
            f.write(f"*:*:*:*:{escaped}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSFILE=str(passfile), PGHOST="127.0.0.1", PGPORT=str(server.port), PGUSER="postgres")
        yield env


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr[-2000:]}")


# --- the run -------------------------------------------------------------------------------------------------


def bench_ours_backup(
    b: Bench, info: ConnectionInfo, target: S3Target, volume: HttpTarget, work: Path, key: EncryptionKey
) -> str:
    """(a): the backup, its parts, with and without encryption, to S3 and to a served volume. Returns the
    encrypted S3 backup's id."""
    staging = work / "staging"
    with b.step("(a) take_base -> staging (local disk)") as row:
        meta = postgres.take_base(info, staging, TIMEOUT, backup_id="bench")
        row.stored = dir_bytes(staging)
    print(f"    staged: {', '.join(f'{n} {s / MB:,.1f} MB' for n, s in meta['files'].items())}", flush=True)
    plain_id, enc_id = catalog.new_backup_id(), catalog.new_backup_id()
    uploads: list[tuple[str, str, EncryptionKey | None]] = [
        ("(a) upload_backup, plain -> S3", plain_id, None),
        ("(a) upload_backup, encrypted -> S3", enc_id, key),
    ]
    for name, backup_id, enc in uploads:
        with b.step(name) as row:
            manifest = catalog.upload_backup(
                target, PREFIX, backup_id, staging, enc, meta, engine="postgres", store=STORE
            )
            row.stored = manifest.stored_size
    for name, enc in (("(a) seal alone, plain (no target)", None), ("(a) seal alone, encrypted (no target)", key)):
        with b.step(name) as row:
            null = NullTarget()
            for path in files_of(staging):
                seal(null, f"x/{path.name}", path, enc)
            row.stored = null.bytes
    with b.step("(a) S3 put of the staged files, no sealing") as row:
        for path in files_of(staging):
            with path.open("rb") as f:
                target.put(f"raw/{path.name}", f, path.stat().st_size)
        row.stored = dir_bytes(staging)
    delete_prefix(target, "raw/")
    # The volume target: the same sealed upload and download through the backup volume's server (on loopback,
    # in this process: its CPU is in the "bench" column), and the plain copy to local disk it cannot beat.
    vol_id = catalog.new_backup_id()
    with b.step("(a) upload_backup, encrypted -> served volume") as row:
        manifest = catalog.upload_backup(volume, PREFIX, vol_id, staging, key, meta, engine="postgres", store=STORE)
        row.stored = manifest.stored_size
    with b.step("(a) copy of the staged files -> local disk") as row:
        shutil.copytree(staging, work / "copied")
        row.stored = dir_bytes(work / "copied")
    shutil.rmtree(work / "copied")
    with b.step("(b) download_backup, encrypted <- served volume") as row:
        catalog.download_backup(volume, PREFIX, vol_id, work / "dl-volume", key)
        row.stored = dir_bytes(work / "dl-volume")
    shutil.rmtree(work / "dl-volume")
    catalog.delete_backup(volume, PREFIX, vol_id)
    shutil.rmtree(staging)
    # The plain backup served its purpose (the upload figure); the encrypted one is restored below.
    with b.step("(b) download_backup, plain <- S3") as row:
        catalog.download_backup(target, PREFIX, plain_id, work / "dl-plain", None)
        row.stored = dir_bytes(work / "dl-plain")
    shutil.rmtree(work / "dl-plain")
    catalog.delete_backup(target, PREFIX, plain_id)
    return enc_id


def bench_ours_restore(
    b: Bench,
    source: PostgresServer,
    target: S3Target,
    work: Path,
    key: EncryptionKey,
    backup_id: str,
    expected: dict[str, int],
) -> None:
    """(b): download the encrypted backup, lay out a new data directory, start a server until it promoted."""
    dl = work / "dl-enc"
    with b.step("(b) download_backup, encrypted <- S3") as row:
        catalog.download_backup(target, PREFIX, backup_id, dl, key)
        row.stored = dir_bytes(dl)
    restored = PostgresServer(work / "restored", "restored", source.password)
    empty_wal = work / "no-archive"  # a base backup restores to its own end without any archive
    empty_wal.mkdir()
    with b.step("(b) postgres.restore -> new data dir") as row:
        postgres.restore(dl, empty_wal, restored.datadir)
        row.stored = dir_bytes(restored.datadir)
    shutil.rmtree(dl)
    restored._prepare_dirs()  # owned by the server's user when we run as root (not timed: devenv detail)
    with procs.ProcStack() as own:  # its own stack: the restored server stops here, not at the end of the run
        with b.step("(b) start restored server until promoted") as row:
            row.rate = False  # replays only the WAL of the backup itself, whatever the database size
            restored.start(own)
            assert restored.proc is not None
            b.meter.pg_pids.append(restored.proc.pid)
            info = ConnectionInfo.for_engine("postgres", "127.0.0.1", restored.password, port=restored.port)
            postgres.finish_restore(info, timeout=TIMEOUT)
        b.meter.pg_pids.remove(restored.proc.pid)
        same_rows(expected, counts(restored), "ours, restored server")
    shutil.rmtree(restored.workdir)
    catalog.delete_backup(target, PREFIX, backup_id)


def bench_peers(b: Bench, source: PostgresServer, work: Path, expected: dict[str, int]) -> None:
    """(c): pg_basebackup and pg_dump to local disk, and their restores."""
    peer = work / "peer-basebackup"
    with pg_env(source) as env:
        argv = [str(tools.which("pg_basebackup")), "-D", str(peer), "-Ft", "-X", "stream"]
        with b.step("(c) pg_basebackup -Ft -X stream -> disk") as row:
            run([*argv, "--checkpoint=fast", "--no-sync"], env)
            row.stored = dir_bytes(peer)
        layout = work / "peer-layout"
        with b.step("(c) tar -x of it (base.tar + pg_wal.tar)") as row:
            (layout / "pg_wal").mkdir(parents=True)
            run(["tar", "-xf", str(peer / "base.tar"), "-C", str(layout)])
            run(["tar", "-xf", str(peer / "pg_wal.tar"), "-C", str(layout / "pg_wal")])
            row.stored = dir_bytes(layout)
        shutil.rmtree(peer)
        shutil.rmtree(layout)
        dump = work / "bench.dump"
        with b.step("(c) pg_dump -Fc -> disk") as row:
            run([str(tools.which("pg_dump")), "-Fc", "-f", str(dump), DB], env)
            row.stored = dump.stat().st_size
        with source.connect() as conn:
            conn.execute("CREATE DATABASE bench_restored")
        with b.step("(c) pg_restore into a new database") as row:
            run([str(tools.which("pg_restore")), "-d", "bench_restored", str(dump)], env)
            row.stored = db_size_of(source, "bench_restored")
        same_rows(expected, counts(source, "bench_restored"), "pg_restore, new database")
        dump.unlink()
        with source.connect() as conn:
            conn.execute("DROP DATABASE bench_restored")


def db_size_of(server: PostgresServer, dbname: str) -> int:
    with server.connect() as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (dbname,)).fetchone()
    assert row is not None
    return int(str(row[0]))


def timed(what: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    result = fn()
    print(f"{what} in {time.perf_counter() - t0:.1f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gb", type=float, default=2.0, help="Database size to fill, in GB (10^9 bytes).")
    parser.add_argument("--workdir", type=Path, default=None, help="Where servers and files go (default: a temp dir).")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="mlinfra-bench-backup-", dir=args.workdir) as tmp,
        procs.ProcStack() as stack,
    ):
        work = Path(tmp)
        pg = timed("started PostgreSQL", lambda: start_postgres(stack, work / "pg", standbys=0))
        s3: MinioServer = timed("started MinIO", lambda: start_minio(stack, work / "minio"))
        assert pg.primary.proc is not None and s3.proc is not None
        target = s3.target(s3.new_bucket("bench"), "bench")
        fill(pg.primary, int(args.gb * 1e9))
        expected = counts(pg.primary)
        b = Bench(Meter(s3.proc.pid, [pg.primary.proc.pid]), db_size(pg.primary))
        print(f"database {DB}: {b.db_bytes / MB:,.0f} MB, rows {expected}", flush=True)
        info = ConnectionInfo.for_engine("postgres", "127.0.0.1", pg.password, port=pg.primary.port)
        key = EncryptionKey("bench/backup-key", os.urandom(32))
        token = os.urandom(16).hex()
        server = VolumeServer(work / "volume", token, host="127.0.0.1", port=0).start()
        stack.callback(server.stop)
        volume = HttpTarget(host="127.0.0.1", port=server.port, token=token, where="bench volume")
        enc_id = bench_ours_backup(b, info, target, volume, work, key)
        bench_ours_restore(b, pg.primary, target, work, key, enc_id, expected)
        bench_peers(b, pg.primary, work, expected)
        b.table()
        rows = {r.name: r.seconds for r in b.rows}
        take = rows["(a) take_base -> staging (local disk)"]
        for label, up in (
            ("plain", "(a) upload_backup, plain -> S3"),
            ("encrypted", "(a) upload_backup, encrypted -> S3"),
        ):
            total = take + rows[up]
            print(f"ours, backup {label} (take_base + upload): {total:.2f} s = {b.db_bytes / MB / total:,.1f} MB/s")
        restore = sum(
            rows[n]
            for n in (
                "(b) download_backup, encrypted <- S3",
                "(b) postgres.restore -> new data dir",
                "(b) start restored server until promoted",
            )
        )
        total = take + rows["(a) upload_backup, encrypted -> served volume"]
        print(f"ours, backup encrypted to a served volume (take_base + upload): {total:.2f} s", end="")
        print(f" = {b.db_bytes / MB / total:,.1f} MB/s")
        print(
            f"ours, restore encrypted (download + lay out + start): {restore:.2f} s"
            f" = {b.db_bytes / MB / restore:,.1f} MB/s"
        )
        print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
