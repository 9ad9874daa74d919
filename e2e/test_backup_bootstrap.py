"""A new managed DataStore made from a Backup (``spec.managed.bootstrap``), with the operator running: the store's
pods get a restore init container from the operator's image, the restored store is Ready with
``status.restoredFrom`` and holds exactly the backed-up data (PostgreSQL: exactly what committed before the
target time), under the new store's passwords. What cannot be restored is reported before anything is made.

kwok runs no pod: the backer does what the restore init container and the start script do, from the plan the
operator rendered into the StatefulSet, through the same code (devenv/restored.py). The real node's tier runs
the same on real Pods (e2e/real/test_backup_bootstrap_pods.py).
"""

from __future__ import annotations

import datetime
import json
import secrets
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_lib

import backup_support as bs
from e2e_support import condition, get_json, secret_data, wait_for
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.minio import MinioServer
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster

pytestmark = pytest.mark.e2e


def _served(backer: Backer, ns: str, name: str) -> dict[str, Any]:
    return dict(backer.backed[f"{ns}/{name}"].entry)


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _stalled(cp: ControlPlane, ns: str, name: str, reason: str) -> dict[str, Any]:
    def stalled() -> bool:
        ds = get_json(cp, "datastore", name, "-n", ns)
        return condition(ds, "Stalled").get("status") == "True" and condition(ds, "Ready").get("reason") == reason

    wait_for(f"DataStore {name} Stalled ({reason})", stalled, 60)
    ready = condition(get_json(cp, "datastore", name, "-n", ns), "Ready")
    # Nothing is made for a store that cannot be restored: no pod may start empty in its place.
    assert cp.kubectl("get", "statefulset", name, "-n", ns, check=False).returncode != 0
    return ready


def test_a_managed_redis_bootstraps_from_a_backup_and_does_not_change_when_the_backup_goes(
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
    bs.secret(cp, ns, "redis-creds", username="default", password=redis_cluster.password)
    bs.target_secrets(cp, ns, s3_server, bucket, key)
    marker = f"boot-{secrets.token_hex(4)}"
    source = redis_cluster.primary.client()
    for i in range(300):
        source.set(f"{marker}:s:{i}", f"value-{i}")
    source.hset(f"{marker}:h", mapping={"a": "1", "b": "2"})
    source.rpush(f"{marker}:l", "x", "y", "z")
    source.sadd(f"{marker}:set", "p", "q")
    source.zadd(f"{marker}:z", {"m": 1.5, "n": 2.0})
    expected = bs.redis_contents(source, marker)
    cp.apply([bs.store(ns, redis_cluster.primary.port, bucket, s3_server.endpoint)])
    bs.ready_store(cp, ns)
    taken = bs.take(cp, ns, "first", backer, tmp_path / "job")
    source.set(f"{marker}:after", "written after the backup")

    cp.apply([bs.managed_store(ns, "restored", "redis", {"backup": {"name": "first"}})])
    bs.ready_store(cp, ns, "restored", 180)
    ds = get_json(cp, "datastore", "restored", "-n", ns)
    came = ds["status"]["restoredFrom"]
    assert came["backup"] == "first" and came["backupId"] == taken["backupId"]
    assert came["sourceStore"] == bs.SOURCE and came["engine"] == "redis"
    assert came["location"] == taken["location"]

    # Pod 0 restores in an init container of the operator's image; it reads only the target's Secrets.
    sts = get_json(cp, "statefulset", "restored", "-n", ns)
    pod = sts["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["name"] == "restore" and init["args"] == ["restore", "pod"]
    assert sorted(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v) == ["backup-key", "s3-creds"]
    for value in (redis_cluster.password, key):
        assert value not in json.dumps(sts)

    # Every key, of every type, under the NEW store's password; nothing written after the backup.
    password = secret_data(cp, ns, "restored-credentials")["password"]
    served = _served(backer, ns, "restored")
    members = sorted(served["members"].items())
    for _, address in members:
        client = redis_lib.Redis(port=_port(address), password=password, decode_responses=True, socket_timeout=5)
        wait_for("the member has the data", lambda c=client: bs.redis_contents(c, marker) == expected, 30)  # type: ignore[misc]
        assert client.get(f"{marker}:after") is None

    # The Backup goes (its store's retention, or a person). The restored store is not re-checked against it and
    # its pods do not change: they are rendered from status.restoredFrom.
    cp.kubectl("delete", "backup", "first", "-n", ns, "--wait=true", "--timeout=60s")
    generation = sts["metadata"]["generation"]
    cp.kubectl("patch", "datastore", "restored", "-n", ns, "--type=merge", "-p", '{"spec":{"deletionPolicy":"Delete"}}')
    wait_for(
        "the spec change observed",
        lambda: get_json(cp, "datastore", "restored", "-n", ns)["status"].get("observedGeneration") == 2,
        60,
    )
    after = get_json(cp, "datastore", "restored", "-n", ns)
    assert condition(after, "Ready")["status"] == "True"
    assert after["status"]["restoredFrom"] == came
    assert get_json(cp, "statefulset", "restored", "-n", ns)["metadata"]["generation"] == generation


def test_a_managed_postgres_bootstraps_to_a_point_in_time_and_what_cannot_be_restored_is_reported(
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
    table = source.table
    archiver = bs.start_archiver(cp, ns, backer, tmp_path)
    try:
        bs.take(cp, ns, "pg-first", backer, tmp_path / "job")
        target = source.batches_around()
    finally:
        archiver.send_signal(signal.SIGTERM)  # a last mark and a WAL switch, then it exits
        assert archiver.wait(90) == 0, (tmp_path / "archiver.log").read_text()

    # Before anything is made: a Backup that does not exist, and a time the archive cannot reach.
    cp.apply([bs.managed_store(ns, "orphan", "postgres", {"backup": {"name": "no-such-backup"}})])
    missing = _stalled(cp, ns, "orphan", "BackupNotFound")
    assert "no-such-backup" in missing["message"]
    early = "2001-01-01T00:00:00Z"
    cp.apply([bs.managed_store(ns, "too-early", "postgres", {"backup": {"name": "pg-first"}, "targetTime": early})])
    refused = _stalled(cp, ns, "too-early", "TargetTimeUnreachable")
    assert "2001-01-01" in refused["message"]
    cp.apply([bs.managed_store(ns, "wrong-engine", "redis", {"backup": {"name": "pg-first"}})])
    assert "postgres" in _stalled(cp, ns, "wrong-engine", "WrongEngine")["message"]

    stamp = target.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cp.apply([bs.managed_store(ns, "restored", "postgres", {"backup": {"name": "pg-first"}, "targetTime": stamp})])
    bs.ready_store(cp, ns, "restored", 240)
    came = get_json(cp, "datastore", "restored", "-n", ns)["status"]["restoredFrom"]
    assert came["backup"] == "pg-first" and came["engine"] == "postgres"
    assert datetime.datetime.fromisoformat(came["targetTime"].replace("Z", "+00:00")) == target

    password = secret_data(cp, ns, "restored-credentials")["password"]
    served = _served(backer, ns, "restored")
    for pod, address in sorted(served["members"].items()):
        dsn = f"host=127.0.0.1 port={_port(address)} user=postgres dbname=postgres connect_timeout=5"

        def batches(d: str = dsn) -> list[tuple[Any, ...]]:
            with psycopg.connect(d, password=password) as conn:
                return conn.execute(f"SELECT batch, count(*) FROM {table} GROUP BY batch ORDER BY batch").fetchall()

        wait_for(f"{pod} has the rows", lambda b=batches: b() == [(1, 100), (2, 100)], 60)  # type: ignore[misc]
        # The source's password is not the restored store's: the superuser's was set from the new Secret.
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(dsn, password=postgres_cluster.password).close()
    primary = f"host=127.0.0.1 port={_port(served['endpoint'])} user=postgres dbname=postgres connect_timeout=5"
    with psycopg.connect(primary, password=password) as conn:
        rows = conn.execute("SELECT name FROM pg_file_settings WHERE name LIKE 'recovery_target%'").fetchall()
    # Reset in the configuration after the promotion: a standby cloned from this primary later must not stop at
    # the target (they take effect at the next start: the running server shows them until then).
    assert rows == []
