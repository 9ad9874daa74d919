"""Real PostgreSQL servers (Debian packages): a primary and streaming standbys made with ``pg_basebackup``.

PostgreSQL refuses to run as root, and CI runs as root: then every PostgreSQL process runs as the
unprivileged user ``PG_USER`` (created on first use, also by ``.ci/run``).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from mlinfra.devenv import procs, secretscan, tools

PG_USER = "mlinfra-pg"


def _run_as() -> tuple[int | None, int | None]:
    """(uid, gid) to run PostgreSQL as: ourselves, or ``PG_USER`` when we are root."""
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(PG_USER)
    return entry.pw_uid, entry.pw_gid


def _own(path: Path, uid: int | None, gid: int | None) -> None:
    if uid is None or gid is None:
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, uid, gid)


def _opened_for(path: Path) -> None:
    # The unprivileged server user must be able to traverse our (root-owned, mode 0700) temp dirs.
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o111)


@dataclass
class PostgresServer:
    """One postgres process. ``conf`` holds extra postgresql.conf text (e.g. a rendered config); ``hba``,
    when set, replaces the pg_hba.conf initdb writes (e.g. a rendered one)."""

    workdir: Path
    name: str
    password: str
    conf: str = ""
    port: int = field(default_factory=procs.free_port)
    proc: procs.Proc | None = None
    user: str = "postgres"
    hba: str | None = None
    # False: fsync and full-page writes off (test data: durability costs seconds per test on small disks).
    # True for a server pg_rewind must work on (it needs full-page writes).
    durable: bool = False

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def socket_dir(self) -> Path:
        # Short, whatever the work dir: a Unix socket path must stay under 108 bytes, and pytest's and the
        # demo's temporary directories are deep. Derived from the work dir, so it is stable and unique.
        digest = hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"mlinfra-pg-{digest}"

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        return (
            f"host=127.0.0.1 port={self.port} dbname={dbname} user={user or self.user} "
            f"password={password or self.password} connect_timeout=5"
        )

    @property
    def url(self) -> str:
        return f"postgresql://127.0.0.1:{self.port}/postgres"

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(dbname), autocommit=autocommit)

    def _prepare_dirs(self) -> tuple[int | None, int | None]:
        uid, gid = _run_as()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        _opened_for(self.workdir)
        _own(self.workdir, uid, gid)
        _own(self.socket_dir, uid, gid)
        return uid, gid

    def _tool(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        uid, gid = _run_as()
        result = subprocess.run(
            [str(tools.which(name)), *args],
            capture_output=True,
            text=True,
            user=uid,
            group=gid,
            env={**os.environ, **(env or {})},
            cwd=self.workdir,
            timeout=300,
        )
        if result.returncode != 0:
            raise procs.StartupError(f"{name} failed ({result.returncode}): {result.stderr[-2000:]}")

    def init(self) -> PostgresServer:
        """initdb a new cluster whose superuser ``postgres`` has ``password`` (SCRAM)."""
        uid, gid = self._prepare_dirs()
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        _own(pwfile, uid, gid)
        try:
            self._tool(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
        finally:
            pwfile.unlink()
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# mlinfra devenv\n" + self.conf + "\n")
        if self.hba is not None:
            (self.datadir / "pg_hba.conf").write_text(self.hba)
            _own(self.datadir / "pg_hba.conf", uid, gid)
        return self

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``workdir`` as the user the server runs as (e.g. a rendered bootstrap script that
        fills ``datadir``); raises StartupError with its output when it fails."""
        uid, gid = self._prepare_dirs()
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            user=uid,
            group=gid,
            env={**os.environ, **(env or {})},
            cwd=self.workdir,
            timeout=300,
        )
        if result.returncode != 0:
            raise procs.StartupError(
                f"{argv[0]} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        return result

    def start(self, stack: procs.ProcStack, ready: Callable[[], bool] | None = None) -> PostgresServer:
        """Run the server and wait until ``ready`` (default: a password login over TCP) says it serves."""
        uid, gid = _run_as()
        self.socket_dir.mkdir(exist_ok=True)
        _own(self.socket_dir, uid, gid)
        sock = self.socket_dir
        stack.callback(lambda: shutil.rmtree(sock, ignore_errors=True))
        self.proc = stack.add(
            procs.Proc(
                f"postgres-{self.name}",
                [
                    str(tools.which("postgres")),
                    "-D",
                    str(self.datadir),
                    "-c",
                    f"port={self.port}",
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.socket_dir}",
                    "-c",
                    f"cluster_name={self.name}",  # becomes application_name in pg_stat_replication
                    *([] if self.durable else ["-c", "fsync=off", "-c", "full_page_writes=off"]),
                ],
                self.workdir / "postgres.log",
                user=uid,
                group=gid,
            )
        )
        procs.wait_until(
            f"postgres {self.name} to accept connections",
            ready or (lambda: bool(self.connect().execute("select 1").fetchone())),
            60,
            self.proc,
        )
        return self

    def pause(self) -> None:
        """Freeze the whole server (SIGSTOP to its process group): a paused standby falls behind."""
        assert self.proc is not None
        self.proc.signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGCONT)


@dataclass
class PostgresCluster:
    primary: PostgresServer
    standbys: list[PostgresServer]
    replication_user: str = "replicator"
    replication_password: str = ""

    @property
    def password(self) -> str:
        return self.primary.password


def start_postgres(
    stack: procs.ProcStack, workdir: Path, standbys: int = 1, password: str | None = None, conf: str = ""
) -> PostgresCluster:
    password = password or secrets.token_urlsafe(24)
    repl_password = secrets.token_urlsafe(24)
    secretscan.track(password)
    secretscan.track(repl_password)
    primary = PostgresServer(workdir / "primary", "primary", password, conf=conf).init().start(stack)
    with primary.connect() as conn:
        conn.execute(f"CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{repl_password}'")
    return follow(stack, workdir, primary, standbys, repl_password, conf)


def follow(
    stack: procs.ProcStack, workdir: Path, primary: PostgresServer, standbys: int, repl_password: str, conf: str = ""
) -> PostgresCluster:
    """``standbys`` streaming standbys of the running ``primary``, whose role ``replicator`` has ``repl_password``."""
    password = primary.password
    followers = []
    for i in range(standbys):
        standby = PostgresServer(workdir / f"standby-{i}", f"standby-{i}", password, conf=conf)
        standby._prepare_dirs()
        # -R writes standby.signal and primary_conninfo: the standby streams from the primary.
        standby._tool(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "replicator",
            "-D",
            str(standby.datadir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            env={"PGPASSWORD": repl_password},
        )
        followers.append(standby.start(stack))
    cluster = PostgresCluster(primary, followers, "replicator", repl_password)

    def streaming() -> bool:
        with primary.connect() as conn:
            rows = conn.execute("select count(*) from pg_stat_replication where state = 'streaming'").fetchone()
        return rows is not None and int(str(rows[0])) >= standbys

    procs.wait_until("standbys streaming", streaming, 60, primary.proc)
    return cluster
