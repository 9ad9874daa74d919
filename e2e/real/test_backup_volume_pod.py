"""Backups on a PersistentVolumeClaim, on real Pods: the claim's server runs as a Pod of the operator image
(non-root) with the claim mounted, the backup Job's Pod writes through it with the generated token, the
objects land on the claim's volume, and a new managed Redis bootstraps from the Backup through the same
server, under its own password."""

from __future__ import annotations

import json
from pathlib import Path

from real_support import backup, condition, datastore, get, job_done, ready, redis_cli, secret

from e2e_support import volume_claim
from mlinfra.backup import configured
from mlinfra.backups import job as backup_job
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realnode import RealNode

CLAIM = "ml-backups"
SERVER = configured.volume_server(CLAIM)


def test_a_redis_backup_goes_to_a_volume_through_its_server_pod_and_restores(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    cp, ns = real_cp, real_ns
    store = datastore(ns, "cache", "redis", real_node.image("redis"), 1)
    store["spec"]["backup"] = {"target": {"volume": {"claimName": CLAIM}}}
    cp.apply([volume_claim(ns, CLAIM), store], field_manager="test")
    procs.wait_until("DataStore cache Ready", lambda: ready(cp, ns, "cache"), 240)
    password = secret(cp, ns, "cache-conn")["password"]
    marker = "volume-backup"
    redis_cli(cp, ns, "cache-0", password, "HSET", f"{marker}:h", "a", "1", "b", "2")
    redis_cli(cp, ns, "cache-0", password, "RPUSH", f"{marker}:l", "x", "y", "z")

    cp.apply([backup(ns, "first", "cache")], field_manager="test")
    name = backup_job.job_name("first")
    procs.wait_until(
        "the backup Job", lambda: cp.kubectl("get", "job", name, "-n", ns, check=False).returncode == 0, 90
    )
    procs.wait_until("the backup Job complete", lambda: job_done(cp, ns, name), 240)
    procs.wait_until(
        "Backup first Ready", lambda: condition(get(cp, ns, "backup", "first"), "Ready").get("status") == "True", 90
    )
    st = get(cp, ns, "backup", "first")["status"]
    assert st["location"].startswith(f"volume://{CLAIM}/{ns}/cache/")

    # The server is a real Pod of the operator image with the claim mounted, locked down like the Jobs.
    pods = json.loads(
        cp.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=backup-volume", "-o", "json").stdout
    )["items"]
    [pod] = pods
    assert pod["spec"]["nodeName"] == real_node.name and pod["status"]["phase"] == "Running"
    [container] = pod["spec"]["containers"]
    assert container["image"] == real_node.image("operator") and container["args"][:2] == ["backup-volume", "serve"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {"name": "backups", "persistentVolumeClaim": {"claimName": CLAIM}} in pod["spec"]["volumes"]
    token = secret(cp, ns, configured.volume_token_secret(CLAIM))["token"]
    assert token not in cp.kubectl("logs", "-n", ns, pod["metadata"]["name"]).stdout

    # The objects are on the claim's volume (the node's host path behind its PersistentVolume).
    volume = get(cp, ns, "persistentvolumeclaim", CLAIM)["spec"]["volumeName"]
    host_dir = Path(json.loads(cp.kubectl("get", "pv", volume, "-o", "json").stdout)["spec"]["hostPath"]["path"])
    manifests = [p for p in host_dir.rglob("*") if st["backupId"] in str(p) and p.name.startswith("manifest")]
    assert manifests, sorted(str(p) for p in host_dir.rglob("*"))

    # A new managed store from the Backup: pod 0's restore container reads through the server.
    restored = datastore(ns, "cache-restored", "redis", real_node.image("redis"), 1)
    restored["spec"]["managed"]["bootstrap"] = {"backup": {"name": "first"}}
    cp.apply([restored], field_manager="test")
    procs.wait_until("DataStore cache-restored Ready", lambda: ready(cp, ns, "cache-restored"), 300)
    new_password = secret(cp, ns, "cache-restored-conn")["password"]
    assert new_password != password
    assert redis_cli(cp, ns, "cache-restored-0", new_password, "HGETALL", f"{marker}:h").split() == ["a", "1", "b", "2"]
    assert redis_cli(cp, ns, "cache-restored-0", new_password, "LRANGE", f"{marker}:l", "0", "-1").split() == [
        "x",
        "y",
        "z",
    ]
