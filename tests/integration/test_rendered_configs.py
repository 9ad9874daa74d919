"""What managed mode renders runs on the real binaries: redis.conf and the Redis entrypoint with redis-server,
postgresql.conf and pg_hba.conf with postgres, and the standby bootstrap script with pg_basebackup; and the
rendered objects pass the real API server's strict validation and the restricted Pod Security Standard.

Each test renders a DataStore, writes the ConfigMap's files to disk and runs them as a pod would, with the
in-cluster addresses and paths replaced through the scripts' environment variables (pod 0's DNS name by
127.0.0.1:<port>, the volumes by temporary directories).
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_lib
import yaml
from rendered_support import NAME, NAMESPACE, redis_pod, store, write_files

from mlinfra.api.datastore import DataStore
from mlinfra.devenv import procs, tools
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.postgres import PostgresServer
from mlinfra.engines import connection, names, render, replication

pytestmark = pytest.mark.integration


# --- redis ----------------------------------------------------------------------------------------------

REDIS_CONFIG = {"maxmemory": "64mb", "maxmemory-policy": "allkeys-lru", "save": "", "appendonly": "no"}


def _run_entrypoint(files: dict[str, Path], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The rendered entrypoint.sh run to its end, ``env`` over the test's environment."""
    return subprocess.run(
        ["bash", str(files["entrypoint.sh"])], capture_output=True, text=True, timeout=30, env={**os.environ, **env}
    )


def _fake_executable(path: Path, script: str) -> None:
    """Stands in for a binary the entrypoint execs (in a new directory)."""
    path.parent.mkdir()
    path.write_text(script)
    path.chmod(0o755)


def test_rendered_redis_primary_and_replica(tmp_path: Path) -> None:
    ds = store("redis", 3, REDIS_CONFIG)
    files = write_files(tmp_path / "config", render.render_config_files(ds))
    password = secrets.token_urlsafe(24)
    with procs.ProcStack() as stack:
        primary = redis_pod(stack, tmp_path, files, names.pod(NAME, 0), password)
        replica = redis_pod(stack, tmp_path, files, names.pod(NAME, 1), password, primary=primary)
        p, r = primary.client(), replica.client()

        procs.wait_until(
            "the replica's link to the primary",
            lambda: r.info("replication")["master_link_status"] == "up",
            30,
            replica.proc,
        )
        assert p.info("replication")["role"] == "master"
        info = r.info("replication")
        assert (info["role"], info["master_host"], info["master_port"]) == ("slave", "127.0.0.1", primary.port)

        key, value = f"k-{secrets.token_hex(4)}", secrets.token_hex(8)
        p.set(key, value)
        procs.wait_until("the key on the replica", lambda: r.get(key) == value, 10)
        with pytest.raises(redis_lib.exceptions.ReadOnlyError):
            r.set(key, "written on a replica")

        # spec.managed.config is in effect on both.
        for client in (p, r):
            assert client.config_get("maxmemory")["maxmemory"] == str(64 * 1024 * 1024)
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
            assert client.config_get("save")["save"] == ""
            assert client.config_get("replica-read-only")["replica-read-only"] == "yes"

        with pytest.raises(redis_lib.exceptions.AuthenticationError):
            redis_lib.Redis(host="127.0.0.1", port=primary.port).get(key)

        # The runtime config holds the password: only its owner may read it.
        runtime = tmp_path / names.pod(NAME, 1) / "run" / "redis.conf"
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o600
        assert f"replicaof 127.0.0.1 {primary.port}" in runtime.read_text()
        assert "replicaof" not in (tmp_path / names.pod(NAME, 0) / "run" / "redis.conf").read_text()


def test_the_pod_the_primary_record_names_is_the_primary(tmp_path: Path) -> None:
    # After a failover to pod 2, pod 0 restarts as its replica: the record decides, not the ordinal.
    files = write_files(tmp_path / "config", render.render_config_files(store("redis", 3, REDIS_CONFIG)))
    password = secrets.token_urlsafe(24)
    with procs.ProcStack() as stack:
        primary = redis_pod(stack, tmp_path, files, names.pod(NAME, 2), password, named_primary=names.pod(NAME, 2))
        old = redis_pod(
            stack, tmp_path, files, names.pod(NAME, 0), password, primary=primary, named_primary=names.pod(NAME, 2)
        )
        procs.wait_until(
            "pod 0 replicating pod 2",
            lambda: old.client().info("replication").get("master_link_status") == "up",
            30,
            old.proc,
        )
        assert primary.client().info("replication")["role"] == "master"
        assert "replicaof" not in (tmp_path / names.pod(NAME, 2) / "run" / "redis.conf").read_text()
    # A value that names no pod stops the start.
    bad = _run_entrypoint(files, {"HOSTNAME": names.pod(NAME, 1), "REDIS_PASSWORD": "x", "MLINFRA_PRIMARY": "a b"})
    assert bad.returncode == 1 and "the primary record names no pod" in bad.stderr


def test_rendered_redis_entrypoint_refuses_a_hostname_without_ordinal(tmp_path: Path) -> None:
    files = write_files(tmp_path, render.render_config_files(store("redis", 1, {})))
    result = _run_entrypoint(files, {"HOSTNAME": "not-a-pod", "REDIS_PASSWORD": "x"})
    assert result.returncode == 1
    assert "cannot tell this pod's ordinal" in result.stderr


# --- postgres -------------------------------------------------------------------------------------------

PG_CONFIG = {"shared_buffers": "32MB", "statement_timeout": "30s", "max_connections": "50"}


class PgPrimary:
    def __init__(self, server: PostgresServer, files: dict[str, Path], replication_password: str) -> None:
        self.server = server
        self.files = files
        self.replication_password = replication_password


def _path_env() -> str:
    # pg_basebackup, pg_isready and the server's pg_rewind as the pod's PATH has them, whatever PATH the test
    # runs with.
    dirs = {str(tools.which("pg_basebackup").parent), str(tools.which("postgres").resolve().parent)}
    return ":".join([*sorted(dirs), os.environ.get("PATH", "/usr/bin:/bin")])


@pytest.fixture(scope="module")
def pg_primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgPrimary]:
    """Pod 0: initdb, the rendered postgresql.conf and pg_hba.conf, and the rendered init-primary.sh."""
    root = tmp_path_factory.mktemp("pg-rendered")
    rendered = render.render_config_files(store("postgres", 3, PG_CONFIG))
    files = write_files(root / "config", rendered)
    password, replication_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with procs.ProcStack() as stack:
        server = (
            PostgresServer(
                root / names.pod(NAME, 0),
                names.pod(NAME, 0),
                password,
                conf=rendered["postgresql.conf"],
                hba=rendered["pg_hba.conf"],
            )
            .init()
            .start(stack)
        )
        server.run(
            ["bash", str(files["init-primary.sh"])],
            env={
                "PGHOST": "127.0.0.1",
                "PGPORT": str(server.port),
                "PGPASSWORD": password,
                "POSTGRES_USER": "postgres",
                "POSTGRES_REPLICATION_PASSWORD": replication_password,
                "PATH": _path_env(),
            },
        )
        yield PgPrimary(server, files, replication_password)


def _bootstrap_env(
    primary: PgPrimary, ordinal: int, pgdata: Path, source: PostgresServer | None = None
) -> dict[str, str]:
    """The init container's environment; ``source``: the primary the record names (pod 0's server without)."""
    server = source or primary.server
    passfile = write_passfile(pgdata.parent / "run", primary.replication_password)
    return {
        "HOSTNAME": names.pod(NAME, ordinal),
        "PGDATA": str(pgdata),
        "MLINFRA_PRIMARY": server.name,
        "POSTGRES_PRIMARY_HOST": "127.0.0.1",  # the primary's DNS name, as the standby reaches it here
        "POSTGRES_PRIMARY_PORT": str(server.port),
        "POSTGRES_REPLICATION_PASSWORD": primary.replication_password,
        "POSTGRES_PASSFILE": str(passfile),
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": server.password,
        "POSTGRES_PRIMARY_WAIT_SECONDS": "30",
        "PATH": _path_env(),
    }


def write_passfile(run_dir: Path, password: str) -> Path:
    """The replication role's password file, as start.sh writes it in the pod's run directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "replication.pgpass"
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    path.write_text(f"*:*:*:{names.POSTGRES_REPLICATION_USER}:{escaped}\n")
    path.chmod(0o600)
    return path


def test_rendered_postgresql_conf_is_in_effect(pg_primary: PgPrimary) -> None:
    with pg_primary.server.connect() as conn:

        def show(setting: str) -> Any:
            row = conn.execute(f"show {setting}").fetchone()
            assert row is not None
            return row[0]

        assert show("shared_buffers") == "32MB"
        assert show("statement_timeout") == "30s"
        assert show("max_connections") == "50"
        assert show("wal_keep_size") == "1GB"  # the operator's default
        assert show("wal_level") == "replica"
        assert show("password_encryption") == "scram-sha-256"
        assert show("hot_standby_feedback") == "on"
        errors = conn.execute("select line_number, error from pg_hba_file_rules where error is not null").fetchall()
        assert errors == []
        methods = conn.execute("select distinct auth_method from pg_hba_file_rules").fetchall()
        assert methods == [("scram-sha-256",)]


def test_rendered_pg_hba_requires_the_password(pg_primary: PgPrimary) -> None:
    server = pg_primary.server
    with server.connect() as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(server.dsn(password="wrong"))
    # The replication role may log in with its own password (and init-primary.sh made it a replication role).
    with psycopg.connect(
        server.dsn(user=names.POSTGRES_REPLICATION_USER, password=pg_primary.replication_password)
    ) as conn:
        assert conn.execute("select rolreplication from pg_roles where rolname = current_user").fetchone() == (True,)


def rerun_init_primary(pg_primary: PgPrimary) -> subprocess.CompletedProcess[str]:
    """The rendered init-primary.sh once more against pod 0's server, as start.sh runs it."""
    server = pg_primary.server
    return server.run(
        ["bash", str(pg_primary.files["init-primary.sh"])],
        env={
            "PGHOST": "127.0.0.1",
            "PGPORT": str(server.port),
            "PGPASSWORD": server.password,
            "POSTGRES_REPLICATION_PASSWORD": pg_primary.replication_password,
            "PATH": _path_env(),
        },
    )


def test_rendered_init_primary_is_idempotent(pg_primary: PgPrimary) -> None:
    result = rerun_init_primary(pg_primary)
    assert f"replication role {names.POSTGRES_REPLICATION_USER} ready" in result.stdout
    assert pg_primary.replication_password not in result.stdout + result.stderr


def test_rendered_init_primary_never_logs_the_password(pg_primary: PgPrimary) -> None:
    server = pg_primary.server
    log = server.workdir / "postgres.log"
    with server.connect() as conn:  # a server configured to log every statement, and every slow one
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
        conn.execute("SELECT pg_reload_conf()")
    try:
        start = log.stat().st_size
        rerun_init_primary(pg_primary)
        with server.connect() as conn:
            conn.execute("SELECT 'marker-after-init-primary'")
        with log.open("rb") as handle:
            handle.seek(start)
            logged = handle.read().decode(errors="replace")
        assert "marker-after-init-primary" in logged  # the server did log statements meanwhile
        assert pg_primary.replication_password not in logged
    finally:
        with server.connect() as conn:
            conn.execute("ALTER SYSTEM RESET log_statement")
            conn.execute("ALTER SYSTEM RESET log_min_duration_statement")
            conn.execute("SELECT pg_reload_conf()")


def test_rendered_bootstrap_makes_a_streaming_standby(pg_primary: PgPrimary, tmp_path: Path) -> None:
    primary = pg_primary.server
    pod = names.pod(NAME, 1)
    # The standby's postgres gets cluster_name = its pod name, as the StatefulSet's args set it.
    standby = PostgresServer(tmp_path / pod, pod, primary.password)
    result = standby.run(
        ["bash", str(pg_primary.files["bootstrap.sh"])], env=_bootstrap_env(pg_primary, 1, standby.datadir)
    )
    assert "copying the primary with pg_basebackup" in result.stdout
    assert (standby.datadir / "standby.signal").exists()
    assert not Path(f"{standby.datadir}.partial").exists()
    # It streams with the password file: no password on the data volume.
    auto = (standby.datadir / "postgresql.auto.conf").read_text()
    assert "passfile=" in auto and pg_primary.replication_password not in auto

    with procs.ProcStack() as stack:
        standby.start(stack)

        def streaming() -> list[tuple[Any, ...]]:
            with primary.connect() as conn:
                return conn.execute(
                    "select usename, state from pg_stat_replication where application_name = %s", (pod,)
                ).fetchall()

        procs.wait_until(
            f"{pod} streaming from the primary",
            lambda: streaming() == [(names.POSTGRES_REPLICATION_USER, "streaming")],
            60,
            standby.proc,
        )

        table = f"t_{secrets.token_hex(4)}"
        with primary.connect() as conn:
            conn.execute(f"create table {table} (id int primary key, v text)")
            conn.execute(f"insert into {table} values (1, 'on the primary')")

        def replicated() -> bool:
            with standby.connect() as conn:
                return conn.execute(f"select v from {table}").fetchone() == ("on the primary",)

        procs.wait_until("the row on the standby", replicated, 30)
        with standby.connect() as conn:
            assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)

        # A restarted pod finds its data directory and leaves it alone.
        again = standby.run(
            ["bash", str(pg_primary.files["bootstrap.sh"])], env=_bootstrap_env(pg_primary, 1, standby.datadir)
        )
        assert f"{pod}: standby of {names.pod(NAME, 0)}" in again.stdout


def test_rendered_bootstrap_does_nothing_on_pod_0(pg_primary: PgPrimary, tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pod-0", names.pod(NAME, 0), "unused")
    result = server.run(
        ["bash", str(pg_primary.files["bootstrap.sh"])], env=_bootstrap_env(pg_primary, 0, server.datadir)
    )
    assert f"{names.pod(NAME, 0)} is the primary: nothing to bootstrap" in result.stdout
    assert not server.datadir.exists()


def test_a_former_primary_is_rewound_to_follow_the_new_one(pg_primary: PgPrimary, tmp_path: Path) -> None:
    """After a failover from pod 1 to pod 2 (pod 0 keeps serving the module's other tests): pod 1, which went on
    writing after pod 2 was promoted, comes back as pod 2's standby: its extra row is gone, pod 2's are there."""
    primary = pg_primary.server
    one, two = names.pod(NAME, 1), names.pod(NAME, 2)
    old = PostgresServer(tmp_path / one, one, primary.password, durable=True)
    new = PostgresServer(tmp_path / two, two, primary.password, durable=True)
    table = f"t_{secrets.token_hex(4)}"
    with procs.ProcStack() as stack:
        # pod 1 a copy of pod 0 promoted at once (it stands for a primary), pod 2 its standby.
        old.run(["bash", str(pg_primary.files["bootstrap.sh"])], env=_bootstrap_env(pg_primary, 1, old.datadir))
        old.start(stack)
        with old.connect() as conn:
            conn.execute("select pg_promote(true, 30)")
            conn.execute(f"create table {table} (id int primary key, v text)")
            conn.execute(f"insert into {table} values (1, 'before the failover')")
        env_two = _bootstrap_env(pg_primary, 2, new.datadir, source=old)
        new.run(["bash", str(pg_primary.files["bootstrap.sh"])], env=env_two)
        new.start(stack)
        procs.wait_until(
            "pod 2 has the row", lambda: new.connect().execute(f"select count(*) from {table}").fetchone() == (1,), 30
        )
        # The failover: pod 2 promoted; pod 1 takes one more write nobody replicates, then it is stopped.
        with new.connect() as conn:
            conn.execute("select pg_promote(true, 30)")
            conn.execute(f"insert into {table} values (2, 'on the new primary')")
        with old.connect() as conn:
            conn.execute(f"insert into {table} values (3, 'lost: written on the old primary')")
        assert old.proc is not None
        old.proc.stop()  # SIGTERM: a clean (smart) shutdown, as the pod's end
        result = old.run(
            ["bash", str(pg_primary.files["bootstrap.sh"])], env=_bootstrap_env(pg_primary, 1, old.datadir, source=new)
        )
        assert f"{one}: {old.datadir} was a primary: rewinding it to follow {two}" in result.stdout
        assert f"{one}: standby of {two}" in result.stdout
        assert not Path(f"{old.datadir}.diverged").exists(), result.stderr  # rewound, not copied afresh
        old.start(stack)

        def rows() -> list[tuple[Any, ...]]:
            with old.connect() as conn:
                return conn.execute(f"select id from {table} order by id").fetchall()

        procs.wait_until("pod 1 streaming pod 2's rows", lambda: rows() == [(1,), (2,)], 60, old.proc)
        with old.connect() as conn:
            assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)
        with new.connect() as conn:
            assert conn.execute(
                "select state from pg_stat_replication where application_name = %s", (one,)
            ).fetchall() == [("streaming",)]


def test_rendered_bootstrap_refuses_a_data_directory_it_does_not_know(pg_primary: PgPrimary, tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pod-2", names.pod(NAME, 2), "unused")
    server.datadir.mkdir(parents=True)
    (server.datadir / "something").write_text("not a cluster")
    with pytest.raises(procs.StartupError, match="not empty but holds no cluster"):
        server.run(["bash", str(pg_primary.files["bootstrap.sh"])], env=_bootstrap_env(pg_primary, 2, server.datadir))
    assert (server.datadir / "something").read_text() == "not a cluster"


# --- all engines: scripts, and what the API server says -------------------------------------------------

ALL = [("redis", 3), ("postgres", 3), ("neo4j", 1), ("qdrant", 3)]


@pytest.mark.parametrize(("engine", "replicas"), ALL)
def test_rendered_scripts_are_valid_bash(engine: str, replicas: int, tmp_path: Path) -> None:
    files = write_files(tmp_path, render.render_config_files(store(engine, replicas, {})))
    scripts = [path for name, path in files.items() if name.endswith(".sh")]
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def test_rendered_redis_entrypoint_defaults_to_pod_0_in_the_cluster(tmp_path: Path) -> None:
    """Without overrides a replica pod follows pod 0's DNS name on the standard port, with the pod's paths."""
    files = write_files(tmp_path / "config", render.render_config_files(store("redis", 3, {})))
    fake_bin = tmp_path / "bin"
    _fake_executable(fake_bin / "redis-server", '#!/bin/sh\ncat "$1"\n')  # prints the runtime config it is given
    result = _run_entrypoint(
        files,
        {
            "HOSTNAME": names.pod(NAME, 2),
            "REDIS_PASSWORD": "pw",
            "REDIS_RUN_DIR": str(tmp_path / "run"),
            "PATH": f"{fake_bin}:{os.environ['PATH']}",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        'include "/etc/mlinfra/redis.conf"',
        "port 6379",
        "bind * -::*",
        'dir "/data"',
        'requirepass "pw"',
        'masterauth "pw"',
        f"replicaof {NAME}-0.{NAME}-hl.{NAMESPACE}.svc 6379",
    ]


@pytest.mark.parametrize(
    ("ordinal", "args"),
    [
        (0, ["--uri", f"http://{NAME}-0.{NAME}-hl.{NAMESPACE}.svc:6335"]),
        (
            2,
            [
                "--bootstrap",
                f"http://{NAME}-0.{NAME}-hl.{NAMESPACE}.svc:6335",
                "--uri",
                f"http://{NAME}-2.{NAME}-hl.{NAMESPACE}.svc:6335",
            ],
        ),
    ],
)
def test_rendered_qdrant_entrypoint_joins_pod_0(ordinal: int, args: list[str], tmp_path: Path) -> None:
    """Qdrant's server cannot be run here: the image's entrypoint is replaced by one that prints its arguments."""
    files = write_files(tmp_path / "config", render.render_config_files(store("qdrant", 3, {})))
    home = tmp_path / "qdrant"
    _fake_executable(home / "entrypoint.sh", '#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    result = _run_entrypoint(files, {"HOSTNAME": names.pod(NAME, ordinal), "QDRANT_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["--config-path", "/etc/mlinfra/config.yaml", *args]


def test_rendered_objects_pass_the_api_server_and_restricted_pod_security(control_plane: ControlPlane) -> None:
    """Server-side dry run with strict field validation, in namespaces that warn about anything the
    restricted Pod Security Standard forbids."""
    for engine, replicas in ALL:
        ns = f"render-{engine}"
        control_plane.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": ns,
                        "labels": {
                            "pod-security.kubernetes.io/enforce": "restricted",
                            "pod-security.kubernetes.io/warn": "restricted",
                        },
                    },
                }
            ]
        )
        ds = DataStore.model_validate(
            {
                "metadata": {"name": NAME, "namespace": ns},
                "spec": {
                    "engine": engine,
                    "managed": {
                        "replicas": replicas,
                        "networkPolicy": True,
                        "storage": {"size": "1Gi", "storageClassName": "standard"},
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                    },
                },
            }
        )
        result = control_plane.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "--field-manager=mlinfra-operator",
            "-f",
            "-",
            input=yaml.safe_dump_all(render.render_managed(ds)),
            check=False,
        )
        assert result.returncode == 0, f"{engine}: {result.stderr}"
        assert "Warning" not in result.stderr, f"{engine}: {result.stderr}"
        assert result.stdout.count("(server dry run)") == len(render.render_managed(ds))


def test_synchronous_standbys_hold_commits_until_one_has_them(pg_primary: PgPrimary, tmp_path: Path) -> None:
    """What the failover's synchronous standbys rest on (stores.ha, engines.replication): with ANY 1 of the
    standbys named, a commit returns once one of them has it; with that standby gone the commit waits — it is
    not acknowledged, so a failover cannot lose it — until the operator names none (asynchronous again)."""
    one, two = names.pod(NAME, 1), names.pod(NAME, 2)
    primary = PostgresServer(tmp_path / one, one, pg_primary.server.password)
    standby = PostgresServer(tmp_path / two, two, pg_primary.server.password)
    table = f"t_{secrets.token_hex(4)}"
    with procs.ProcStack() as stack:
        primary.run(["bash", str(pg_primary.files["bootstrap.sh"])], env=_bootstrap_env(pg_primary, 1, primary.datadir))
        primary.start(stack)
        with primary.connect() as conn:
            conn.execute("select pg_promote(true, 30)")
            conn.execute(f"create table {table} (id int primary key)")
        standby.run(
            ["bash", str(pg_primary.files["bootstrap.sh"])],
            env=_bootstrap_env(pg_primary, 2, standby.datadir, source=primary),
        )
        standby.start(stack)
        conn_info = server_info(primary)
        procs.wait_until(
            "the standby streaming", lambda: replication.look(server_info(standby), 5).link_up, 60, standby.proc
        )
        assert replication.look(conn_info, 5).synchronous == ""
        names_ = replication.pg_synchronous_names([two], 1)
        replication.pg_set_synchronous(conn_info, names_, 10)
        procs.wait_until("the setting applied", lambda: replication.look(conn_info, 5).synchronous == names_, 10)
        with primary.connect() as conn:
            conn.execute(f"insert into {table} values (1)")  # the standby streams: returns
        assert standby.proc is not None
        standby.proc.stop()
        done = threading.Event()

        def commit() -> None:
            with primary.connect() as conn:
                conn.execute(f"insert into {table} values (2)")
            done.set()

        waiter = threading.Thread(target=commit, daemon=True)
        waiter.start()
        assert not done.wait(2), "a commit returned with no synchronous standby to have it"
        replication.pg_set_synchronous(conn_info, replication.pg_synchronous_names([], 1), 10)
        assert done.wait(10), "the waiting commit did not return once commits were asynchronous again"
        assert replication.look(conn_info, 5).synchronous == ""


def server_info(server: PostgresServer) -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine("postgres", "127.0.0.1", server.password, port=server.port)
