"""Backups with the operator running: a Backup of a real Redis goes to a real S3 server (MinIO) through its Job,
its status comes from the manifest on the bucket, the backup restores into a new server, and deleting the
Backup deletes exactly its objects. Wrong credentials and a store without spec.backup are reported.

The Job's command runs as a process here (kwok runs no pod), with the Secrets the Job mounts.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import backup_support as bs
from e2e_support import condition, get_json, run_job_command, wait_for
from mlinfra.backup import catalog
from mlinfra.devenv import procs
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.minio import MinioServer
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster, PostgresServer
from mlinfra.devenv.redis import RedisCluster, RedisServer

pytestmark = pytest.mark.e2e


def _restore(cp: ControlPlane, ns: str, backup: str, into: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mlinfra restore` as a user runs it: a process with the cluster's kubeconfig."""
    env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run(
        [sys.executable, "-m", "mlinfra", "restore", f"{ns}/{backup}", "--into", str(into), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _setup(cp: ControlPlane, ns: str, redis_cluster: RedisCluster, s3: MinioServer, bucket: str, key: str) -> None:
    bs.secret(cp, ns, "redis-creds", username="default", password=redis_cluster.password)
    user = s3.add_user(bucket)
    bs.secret(cp, ns, "s3-creds", accessKeyId=user.access_key, secretAccessKey=user.secret_key)
    bs.secret(cp, ns, "backup-key", key=key)


def test_a_backup_of_redis_goes_to_s3_is_verified_restores_and_is_deleted_with_its_backup(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    redis_cluster: RedisCluster,
    s3_server: MinioServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, namespace
    bucket, key = s3_server.new_bucket("bk"), secrets.token_hex(32)
    _setup(cp, ns, redis_cluster, s3_server, bucket, key)
    marker = f"e2e-backup-{secrets.token_hex(4)}"
    primary = redis_cluster.primary.client()
    primary.hset(f"{marker}:h", mapping={"a": "1", "b": "2"})
    primary.set(f"{marker}:s", "value")
    primary.rpush(f"{marker}:l", "x", "y", "z")
    # An object of someone else under the same bucket prefix: never touched.
    s3_server.client().put_object(bucket, "team-a/foreign.txt", io.BytesIO(b"not ours"), 8)

    cp.apply([bs.store(ns, redis_cluster.primary.port, bucket, s3_server.endpoint)])
    bs.ready_store(cp, ns)
    cp.apply([bs.backup(ns, "first")])

    # The operator starts one Job, which mounts the four Secrets and carries no secret in its spec.
    wait_for("the backup Job", lambda: get_json(cp, "jobs", "-n", ns)["items"] != [], 60)
    job = get_json(cp, "job", "first-backup", "-n", ns)
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    mounted = sorted(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v)
    assert mounted == ["backup-key", "cache-conn", "s3-creds"]
    for value in (redis_cluster.password, key):
        assert value not in json.dumps(job)
    # The status is written right after the Job is created: wait for it rather than race it.
    wait_for(
        "Backup first Running",
        lambda: condition(get_json(cp, "backup", "first", "-n", ns), "Ready").get("reason") == "Running",
        30,
    )
    backup = get_json(cp, "backup", "first", "-n", ns)

    summary = run_job_command(cp, ns, pod, backer, tmp_path / "job")
    assert summary["outcome"] == "Complete" and summary["backupId"] == backup["status"]["backupId"]

    def complete() -> bool:
        return condition(get_json(cp, "backup", "first", "-n", ns), "Ready").get("status") == "True"

    wait_for("Backup first Ready", complete, 60)
    backup = get_json(cp, "backup", "first", "-n", ns)
    st = backup["status"]
    store = get_json(cp, "datastore", "cache", "-n", ns)
    prefix = f"{ns}/cache/{store['metadata']['uid']}"
    assert st["location"] == f"s3://{bucket}/team-a/{prefix}/backups/{st['backupId']}/"
    assert st["engine"] == "redis" and st["encrypted"] is True and st["sizeBytes"] > 0
    assert st["completedAt"] >= st["startedAt"]
    assert st["observedGeneration"] == backup["metadata"]["generation"]
    assert st["target"]["s3"]["bucket"] == bucket and st["storeUid"] == store["metadata"]["uid"]
    for value in (redis_cluster.password, key):
        assert value not in yaml.safe_dump(st)
    metrics = operator.metrics()
    assert f'mlinfra_backup_last_success_timestamp_seconds{{datastore="cache",namespace="{ns}"}}' in metrics

    # The backup restores: `mlinfra restore` downloads it (checksums verified, decrypted with the key its
    # status names), lays out a redis data directory; a new redis-server on it has the data.
    into = tmp_path / "restore"
    run = _restore(cp, ns, "first", into)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["engine"] == "redis" and result["backupId"] == st["backupId"]
    for value in (redis_cluster.password, key):
        assert value not in run.stdout + run.stderr
    manifest = catalog.read_manifest(s3_server.target(bucket, "team-a"), prefix, st["backupId"])
    assert manifest.store.uid == store["metadata"]["uid"] and manifest.encrypted
    with procs.ProcStack() as stack:
        server = RedisServer(Path(result["dataDir"]), "restored", password="restored-pw").start(stack)
        restored = server.client()
        assert restored.hgetall(f"{marker}:h") == {"a": "1", "b": "2"}
        assert restored.get(f"{marker}:s") == "value"
        assert restored.lrange(f"{marker}:l", 0, -1) == ["x", "y", "z"]
    # A second restore into the same directory is refused: a restore never overwrites.
    again = _restore(cp, ns, "first", into)
    assert again.returncode == 1 and "not empty" in again.stderr

    # Deleting the Backup deletes its objects, and only those.
    def keys() -> set[str]:
        return {o.object_name for o in s3_server.client().list_objects(bucket, recursive=True)}

    assert any(k.endswith("manifest.json") for k in keys())
    cp.kubectl("delete", "backup", "first", "-n", ns, "--wait=true", "--timeout=60s")
    assert keys() == {"team-a/foreign.txt"}


def test_wrong_s3_credentials_stall_the_backup_and_the_store_stays_ready(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    redis_cluster: RedisCluster,
    s3_server: MinioServer,
    namespace: str,
) -> None:
    cp, ns = control_plane, namespace
    bucket = s3_server.new_bucket("bk")
    wrong = secrets.token_urlsafe(24)
    bs.secret(cp, ns, "redis-creds", username="default", password=redis_cluster.password)
    bs.secret(cp, ns, "s3-creds", accessKeyId=s3_server.root.access_key, secretAccessKey=wrong)
    bs.secret(cp, ns, "backup-key", key=secrets.token_hex(32))
    cp.apply([bs.store(ns, redis_cluster.primary.port, bucket, s3_server.endpoint), bs.backup(ns, "denied")])
    bs.ready_store(cp, ns)

    def stalled() -> bool:
        return condition(get_json(cp, "backup", "denied", "-n", ns), "Stalled").get("status") == "True"

    wait_for("Backup denied Stalled", stalled, 60)
    backup = get_json(cp, "backup", "denied", "-n", ns)
    ready = condition(backup, "Ready")
    assert ready["reason"] == "TargetUnreachable"
    assert "SignatureDoesNotMatch" in ready["message"] and bucket in ready["message"]
    assert wrong not in yaml.safe_dump(backup) and wrong not in operator.proc.log_path.read_text()
    assert get_json(cp, "jobs", "-n", ns)["items"] == []  # nothing started against a target that refuses
    assert condition(get_json(cp, "datastore", "cache", "-n", ns), "Ready")["status"] == "True"


def test_a_backup_of_a_store_without_a_policy_says_what_to_set(
    control_plane: ControlPlane, operator: OperatorProcess, redis_cluster: RedisCluster, namespace: str
) -> None:
    cp, ns = control_plane, namespace
    bs.secret(cp, ns, "redis-creds", username="default", password=redis_cluster.password)
    cp.apply([bs.store(ns, redis_cluster.primary.port, None, ""), bs.backup(ns, "nowhere")])

    def stalled() -> bool:
        return condition(get_json(cp, "backup", "nowhere", "-n", ns), "Stalled").get("status") == "True"

    wait_for("Backup nowhere Stalled", stalled, 60)
    ready = condition(get_json(cp, "backup", "nowhere", "-n", ns), "Ready")
    assert ready["reason"] == "NoBackupPolicy" and "spec.backup.target" in ready["message"]


def test_a_postgres_store_archives_its_wal_and_restores_to_a_point_in_time(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    postgres_cluster: PostgresCluster,
    s3_server: MinioServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, namespace
    bucket, key = s3_server.new_bucket("bk"), secrets.token_hex(32)
    source = bs.postgres_source(cp, ns, postgres_cluster, s3_server, bucket, key)
    table, user = source.table, source.user

    # The operator runs the store's WAL archiver: a Deployment of one pod, its Secrets mounted, none in its spec.
    deployment = get_json(cp, "deployment", "cache-wal-archiver", "-n", ns)
    assert deployment["spec"]["strategy"]["type"] == "Recreate" and deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == ["archive", "wal", f"{ns}/cache"]
    for value in (postgres_cluster.password, key):
        assert value not in json.dumps(deployment)
    archiver = bs.start_archiver(cp, ns, backer, tmp_path)
    try:
        cp.apply([bs.backup(ns, "pg-first")])
        wait_for("the backup Job", lambda: get_json(cp, "jobs", "-n", ns)["items"] != [], 60)
        pod = get_json(cp, "job", "pg-first-backup", "-n", ns)["spec"]["template"]["spec"]
        assert run_job_command(cp, ns, pod, backer, tmp_path / "job")["outcome"] == "Complete"
        wait_for(
            "Backup pg-first Ready",
            lambda: condition(get_json(cp, "backup", "pg-first", "-n", ns), "Ready").get("status") == "True",
            60,
        )
        st = get_json(cp, "backup", "pg-first", "-n", ns)["status"]
        assert st["engine"] == "postgres" and st["wal"]["startLsn"] and st["wal"]["startWal"] <= st["wal"]["stopWal"]
        target = source.batches_around()
    finally:
        archiver.send_signal(signal.SIGTERM)  # a last mark and a WAL switch, then it exits
        assert archiver.wait(90) == 0, (tmp_path / "archiver.log").read_text()
    log = (tmp_path / "archiver.log").read_text()
    assert postgres_cluster.password not in log and user.secret_key not in log

    # The store's status says how far it can be restored, read from the bucket (looked at once a minute).
    def recoverable() -> bool:
        st = get_json(cp, "datastore", "cache", "-n", ns)["status"].get("backup") or {}
        last = st.get("lastRecoverabilityPoint")
        return last is not None and datetime.datetime.fromisoformat(last.replace("Z", "+00:00")) >= target

    wait_for("status.backup.lastRecoverabilityPoint after T", recoverable, 150)
    summary = get_json(cp, "datastore", "cache", "-n", ns)["status"]["backup"]
    first = datetime.datetime.fromisoformat(summary["firstRecoverabilityPoint"].replace("Z", "+00:00"))
    assert first <= target and summary["walGaps"] == 0 and "recoverabilityError" not in summary

    into = tmp_path / "restore"
    run = _restore(cp, ns, "pg-first", into, "--target-time", target.isoformat())
    assert run.returncode == 0, run.stdout + run.stderr
    assert postgres_cluster.password not in run.stdout + run.stderr
    server = PostgresServer(tmp_path / "restored", "restored", postgres_cluster.password)
    server.workdir.mkdir(parents=True)
    (into / "pgdata").rename(server.datadir)
    server._prepare_dirs()  # owned by the unprivileged server user when we are root
    with procs.ProcStack() as stack:
        server.start(stack)
        procs.wait_until(
            "the restored server to promote",
            lambda: server.connect().execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,),
            120,
        )
        with server.connect() as conn:
            batches = conn.execute(f"SELECT batch, count(*) FROM {table} GROUP BY batch ORDER BY batch").fetchall()
        assert batches == [(1, 100), (2, 100)]  # exactly what committed before T: batch 3 came after
