"""Backups in Pods: a Backup of a managed Redis is taken by the operator's Job, which runs `mlinfra take backup`
in a real Pod from the operator image (non-root, read-only root filesystem, its staging in the /tmp emptyDir)
on the real node, into a real S3 server (MinIO) running inside the node's network namespace. The Backup's
status comes from the manifest the Pod wrote, the objects are in the bucket, and the backup restores into a
new redis-server with the keys written into the managed Redis before it."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from real_support import (
    backup,
    backup_policy,
    condition,
    create_secret,
    datastore,
    get,
    in_pod,
    job_done,
    job_pods,
    members_ok,
    ready,
    redis_cli,
    secret,
)

from mlinfra.backup import catalog, postgres, redis
from mlinfra.backup.sealed import EncryptionKey
from mlinfra.backups import job as backup_job
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.minio import MinioServer
from mlinfra.devenv.postgres import PostgresServer
from mlinfra.devenv.realnode import RealNode
from mlinfra.devenv.redis import RedisServer

PREFIX = "team-a"


def _store(ns: str, image: str, bucket: str, s3: MinioServer) -> dict[str, Any]:
    store = datastore(ns, "cache", "redis", image, 1)
    store["spec"]["backup"] = backup_policy(bucket, PREFIX, s3.endpoint)
    return store


def test_a_backup_job_runs_in_a_pod_into_s3_in_the_node_and_restores(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_s3: MinioServer, real_ns: str, tmp_path: Path
) -> None:
    cp, ns = real_cp, real_ns
    bucket, key = real_s3.new_bucket("real"), secrets.token_hex(32)
    user = real_s3.add_user(bucket)
    create_secret(cp, ns, "s3-creds", accessKeyId=user.access_key, secretAccessKey=user.secret_key)
    create_secret(cp, ns, "backup-key", key=key)
    cp.apply([_store(ns, real_node.image("redis"), bucket, real_s3)], field_manager="test")
    procs.wait_until("DataStore cache Ready", lambda: ready(cp, ns, "cache"), 240)

    password = secret(cp, ns, "cache-conn")["password"]
    marker = f"real-backup-{secrets.token_hex(4)}"
    redis_cli(cp, ns, "cache-0", password, "HSET", f"{marker}:h", "a", "1", "b", "2")
    redis_cli(cp, ns, "cache-0", password, "SET", f"{marker}:s", "value")
    redis_cli(cp, ns, "cache-0", password, "RPUSH", f"{marker}:l", "x", "y", "z")

    cp.apply(
        [backup(ns, "first", "cache")],
        field_manager="test",
    )
    name = backup_job.job_name("first")
    procs.wait_until(
        "the backup Job", lambda: cp.kubectl("get", "job", name, "-n", ns, check=False).returncode == 0, 90
    )
    procs.wait_until("the backup Job complete", lambda: job_done(cp, ns, name), 240)

    # It ran as a real Pod of the operator image on the real node, locked down as the Job builder says.
    [pod] = job_pods(cp, ns, name)
    assert pod["spec"]["nodeName"] == real_node.name and pod["status"]["phase"] == "Succeeded"
    [container] = pod["spec"]["containers"]
    assert container["image"] == real_node.image("operator")
    assert container["args"][:2] == ["take", "backup"]
    security = {**pod["spec"].get("securityContext", {}), **container.get("securityContext", {})}
    assert security.get("runAsNonRoot") is True and security.get("readOnlyRootFilesystem") is True
    tmp_mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    [tmp_volume] = [v for v in pod["spec"]["volumes"] if v["name"] == tmp_mounts[0]["name"]]
    assert "emptyDir" in tmp_volume
    assert not any(e["name"] == backup_job.STAGING_ENV for e in container.get("env", []))
    summary = json.loads(cp.kubectl("logs", "-n", ns, pod["metadata"]["name"]).stdout.strip().splitlines()[-1])
    assert summary["outcome"] == "Complete", summary

    # The Backup is Ready, its status read from the manifest on the bucket.
    def complete() -> bool:
        return condition(get(cp, ns, "backup", "first"), "Ready").get("status") == "True"

    procs.wait_until("Backup first Ready", complete, 90)
    st = get(cp, ns, "backup", "first")["status"]
    store_uid = get(cp, ns, "datastore", "cache")["metadata"]["uid"]
    store_prefix = f"{ns}/cache/{store_uid}"
    assert summary["backupId"] == st["backupId"]
    assert st["location"] == f"s3://{bucket}/{PREFIX}/{store_prefix}/backups/{st['backupId']}/"
    assert st["engine"] == "redis" and st["encrypted"] is True and st["sizeBytes"] > 0
    target = real_s3.target(bucket, PREFIX, user=user)
    manifest = catalog.read_manifest(target, store_prefix, st["backupId"])
    assert st["sizeBytes"] == manifest.stored_size
    assert manifest.store.uid == store_uid and manifest.encrypted

    # The objects are in the bucket: every one the manifest names, and the manifest.
    listed = {o.object_name for o in real_s3.client().list_objects(bucket, prefix=f"{PREFIX}/", recursive=True)}
    base = f"{PREFIX}/{catalog.backup_dir(store_prefix, st['backupId'])}"
    assert f"{PREFIX}/{catalog.manifest_key(store_prefix, st['backupId'])}" in listed
    assert manifest.objects and {base + o.key for o in manifest.objects} <= listed

    # A new managed store bootstraps from the Backup: pod 0's restore init container (the operator image, run as
    # the database's user) fetches, verifies and seeds it; pod 1 replicates it; the new store's password opens it.
    bootstrapped = datastore(ns, "cache-restored", "redis", real_node.image("redis"), 2)
    bootstrapped["spec"]["managed"]["bootstrap"] = {"backup": {"name": "first"}}
    cp.apply([bootstrapped], field_manager="test")
    procs.wait_until(
        "DataStore cache-restored Ready with both members",
        lambda: ready(cp, ns, "cache-restored") and members_ok(cp, ns, "cache-restored"),
        300,
    )
    assert get(cp, ns, "datastore", "cache-restored")["status"]["restoredFrom"]["backupId"] == st["backupId"]
    new_password = secret(cp, ns, "cache-restored-conn")["password"]
    assert new_password != password
    for member in ("cache-restored-0", "cache-restored-1"):
        assert redis_cli(cp, ns, member, new_password, "HGETALL", f"{marker}:h").split() == ["a", "1", "b", "2"]
        assert redis_cli(cp, ns, member, new_password, "LRANGE", f"{marker}:l", "0", "-1").split() == ["x", "y", "z"]
    _restored_by_init_container(
        cp, ns, "cache-restored-0", real_node.image("operator"), st["backupId"], (key, user.secret_key, password)
    )

    # A damaged backup (an object its manifest names deleted from the bucket after it was taken): the operator's
    # check reads the manifest and passes, pod 0's restore container finds the damage, exits 2, and the store
    # says so, Stalled, with the container's line; nothing is served from an empty volume.
    cp.apply([backup(ns, "second", "cache")], field_manager="test")
    procs.wait_until(
        "Backup second Ready",
        lambda: condition(get(cp, ns, "backup", "second"), "Ready").get("status") == "True",
        300,
    )
    second = get(cp, ns, "backup", "second")["status"]
    damaged = catalog.read_manifest(target, store_prefix, second["backupId"]).objects[0]
    real_s3.client().remove_object(
        bucket, f"{PREFIX}/{catalog.backup_dir(store_prefix, second['backupId'])}{damaged.key}"
    )
    broken = datastore(ns, "cache-broken", "redis", real_node.image("redis"), 1)
    broken["spec"]["managed"]["bootstrap"] = {"backup": {"name": "second"}}
    cp.apply([broken], field_manager="test")

    def reported() -> bool:
        ds = get(cp, ns, "datastore", "cache-broken")
        return (
            condition(ds, "Ready").get("reason") == "RestoreFailed" and condition(ds, "Stalled").get("status") == "True"
        )

    procs.wait_until("DataStore cache-broken Stalled with RestoreFailed", reported, 240)
    message = condition(get(cp, ns, "datastore", "cache-broken"), "Ready")["message"]
    assert "cache-broken-0" in message and "the backup is damaged" in message and damaged.key in message
    assert key not in message and user.secret_key not in message

    # It restores by hand too: downloaded and verified here, laid out as a redis data directory, a new server.
    enc_key = EncryptionKey.from_secret_value("backup-key/key", key.encode())
    files = tmp_path / "backup"
    catalog.download_backup(target, store_prefix, st["backupId"], files, enc_key)
    data = tmp_path / "redis-data"
    redis.restore(files, data)
    with procs.ProcStack() as stack:
        server = RedisServer(data, "restored", password=secrets.token_hex(12)).start(stack)
        restored = server.client()
        assert restored.hgetall(f"{marker}:h") == {"a": "1", "b": "2"}
        assert restored.get(f"{marker}:s") == "value"
        assert restored.lrange(f"{marker}:l", 0, -1) == ["x", "y", "z"]


def _restored_by_init_container(
    cp: ControlPlane, ns: str, pod: str, image: str, backup_id: str, hidden: tuple[str, ...]
) -> None:
    """Pod 0's restore init container ran the operator image, exited 0 and said what it restored, no secret."""
    body = get(cp, ns, "pod", pod)
    [init] = [c for c in body["spec"]["initContainers"] if c["name"] == "restore"]
    assert init["args"] == ["restore", "pod"] and init["image"] == image
    [state] = [c for c in body["status"]["initContainerStatuses"] if c["name"] == "restore"]
    assert state["state"]["terminated"]["exitCode"] == 0
    log = cp.kubectl("logs", "-n", ns, pod, "-c", "restore").stdout
    assert backup_id in log
    for value in hidden:
        assert value not in log and value not in json.dumps(body)


def test_a_postgres_backup_job_and_the_wal_archiver_run_in_pods_and_restore(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_s3: MinioServer, real_ns: str, tmp_path: Path
) -> None:
    cp, ns = real_cp, real_ns
    bucket, key = real_s3.new_bucket("realpg"), secrets.token_hex(32)
    user = real_s3.add_user(bucket)
    create_secret(cp, ns, "s3-creds", accessKeyId=user.access_key, secretAccessKey=user.secret_key)
    create_secret(cp, ns, "backup-key", key=key)
    store = datastore(ns, "pg", "postgres", real_node.image("postgres"), 1)
    store["spec"]["backup"] = backup_policy(bucket, PREFIX, real_s3.endpoint)
    cp.apply([store], field_manager="test")
    procs.wait_until("DataStore pg Ready", lambda: ready(cp, ns, "pg"), 300)
    password = secret(cp, ns, "pg-conn")["password"]

    def psql(sql: str) -> str:
        return in_pod(cp, ns, "pg-0", "postgres", "PGPASSWORD", password, "psql", "-U", "postgres", "-Atc", sql)

    psql("CREATE TABLE real_backup (id int PRIMARY KEY, v text)")
    psql("INSERT INTO real_backup SELECT g, md5(g::text) FROM generate_series(1, 500) g")

    # The operator's WAL archiver runs as a real Pod (pg_receivewal from the operator image, over the
    # replication protocol): within a mark interval the archive in the bucket has a segment and a mark.
    store_prefix = f"{ns}/pg/{get(cp, ns, 'datastore', 'pg')['metadata']['uid']}"
    target = real_s3.target(bucket, PREFIX, user=user)

    def archived() -> bool:
        names = catalog.list_wal(target, store_prefix)
        return any(n.endswith(".mark") for n in names) and any(len(n) == 24 for n in names)

    procs.wait_until("WAL segments and a mark archived by the archiver Pod", archived, 180)
    pods = json.loads(
        cp.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=wal-archiver", "-o", "json").stdout
    )["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running"] and pods[0]["spec"]["nodeName"] == real_node.name

    cp.apply(
        [backup(ns, "pg-first", "pg")],
        field_manager="test",
    )
    name = backup_job.job_name("pg-first")
    procs.wait_until(
        "the backup Job", lambda: cp.kubectl("get", "job", name, "-n", ns, check=False).returncode == 0, 90
    )
    procs.wait_until("the backup Job complete", lambda: job_done(cp, ns, name), 300)
    procs.wait_until(
        "Backup pg-first Ready",
        lambda: condition(get(cp, ns, "backup", "pg-first"), "Ready").get("status") == "True",
        90,
    )
    st = get(cp, ns, "backup", "pg-first")["status"]
    assert st["engine"] == "postgres" and st["wal"]["startLsn"]
    psql("INSERT INTO real_backup SELECT g, 'before T' FROM generate_series(501, 600) g")
    time.sleep(1.0)  # the commits before and after T lie clearly apart
    target_time = psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    time.sleep(1.0)
    psql("INSERT INTO real_backup SELECT g, 'after T' FROM generate_series(601, 700) g")

    # A new managed store recovers to T in its pod 0 (the init container lays out the base backup and the WAL
    # that reaches T; start.sh recovers on a private socket, promotes, sets the new store's passwords); pod 1
    # streams from it. T becomes reachable once the archiver's next mark after it is in the bucket (a minute at
    # most): until then the store says so (Stalled, TargetTimeUnreachable) and is looked at again.
    bootstrapped = datastore(ns, "pg-restored", "postgres", real_node.image("postgres"), 2)
    bootstrapped["spec"]["managed"]["bootstrap"] = {"backup": {"name": "pg-first"}, "targetTime": target_time}
    cp.apply([bootstrapped], field_manager="test")
    procs.wait_until(
        "DataStore pg-restored Ready with both members",
        lambda: ready(cp, ns, "pg-restored") and members_ok(cp, ns, "pg-restored"),
        420,
    )
    new_password = secret(cp, ns, "pg-restored-conn")["password"]
    for member in ("pg-restored-0", "pg-restored-1"):
        rows = in_pod(
            cp,
            ns,
            member,
            "postgres",
            "PGPASSWORD",
            new_password,
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-Atc",
            "SELECT count(*), max(id) FROM real_backup",
        )
        assert rows == "600|600", member  # exactly what committed before T
    refused = cp.kubectl(
        "exec",
        "-i",
        "-n",
        ns,
        "pg-restored-0",
        "-c",
        "postgres",
        "--",
        "sh",
        "-c",
        'read -r PGPASSWORD; export PGPASSWORD; psql -h 127.0.0.1 -U postgres -Atc "SELECT 1"',
        input=password + "\n",
        check=False,
    )
    assert refused.returncode != 0 and "password authentication failed" in refused.stderr
    _restored_by_init_container(
        cp,
        ns,
        "pg-restored-0",
        real_node.image("operator"),
        st["backupId"],
        (key, user.secret_key, password, new_password),
    )
    came = get(cp, ns, "datastore", "pg-restored")["status"]["restoredFrom"]
    assert came["backup"] == "pg-first" and came["sourceStore"] == "pg"

    # It restores: base backup downloaded and verified here, a new local server recovers it and promotes.
    files = tmp_path / "backup"
    catalog.download_backup(
        target, store_prefix, st["backupId"], files, EncryptionKey.from_secret_value("k", key.encode())
    )
    server = PostgresServer(tmp_path / "restored", "restored", password)
    server.workdir.mkdir(parents=True)
    wal = tmp_path / "wal"
    wal.mkdir()
    postgres.restore(files, wal, server.datadir)
    server._prepare_dirs()
    with procs.ProcStack() as stack:
        server.start(stack)
        procs.wait_until(
            "the restored server to promote",
            lambda: server.connect().execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,),
            120,
        )
        with server.connect() as conn:
            assert conn.execute("SELECT count(*) FROM real_backup").fetchone() == (500,)
