"""Fixtures of the ``real`` tier: a control plane of its own with one real node (no kwok), so every Pod of
these tests really runs, and none of the kwok-tier tests ever lands on the real node."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs, secretscan
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.minio import MinioServer, start_minio
from mlinfra.devenv.realnode import RealNode


@pytest.fixture(scope="session")
def real_cp(devenv_dir: Path) -> Iterator[ControlPlane]:
    with ControlPlane(devenv_dir / "real-kube", nodes=0) as cp:
        yield cp


@pytest.fixture(scope="session")
def real_node(real_cp: ControlPlane, devenv_dir: Path) -> Iterator[RealNode]:
    with RealNode(real_cp, devenv_dir / "real-node") as node:
        yield node


@pytest.fixture(scope="session")
def real_s3(real_node: RealNode, devenv_dir: Path) -> Iterator[MinioServer]:
    """A MinIO inside the real node's network namespace, on the node's address: the node's Pods (the operator,
    backup Jobs) reach it there, and so do the tests, over the node's link. Stopped before the node is (it
    depends on it), so the node's namespace is deleted with nothing left running in it."""
    assert real_node.layout is not None
    with procs.ProcStack() as stack:
        yield start_minio(stack, devenv_dir / "real-minio", netns=real_node.layout.netns, host=real_node.node_ip)


@pytest.fixture
def real_ns(real_cp: ControlPlane, real_node: RealNode, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace per test on the real platform, deleted (with its Pods) afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"r-{slug}-{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]}"
    real_cp.kubectl("create", "namespace", name)
    procs.wait_until(
        "the default ServiceAccount",
        lambda: real_cp.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        60,
    )
    yield name
    for what in (("pods", "-o", "wide"), ("controllerrevisions",), ("events", "--sort-by=.lastTimestamp")):
        out = real_cp.kubectl("get", *what, "-n", name, check=False)
        print(f"--- {what[0]} in {name} at teardown ---\n{out.stdout}{out.stderr}")
    pods = real_cp.kubectl("get", "pods", "-n", name, "-o", "name", check=False).stdout.split()
    for pod in pods:  # the last lines each container wrote, the previous run's too (a crash loop's reason)
        for previous in ("--previous", ""):
            out = real_cp.kubectl("logs", "-n", name, pod, "--all-containers", "--tail=25", previous, check=False)
            if out.stdout.strip():
                print(f"--- logs {previous or '(current)'} of {pod} ---\n{out.stdout}")
    # The databases' own logs and the sync Jobs' are in these Pods: no tracked password may be in them.
    secretscan.audit_namespace(real_cp, name, pod_logs=True)
    real_cp.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="session")
def real_operator(real_cp: ControlPlane, real_node: RealNode) -> Iterator[str]:
    """The chart installed with the operator image built from our Dockerfile: the operator runs as the
    chart's Deployment, in a Pod on the real node. Returns the release's namespace."""
    repo, tag = real_node.image("operator").rsplit(":", 1)
    op_mod.install_chart(
        real_cp,
        extra=(
            "--set",
            f"image.repository={repo}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "logFormat=plain",
            # Observe every 2 s instead of 15 s: the tests wait for status to follow the Pods.
            "--set-json",
            'extraEnv=[{"name": "MLINFRA_OBSERVE_INTERVAL", "value": "2"}]',
        ),
    )
    yield op_mod.NAMESPACE
    # The operator's own log, as its Pod wrote it, against every secret the run tracked.
    secretscan.check_pod_logs(real_cp, op_mod.NAMESPACE)
