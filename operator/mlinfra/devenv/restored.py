"""Local servers for a managed store that bootstraps from a backup (``spec.managed.bootstrap``).

kwok runs no pod, so nothing runs the restore init container the operator renders into the store's StatefulSet.
The backer does what that container and the engine's start script do, from the same plan (the container's
``MLINFRA_RESTORE_PLAN``) and through the same code (``backups.bootstrap_cli.restore_into``), on local
directories: the backup is downloaded and verified, laid out, and the server started on it, recovered (PostgreSQL,
to the plan's target time) and given the NEW store's passwords. Then the replicas follow it as usual.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import psycopg

from mlinfra.backup.postgres import RECOVERY_SETTINGS
from mlinfra.backups import bootstrap_cli
from mlinfra.devenv import postgres, procs, secretscan
from mlinfra.devenv.redis import RedisCluster, start_redis
from mlinfra.stores import backupaccess, restoreplan

log = logging.getLogger(__name__)

RECOVERY_WAIT = 300.0


def _lay_out(
    plan: restoreplan.RestorePlan, volume: Path, read: backupaccess.Reader, reach: backupaccess.Reach | None
) -> None:
    local = plan.model_copy(update={"data_dir": str(volume)})

    def echo(line: str) -> None:
        log.info("restore %s: %s", plan.store, line)

    outcome = bootstrap_cli.restore_into(local, read, echo, reach)
    log.info("restore %s/%s from Backup %s: %s", plan.namespace, plan.store, plan.backup, outcome)


def start_redis_restored(
    stack: procs.ProcStack,
    workdir: Path,
    plan: restoreplan.RestorePlan,
    read: backupaccess.Reader,
    replicas: int,
    password: str,
    config: str,
    reach: backupaccess.Reach | None = None,
) -> RedisCluster:
    # The primary's directory is the volume: the seeded dump.rdb (or AOF base) is what it loads on start.
    _lay_out(plan, workdir / "primary", read, reach)
    return start_redis(stack, workdir, replicas=replicas, password=password, config=config)


_TRUST_LOCAL = "local all all trust\n"
_SCRAM = (
    "local all all scram-sha-256\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host replication all 127.0.0.1/32 scram-sha-256\n"
)


def start_postgres_restored(
    stack: procs.ProcStack,
    workdir: Path,
    plan: restoreplan.RestorePlan,
    read: backupaccess.Reader,
    standbys: int,
    password: str,
    conf: str,
    reach: backupaccess.Reach | None = None,
) -> postgres.PostgresCluster:
    """What the pod's restore init container and start.sh do: lay out, recover on the unix socket alone (trust
    is only ever on the socket, in a directory only the server's user reaches), promote, set the new store's
    passwords, reset the recovery settings; then serve over TCP with passwords only."""
    volume = workdir / "volume"
    _lay_out(plan, volume, read, reach)
    primary = postgres.PostgresServer(workdir / "primary", "primary", password, conf=conf)
    uid, gid = primary._prepare_dirs()
    (volume / "pgdata").rename(primary.datadir)
    postgres._opened_for(volume)
    postgres._own(volume, uid, gid)
    postgres._own(primary.datadir, uid, gid)
    (primary.datadir / "pg_hba.conf").write_text(_TRUST_LOCAL)

    def local() -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(primary.socket_dir), port=primary.port, user="postgres", dbname="postgres", autocommit=True
        )

    def promoted() -> bool:
        with local() as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return row is not None and row[0] is False

    primary.start(stack, ready=lambda: bool(local().execute("SELECT 1").fetchone()))
    procs.wait_until("the restored server to finish recovery and promote", promoted, RECOVERY_WAIT, primary.proc)
    repl_password = secrets.token_urlsafe(24)
    secretscan.track(repl_password)
    with local() as conn:
        conn.execute("SET log_statement = 'none'")
        conn.execute(psycopg.sql.SQL("ALTER ROLE postgres PASSWORD {}").format(psycopg.sql.Literal(password)))
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'replicator'").fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            psycopg.sql.SQL(verb + " ROLE replicator WITH REPLICATION LOGIN PASSWORD {}").format(
                psycopg.sql.Literal(repl_password)
            )
        )
        for name in RECOVERY_SETTINGS:
            conn.execute(psycopg.sql.SQL("ALTER SYSTEM RESET {}").format(psycopg.sql.Identifier(name)))
        (primary.datadir / "pg_hba.conf").write_text(_SCRAM)
        conn.execute("SELECT pg_reload_conf()")
    (volume / restoreplan.WORK_DIR / restoreplan.PENDING).unlink(missing_ok=True)
    return postgres.follow(stack, workdir, primary, standbys, repl_password, conf)
