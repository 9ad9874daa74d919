"""What the backup tests of the kwok tier share: the Secrets and the source store they back up, Backups, taking
one (its Job's command run as a process here: kwok runs no pod) and the WAL archiver's pod as a process."""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import redis as redis_lib

from e2e_support import condition, get_json, job_command, run_job_command, wait_for
from mlinfra.devenv import procs
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.minio import MinioServer, S3User
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.stores import walarchiver

SOURCE = "cache"
PREFIX = "team-a"


def secret(cp: ControlPlane, ns: str, name: str, **values: str) -> None:
    cp.kubectl("create", "secret", "generic", name, "-n", ns, *(f"--from-literal={k}={v}" for k, v in values.items()))


def target_secrets(cp: ControlPlane, ns: str, s3: MinioServer, bucket: str, key: str) -> S3User:
    """``s3-creds`` (a MinIO user of ``bucket`` only) and ``backup-key``; the user."""
    user = s3.add_user(bucket)
    secret(cp, ns, "s3-creds", accessKeyId=user.access_key, secretAccessKey=user.secret_key)
    secret(cp, ns, "backup-key", key=key)
    return user


def backup_policy(bucket: str, endpoint: str) -> dict[str, Any]:
    return {
        "target": {
            "s3": {
                "bucket": bucket,
                "prefix": PREFIX,
                "endpoint": endpoint,
                "credentialsSecretRef": {"name": "s3-creds"},
                "tls": {"enabled": False},
            }
        },
        "encryption": {"keySecretRef": {"name": "backup-key", "key": "key"}},
    }


def store(ns: str, port: int, bucket: str | None, endpoint: str, engine: str = "redis") -> dict[str, Any]:
    """The external store ``cache`` at 127.0.0.1:``port`` (credentials ``<engine>-creds``), backed up to ``bucket``."""
    spec: dict[str, Any] = {
        "engine": engine,
        "external": {"endpoint": f"127.0.0.1:{port}", "credentialsSecretRef": {"name": f"{engine}-creds"}},
    }
    if bucket is not None:
        spec["backup"] = backup_policy(bucket, endpoint)
    meta = {"name": SOURCE, "namespace": ns}
    return {"apiVersion": "mlinfra.io/v1alpha1", "kind": "DataStore", "metadata": meta, "spec": spec}


def managed_store(ns: str, name: str, engine: str, bootstrap: dict[str, Any], replicas: int = 2) -> dict[str, Any]:
    """A managed store made from a Backup (``spec.managed.bootstrap``)."""
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"engine": engine, "managed": {"replicas": replicas, "bootstrap": bootstrap}},
    }


def redis_contents(client: redis_lib.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` with its value, whatever its type: what a restore must give back."""
    found: dict[str, Any] = {}
    for key in client.scan_iter(f"{prefix}*"):
        kind = client.type(key)
        if kind == "string":
            found[key] = client.get(key)
        elif kind == "hash":
            found[key] = client.hgetall(key)
        elif kind == "list":
            found[key] = client.lrange(key, 0, -1)
        elif kind == "set":
            found[key] = sorted(client.smembers(key))
        elif kind == "zset":
            found[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            found[key] = kind
    return found


def backup(ns: str, name: str, store: str = SOURCE) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"dataStoreRef": {"name": store}},
    }


def is_true(cp: ControlPlane, kind: str, ns: str, name: str, cond: str = "Ready") -> bool:
    out = cp.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return out.returncode == 0 and condition(json.loads(out.stdout), cond).get("status") == "True"


def ready_store(cp: ControlPlane, ns: str, name: str = SOURCE, timeout: float = 90) -> None:
    wait_for(f"DataStore {name} Ready", lambda: is_true(cp, "datastore", ns, name), timeout)


def take(cp: ControlPlane, ns: str, name: str, backer: Backer, tmp: Path) -> dict[str, Any]:
    """Apply Backup ``name`` of ``cache``, run its Job's command here, wait until it is Ready; its status."""
    cp.apply([backup(ns, name)])
    job = f"{name}-backup"
    wait_for(f"Job {job}", lambda: cp.kubectl("get", "job", job, "-n", ns, check=False).returncode == 0, 60)
    pod = get_json(cp, "job", job, "-n", ns)["spec"]["template"]["spec"]
    assert run_job_command(cp, ns, pod, backer, tmp)["outcome"] == "Complete"
    wait_for(f"Backup {name} Ready", lambda: is_true(cp, "backup", ns, name), 60)
    return dict(get_json(cp, "backup", name, "-n", ns)["status"])


def start_archiver(cp: ControlPlane, ns: str, backer: Backer, tmp: Path) -> subprocess.Popen[bytes]:
    """The operator's WAL archiver Deployment, its pod's command run as a process here (kwok runs no pod)."""
    pod = get_json(cp, "deployment", f"{SOURCE}-wal-archiver", "-n", ns)["spec"]["template"]["spec"]
    argv, env = job_command(cp, ns, pod, backer, tmp / "archiver-secrets")
    env[walarchiver.SPOOL_ENV], env[walarchiver.STATUS_ENV] = str(tmp / "spool"), str(tmp / "spool" / "status.json")
    with (tmp / "archiver.log").open("w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def running() -> bool:
        assert proc.poll() is None, (tmp / "archiver.log").read_text()
        path = tmp / "spool" / "status.json"
        return path.exists() and bool(json.loads(path.read_text()).get("running"))

    procs.wait_until("the WAL archiver running", running, 60)
    return proc


@dataclasses.dataclass(frozen=True)
class PostgresSource:
    """The external PostgreSQL store ``cache`` with its WAL archiver Deployment made, and a table of batches."""

    cluster: PostgresCluster
    table: str
    user: S3User

    def insert(self, batch: int) -> None:
        """100 rows of ``batch``, committed."""
        with self.cluster.primary.connect() as conn:
            conn.execute(f"INSERT INTO {self.table} (batch) SELECT %s FROM generate_series(1, 100)", (batch,))

    def batches_around(self) -> datetime.datetime:
        """Batch 2, then T (the server's clock, UTC), then batch 3, a second apart: T lies clearly between them."""
        self.insert(2)
        time.sleep(1.0)
        with self.cluster.primary.connect() as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None and isinstance(row[0], datetime.datetime)
        time.sleep(1.0)
        self.insert(3)
        return row[0].astimezone(datetime.UTC)


def postgres_source(
    cp: ControlPlane, ns: str, cluster: PostgresCluster, s3: MinioServer, bucket: str, key: str
) -> PostgresSource:
    """Batch 1 in a new table, then the store ``cache`` backed up to ``bucket``, Ready, its archiver Deployment made."""
    secret(cp, ns, "postgres-creds", username="postgres", password=cluster.password)
    source = PostgresSource(cluster, f"e2e_backup_{secrets.token_hex(4)}", target_secrets(cp, ns, s3, bucket, key))
    with cluster.primary.connect() as conn:
        conn.execute(f"CREATE TABLE {source.table} (id bigserial PRIMARY KEY, batch int NOT NULL)")
    source.insert(1)
    cp.apply([store(ns, cluster.primary.port, bucket, s3.endpoint, engine="postgres")])
    ready_store(cp, ns)
    archiver = f"{SOURCE}-wal-archiver"
    wait_for(
        "the WAL archiver Deployment",
        lambda: cp.kubectl("get", "deployment", archiver, "-n", ns, check=False).returncode == 0,
        60,
    )
    return source
