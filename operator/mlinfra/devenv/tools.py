"""Where the platform's binaries are: the cache filled by ``e2e/tools/build.sh``, keyed by pinned version."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def repo_root() -> Path:
    """The source checkout (the platform is a development tool: it needs ``e2e/tools``)."""
    env = os.environ.get("MLINFRA_REPO")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "e2e" / "tools" / "versions.env").is_file():
            return parent
    raise FileNotFoundError("cannot find the repository (e2e/tools/versions.env); set MLINFRA_REPO")


def cache_dir() -> Path:
    return Path(os.environ.get("MLINFRA_CACHE", Path.home() / ".cache" / "mlinfra"))


def versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (repo_root() / "e2e" / "tools" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key] = value
    return pins


@dataclass(frozen=True)
class Tools:
    """Absolute paths of every binary the platform runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    kwok_stages: Path
    helm: Path
    neo4j_classpath: str
    kubernetes_version: str
    kubelet: Path
    kube_proxy: Path
    coredns: Path
    minio: Path

    def missing(self) -> list[str]:
        paths = [
            self.etcd,
            self.kube_apiserver,
            self.kube_controller_manager,
            self.kube_scheduler,
            self.kubectl,
            self.kwok,
            self.kwok_stages,
            self.helm,
            self.kubelet,
            self.kube_proxy,
            self.coredns,
            self.minio,
        ]
        gone = [str(p) for p in paths if not p.exists()]
        if not self.neo4j_classpath:
            gone.append("neo4j classpath")
        return gone


def find_tools() -> Tools:
    v = versions()
    b = cache_dir() / "bin"
    k8s = v["KUBERNETES_VERSION"]
    neo = sorted(cache_dir().glob(f"neo4j-{v['NEO4J_VERSION']}-*/classpath"))
    return Tools(
        etcd=b / f"etcd-{v['ETCD_VERSION']}",
        kube_apiserver=b / f"kube-apiserver-{k8s}",
        kube_controller_manager=b / f"kube-controller-manager-{k8s}",
        kube_scheduler=b / f"kube-scheduler-{k8s}",
        kubectl=b / f"kubectl-{k8s}",
        kwok=b / f"kwok-{v['KWOK_VERSION']}",
        kwok_stages=b / f"kwok-stages-{v['KWOK_VERSION']}.yaml",
        helm=b / f"helm-{v['HELM_VERSION']}",
        neo4j_classpath=neo[-1].read_text().strip() if neo else "",
        kubernetes_version=k8s,
        kubelet=b / f"kubelet-{k8s}",
        kube_proxy=b / f"kube-proxy-{k8s}",
        coredns=b / f"coredns-{v['COREDNS_VERSION']}",
        minio=b / f"minio-{v['MINIO_VERSION']}",
    )


def ensure_tools() -> Tools:
    """The tools, building whatever is missing first (cached: a warm call takes a second)."""
    tools = find_tools()
    if tools.missing():
        subprocess.run(["bash", str(repo_root() / "e2e" / "tools" / "build.sh")], check=True)
        tools = find_tools()
        if tools.missing():
            raise FileNotFoundError(f"build.sh ran but these are still missing: {tools.missing()}")
    return tools


# The package of e2e/tools/debian-packages.txt that brings each system binary the platform runs, so that a
# missing one is reported with the command that fixes it (a test keeps the two lists consistent).
DEBIAN_PACKAGE_OF = {
    "redis-server": "redis-server",
    "redis-cli": "redis-server",  # redis-tools, a dependency of redis-server
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "postgres": "postgresql",
    "pg_basebackup": "postgresql",
    "psql": "postgresql",
    "java": "openjdk-17-jdk-headless",
    "mvn": "maven",
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "bridge": "containernetworking-plugins",
    "host-local": "containernetworking-plugins",
    "loopback": "containernetworking-plugins",
    "portmap": "containernetworking-plugins",
    "mmdebstrap": "mmdebstrap",
    "buildah": "buildah",
    "umoci": "umoci",
    "skopeo": "skopeo",
    "socat": "socat",
    "iptables": "iptables",
    "ip": "iproute2",
    "conntrack": "conntrack",
    "nsenter": "util-linux",
    "gcc": "gcc",
}


def which(name: str) -> Path:
    """A system binary (Debian packages), also looking where Debian hides PostgreSQL's server tools."""
    found = shutil.which(name)
    if found:
        return Path(found)
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return candidate
    package = DEBIAN_PACKAGE_OF.get(name)
    if package:
        raise FileNotFoundError(
            f"{name} not found: run `sudo apt-get install {package}`, or `make system-deps`"
            " (as root it installs every Debian package the platform needs)"
        )
    raise FileNotFoundError(
        f"{name} not found: install the Debian package that provides it; `make system-deps`"
        " checks those the platform needs (e2e/tools/debian-packages.txt)"
    )
