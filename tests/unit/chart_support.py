"""The pinned helm (and kubectl) for the chart's unit tests: one harness for test_chart*.py."""

from __future__ import annotations

import functools
import pathlib
import subprocess
from typing import Any

import pytest
import yaml

from mlinfra.devenv import tools

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlinfra-operator"
RELEASE = "mlinfra-operator"
NAMESPACE = "mlinfra-system"


@functools.cache
def find_tools() -> tools.Tools:
    found = tools.find_tools()
    if not (found.helm.exists() and found.kubectl.exists()):
        pytest.skip(f"helm/kubectl not built: run `make tools` ({found.helm}, {found.kubectl})")
    return found


def run(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Without --kube-version a source-built helm assumes v1.20, below the chart's kubeVersion.
    t = find_tools()
    return run([str(t.helm), *args, "--kube-version", t.kubernetes_version], check=check)


@functools.cache
def render(*sets: str) -> list[dict[str, Any]]:
    """``helm template`` with ``--set`` items (``json:`` prefix: ``--set-json``), as a list of documents."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for item in sets:
        args += ["--set-json" if item.startswith("json:") else "--set", item.removeprefix("json:")]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]
