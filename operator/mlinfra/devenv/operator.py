"""Install the Helm chart into the local control plane and run the operator as its ServiceAccount.

The chart's Deployment lands on a fake node, where nothing runs; the operator process runs on the host
instead, authenticated with a token of the chart's ServiceAccount, so every API call it makes is checked
against the chart's RBAC — too little access fails the tests, exactly as it would in a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlinfra.devenv import procs, tools
from mlinfra.devenv.controlplane import ControlPlane

RELEASE = "mlinfra"
NAMESPACE = "mlinfra-system"


def helm(cp: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(cp.tools.helm), f"--kubeconfig={cp.kubeconfig}", *args], capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def chart_dir() -> Path:
    """The working tree's chart."""
    return tools.repo_root() / "charts" / "mlinfra-operator"


def install_chart(
    cp: ControlPlane,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    extra: tuple[str, ...] = (),
    chart: Path | None = None,
) -> str:
    """``helm upgrade --install`` the chart (CRDs included on a first install) — the working tree's, or
    ``chart`` (a directory or a packaged ``.tgz``); returns the operator's ServiceAccount name."""
    helm(
        cp,
        "upgrade",
        "--install",
        release,
        str(chart or chart_dir()),
        "--namespace",
        namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "3m",
        *extra,
    )
    accounts = json.loads(
        cp.kubectl(
            "get", "serviceaccounts", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}", "-o", "json"
        ).stdout
    )["items"]
    if len(accounts) != 1:
        raise RuntimeError(f"expected one ServiceAccount of release {release}, found {len(accounts)}")
    return str(accounts[0]["metadata"]["name"])


def service_account_kubeconfig(cp: ControlPlane, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ``namespace/account`` with a bound token (TokenRequest API)."""
    token = cp.kubectl("create", "token", account, "-n", namespace, "--duration=12h").stdout.strip()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": {"server": cp.server, "certificate-authority": str(cp.ca)}}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": account, "context": {"cluster": "local", "user": account}}],
                "current-context": account,
            }
        )
    )
    path.chmod(0o600)
    return path


@dataclass
class OperatorProcess:
    """``mlinfra run`` on the host."""

    proc: procs.Proc
    health_port: int
    metrics_port: int

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def healthz(self) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
            return dict(json.load(r))

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:  # noqa: S310
            return str(r.read().decode())


def start_operator(
    stack: procs.ProcStack,
    kubeconfig: Path,
    workdir: Path,
    endpoint_map: Path | None,
    observe_interval: float = 2.0,
    extra_env: dict[str, str] | None = None,
    namespaces: tuple[str, ...] = (),
) -> OperatorProcess:
    """``mlinfra run`` as the identity of ``kubeconfig``, logging to ``workdir/operator.log``; cluster-wide,
    or watching only ``namespaces`` (``--namespace``, as the chart's ``watchNamespaces`` renders it)."""
    health, metrics = procs.free_port(), procs.free_port()
    env = {
        "KUBECONFIG": str(kubeconfig),
        "MLINFRA_OBSERVE_INTERVAL": str(observe_interval),
        "MLINFRA_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        **({"MLINFRA_ENDPOINT_MAP": str(endpoint_map)} if endpoint_map else {}),
        **(extra_env or {}),
    }
    env.pop("MLINFRA_REPO", None)
    proc = stack.add(
        procs.Proc(
            "mlinfra-operator",
            [
                sys.executable,
                "-m",
                "mlinfra",
                "run",
                f"--health-port={health}",
                f"--metrics-port={metrics}",
                *(f"--namespace={ns}" for ns in namespaces),
            ],
            workdir / "operator.log",
            env={**os.environ, **env},
        )
    )
    op = OperatorProcess(proc, health, metrics)
    procs.wait_until("the operator's /healthz", lambda: bool(op.healthz() is not None), 60, proc)
    return op
