"""The pods' rendered start scripts run for real, outside a container: PostgreSQL's start.sh on Debian's
PostgreSQL 15 (first boot, restart, a streaming standby), and Neo4j's start.sh on the Neo4j 5.26 jars.

Each test renders a DataStore, writes the ConfigMap's files to disk and runs the script as the container
would, with the in-cluster ports and paths replaced through the script's environment variables (the
volumes by temporary directories, the port by a free loopback port). PostgreSQL refuses to run as root:
as root, the scripts run as the devenv's unprivileged PostgreSQL user.

No secret may show in a process's command line, which every user of a node can read: while the first boot
runs, a sampler reads every /proc/*/cmdline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import neo4j
import psycopg
import pytest
from rendered_support import NAME, store, write_files

from mlinfra.devenv import postgres as pgdev
from mlinfra.devenv import procs, tools
from mlinfra.engines import names, render

pytestmark = pytest.mark.integration

# Not "postgres": the script must take the superuser's name from POSTGRES_USER.
SUPERUSER = "feats_admin"
PG_CONFIG = {"shared_buffers": "32MB", "max_connections": "40"}


def _password() -> str:
    # Quotes, a backslash, a space and a dollar: whatever reaches a shell or a config unquoted breaks.
    return f"{secrets.token_urlsafe(12)} '\"\\$HOME"


class ArgvWatch:
    """Samples every process's command line (/proc/*/cmdline) until stopped."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="argv-watch", daemon=True)

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):  # the process is gone meanwhile
                        self.seen.add((entry / "cmdline").read_bytes())
            self._stop.wait(0.005)

    def holding(self, text: str) -> list[str]:
        return [c.decode(errors="replace") for c in self.seen if text.encode() in c]

    def ran(self, program: str, *args: str) -> bool:
        """A process of ``program`` (by basename) was seen with each of ``args`` (``x*``: any starting with x)."""
        for cmdline in self.seen:
            argv = [a.decode(errors="replace") for a in cmdline.split(b"\0")]
            if not argv or Path(argv[0]).name != program:
                continue
            if all(any(a.startswith(p[:-1]) if p.endswith("*") else a == p for a in argv[1:]) for p in args):
                return True
        return False


def _files_holding(root: Path, secret: str) -> list[Path]:
    needle = secret.encode()
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    return [p for p in paths if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


# --- postgres -------------------------------------------------------------------------------------------


def _path_env() -> str:
    # The Debian image's PATH: PostgreSQL's server tools first.
    return f"{tools.which('initdb').parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def _hand_over(path: Path, uid: int | None, gid: int | None) -> None:
    """``path`` (a directory tree) to the server's user, and its parents traversable by it."""
    if uid is None or gid is None:
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, uid, gid)
    for parent in path.parents:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o111)


@dataclass
class PgPod:
    """One postgres pod: its volumes as directories, and its container's command, the rendered start.sh."""

    root: Path
    files: dict[str, Path]
    ordinal: int
    password: str
    replication_password: str
    port: int = field(default_factory=procs.free_port)
    proc: procs.Proc | None = None
    runs: int = 0

    def __post_init__(self) -> None:
        self.uid, self.gid = pgdev._run_as()  # PostgreSQL refuses to run as root: the devenv's user then

    @property
    def name(self) -> str:
        return names.pod(NAME, self.ordinal)

    @property
    def workdir(self) -> Path:
        return self.root / self.name

    @property
    def pgdata(self) -> Path:
        return self.workdir / "volume" / "pgdata"

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def socket_dir(self) -> Path:
        # A unix socket path must stay under 108 bytes: pytest's temporary directories are too deep.
        digest = hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"mlinfra-pgs-{digest}"

    @property
    def log(self) -> Path:
        return self.workdir / f"start-{self.runs}.log"

    def env(self) -> dict[str, str]:
        return {
            "HOSTNAME": self.name,
            "PGDATA": str(self.pgdata),
            "POSTGRES_USER": SUPERUSER,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_REPLICATION_PASSWORD": self.replication_password,
            "POSTGRES_CONFIG_DIR": str(self.files["start.sh"].parent),
            "POSTGRES_RUN_DIR": str(self.run_dir),
            # The file start.sh writes and a standby's primary_conninfo names (bootstrap.sh).
            "POSTGRES_PASSFILE": str(self.run_dir / "replication.pgpass"),
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_LISTEN_ADDRESSES": "127.0.0.1",
            "POSTGRES_SOCKET_DIR": str(self.socket_dir),
            "PATH": _path_env(),
        }

    def prepare(self) -> None:
        (self.workdir / "volume").mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        _hand_over(self.workdir, self.uid, self.gid)
        _hand_over(self.socket_dir, self.uid, self.gid)

    def run(self, script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """A script that ends by itself (bootstrap.sh, a start.sh that must refuse), as the server's user."""
        self.prepare()
        try:
            return subprocess.run(
                ["bash", str(self.files[script])],
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, **self.env(), **(env or {})},
                cwd=self.workdir,
                user=self.uid,
                group=self.gid,
            )
        finally:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def start(self, stack: procs.ProcStack) -> PgPod:
        self.prepare()
        self.runs += 1
        self.proc = stack.add(
            procs.Proc(
                f"pg-start-{self.name}",
                ["bash", str(self.files["start.sh"])],
                self.log,
                env=self.env(),
                cwd=self.workdir,
                user=self.uid,
                group=self.gid,
            )
        )
        socket_dir = self.socket_dir
        stack.callback(lambda: shutil.rmtree(socket_dir, ignore_errors=True))
        procs.wait_until(
            f"{self.name} to accept connections",
            lambda: bool(self.connect().execute("select 1").fetchone()),
            180,
            self.proc,
        )
        return self

    def stop_like_prestop(self) -> None:
        """The pod's preStop hook (pg_ctl stop -m fast), then the container's end."""
        assert self.proc is not None
        subprocess.run(
            [str(tools.which("pg_ctl")), "stop", "-m", "fast", "-w", "-t", "50"],
            check=True,
            capture_output=True,
            timeout=120,
            user=self.uid,
            group=self.gid,
            env={**os.environ, "PGDATA": str(self.pgdata), "PATH": _path_env()},
        )
        procs.wait_until(f"{self.name} to exit", lambda: not self.proc.running() if self.proc else True, 30)

    def connect(self, user: str = SUPERUSER, password: str | None = None) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            dbname="postgres",
            user=user,
            password=self.password if password is None else password,
            connect_timeout=5,
            autocommit=True,
        )


@dataclass
class FirstBoot:
    pod: PgPod
    argv: ArgvWatch
    files: dict[str, Path]
    stack: procs.ProcStack


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstBoot]:
    """Pod 0, started by its start.sh on an empty volume, with every command line watched meanwhile."""
    root = tmp_path_factory.mktemp("pg-start")
    files = write_files(root / "config", render.render_config_files(store("postgres", 3, PG_CONFIG)))
    pod = PgPod(root, files, 0, _password(), _password())
    with procs.ProcStack() as stack:
        with ArgvWatch() as argv:
            pod.start(stack)
        yield FirstBoot(pod, argv, files, stack)


def test_first_boot_initdbs_with_the_rendered_config(primary: FirstBoot) -> None:
    pod = primary.pod
    log = pod.log.read_text()
    assert f"initdb (superuser {SUPERUSER})" in log
    assert "primary initialised" in log
    assert primary.argv.ran("initdb", "--pwfile=*")
    assert primary.argv.ran("postgres", "listen_addresses=")  # the temporary server: on its socket only
    with pod.connect() as conn:

        def show(setting: str) -> Any:
            row = conn.execute(f"show {setting}").fetchone()
            assert row is not None
            return row[0]

        assert show("cluster_name") == pod.name
        assert show("data_checksums") == "on"
        assert (show("lc_collate"), show("lc_ctype"), show("server_encoding")) == ("C", "C.UTF-8", "UTF8")
        assert show("shared_buffers") == "32MB"  # spec.managed.config, through the rendered postgresql.conf
        assert show("wal_level") == "replica"
        assert show("unix_socket_directories") == str(pod.socket_dir)
        assert show("hba_file") == str(primary.files["pg_hba.conf"])
        assert conn.execute("select distinct auth_method from pg_hba_file_rules").fetchall() == [("scram-sha-256",)]


def test_first_boot_superuser_logs_in_with_scram_and_the_replication_role_exists(primary: FirstBoot) -> None:
    pod = primary.pod
    with pod.connect() as conn:
        assert conn.execute(
            "select rolsuper, left(rolpassword, 14) from pg_authid where rolname = current_user"
        ).fetchone() == (True, "SCRAM-SHA-256$")
        assert conn.execute(
            "select rolreplication from pg_roles where rolname = %s", (names.POSTGRES_REPLICATION_USER,)
        ).fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pod.connect(password="wrong")
    with pod.connect(user=names.POSTGRES_REPLICATION_USER, password=pod.replication_password) as conn:
        assert conn.execute("select current_user").fetchone() == (names.POSTGRES_REPLICATION_USER,)


def test_first_boot_puts_no_password_on_a_command_line_or_on_disk(primary: FirstBoot) -> None:
    pod = primary.pod
    assert len(primary.argv.seen) > 10  # the sampler did sample
    # The memory-backed run directory holds one file: the replication role's password file (0600) a standby's
    # WAL receiver reads (initdb's password file is gone). Nothing else anywhere holds a password.
    passfile = pod.run_dir / "replication.pgpass"
    assert list(pod.run_dir.iterdir()) == [passfile] and stat.S_IMODE(passfile.stat().st_mode) == 0o600
    # libpq's format: host:port:database:user:password, with ':' and '\\' escaped in the password.
    fields = re.split(r"(?<!\\):", passfile.read_text().rstrip("\n"), maxsplit=4)
    assert fields[:4] == ["*", "*", "*", names.POSTGRES_REPLICATION_USER]
    assert re.sub(r"\\(.)", r"\1", fields[4]) == pod.replication_password
    for secret in (pod.password, pod.replication_password):
        assert primary.argv.holding(secret) == []
        for root in (pod.workdir, pod.socket_dir, primary.files["start.sh"].parent):
            assert [p for p in _files_holding(root, secret) if p != passfile] == []
    assert not Path(f"{pod.pgdata}.initdb").exists()
    assert stat.S_IMODE(pod.pgdata.stat().st_mode) == 0o700


def test_pod_1_bootstraps_from_pod_0_and_streams(primary: FirstBoot, tmp_path: Path) -> None:
    source = primary.pod
    standby = PgPod(tmp_path, primary.files, 1, source.password, source.replication_password)
    # The init container: pod 0's DNS name, as the standby reaches it here.
    copied = standby.run(
        "bootstrap.sh",
        env={
            "POSTGRES_PRIMARY_HOST": "127.0.0.1",
            "POSTGRES_PRIMARY_PORT": str(source.port),
            "POSTGRES_PRIMARY_WAIT_SECONDS": "30",
        },
    )
    assert copied.returncode == 0, copied.stderr
    assert (standby.pgdata / "standby.signal").exists()
    with procs.ProcStack() as stack:
        standby.start(stack)
        assert "holds a cluster: starting it" in standby.log.read_text()
        assert "initdb" not in standby.log.read_text()

        def streaming() -> list[tuple[Any, ...]]:
            with source.connect() as conn:
                return conn.execute(
                    "select usename, state from pg_stat_replication where application_name = %s", (standby.name,)
                ).fetchall()

        procs.wait_until(
            f"{standby.name} streaming from pod 0",
            lambda: streaming() == [(names.POSTGRES_REPLICATION_USER, "streaming")],
            60,
            standby.proc,
        )
        table = f"t_{secrets.token_hex(4)}"
        with source.connect() as conn:
            conn.execute(f"create table {table} (v text)")
            conn.execute(f"insert into {table} values ('from pod 0')")

        def replicated() -> bool:
            with standby.connect() as conn:
                return conn.execute(f"select v from {table}").fetchone() == ("from pod 0",)

        procs.wait_until("the row on pod 1", replicated, 30)
        with standby.connect() as conn:
            assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)


def test_restart_with_a_cluster_skips_initdb(primary: FirstBoot) -> None:
    pod = primary.pod
    table = f"t_{secrets.token_hex(4)}"
    with pod.connect() as conn:
        conn.execute(f"create table {table} (v text)")
        conn.execute(f"insert into {table} values ('before the restart')")
    pod.stop_like_prestop()
    pod.pgdata.chmod(0o2770)  # as the kubelet's fsGroup handling may leave it; postgres would refuse it
    pod.start(primary.stack)  # the same volumes: the fixture's pod 0 is up again afterwards
    assert stat.S_IMODE(pod.pgdata.stat().st_mode) & 0o777 == 0o700  # chmod keeps a directory's setgid bit
    log = pod.log.read_text()
    assert "holds a cluster: starting it" in log
    assert "initdb" not in log
    with pod.connect() as conn:
        assert conn.execute(f"select v from {table}").fetchone() == ("before the restart",)


def test_a_former_primary_not_named_by_the_record_refuses_to_start(primary: FirstBoot) -> None:
    """The failover killed this primary's server in its container and named another member: the container's
    restart must not run a second primary (its pod is re-created next, through bootstrap.sh)."""
    pod = primary.pod
    pod.stop_like_prestop()
    try:
        result = pod.run("start.sh", {"MLINFRA_PRIMARY": "feats-1"})
        assert result.returncode == 1
        assert "holds a primary, and the primary record names feats-1" in result.stderr
        assert not (pod.pgdata / "standby.signal").exists() and (pod.pgdata / "PG_VERSION").exists()
    finally:
        pod.start(primary.stack)  # the fixture's pod 0, up again for the tests after this one


def test_pod_1_without_a_bootstrapped_volume_refuses_to_start(tmp_path: Path) -> None:
    files = write_files(tmp_path / "config", render.render_config_files(store("postgres", 3, {})))
    pod = PgPod(tmp_path, files, 1, "unused", "unused")
    result = pod.run("start.sh")
    assert result.returncode == 1
    assert "the bootstrap init container should have copied the primary feats-0" in result.stderr
    assert not pod.pgdata.exists()


def test_a_volume_holding_something_else_is_left_alone(tmp_path: Path) -> None:
    files = write_files(tmp_path / "config", render.render_config_files(store("postgres", 1, {})))
    pod = PgPod(tmp_path, files, 0, "unused", "unused")
    pod.pgdata.mkdir(parents=True)
    (pod.pgdata / "something").write_text("not a cluster")
    result = pod.run("start.sh")
    assert result.returncode == 1
    assert "not empty but holds no cluster" in result.stderr
    assert (pod.pgdata / "something").read_text() == "not a cluster"


# --- neo4j ----------------------------------------------------------------------------------------------


def _neo4j_env(root: Path, files: dict[str, Path], password: str) -> dict[str, str]:
    return {
        "MLINFRA_NEO4J_PASSWORD": password,
        "MLINFRA_NEO4J_CONFIG": str(files["neo4j.conf"]),
        "MLINFRA_NEO4J_DATA_DIR": str(root / "data"),
        "MLINFRA_NEO4J_RUN_DIR": str(root / "run"),
        "NEO4J_HOME": str(root / "home"),
    }


def test_neo4j_start_script_with_stand_in_commands(tmp_path: Path) -> None:
    """The script's own logic, with neo4j-admin and neo4j replaced by scripts that record what they got."""
    files = write_files(tmp_path / "config", render.render_config_files(store("neo4j", 1, {})))
    bin_dir = tmp_path / "home" / "bin"
    bin_dir.mkdir(parents=True)
    record = tmp_path / "record"
    (bin_dir / "neo4j-admin").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}/admin-args\ncat "${{3#@}}" > {record}/argfile\n'
        f'mkdir -p "$MLINFRA_NEO4J_DATA_DIR/dbms" && touch "$MLINFRA_NEO4J_DATA_DIR/dbms/auth.ini"\n'
    )
    (bin_dir / "neo4j").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}/neo4j-args\nls -A "$NEO4J_CONF" > {record}/conf-files\n'
        f'cp "$NEO4J_CONF/neo4j.conf" {record}/neo4j.conf\n'
    )
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    record.mkdir()
    password = 'a"b\\c d'
    env = {**os.environ, **_neo4j_env(tmp_path, files, password)}

    first = subprocess.run(["bash", str(files["start.sh"])], capture_output=True, text=True, timeout=60, env=env)
    assert first.returncode == 0, first.stderr
    [argfile_arg] = [a for a in (record / "admin-args").read_text().splitlines() if a.startswith("@")]
    assert (record / "admin-args").read_text().splitlines() == ["dbms", "set-initial-password", argfile_arg]
    assert (record / "argfile").read_text() == '"a\\"b\\\\c d"\n'  # one double-quoted argument, escaped
    assert not Path(argfile_arg[1:]).exists()  # deleted once neo4j-admin read it
    assert (record / "neo4j-args").read_text().splitlines() == ["console"]
    assert (record / "conf-files").read_text().split() == ["neo4j.conf"]
    assert (record / "neo4j.conf").read_text() == files["neo4j.conf"].read_text()

    (record / "admin-args").unlink()
    again = subprocess.run(["bash", str(files["start.sh"])], capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 0, again.stderr
    assert "has its users already" in again.stdout
    assert not (record / "admin-args").exists()  # the password is set once, never again


def _neo4j_jars() -> list[Path]:
    classpath = tools.find_tools().neo4j_classpath  # never builds: another run may be building the tools
    return sorted(
        jar for entry in classpath.split(":") if entry.endswith("/*") for jar in Path(entry[:-2]).glob("*.jar")
    )


def _neo4j_home(home: Path, jars: list[Path]) -> None:
    """A NEO4J_HOME with the cached Neo4j jars as lib/, and bin/neo4j and bin/neo4j-admin launching the entry
    points the distribution's scripts launch (org.neo4j.server.startup.Neo4jCommand, Neo4jAdminCommand).

    The cache holds Neo4j's jars (e2e/tools/neo4j), not the distribution: its bin/ scripts and conf/ are not
    here. These two launchers are ours; every line of Neo4j that runs is Neo4j's.
    """
    (home / "lib").mkdir(parents=True)
    for jar in jars:
        (home / "lib" / jar.name).symlink_to(jar)
    (home / "bin").mkdir()
    for script, main in (("neo4j", "Neo4jCommand"), ("neo4j-admin", "Neo4jAdminCommand")):
        (home / "bin" / script).write_text(
            "#!/usr/bin/env bash\n"
            'NEO4J_HOME="$(cd "$(dirname "$0")/.." && pwd)"\nexport NEO4J_HOME\n'
            f'exec java -cp "$NEO4J_HOME/lib/*" org.neo4j.server.startup.{main} "$@"\n'
        )
        (home / "bin" / script).chmod(0o755)


def _local_neo4j_conf(rendered: str, root: Path, bolt: int, http: int) -> str:
    """The rendered neo4j.conf with the in-cluster addresses and paths replaced by local ones."""
    local = {
        "server.default_listen_address": "127.0.0.1",
        "server.default_advertised_address": "127.0.0.1",
        "server.bolt.listen_address": f":{bolt}",
        "server.http.listen_address": f":{http}",
        "server.directories.data": str(root / "data"),
        "server.directories.logs": str(root / "logs"),
        "server.directories.run": str(root / "run" / "neo4j"),
    }
    lines = [line for line in rendered.splitlines() if line.split("=", 1)[0] not in local]
    assert len(lines) == len(rendered.splitlines()) - len(local)  # every one of them is in the rendered file
    return "\n".join([*lines, *(f"{k}={v}" for k, v in local.items())]) + "\n"


def test_neo4j_start_script_on_neo4j(tmp_path: Path) -> None:
    """First start on an empty data directory: the initial password set by neo4j-admin (Neo4j's own
    SetInitialPasswordCommand, reading the @file), then `neo4j console` serving Bolt with it."""
    jars = _neo4j_jars()
    if not any(jar.name.startswith("neo4j-command-line-") for jar in jars):
        pytest.skip("the Neo4j jars are not built (make tools)")
    _neo4j_home(tmp_path / "home", jars)
    ds = store("neo4j", 1, {"server.memory.heap.max_size": "512m", "server.memory.pagecache.size": "64m"})
    bolt, http = procs.free_port(), procs.free_port()
    rendered = render.render_config_files(ds)
    files = write_files(
        tmp_path / "config", {**rendered, "neo4j.conf": _local_neo4j_conf(rendered["neo4j.conf"], tmp_path, bolt, http)}
    )
    password = _password()
    with procs.ProcStack() as stack, ArgvWatch() as argv:
        proc = stack.add(
            procs.Proc(
                "neo4j-start",
                ["bash", str(files["start.sh"])],
                tmp_path / "start.log",
                env=_neo4j_env(tmp_path, files, password),
                cwd=tmp_path,
            )
        )

        def answers() -> bool:
            with neo4j.GraphDatabase.driver(f"bolt://127.0.0.1:{bolt}", auth=("neo4j", password)) as driver:
                records, _, _ = driver.execute_query("RETURN 1 AS one")
                return bool(records[0]["one"] == 1)

        procs.wait_until("neo4j to answer with the initial password", answers, 240, proc)
        assert "setting the initial password" in (tmp_path / "start.log").read_text()
        with (
            neo4j.GraphDatabase.driver(f"bolt://127.0.0.1:{bolt}", auth=("neo4j", "wrong-password")) as driver,
            pytest.raises(neo4j.exceptions.AuthError),
        ):
            driver.verify_connectivity()
        # The sampler saw neo4j-admin's JVM, given the password file's name only.
        assert argv.ran("java", "dbms", "set-initial-password", "@*")
        assert argv.holding(password) == []
    for where in (tmp_path / "run", tmp_path / "logs", tmp_path / "start.log"):
        assert _files_holding(where, password) == []
    assert [p.name for p in (tmp_path / "run" / "conf").iterdir()] == ["neo4j.conf"]
    # What start.sh checks before setting the password again: after a first start, both are there.
    assert (tmp_path / "data" / "dbms" / "auth.ini").exists()
    assert (tmp_path / "data" / "databases" / "system").is_dir()
