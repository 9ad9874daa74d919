"""``mlinfra archive wal`` against a real PostgreSQL and the real S3 server (MinIO): the archiver process as its
Deployment runs it (the plan in the environment, the Secrets as files), a base backup taken into the same
store prefix, recoverability computed from the bucket alone, and a point-in-time restore from what is
downloaded from the bucket (base backup and the WAL the plan names) into a NEW data directory started as a
new server. Killing the archiver (SIGKILL, its whole process tree, as a container kill does) and starting it
again — on the same spool, then on an empty one (a new pod) — loses nothing: no gap, every row restored.

The module starts its own primary: the tests switch segments and create slots.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_backup_postgres import ROWS_PER_BATCH, conn_info, insert_batch, rows, server_now, start_restored

from mlinfra.api import backup as api
from mlinfra.backup import catalog, pg_wal, recoverability, take
from mlinfra.backup.s3 import S3Target
from mlinfra.backup.sealed import EncryptionKey
from mlinfra.devenv import procs, secretscan
from mlinfra.devenv.minio import MinioServer
from mlinfra.devenv.postgres import PostgresCluster, start_postgres
from mlinfra.engines import names
from mlinfra.stores import backupaccess as access
from mlinfra.stores import walarchiver as archiver

pytestmark = pytest.mark.integration

NAMESPACE, STORE = "team-a", "pg-archived"


@pytest.fixture(scope="module")
def pg(devenv_dir: Path) -> Iterator[PostgresCluster]:
    with procs.ProcStack() as stack:
        yield start_postgres(stack, devenv_dir / "pg-wal-archive", standbys=0)


@dataclass
class Setup:
    """One store's archiving setup: the plan, the Secrets as directories, the target as the test reads it."""

    plan: archiver.ArchivePlan
    secret_dirs: dict[str, Path]
    target: S3Target
    key: EncryptionKey
    root: Path

    @property
    def prefix(self) -> str:
        return self.plan.store_prefix

    def env(self, spool: Path) -> dict[str, str]:
        spec = access.pod_spec_of(self.plan, archiver.SECRET_DIR_ENV)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "KUBECONFIG", "MLINFRA_"))}
        env[archiver.PLAN_ENV] = json.dumps(spec)
        for secret, var in spec["secretDirs"].items():
            env[var] = str(self.secret_dirs[secret])
        env[archiver.SPOOL_ENV] = str(spool)
        env[archiver.STATUS_ENV] = str(spool / "status.json")
        return env


def _secret_dir(root: Path, name: str, data: dict[str, str]) -> Path:
    directory = root / "secrets" / name
    directory.mkdir(parents=True)
    for key, value in data.items():
        (directory / key).write_text(value)
    return directory


@pytest.fixture
def setup(pg: PostgresCluster, s3_server: MinioServer, tmp_path: Path) -> Iterator[Setup]:
    bucket = s3_server.new_bucket("wal")
    uid = str(uuid.uuid4())
    key_hex = secrets.token_hex(32)
    secretscan.track(key_hex)
    target_spec = api.Target.model_validate(
        {
            "s3": {
                "bucket": bucket,
                "prefix": "backups",
                "endpoint": s3_server.endpoint,
                "credentialsSecretRef": {"name": "s3-creds"},
                "tls": {"enabled": False},
            }
        }
    )
    encryption = api.Encryption.model_validate({"keySecretRef": {"name": "backup-key", "key": "key"}})
    plan = archiver.ArchivePlan(
        namespace=NAMESPACE,
        store=STORE,
        store_uid=uid,
        target=target_spec,
        encryption=encryption,
        slot=archiver.slot_for(NAMESPACE, STORE, uid),
        mark_interval=1.0,  # the RPO bound: short, so the test sees marks soon
    )
    dirs = {
        names.connection_secret(STORE): _secret_dir(tmp_path, "conn", conn_info(pg.primary).to_secret_data()),
        "s3-creds": _secret_dir(
            tmp_path, "s3", {"accessKeyId": s3_server.root.access_key, "secretAccessKey": s3_server.root.secret_key}
        ),
        "backup-key": _secret_dir(tmp_path, "key", {"key": key_hex}),
    }
    assert set(dirs) == set(access.secret_names(plan))
    yield Setup(
        plan=plan,
        secret_dirs=dirs,
        target=s3_server.target(bucket, "backups"),
        key=EncryptionKey.from_secret_value("backup-key/key", key_hex.encode()),
        root=tmp_path,
    )
    with pg.primary.connect() as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
            (plan.slot,),
        )


class Running:
    """One ``mlinfra archive wal`` process (stdout and stderr in files under the test's directory, which the
    session's secret scan reads)."""

    def __init__(self, s: Setup, spool: Path, name: str) -> None:
        self.spool = spool
        self.out = s.root / f"{name}.stdout"
        self.err = s.root / f"{name}.stderr"
        argv = [sys.executable, "-m", "mlinfra", "archive", "wal", f"{NAMESPACE}/{STORE}"]
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(argv, env=s.env(spool), stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.startswith("{")]

    def status(self) -> dict[str, Any]:
        path = self.spool / "status.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def wait_running(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.out.read_text() + self.err.read_text()
            st = self.status()
            return bool(st.get("running")) and st.get("event") == "status"

        procs.wait_until("the archiver is running", up, 60)

    def terminate(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(90)
        assert code == 0, self.out.read_text() + self.err.read_text()
        last = self.lines()[-1]
        assert last["event"] == "stopped" and not last["running"]
        return last

    def kill_tree(self) -> None:
        """SIGKILL the process and its pg_receivewal (in a session of its own), as a container kill does."""
        children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == self.proc.pid]
        self.proc.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(30)


def _ppid(proc_dir: Path) -> int | None:
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def archived_marks(s: Setup) -> list[pg_wal.Mark]:
    return [m for m in map(pg_wal.parse_mark, catalog.list_wal(s.target, s.prefix)) if m is not None]


def wait_for_mark_after(s: Setup, when: datetime.datetime, running: Running) -> pg_wal.Mark:
    found: list[pg_wal.Mark] = []

    def check() -> bool:
        assert running.proc.poll() is None, running.out.read_text() + running.err.read_text()
        found[:] = [m for m in archived_marks(s) if m.time > when]
        return bool(found)

    procs.wait_until(f"a mark after {when.isoformat()} in the archive", check, 120)
    return min(found, key=lambda m: m.lsn)


def take_base(pg: PostgresCluster, s: Setup) -> catalog.Manifest:
    return take.take_backup(
        engine="postgres",
        conn=conn_info(pg.primary),
        target=s.target,
        store_prefix=s.prefix,
        store=s.plan.store_ref,
        backup_id=catalog.new_backup_id(),
        enc_key=s.key,
        staging=s.root / "staging",
        timeout=300,
    )


def download(s: Setup, manifest: catalog.Manifest, plan: pg_wal.RestorePlan, name: str) -> tuple[Path, Path]:
    """As the restore's init container does: the base backup, and only the WAL files the plan names."""
    base = s.root / f"{name}-base"
    catalog.download_backup(s.target, s.prefix, manifest.backup_id, base, s.key)
    wal = s.root / f"{name}-wal"
    wal.mkdir()
    for file in plan.files:
        catalog.get_wal(s.target, s.prefix, file, wal / file, s.key)
    return base, wal


def create_table(pg: PostgresCluster) -> str:
    table = f"arch_{secrets.token_hex(4)}"
    with pg.primary.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, batch int NOT NULL, committed_at timestamptz)")
    return table


def test_point_in_time_restore_through_s3_from_the_archiver_process(pg: PostgresCluster, setup: Setup) -> None:
    s = setup
    table = create_table(pg)
    running = Running(s, s.root / "spool", "archiver")
    stopped: dict[str, Any] = {}
    try:
        running.wait_running()
        insert_batch(pg, table, 1)
        manifest = take_base(pg, s)
        assert manifest.engine == "postgres" and manifest.encrypted
        insert_batch(pg, table, 2)
        time.sleep(0.5)
        target = server_now(pg)
        time.sleep(0.5)
        insert_batch(pg, table, 3)
        mark = wait_for_mark_after(s, target, running)
        status = running.status()
        assert status["lastSegment"] and status["lastMark"] and status["segmentsShipped"] > 0
        assert status["slot"] == s.plan.slot and status["lastError"] is None
    finally:
        if running.proc.poll() is None:
            stopped = running.terminate()
    assert stopped["flushedMark"] is not None  # SIGTERM archives every commit made before it
    events = [line["event"] for line in running.lines()]
    assert events[0] == "started" and "status" in events and events[-2:] == ["stopping", "stopped"]
    password = pg.password
    for text in (running.out.read_text(), running.err.read_text(), (s.root / "spool" / "status.json").read_text()):
        assert password not in text and (s.secret_dirs["s3-creds"] / "secretAccessKey").read_text() not in text

    names_ = catalog.list_wal(s.target, s.prefix)
    assert mark.name in names_ and not [n for n in names_ if n.endswith(".partial")]
    # Segments go compressed: one closed by a mark's switch is mostly zeros.
    stored = {o.key.rsplit("/", 1)[1]: o.size for o in s.target.list(catalog.wal_prefix(s.prefix))}
    segment_size = manifest.meta["wal_segment_size"]
    assert min(size for name, size in stored.items() if pg_wal.is_segment_name(name)) < segment_size // 4
    window = recoverability.read(s.target, s.prefix, s.key, s.plan.store_uid)
    assert window.first is not None and window.last is not None and window.gaps == []
    assert window.first.time is not None and window.last.time is not None
    assert window.first.time <= target <= window.last.time
    assert window.first.time == datetime.datetime.fromisoformat(manifest.meta["stop_time"])
    st = recoverability.to_status(window)
    assert st["walGaps"] == [] and st["lastRecoverabilityPoint"]["lsn"] == pg_wal.format_lsn(window.last.lsn)

    source = rows(pg.primary, table)
    before = [r for r in source if r[1] in (1, 2)]
    assert len(before) == 2 * ROWS_PER_BATCH
    assert all(r[2] < target for r in before) and all(r[2] > target for r in source if r[1] == 3)
    plan = pg_wal.plan_restore(manifest.meta, names_, target)
    assert plan.segments and plan.segments[0] == manifest.meta["stop_segment"]
    base_dir, wal_dir = download(s, manifest, plan, "pitr")
    with procs.ProcStack() as stack:
        restored, _ = start_restored(
            stack, s.root / "restored", "restored", pg.password, base_dir, wal_dir, target_time=target
        )
        assert rows(restored, table) == before


def test_killing_and_restarting_the_archiver_loses_nothing(pg: PostgresCluster, setup: Setup) -> None:
    s = setup
    table = create_table(pg)
    spool = s.root / "spool"
    first = Running(s, spool, "first")
    try:
        first.wait_running()
        manifest = take_base(pg, s)
        insert_batch(pg, table, 1)
        wait_for_mark_after(s, server_now(pg), first)
    finally:
        first.kill_tree()
    # Written while no archiver runs: the slot keeps this WAL on the server.
    insert_batch(pg, table, 2)
    with pg.primary.connect() as conn:
        conn.execute("SELECT pg_switch_wal()")
    insert_batch(pg, table, 3)

    second = Running(s, spool, "second")  # the same spool: a container restarted in its pod
    try:
        second.wait_running()
        insert_batch(pg, table, 4)
        wait_for_mark_after(s, server_now(pg), second)
    finally:
        second.kill_tree()
    insert_batch(pg, table, 5)

    third = Running(s, s.root / "new-spool", "third")  # an empty spool: a new pod
    try:
        third.wait_running()
        insert_batch(pg, table, 6)
        last = wait_for_mark_after(s, server_now(pg), third)
    finally:
        if third.proc.poll() is None:
            third.terminate()
    source = rows(pg.primary, table)
    assert sorted({r[1] for r in source}) == [1, 2, 3, 4, 5, 6]

    names_ = catalog.list_wal(s.target, s.prefix)
    window = recoverability.read(s.target, s.prefix, s.key, s.plan.store_uid)
    assert window.gaps == [], [g.describe() for g in window.gaps]
    assert window.last is not None and window.last.time is not None and window.last.time >= last.time
    # To the end of the archive: every row, none lost across the kills.
    plan = pg_wal.plan_restore(manifest.meta, names_)
    base_dir, wal_dir = download(s, manifest, plan, "end")
    with procs.ProcStack() as stack:
        restored, _ = start_restored(stack, s.root / "restored", "restored", pg.password, base_dir, wal_dir)
        assert rows(restored, table) == source
