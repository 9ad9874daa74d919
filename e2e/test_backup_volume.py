"""Backups on a PersistentVolumeClaim (``spec.backup.target.volume``), with the operator running: the operator
runs the claim's server, the backup Job writes through it with the generated token, a new store restores from
it, the server outlives the store it was made for (its Backups and the restored store own it too), and a
Backup deleted takes its objects off the volume.

kwok runs no pod: the backer serves the claim with the same server the pod runs (``mlinfra.backup.volume_server``)
on a directory that stands for the claim, at the address the endpoint map gives the server's Deployment.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import redis as redis_lib

import backup_support as bs
from e2e_support import condition, get_json, secret_data, volume_claim, wait_for
from mlinfra.backup import configured
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.redis import RedisCluster

pytestmark = pytest.mark.e2e

CLAIM = "ml-backups"
SERVER = configured.volume_server(CLAIM)


def _owners(cp: ControlPlane, ns: str) -> list[str]:
    deployment = get_json(cp, "deployment", SERVER, "-n", ns)
    return sorted(f"{r['kind']}/{r['name']}" for r in deployment["metadata"].get("ownerReferences") or [])


def _served_dir(backer: Backer, ns: str) -> Path:
    return backer.volumes[f"{ns}/{SERVER}"][1]


def test_a_redis_store_backs_up_to_a_volume_and_a_new_store_restores_from_it(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    redis_cluster: RedisCluster,
    namespace: str,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, namespace
    bs.secret(cp, ns, "redis-creds", username="default", password=redis_cluster.password)
    marker = f"vol-{secrets.token_hex(4)}"
    source = redis_cluster.primary.client()
    for i in range(200):
        source.set(f"{marker}:s:{i}", f"value-{i}")
    source.hset(f"{marker}:h", mapping={"a": "1", "b": "2"})
    source.zadd(f"{marker}:z", {"m": 1.5})
    expected = bs.redis_contents(source, marker)
    store = bs.store(ns, redis_cluster.primary.port, None, "")
    store["spec"]["backup"] = {"target": {"volume": {"claimName": CLAIM}}}
    cp.apply([volume_claim(ns, CLAIM), store])
    bs.ready_store(cp, ns)

    # The claim's server: the operator's image, the claim mounted, owned (not controlled) by the store.
    wait_for(
        f"Deployment {SERVER}",
        lambda: cp.kubectl("get", "deployment", SERVER, "-n", ns, check=False).returncode == 0,
        60,
    )
    assert _owners(cp, ns) == [f"DataStore/{bs.SOURCE}"]
    token = secret_data(cp, ns, configured.volume_token_secret(CLAIM))["token"]

    taken = bs.take(cp, ns, "first", backer, tmp_path / "job")
    assert taken["location"].startswith(f"volume://{CLAIM}/{ns}/{bs.SOURCE}/")
    assert taken["target"] == {"volume": {"claimName": CLAIM}}
    # The Job wrote through the server onto the claim's directory: the manifest is there.
    manifests = list(_served_dir(backer, ns).rglob("manifest*"))
    assert manifests, sorted(str(p) for p in _served_dir(backer, ns).rglob("*"))
    job = get_json(cp, "job", "first-backup", "-n", ns)
    pod = job["spec"]["template"]["spec"]
    mounted = sorted(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v)
    assert mounted == sorted([f"{bs.SOURCE}-conn", configured.volume_token_secret(CLAIM)])
    assert token not in json.dumps(job) and token not in json.dumps(get_json(cp, "backup", "first", "-n", ns))
    wait_for("the Backup among the server's owners", lambda: "Backup/first" in _owners(cp, ns), 60)

    # A new managed store from the Backup: its restore container reads through the same server.
    cp.apply([bs.managed_store(ns, "restored", "redis", {"backup": {"name": "first"}}, replicas=1)])
    bs.ready_store(cp, ns, "restored", 180)
    came = get_json(cp, "datastore", "restored", "-n", ns)["status"]["restoredFrom"]
    assert came["location"] == taken["location"] and came["target"] == {"volume": {"claimName": CLAIM}}
    password = secret_data(cp, ns, "restored-credentials")["password"]
    address = backer.backed[f"{ns}/restored"].entry["endpoint"]
    client = redis_lib.Redis(
        port=int(address.rpartition(":")[2]), password=password, decode_responses=True, socket_timeout=5
    )
    assert bs.redis_contents(client, marker) == expected
    assert "DataStore/restored" in _owners(cp, ns)

    # The store the server was made for goes; its Backup stays restorable, so the server stays.
    cp.kubectl("delete", "datastore", bs.SOURCE, "-n", ns, "--wait=true", "--timeout=90s")
    wait_for("the store off the server's owners", lambda: f"DataStore/{bs.SOURCE}" not in _owners(cp, ns), 90)
    assert condition(get_json(cp, "backup", "first", "-n", ns), "Ready")["status"] == "True"

    # A Backup deleted takes its objects off the volume (through the server), and nothing else.
    cp.kubectl("delete", "backup", "first", "-n", ns, "--wait=true", "--timeout=90s")
    assert not list(_served_dir(backer, ns).rglob("manifest*"))
    assert _owners(cp, ns) == ["DataStore/restored"]
