"""e2e fixtures: the chart installed, the operator running as the chart's ServiceAccount, and the
backer serving managed stores with real local servers."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs, secretscan
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane


@pytest.fixture(scope="session")
def operator_account(control_plane: ControlPlane) -> str:
    """The chart installed with helm (CRDs included); the name of its ServiceAccount."""
    return op_mod.install_chart(control_plane)


@pytest.fixture(scope="session")
def backer(control_plane: ControlPlane, operator_account: str, devenv_dir: Path) -> Iterator[Backer]:
    b = Backer(control_plane, devenv_dir / "backed", devenv_dir / "endpoint-map.json").start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def operator(
    control_plane: ControlPlane, operator_account: str, backer: Backer, devenv_dir: Path
) -> Iterator[op_mod.OperatorProcess]:
    kubeconfig = op_mod.service_account_kubeconfig(
        control_plane, op_mod.NAMESPACE, operator_account, devenv_dir / "operator.kubeconfig"
    )
    with procs.ProcStack() as stack:
        yield op_mod.start_operator(stack, kubeconfig, devenv_dir, backer.map_path, observe_interval=2.0)


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    # Parametrized tests share a prefix: a hash of the node id keeps their namespaces apart.
    name = f"t-{slug}-{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]}"
    control_plane.kubectl("create", "namespace", name)
    procs.wait_until(
        "the default ServiceAccount",
        lambda: control_plane.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        60,
    )
    yield name
    # Shown by pytest only when the test failed: what the operator had written.
    dump = control_plane.kubectl("get", "datastores", "-n", name, "-o", "yaml", check=False)
    print(f"--- DataStores in {name} at teardown ---\n{dump.stdout}{dump.stderr}")
    secretscan.audit_namespace(control_plane, name)
    control_plane.kubectl("delete", "namespace", name, "--wait=false")
