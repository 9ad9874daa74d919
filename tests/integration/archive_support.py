"""What the integration tests of a PostgreSQL store's WAL archive share (test_backup_wal_archive,
test_backup_prune, test_bootstrap_restore): the module's own primary; the store's backup target in the real S3
server (MinIO) with a fresh encryption key, its archiver plan and its Secrets as the directories a pod mounts;
the ``mlinfra archive wal`` process as its Deployment runs it; base backups taken into the same store prefix,
and downloaded back.
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_backup_postgres import conn_info, insert_batch, server_now

from mlinfra.api import backup as api
from mlinfra.backup import catalog, configured, pg_wal, take
from mlinfra.backup.http_target import HttpTarget
from mlinfra.backup.sealed import EncryptionKey
from mlinfra.backup.target import Target
from mlinfra.backup.volume_server import VolumeServer
from mlinfra.devenv import procs, secretscan
from mlinfra.devenv.minio import MinioServer
from mlinfra.devenv.postgres import PostgresCluster, start_postgres
from mlinfra.engines import endpoints, names
from mlinfra.stores import backupaccess as access
from mlinfra.stores import walarchiver as archiver

NAMESPACE = "team-a"


@dataclass
class Setup:
    """One store's archiving setup: the plan, the Secrets as directories, the target as the test reads it, and
    what the archiver's environment needs besides (where a served volume is, for the served-volume setup)."""

    plan: archiver.ArchivePlan
    secret_dirs: dict[str, Path]
    target: Target
    key: EncryptionKey
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return self.plan.store_prefix

    def pod_env(self, plan_var: str, plan: str, secret_vars: Mapping[str, str]) -> dict[str, str]:
        """A backup pod's environment: its plan in ``plan_var``, each Secret's directory in the variable
        ``secret_vars`` names for it, and nothing of the test's own that would point at another server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "KUBECONFIG", "MLINFRA_"))}
        env[plan_var] = plan
        for secret, var in secret_vars.items():
            env[var] = str(self.secret_dirs[secret])
        return env

    def env(self, spool: Path) -> dict[str, str]:
        """The archiver container's environment."""
        spec = access.pod_spec_of(self.plan, archiver.SECRET_DIR_ENV)
        env = self.pod_env(archiver.PLAN_ENV, json.dumps(spec), spec["secretDirs"])
        env[archiver.SPOOL_ENV] = str(spool)
        env[archiver.STATUS_ENV] = str(spool / "status.json")
        return {**env, **self.extra_env}


def secret_dir(root: Path, name: str, data: dict[str, str]) -> Path:
    directory = root / "secrets" / name
    directory.mkdir(parents=True)
    for key, value in data.items():
        (directory / key).write_text(value)
    return directory


def own_primary(name: str) -> Any:
    """A module's ``pg`` fixture: its own PostgreSQL primary (no standby) under ``devenv_dir/<name>``, as the
    archiver switches segments and creates slots, which would disturb the session's shared cluster."""

    @pytest.fixture(scope="module")
    def pg(devenv_dir: Path) -> Iterator[PostgresCluster]:
        with procs.ProcStack() as stack:
            yield start_postgres(stack, devenv_dir / name, standbys=0)

    return pg


def _plan(store: str, target: dict[str, Any]) -> tuple[archiver.ArchivePlan, str]:
    """``store``'s archiver plan to ``target`` (a spec.backup.target), encrypted with a new key; the key."""
    uid = str(uuid.uuid4())
    key_hex = secrets.token_hex(32)
    secretscan.track(key_hex)
    plan = archiver.ArchivePlan(
        namespace=NAMESPACE,
        store=store,
        store_uid=uid,
        target=api.Target.model_validate(target),
        encryption=api.Encryption.model_validate({"keySecretRef": {"name": "backup-key", "key": "key"}}),
        slot=archiver.slot_for(NAMESPACE, store, uid),
        mark_interval=1.0,  # the RPO bound: short, so the test sees marks soon
    )
    return plan, key_hex


def _setup(
    pg: PostgresCluster, tmp_path: Path, plan: archiver.ArchivePlan, key_hex: str, target: Target, **dirs: Path
) -> Iterator[Setup]:
    """The Setup of ``plan`` with the store's connection and the key as directories besides the target's
    ``dirs``; the slot the archiver creates is dropped after the test (unless an archiver holds it)."""
    secret_dirs = {
        names.connection_secret(plan.store): secret_dir(tmp_path, "conn", conn_info(pg.primary).to_secret_data()),
        "backup-key": secret_dir(tmp_path, "key", {"key": key_hex}),
        **dirs,
    }
    assert set(secret_dirs) == set(access.secret_names(plan))
    try:
        yield Setup(
            plan=plan,
            secret_dirs=secret_dirs,
            target=target,
            key=EncryptionKey.from_secret_value("backup-key/key", key_hex.encode()),
            root=tmp_path,
        )
    finally:
        with pg.primary.connect() as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s AND NOT active",
                (plan.slot,),
            )


def archive_fixture(bucket_name: str, store: str) -> Any:
    """A test's fixture of :class:`Setup`: ``store``'s archiving of the module's ``pg`` primary into a new
    bucket, encrypted."""

    @pytest.fixture
    def fixture(pg: PostgresCluster, s3_server: MinioServer, tmp_path: Path) -> Iterator[Setup]:
        bucket = s3_server.new_bucket(bucket_name)
        s3 = {
            "bucket": bucket,
            "prefix": "backups",
            "endpoint": s3_server.endpoint,
            "credentialsSecretRef": {"name": "s3-creds"},
            "tls": {"enabled": False},
        }
        plan, key_hex = _plan(store, {"s3": s3})
        s3_keys = {"accessKeyId": s3_server.root.access_key, "secretAccessKey": s3_server.root.secret_key}
        creds = secret_dir(tmp_path, "s3", s3_keys)
        yield from _setup(pg, tmp_path, plan, key_hex, s3_server.target(bucket, "backups"), **{"s3-creds": creds})

    return fixture


def served_archive_fixture(claim: str, store: str) -> Any:
    """As :func:`archive_fixture`, onto a volume target: the volume server on a directory of the test (the
    server a claim's pod runs), reached by the archiver process through the endpoint map, as an operator or a
    Job outside the cluster reaches it."""

    @pytest.fixture
    def fixture(pg: PostgresCluster, tmp_path: Path) -> Iterator[Setup]:
        plan, key_hex = _plan(store, {"volume": {"claimName": claim}})
        token = secrets.token_urlsafe(24)
        secretscan.track(token)
        with VolumeServer(tmp_path / "claim", token, host="127.0.0.1", port=0) as server:
            server_name = configured.volume_server(claim)
            endpoint_map = tmp_path / "endpoints.json"
            endpoint_map.write_text(
                json.dumps({f"{NAMESPACE}/{server_name}": {"endpoint": f"127.0.0.1:{server.port}"}})
            )
            token_dir = secret_dir(tmp_path, "token", {configured.VOLUME_TOKEN_KEY: token})
            target = HttpTarget(host="127.0.0.1", port=server.port, token=token, where=f"the test's {claim}")
            for s in _setup(pg, tmp_path, plan, key_hex, target, **{configured.volume_token_secret(claim): token_dir}):
                s.extra_env[endpoints.ENV] = str(endpoint_map)
                yield s

    return fixture


class Running:
    """One ``mlinfra archive wal`` process (stdout and stderr in files under the test's directory, which the
    session's secret scan reads)."""

    def __init__(self, s: Setup, spool: Path, name: str) -> None:
        self.spool = spool
        self.out = s.root / f"{name}.stdout"
        self.err = s.root / f"{name}.stderr"
        self.stopped: dict[str, Any] = {}  # its last line, once SIGTERM stopped it
        argv = [sys.executable, "-m", "mlinfra", "archive", "wal", f"{s.plan.namespace}/{s.plan.store}"]
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
        self.stopped = last
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


@contextlib.contextmanager
def archiving(s: Setup, spool: Path, name: str) -> Iterator[Running]:
    """An archiver running for the block, stopped by SIGTERM after it (which must archive every commit)."""
    running = Running(s, spool, name)
    try:
        running.wait_running()
        yield running
    finally:
        if running.proc.poll() is None:
            running.terminate()


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


def target_between(pg: PostgresCluster, table: str, before: int, after: int) -> datetime.datetime:
    """A point-in-time target on the server's clock, half a second after batch ``before`` committed and half a
    second before batch ``after`` did."""
    insert_batch(pg, table, before)
    time.sleep(0.5)
    target = server_now(pg)
    time.sleep(0.5)
    insert_batch(pg, table, after)
    return target


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


def create_table(pg: PostgresCluster, prefix: str) -> str:
    """A new table for :func:`test_backup_postgres.insert_batch`'s rows."""
    table = f"{prefix}_{secrets.token_hex(4)}"
    with pg.primary.connect() as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, batch int NOT NULL, committed_at timestamptz)")
    return table
