"""Scheduled backups with the operator running: a DataStore with ``spec.backup.schedule: "* * * * *"`` and
``retention.keepLast: 2`` on a real Redis and a real S3 server (MinIO). The operator makes one Backup per minute;
each one's Job command runs here as it appears (kwok runs no pod). A third complete scheduled backup makes
retention delete the oldest — the Backup object and its objects in the bucket — while an on-demand Backup is
never deleted; ``suspend: true`` stops new Backups.
"""

from __future__ import annotations

import datetime
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

import backup_support as bs
from e2e_support import condition, get_json, run_job_command, wait_for
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.minio import MinioServer
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.redis import RedisCluster
from mlinfra.k8s import syncjobs

pytestmark = pytest.mark.e2e

STORE = "cache"


def _store(ns: str, port: int, bucket: str, endpoint: str) -> dict[str, Any]:
    store = bs.store(ns, port, bucket, endpoint)
    policy = store["spec"]["backup"]
    policy.pop("encryption")
    policy["target"]["s3"]["prefix"] = "sched"
    policy.update(schedule="* * * * *", retention={"keepLast": 2})
    return store


def _get(cp: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    found = get_json(cp, "backups", "-n", ns)["items"]
    return next((b for b in found if b["metadata"]["name"] == name), None)


def _complete(cp: ControlPlane, ns: str, name: str) -> bool:
    found = _get(cp, ns, name)
    return found is not None and condition(found, "Ready").get("status") == "True"


def _interval(operator: OperatorProcess, ns: str) -> list[str]:
    """The values of the store's mlinfra_backup_schedule_interval_seconds series in /metrics."""
    series = re.compile(r"^mlinfra_backup_schedule_interval_seconds\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M)
    wanted = {f'namespace="{ns}"', f'datastore="{STORE}"'}
    return [m["value"] for m in series.finditer(operator.metrics()) if set(m["labels"].split(",")) == wanted]


def test_the_schedule_makes_backups_retention_deletes_the_oldest_and_suspend_stops_it(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    redis_cluster: RedisCluster,
    s3_server: MinioServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, namespace
    bucket = s3_server.new_bucket("sched")
    bs.secret(cp, ns, "redis-creds", username="default", password=redis_cluster.password)
    user = s3_server.add_user(bucket)
    bs.secret(cp, ns, "s3-creds", accessKeyId=user.access_key, secretAccessKey=user.secret_key)
    redis_cluster.primary.client().set(f"e2e-sched-{secrets.token_hex(4)}", "v")

    cp.apply([_store(ns, redis_cluster.primary.port, bucket, s3_server.endpoint)])
    wait_for(
        "DataStore cache Ready",
        lambda: condition(get_json(cp, "datastore", STORE, "-n", ns), "Ready").get("status") == "True",
        90,
    )
    ran: list[str] = []  # Backups whose Job command ran, in order
    ids: dict[str, str] = {}  # Backup name -> backup id (its objects' key part)

    def run(name: str) -> None:
        job = syncjobs.bounded_name(name, "backup", 63)
        wait_for(
            f"the Job of {name}",
            lambda: cp.kubectl("get", "job", job, "-n", ns, check=False).returncode == 0,
            60,
        )
        pod = get_json(cp, "job", job, "-n", ns)["spec"]["template"]["spec"]
        summary = run_job_command(cp, ns, pod, backer, tmp_path / name)
        assert summary["outcome"] == "Complete", summary
        ids[name] = summary["backupId"]
        ran.append(name)
        wait_for(f"Backup {name} Ready", lambda: _complete(cp, ns, name), 60)

    # An on-demand Backup, the oldest of all: retention never deletes it.
    cp.apply(
        [
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "Backup",
                "metadata": {"name": "by-hand", "namespace": ns},
                "spec": {"dataStoreRef": {"name": STORE}},
            }
        ]
    )
    run("by-hand")

    def scheduled() -> list[dict[str, Any]]:
        items = get_json(cp, "backups", "-n", ns, "-l", "mlinfra.io/scheduled=true")["items"]
        return sorted(items, key=lambda b: b["metadata"]["name"])

    def run_new_ones() -> bool:
        for b in scheduled():
            if b["metadata"]["name"] not in ran:
                run(b["metadata"]["name"])
        return len([n for n in ran if n != "by-hand"]) >= 3

    # The schedule fires every minute: run each scheduled Backup's Job as it appears, until three are complete.
    wait_for("a first scheduled Backup", lambda: scheduled() != [], 75)
    first = scheduled()[0]
    assert re.fullmatch(rf"{STORE}-\d{{12}}", first["metadata"]["name"])
    assert first["metadata"]["labels"] == {"mlinfra.io/datastore": STORE, "mlinfra.io/scheduled": "true"}
    assert "ownerReferences" not in first["metadata"]
    wait_for("three complete scheduled Backups", run_new_ones, 200)

    oldest = ran[1]  # after by-hand
    wait_for(f"retention to delete {oldest}", lambda: _get(cp, ns, oldest) is None, 60)

    def keys() -> set[str]:
        return {o.object_name for o in s3_server.client().list_objects(bucket, recursive=True)}

    assert not any(f"/backups/{ids[oldest]}/" in k for k in keys())
    for kept in ran[2:4]:
        assert _complete(cp, ns, kept) and any(f"/backups/{ids[kept]}/" in k for k in keys())
    assert _complete(cp, ns, "by-hand")
    assert any(f"/backups/{ids['by-hand']}/" in k for k in keys())

    def summary() -> dict[str, Any]:
        return dict((get_json(cp, "datastore", STORE, "-n", ns).get("status") or {}).get("backup") or {})

    wait_for("status.backup of the newest", lambda: summary().get("lastSuccessfulBackup") in ran[2:], 30)
    st = summary()
    assert st["nextScheduledTime"] > st["lastScheduledTime"] and st["backupsKept"] >= 3
    assert _interval(operator, ns) == ["60.0"]

    # Suspended: once the operator has seen it, a whole minute slot passes without a new Backup.
    cp.kubectl("patch", "datastore", STORE, "-n", ns, "--type=merge", "-p", '{"spec":{"backup":{"suspend":true}}}')
    wait_for("the suspension seen", lambda: "nextScheduledTime" not in summary(), 30)
    before = {b["metadata"]["name"] for b in scheduled()}
    now = datetime.datetime.now(datetime.UTC)
    next_minute = now.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    time.sleep((next_minute - now).total_seconds() + 10)  # past the slot, and several operator ticks after it
    assert {b["metadata"]["name"] for b in scheduled()} <= before
    assert _interval(operator, ns) == []  # no series: no MlinfraBackupTooOld while suspended
    assert _get(cp, ns, "by-hand") is not None
