"""PostgreSQL backups against real servers: a base backup over the replication protocol, WAL archived
continuously by pg_receivewal on a slot, a point-in-time restore into a NEW data directory started as a new
server, the gap check, and no password in an argv, an environment or the server's log.

The module starts its own primary (no standby): the tests switch WAL segments, create slots and read the
server's log, which would disturb the shared session cluster.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql
from test_engine_tls import SERVER_NAME, write_pki

from mlinfra.backup import pg_wal, postgres
from mlinfra.devenv import procs, secretscan
from mlinfra.devenv.postgres import PostgresCluster, PostgresServer, start_postgres
from mlinfra.engines.connection import ConnectionInfo

pytestmark = pytest.mark.integration

ROWS_PER_BATCH = 50


@pytest.fixture(scope="module")
def pg(devenv_dir: Path) -> Iterator[PostgresCluster]:
    # Under devenv_dir: the session's secret scan reads every log below the run's temporary root.
    with procs.ProcStack() as stack:
        yield start_postgres(stack, devenv_dir / "pg-backup", standbys=0)


def conn_info(server: PostgresServer) -> ConnectionInfo:
    return ConnectionInfo.for_engine("postgres", "127.0.0.1", server.password, port=server.port)


class Archive:
    """The archive of the tests: ``ship`` copies into a directory (the catalog uploads instead)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "wal-archive"
        self.dir.mkdir()
        self.shipped: list[str] = []

    def ship(self, path: Path) -> None:
        shutil.copyfile(path, self.dir / (path.name + ".tmp"))
        os.replace(self.dir / (path.name + ".tmp"), self.dir / path.name)
        self.shipped.append(path.name)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir())


@pytest.fixture
def archiver(pg: PostgresCluster, tmp_path: Path) -> Iterator[tuple[postgres.WalArchiver, Archive]]:
    info = conn_info(pg.primary)
    archive = Archive(tmp_path)
    slot = postgres.slot_name(f"test-{secrets.token_hex(3)}")
    archiver = postgres.WalArchiver(info, tmp_path / "spool", slot, archive.ship)
    archiver.start()
    try:
        yield archiver, archive
    finally:
        archiver.stop()
        postgres.drop_slot(info, slot)
        with pg.primary.connect() as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone() == (0,)


def server_now(pg: PostgresCluster) -> datetime.datetime:
    with pg.primary.connect() as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    value = row[0]
    assert isinstance(value, datetime.datetime)
    return value


def insert_batch(pg: PostgresCluster, table: str, batch: int) -> None:
    # One transaction per batch: committed_at is read inside it, before its commit.
    with pg.primary.connect(autocommit=False) as conn:
        conn.execute(
            f"INSERT INTO {table} (batch, committed_at) SELECT %s, clock_timestamp() FROM generate_series(1, %s)",
            (batch, ROWS_PER_BATCH),
        )
        conn.commit()


def rows(server: PostgresServer, table: str) -> list[tuple[int, int, datetime.datetime]]:
    with server.connect() as conn:
        return [
            (int(r[0]), int(r[1]), r[2])
            for r in conn.execute(f"SELECT id, batch, committed_at FROM {table} ORDER BY id")
        ]


def start_restored(
    stack: procs.ProcStack, workdir: Path, name: str, password: str, base_dir: Path, wal_dir: Path, **target: object
) -> tuple[PostgresServer, pg_wal.RestorePlan]:
    """Restore into a new data directory and start a new server on it, as the devenv runs PostgreSQL."""
    server = PostgresServer(workdir, name, password)
    plan = postgres.restore(base_dir, wal_dir, server.datadir, **target)  # type: ignore[arg-type]
    assert (server.datadir / "recovery.signal").exists()
    assert server.datadir.stat().st_mode & 0o777 == 0o700
    server._prepare_dirs()  # owned by the unprivileged server user when we are root
    server.start(stack)
    postgres.finish_restore(conn_info(server), timeout=120)
    return server, plan


def test_point_in_time_restore_holds_exactly_the_rows_committed_before_the_target(
    pg: PostgresCluster, archiver: tuple[postgres.WalArchiver, Archive], tmp_path: Path
) -> None:
    arch, archive = archiver
    table = f"pitr_{secrets.token_hex(4)}"
    with pg.primary.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, batch int NOT NULL, committed_at timestamptz)")
        # Some bulk, so the base backup's throughput means something.
        conn.execute(f"CREATE TABLE {table}_bulk AS SELECT g, md5(g::text) AS v FROM generate_series(1, 200000) g")
    insert_batch(pg, table, 1)

    staging = tmp_path / "base"
    meta = postgres.take_base(conn_info(pg.primary), staging, timeout=300, backup_id="pitr")
    mb = meta["bytes"] / 1e6
    print(f"\nbase backup: {mb:.1f} MB in {meta['duration_seconds']:.2f} s = {mb / meta['duration_seconds']:.1f} MB/s")
    assert {"base.tar", "pg_wal.tar", "backup_manifest", postgres.META_FILE} <= {p.name for p in staging.iterdir()}
    assert meta["server_version_num"] >= 100000 and meta["label"] == "mlinfra-pitr"
    size = meta["wal_segment_size"]
    assert (
        pg_wal.parse_lsn(meta["start_lsn"])
        <= pg_wal.parse_lsn(meta["stop_lsn"])
        <= pg_wal.parse_lsn(meta["stop_mark_lsn"])
    )
    assert meta["stop_segment"] == pg_wal.segment_name(
        meta["timeline"], pg_wal.segment_of(pg_wal.parse_lsn(meta["stop_lsn"]), size), size
    )
    assert datetime.datetime.fromisoformat(meta["start_time"]) <= datetime.datetime.fromisoformat(meta["stop_time"])

    insert_batch(pg, table, 2)
    time.sleep(0.5)
    target = server_now(pg)
    time.sleep(0.5)
    insert_batch(pg, table, 3)
    mark = arch.flush(timeout=120)
    assert mark.time > target

    status = arch.status()
    assert status.running and status.last_segment is not None and status.last_mark == mark
    assert status.last_error is None
    assert status.to_json()["lastMark"] == mark.to_json() and pg.password not in str(status.to_json())
    names = archive.names()
    assert mark.name in names and status.last_segment in names
    assert not [n for n in names if n.endswith(".partial")]
    assert pg_wal.wal_gaps(names, size, start=meta["stop_segment"]) == []
    window = pg_wal.recoverability([meta], names)
    assert window.first == pg_wal.Point(
        datetime.datetime.fromisoformat(meta["stop_time"]), pg_wal.parse_lsn(meta["stop_lsn"])
    )
    assert window.last is not None and window.last.time == mark.time

    source = rows(pg.primary, table)
    assert [r[1] for r in source].count(3) == ROWS_PER_BATCH
    before = [r for r in source if r[1] in (1, 2)]
    # The margins make the target unambiguous: batches 1 and 2 committed before it, batch 3 after.
    assert all(r[2] < target for r in before) and all(r[2] > target for r in source if r[1] == 3)

    # As the restore init container does: fetch only what the plan names, and restore from that.
    plan = pg_wal.plan_restore(meta, names, target)
    assert plan.segments and plan.segments[0] == meta["stop_segment"]
    assert plan.segments[-1] == mark.segment  # recovery stops at the flush's mark at the latest
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    for name in plan.files:
        shutil.copyfile(archive.dir / name, fetched / name)
    assert plan.mark == mark.name

    with procs.ProcStack() as stack:
        restored, _ = start_restored(
            stack, tmp_path / "restored-t", "restored-t", pg.password, staging, fetched, target_time=target
        )
        assert rows(restored, table) == before
        with restored.connect() as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            # Promoted: it takes writes, on a new timeline.
            conn.execute(f"INSERT INTO {table} (batch) VALUES (4)")
            row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
        assert (restored.datadir / "recovery.signal").exists() is False
        # finish_restore took the recovery settings out again: a standby cloned from here would inherit them.
        auto_conf = (restored.datadir / "postgresql.auto.conf").read_text()
        assert "recovery_target" not in auto_conf and "restore_command" not in auto_conf
        assert row is not None

        # A base backup restores on its own, to its end: batch 1 only.
        empty = tmp_path / "no-archive"
        empty.mkdir()
        alone, plan = start_restored(stack, tmp_path / "restored-base", "restored-base", pg.password, staging, empty)
        assert plan.segments == []
        assert rows(alone, table) == [r for r in source if r[1] == 1]

        everything, _ = start_restored(
            stack, tmp_path / "restored-end", "restored-end", pg.password, staging, archive.dir
        )
        assert rows(everything, table) == source


def test_a_missing_segment_is_reported_and_a_target_after_it_is_refused(
    pg: PostgresCluster, archiver: tuple[postgres.WalArchiver, Archive], tmp_path: Path
) -> None:
    arch, archive = archiver
    table = f"gap_{secrets.token_hex(4)}"
    with pg.primary.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, batch int NOT NULL, committed_at timestamptz)")
    staging = tmp_path / "base"
    meta = postgres.take_base(conn_info(pg.primary), staging, timeout=300, backup_id="gap")
    marks = []
    for batch in range(4):  # each flush closes a segment: at least four archived after the base backup
        insert_batch(pg, table, batch)
        marks.append(arch.flush(timeout=120))
    size = meta["wal_segment_size"]
    names = archive.names()
    segments = [n for n in names if pg_wal.is_segment_name(n) and n >= meta["stop_segment"]]
    assert pg_wal.wal_gaps(names, size, start=meta["stop_segment"]) == []

    # Lose a segment after the second mark's.
    lost = next(s for s in segments if s > marks[1].segment)
    (archive.dir / lost).unlink()
    names = archive.names()
    gaps = pg_wal.wal_gaps(names, size, start=meta["stop_segment"])
    assert [(g.first_missing, g.last_missing, g.count) for g in gaps] == [(lost, lost, 1)]
    window = pg_wal.recoverability([meta], names)
    assert window.gaps == gaps
    assert window.last is not None and window.last.time == max(m.time for m in marks if m.segment < lost)

    pgdata = tmp_path / "never"
    with pytest.raises(pg_wal.RestoreRefused) as refused:
        postgres.restore(staging, archive.dir, pgdata, target_time=marks[-1].time)
    assert f"WAL segment {lost} is missing" in str(refused.value)
    assert window.last.time.isoformat() in str(refused.value)  # the last recoverability point
    with pytest.raises(pg_wal.RestoreRefused, match=lost):
        postgres.restore(staging, archive.dir, pgdata)  # "to the end" is past the gap too
    assert not pgdata.exists()
    # A target before the gap is fine.
    plan = pg_wal.plan_restore(meta, names, marks[0].time)
    assert lost not in plan.segments

    # WAL of another database system in the archive is refused before anything is written.
    foreign = tmp_path / "foreign"
    shutil.copytree(archive.dir, foreign)
    victim = foreign / plan.segments[0]
    with open(victim, "r+b") as f:
        f.seek(24)  # xlp_sysid in the segment's first (long) page header
        f.write((12345).to_bytes(8, "little"))
    with pytest.raises(postgres.PostgresBackupError, match="another database system"):
        postgres.restore(staging, foreign, pgdata, target_time=marks[0].time)
    assert not pgdata.exists()


def test_the_archiver_survives_a_killed_receiver_failed_uploads_and_its_own_restart(
    pg: PostgresCluster, tmp_path: Path
) -> None:
    info = conn_info(pg.primary)
    archive = Archive(tmp_path)
    failures = {"left": 2, "seen": 0}

    def flaky_ship(path: Path) -> None:
        if failures["left"]:
            failures["left"] -= 1
            failures["seen"] += 1
            raise OSError("target unavailable")
        archive.ship(path)

    slot = postgres.slot_name(f"restart-{secrets.token_hex(3)}")
    spool = tmp_path / "spool"
    table = f"arch_{secrets.token_hex(4)}"
    with pg.primary.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, batch int NOT NULL, committed_at timestamptz)")
    first = postgres.WalArchiver(info, spool, slot, flaky_ship).start()
    try:
        start = first.flush(timeout=120)
        assert failures["seen"] == 2  # the uploads failed twice; the files stayed and went on the next round
        assert not any(p.name.endswith(".mark") for p in spool.rglob("*"))

        # pg_receivewal dies: the archiver notices, starts it again, and nothing is lost.
        killed = first.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        procs.wait_until("pg_receivewal restarted", lambda: first.pid not in (None, killed), 60)
        insert_batch(pg, table, 1)
        first.flush(timeout=120)
        status = first.status()
        assert status.restarts >= 1 and status.last_error is None
    finally:
        first.stop()
    assert first.status().running is False

    # While no archiver runs the slot keeps the WAL; a new archiver on the same spool resumes without a gap.
    for batch in (2, 3):
        insert_batch(pg, table, batch)
        with pg.primary.connect() as conn:
            conn.execute("SELECT pg_switch_wal()")
    # mark_interval: marks (and segment switches) without anyone calling flush().
    second = postgres.WalArchiver(info, spool, slot, archive.ship, mark_interval=0.5).start()
    try:
        procs.wait_until("a periodic mark archived", lambda: (second.status().last_mark or start).time > start.time, 60)
        end = second.flush(timeout=120)
    finally:
        second.stop()
        postgres.drop_slot(info, slot)
    names = archive.names()
    assert len(archive.shipped) == len(set(archive.shipped)), "a file was shipped twice"
    size = second.wal_segment_size
    assert pg_wal.wal_gaps(names, size, start=start.segment) == []
    segments = [n for n in names if pg_wal.is_segment_name(n) and start.segment <= n <= end.segment]
    # At least: the first mark's, the second's, two switched while stopped, and the last mark's.
    assert len(segments) >= 5


def _tool_processes(binary: str, marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(binary.encode()) and any(marker.encode() in a for a in argv):
                found.append(int(entry.name))
    return found


def _exposed(pid: int, password: str) -> list[str]:
    """Where ``password`` shows in what another local user could read of the process (argv, environment)."""
    where = []
    for part in ("cmdline", "environ"):
        try:
            if password.encode() in Path(f"/proc/{pid}/{part}").read_bytes():
                where.append(part)
        except OSError:
            pass
    return where


def test_passwords_are_not_in_argv_environment_or_logs(
    pg: PostgresCluster,
    archiver: tuple[postgres.WalArchiver, Archive],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    arch, _ = archiver
    password = pg.password

    def streaming() -> bool:
        with pg.primary.connect() as conn:
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (arch.slot,)).fetchone()
        return row == (True,)

    procs.wait_until("pg_receivewal streaming on its slot", streaming, 60)
    pid = arch.pid
    assert pid is not None, arch.status()
    assert "--slot" in Path(f"/proc/{pid}/cmdline").read_text()
    assert _exposed(pid, password) == []

    staging = tmp_path / "base"
    seen: dict[int, list[str]] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for found in _tool_processes("pg_basebackup", str(staging)):
                seen.setdefault(found, _exposed(found, password))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        postgres.take_base(conn_info(pg.primary), staging, timeout=300, backup_id="argv")
    finally:
        done.set()
        watcher.join()
    assert seen, "pg_basebackup was never seen running"
    assert all(where == [] for where in seen.values()), seen

    # A least-privileged role (REPLICATION, no superuser) with a password full of the characters the
    # passfile and connection strings escape.
    role, tricky = f"backup_{secrets.token_hex(3)}", f"p:a\\ss'w\"rd {secrets.token_hex(6)}"
    secretscan.track(tricky)
    with pg.primary.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} REPLICATION LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(tricky))
        )
    try:
        limited = ConnectionInfo.for_engine("postgres", "127.0.0.1", tricky, port=pg.primary.port, username=role)
        assert postgres.take_base(limited, tmp_path / "limited", timeout=120, backup_id="limited")["bytes"] > 0
    finally:
        with pg.primary.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    # A refused password: the error says so and does not repeat it.
    wrong = f"wrong-{secrets.token_hex(8)}"
    bad = ConnectionInfo.for_engine("postgres", "127.0.0.1", wrong, port=pg.primary.port)
    with pytest.raises(postgres.PostgresBackupError) as failed:
        postgres.take_base(bad, tmp_path / "refused", timeout=60, backup_id="refused")
    assert "password authentication failed" in str(failed.value)
    assert wrong not in str(failed.value)

    arch.flush(timeout=120)
    server_log = (pg.primary.workdir / "postgres.log").read_text(errors="replace")
    assert "password authentication failed" in server_log  # the refused attempt was logged, without it
    assert password not in server_log and wrong not in server_log and tricky not in server_log
    assert all(password not in r.getMessage() and wrong not in r.getMessage() for r in caplog.records)


def test_tls_is_verified_for_base_backups_and_archiving(devenv_dir: Path, tmp_path: Path) -> None:
    """The tools get libpq's TLS settings from the ConnectionInfo: verify-full against the CA, the
    certificate's name (serverName) checked while connecting to 127.0.0.1; a wrong CA is refused."""
    pki = write_pki(tmp_path / "pki")
    workdir = devenv_dir / f"pg-backup-tls-{secrets.token_hex(3)}"
    tls_dir = workdir / "tls"  # inside workdir: the server's user owns it (the key must be its own)
    tls_dir.mkdir(parents=True)
    for source in (pki.cert, pki.key):
        (tls_dir / source.name).write_bytes(source.read_bytes())
    (tls_dir / pki.key.name).chmod(0o600)
    conf = f"ssl = on\nssl_cert_file = '{tls_dir / 'server.crt'}'\nssl_key_file = '{tls_dir / 'server.key'}'\n"
    password = secrets.token_urlsafe(24)
    secretscan.track(password)
    with procs.ProcStack() as stack:
        server = PostgresServer(workdir, "tls-backup", password, conf=conf).init().start(stack)
        info = ConnectionInfo.for_engine(
            "postgres", "127.0.0.1", password, port=server.port, tls=True, ca_cert=pki.ca_pem, server_name=SERVER_NAME
        )
        wrong = ConnectionInfo.for_engine(
            "postgres", "127.0.0.1", password, port=server.port, tls=True, ca_cert=pki.wrong_ca_pem
        )
        with pytest.raises(postgres.PostgresBackupError, match=r"certificate verify failed|does not match"):
            postgres.take_base(wrong, tmp_path / "refused", timeout=60)

        meta = postgres.take_base(info, tmp_path / "base", timeout=120, backup_id="tls")
        assert meta["bytes"] > 0
        archive = Archive(tmp_path)
        slot = postgres.slot_name("tls")
        with postgres.WalArchiver(info, tmp_path / "spool", slot, archive.ship) as arch:
            arch.flush(timeout=120)
            with server.connect() as conn:
                row = conn.execute(
                    "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"
                    " WHERE r.application_name = %s",
                    (postgres.APPLICATION_NAME,),
                ).fetchone()
            assert row == (True,)
        postgres.drop_slot(info, slot)
        assert pg_wal.wal_gaps(archive.names(), meta["wal_segment_size"], start=meta["stop_segment"]) == []
