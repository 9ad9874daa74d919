"""A store that bootstraps from a Backup, its pod side against real servers: a real backup in the real S3
server (MinIO) — PostgreSQL with its WAL archived by ``mlinfra archive wal``, Redis — restored onto a new
pod's volume by ``mlinfra restore pod`` (the plan in the environment, the Secrets as files, as its init
container runs it) or by ``restore_into``, then the pod's RENDERED start script run on that volume with the
NEW store's passwords: the server comes up with the rows (PostgreSQL to a target time: exactly those
committed before it), the new passwords log in and the source's do not, the recovery settings are gone. A
second restore on the same volume does nothing, pod 1 does nothing, a recovery that cannot finish stops
start.sh loudly, and a start killed before its end finishes again.

The module starts its own PostgreSQL primary: the archiver switches segments and creates a slot.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import archive_support as support
import psycopg
import pytest
import redis as redis_lib
from rendered_support import redis_pod, store, write_files
from test_backup_postgres import ROWS_PER_BATCH, insert_batch, rows, server_now
from test_backup_redis import assert_same, populate, state
from test_start_scripts import SUPERUSER, ArgvWatch, PgPod, _files_holding, _hand_over, _password

from mlinfra.backup import catalog, postgres, take
from mlinfra.backups import bootstrap_cli
from mlinfra.devenv import procs, secretscan
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisServer
from mlinfra.engines import connection, names, render
from mlinfra.stores import backupaccess as access
from mlinfra.stores import restoreplan, sync_command

pytestmark = pytest.mark.integration

SOURCE, STORE = "orders", "orders-restored"
PG_CONFIG = {"shared_buffers": "32MB", "max_connections": "40"}
RECOVERY = "|".join(s for s in postgres.RECOVERY_SETTINGS if s != "hot_standby")  # hot_standby: on, rendered


pg = support.own_primary("pg-bootstrap")
archive = support.archive_fixture("bootstrap", SOURCE)


@dataclass
class Source:
    """The source store's backups on the target, and what a restore plan of it names."""

    archive: support.Setup  # the archiver's plan (its target, its encryption) and Secret directories

    @property
    def uid(self) -> str:
        return self.archive.plan.store_uid

    def plan(self, backup_id: str, engine: str, data_dir: Path, **extra: Any) -> restoreplan.RestorePlan:
        target, encryption = self.archive.plan.target, self.archive.plan.encryption
        names_ = restoreplan.secret_names(target, encryption)
        return restoreplan.RestorePlan(
            namespace=support.NAMESPACE,
            store=STORE,
            backup=f"{SOURCE}-nightly",
            backup_id=backup_id,
            engine=engine,  # type: ignore[arg-type]
            source_store=SOURCE,
            source_uid=self.uid,
            target=target,
            encryption=encryption,
            data_dir=str(data_dir),
            secret_dirs={name: f"{restoreplan.SECRET_DIR_ENV}_{i}" for i, name in enumerate(names_)},
            **extra,
        )

    def reader(self) -> access.Reader:
        return access.mounted_reader(self.archive.secret_dirs)

    def pod_env(self, plan: restoreplan.RestorePlan, hostname: str, termination: Path) -> dict[str, str]:
        """The restore init container's environment."""
        env = self.archive.pod_env(restoreplan.PLAN_ENV, plan.model_dump_json(by_alias=True), plan.secret_dirs)
        return env | {"HOSTNAME": hostname, sync_command.TERMINATION_LOG_ENV: str(termination)}


@pytest.fixture
def source(archive: support.Setup) -> Source:
    return Source(archive)


def restore_pod(src: Source, plan: restoreplan.RestorePlan, hostname: str, root: Path) -> tuple[int, str, str]:
    """``mlinfra restore pod`` as the init container runs it: (exit code, stdout, termination message)."""
    termination = root / f"termination-{hostname}"
    termination.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "mlinfra", "restore", "pod"],
        env=src.pod_env(plan, hostname, termination),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.stderr == "", result.stderr
    return result.returncode, result.stdout, termination.read_text()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


# --- postgres ----------------------------------------------------------------------------------------------


@dataclass
class NewPod(PgPod):
    """Pod 0 of the new store: its data volume at ``workdir/volume`` (pgdata beneath), its superuser named as
    the new store's credentials Secret says."""

    superuser: str = SUPERUSER
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def volume(self) -> Path:
        return self.workdir / "volume"

    @property
    def run_dir(self) -> Path:
        # The restore's private socket directory is made in the run directory: keep its path short (108 bytes).
        digest = hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"mlinfra-pgr-{digest}"

    def env(self) -> dict[str, str]:
        return {**super().env(), "POSTGRES_USER": self.superuser, **self.extra_env}

    def connect(self, user: str | None = None, password: str | None = None) -> psycopg.Connection[tuple[Any, ...]]:
        return super().connect(user or self.superuser, password)

    def prepare(self) -> None:
        super().prepare()
        self.run_dir.mkdir(exist_ok=True)
        _hand_over(self.run_dir, self.uid, self.gid)

    def start(self, stack: procs.ProcStack) -> NewPod:
        run_dir = self.run_dir
        stack.callback(lambda: shutil.rmtree(run_dir, ignore_errors=True))
        super().start(stack)
        return self

    def run(self, script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return super().run(script, env)
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def stop(self) -> None:
        self.stop_like_prestop()


def new_pod(root: Path, superuser: str) -> NewPod:
    files = write_files(root / "config", render.render_config_files(store("postgres", 1, PG_CONFIG)))
    pod = NewPod(root, files, 0, _password(), _password(), superuser=superuser)
    for value in (pod.password, pod.replication_password):
        secretscan.track(value)
    pod.volume.mkdir(parents=True)
    return pod


def table_rows(pod: NewPod, table: str) -> list[tuple[int, int, datetime.datetime]]:
    with pod.connect() as conn:
        return [
            (int(r[0]), int(r[1]), r[2])
            for r in conn.execute(f"SELECT id, batch, committed_at FROM {table} ORDER BY id")
        ]


def refused(pod: NewPod, user: str, password: str) -> bool:
    try:
        pod.connect(user, password).close()
    except psycopg.OperationalError as exc:
        return "password authentication failed" in str(exc)
    return False


def assert_finished(pod: NewPod, pg: PostgresCluster) -> None:
    """What start.sh's finish leaves: a primary on the new passwords, no recovery setting, no working dir."""
    assert not (pod.volume / restoreplan.WORK_DIR).exists()
    assert not (pod.pgdata / "recovery.signal").exists()
    auto_conf = (pod.pgdata / "postgresql.auto.conf").read_text()
    for setting in ("restore_command", "recovery_target", "hot_standby"):
        assert setting not in auto_conf, auto_conf
    with pod.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery(), current_setting('hot_standby')").fetchone() == (False, "on")
        assert conn.execute(
            "SELECT count(*) FROM pg_settings WHERE name ~ %s AND source <> 'default'", (f"^({RECOVERY})$",)
        ).fetchone() == (0,)
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)
    with pod.connect(names.POSTGRES_REPLICATION_USER, pod.replication_password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (names.POSTGRES_REPLICATION_USER,)
    # The source's superuser password opens nothing: neither its own role nor the new superuser.
    assert refused(pod, "postgres", pg.password)
    assert refused(pod, pod.superuser, pg.password)


def test_point_in_time_bootstrap_of_a_postgres_store(pg: PostgresCluster, source: Source, tmp_path: Path) -> None:
    s = source.archive
    table = support.create_table(pg, "boot")
    with support.archiving(s, s.root / "spool", "archiver") as running:
        insert_batch(pg, table, 1)
        manifest = support.take_base(pg, s)
        target_time = support.target_between(pg, table, 2, 3)
        support.wait_for_mark_after(s, target_time, running)
    before = [r for r in rows(pg.primary, table) if r[1] in (1, 2)]
    assert len(before) == 2 * ROWS_PER_BATCH and all(r[2] < target_time for r in before)

    pod = new_pod(tmp_path / "new", superuser="postgres")  # the name the source's superuser has too
    plan = source.plan(manifest.backup_id, "postgres", pod.volume, target_time=target_time)
    assert plan.source_prefix == s.plan.store_prefix

    # Pod 1 of the new store: nothing, at once (its own volume stays empty).
    other = tmp_path / "pod-1-volume"
    other.mkdir()
    code, out, message = restore_pod(source, plan.model_copy(update={"data_dir": str(other)}), f"{STORE}-1", tmp_path)
    assert code == 0 and "pods > 0 copy pod 0" in out and message.startswith("NotPodZero: ")
    assert list(other.iterdir()) == []

    code, out, message = restore_pod(source, plan, f"{STORE}-0", tmp_path)
    assert code == 0, out + message
    assert json.loads(out.strip().splitlines()[-1])["outcome"] == bootstrap_cli.RESTORED
    assert "downloading" in out and "WAL:" in out and message.startswith("Restored: ")
    for secret in (s3_secret(source), source.archive.key.secret.hex(), pg.password):
        assert secret not in out and secret not in message
    work = pod.volume / restoreplan.WORK_DIR
    assert (work / restoreplan.PENDING).is_file() and (pod.pgdata / "PG_VERSION").is_file()
    assert (pod.pgdata / "recovery.signal").is_file()
    assert sorted(p.name for p in work.iterdir()) == [restoreplan.PENDING, bootstrap_cli.WAL_DIR]
    assert list((work / bootstrap_cli.WAL_DIR).iterdir())  # what restore_command reads during the recovery

    # The init container again (the pod recreated before the server started): the volume holds data.
    laid_out = tree(pod.volume)
    code, out, message = restore_pod(source, plan, f"{STORE}-0", tmp_path)
    assert code == 0 and "holds data: not restoring" in out and message.startswith("HoldsData: ")
    assert tree(pod.volume) == laid_out

    with procs.ProcStack() as stack:
        with ArgvWatch() as argv:
            pod.start(stack)
        log = pod.log.read_text()
        assert "was restored from a backup: finishing its recovery" in log and "restore finished" in log
        assert "initdb" not in log
        assert table_rows(pod, table) == before  # exactly the rows committed before the target time
        assert_finished(pod, pg)
        assert len(argv.seen) > 10
        for secret in (pod.password, pod.replication_password):
            assert argv.holding(secret) == []
            assert _files_holding(pod.workdir, secret) == []

        # A restart: no marker, a plain start of the cluster.
        pod.stop()
        pod.start(stack)
        assert "finishing its recovery" not in pod.log.read_text()
        assert table_rows(pod, table) == before


def s3_secret(src: Source) -> str:
    return (src.archive.secret_dirs["s3-creds"] / "secretAccessKey").read_text()


def test_bootstrap_to_the_end_of_a_backup_under_another_superuser_name_and_a_start_killed_before_its_end(
    pg: PostgresCluster, source: Source, tmp_path: Path
) -> None:
    s = source.archive
    table = support.create_table(pg, "boot")
    insert_batch(pg, table, 1)
    manifest = support.take_base(pg, s)  # no archive: the backup restores to its own end
    insert_batch(pg, table, 2)
    pod = new_pod(tmp_path / "new", superuser=SUPERUSER)  # not the source's "postgres"
    lines: list[str] = []
    plan = source.plan(manifest.backup_id, "postgres", pod.volume)
    assert bootstrap_cli.restore_into(plan, source.reader(), lines.append) == bootstrap_cli.RESTORED
    assert not [p for p in (pod.volume / restoreplan.WORK_DIR / bootstrap_cli.WAL_DIR).iterdir()]

    expected = [r for r in rows(pg.primary, table) if r[1] == 1]
    with procs.ProcStack() as stack:
        pod.start(stack)
        assert table_rows(pod, table) == expected
        assert_finished(pod, pg)
        with pod.connect() as conn:  # the source's superuser is still there, without a password
            assert conn.execute("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'").fetchone() == (
                True,
            )
        # Killed after the promotion and the passwords, before the marker went: the next start finishes again.
        pod.stop()
        marker = pod.volume / restoreplan.WORK_DIR / restoreplan.PENDING
        marker.parent.mkdir()
        marker.write_text("{}\n")
        (marker.parent / bootstrap_cli.WAL_DIR).mkdir()
        pod.start(stack)
        assert "finishing its recovery" in pod.log.read_text()
        assert table_rows(pod, table) == expected
        assert_finished(pod, pg)


def test_a_recovery_that_cannot_reach_its_target_stops_start_sh_loudly(
    pg: PostgresCluster, source: Source, tmp_path: Path
) -> None:
    s = source.archive
    table = support.create_table(pg, "boot")
    with support.archiving(s, s.root / "spool", "archiver") as running:
        manifest = support.take_base(pg, s)
        insert_batch(pg, table, 1)
        target_time = server_now(pg)
        insert_batch(pg, table, 2)
        support.wait_for_mark_after(s, target_time, running)
    pod = new_pod(tmp_path / "new", superuser="postgres")
    plan = source.plan(manifest.backup_id, "postgres", pod.volume, target_time=target_time)
    assert bootstrap_cli.restore_into(plan, source.reader(), print) == bootstrap_cli.RESTORED
    wal = pod.volume / restoreplan.WORK_DIR / bootstrap_cli.WAL_DIR
    for path in wal.iterdir():  # the archive's WAL lost: the recovery ends before the target
        path.unlink()
    result = pod.run("start.sh", env={"POSTGRES_INIT_WAIT_SECONDS": "120"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "did not finish its recovery: the server stopped" in result.stderr
    assert "recovery ended before configured recovery target was reached" in result.stderr
    assert (pod.volume / restoreplan.WORK_DIR / restoreplan.PENDING).exists()  # the next start tries again
    assert pod.password not in result.stdout + result.stderr


# --- redis ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("appendonly", [False, True])
def test_bootstrap_of_a_redis_store(source: Source, tmp_path: Path, appendonly: bool) -> None:
    s = source.archive
    pw = secrets.token_urlsafe(24)
    new_pw = secrets.token_urlsafe(24)
    for value in (pw, new_pw):
        secretscan.track(value)
    with procs.ProcStack() as stack:
        src = RedisServer(tmp_path / "source", "source", pw).start(stack)
        populate(src.port, pw, "boot")
        before = state(src.port, pw)
        backup_id = catalog.new_backup_id()
        take.take_backup(
            engine="redis",
            conn=connection.ConnectionInfo.for_engine("redis", "127.0.0.1", pw, port=src.port),
            target=s.target,
            store_prefix=s.plan.store_prefix,
            store=s.plan.store_ref,
            backup_id=backup_id,
            enc_key=s.key,
            staging=tmp_path / "staging",
            timeout=120,
        )
        assert src.proc is not None
        src.proc.stop()

        config = {"appendonly": "yes"} if appendonly else {}
        files = write_files(tmp_path / "config", render.render_config_files(store("redis", 1, config)))
        pod = names.pod(STORE, 0)
        data = tmp_path / pod / "data"
        data.mkdir(parents=True)
        plan = source.plan(backup_id, "redis", data, appendonly=appendonly)
        lines: list[str] = []
        assert bootstrap_cli.restore_into(plan, source.reader(), lines.append) == bootstrap_cli.RESTORED
        placed = "appendonlydir" if appendonly else "dump.rdb"
        assert sorted(p.name for p in data.iterdir()) == [placed]  # the working directory is gone
        laid_out = tree(data)
        assert bootstrap_cli.restore_into(plan, source.reader(), lines.append) == bootstrap_cli.HOLDS_DATA
        assert tree(data) == laid_out

        # Pod 0's container on the restored volume, as test_rendered_configs runs it.
        restored = redis_pod(stack, tmp_path, files, pod, new_pw, data=data)
        assert_same(before, state(restored.port, new_pw))
        assert restored.client().config_get("appendonly")["appendonly"] == ("yes" if appendonly else "no")
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(host="127.0.0.1", port=restored.port, password=pw, socket_timeout=5).ping()
