"""Fixtures of the ``real`` tier: a control plane of its own with one real node (no kwok), so every Pod of
these tests really runs, and none of the kwok-tier tests ever lands on the real node."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realnode import RealNode


@pytest.fixture(scope="session")
def real_cp(devenv_dir: Path) -> Iterator[ControlPlane]:
    with ControlPlane(devenv_dir / "real-kube", nodes=0) as cp:
        yield cp


@pytest.fixture(scope="session")
def real_node(real_cp: ControlPlane, devenv_dir: Path) -> Iterator[RealNode]:
    with RealNode(real_cp, devenv_dir / "real-node") as node:
        yield node


@pytest.fixture
def real_ns(real_cp: ControlPlane, real_node: RealNode, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace per test on the real platform, deleted (with its Pods) afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"r-{slug}-{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]}"
    real_cp.kubectl("create", "namespace", name)
    procs.wait_until("the default ServiceAccount", lambda: real_cp.kubectl(
        "get", "sa", "default", "-n", name, check=False).returncode == 0, 60)
    yield name
    pods = real_cp.kubectl("get", "pods", "-n", name, "-o", "wide", check=False)
    print(f"--- Pods in {name} at teardown ---\n{pods.stdout}{pods.stderr}")
    real_cp.kubectl("delete", "namespace", name, "--wait=false")
