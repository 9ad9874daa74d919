"""An Argo CD action on a live object: "backup-now" run (as Argo CD runs it) on the DataStore the API server
returns, what it returns created as Argo CD would, and the operator taking that Backup to the end, a real Redis
to a real S3 server. ("sync-now" sets the annotation e2e/test_featureview.py already drives.)"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

import backup_support as bs
from e2e_support import get_json, run_job_command, wait_for
from mlinfra.build import argocd
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.minio import MinioServer
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.redis import RedisCluster

pytestmark = pytest.mark.e2e

ROOT = argocd.repo_root()


def test_backup_now_takes_a_backup_the_operator_completes(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    redis_cluster: RedisCluster,
    s3_server: MinioServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, namespace
    bucket = s3_server.new_bucket("act")
    bs.secret(cp, ns, "redis-creds", username="default", password=redis_cluster.password)
    bs.target_secrets(cp, ns, s3_server, bucket, secrets.token_hex(32))
    cp.apply([bs.store(ns, redis_cluster.primary.port, bucket, s3_server.endpoint)])
    bs.ready_store(cp, ns)

    live = get_json(cp, "datastore", bs.SOURCE, "-n", ns)
    scripts = argocd.action_scripts(ROOT, "DataStore")
    assert argocd.discover(scripts["discovery"], live)["backup-now"] is True
    [created] = argocd.run_action(scripts["backup-now"], live)
    assert created["operation"] == "create"
    cp.kubectl("create", "-f", "-", input=json.dumps(created["resource"]))
    name = created["resource"]["metadata"]["name"]

    job = f"{name}-backup"
    wait_for(f"Job {job}", lambda: cp.kubectl("get", "job", job, "-n", ns, check=False).returncode == 0, 60)
    pod = get_json(cp, "job", job, "-n", ns)["spec"]["template"]["spec"]
    assert run_job_command(cp, ns, pod, backer, tmp_path / "job")["outcome"] == "Complete"
    wait_for(f"Backup {name} Ready", lambda: bs.is_true(cp, "backup", ns, name), 60)
    status = get_json(cp, "backup", name, "-n", ns)["status"]
    assert status["location"].startswith(f"s3://{bucket}/") and status["sizeBytes"] > 0
