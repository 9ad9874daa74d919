"""A real Kubernetes node beside the local control plane: Pods that really run.

kubelet and kube-proxy (from the pinned Kubernetes module), containerd + runc + the CNI plugins (Debian),
cluster DNS (CoreDNS, our own build) and a host-path volume provisioner, all inside a network namespace this
module creates (:mod:`mlinfra.devenv.netns`). Images are imported, never pulled
(:mod:`mlinfra.devenv.images`). Used by the ``real`` test tier and by ``make demo``.

How the pieces reach each other:

- kubelet, kube-proxy and CoreDNS reach the API server (bound to the host's 127.0.0.1) through a socat
  forwarder listening on the host end of the node's link; Pods reach it the same way, as the
  ``kubernetes`` Service, whose EndpointSlice names that forwarder.
- the API server reaches the kubelet (``kubectl logs/exec``) at the node's address over the link, with its
  kubelet client certificate; the kubelet authenticates as ``system:node:<name>`` (Node authorizer,
  NodeRestriction).
- cluster DNS is the ``kube-dns`` Service (10.0.0.10), whose EndpointSlice names CoreDNS on the node.

``stop()`` stops the kubelet, kills every container and shim of this containerd, unmounts everything under
the node's directory, deletes the network namespace and the node's cgroups; ``leftovers()`` lists whatever
survived, for the leak check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mlinfra.devenv import images as images_mod
from mlinfra.devenv import mounts, netns, nodeconfig, pki, procs
from mlinfra.devenv.controlplane import SERVICE_CIDR, ControlPlane
from mlinfra.devenv.nodeconfig import NodeLayout

log = logging.getLogger(__name__)

FORWARD_PORT = 6443
STORAGE_CLASS = "real-local"
NODE_IMAGES = ("pause", "redis", "postgres", "python", "neo4j", "operator")
_CGROUP_FS = Path("/sys/fs/cgroup")

# Layouts of nodes started by this interpreter, for the session's leak check.
STARTED: list[NodeLayout] = []


class RealNode:
    """One real node joined to ``control_plane``. ``start()``/``stop()``, or a context manager."""

    def __init__(
        self, control_plane: ControlPlane, workdir: Path, name: str = "real-node", images: tuple[str, ...] = NODE_IMAGES
    ) -> None:
        self.cp = control_plane
        self.workdir = workdir
        self.name = name
        self.image_names = images
        self.images: dict[str, images_mod.Image] = {}
        self.layout: NodeLayout | None = None
        self._stack = procs.ProcStack()
        self._containerd: procs.Proc | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> RealNode:
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "real node %s ready in %.1fs (%s)",
            self.name,
            time.monotonic() - started,
            self.layout.node_ip if self.layout else "?",
        )
        return self

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def node_ip(self) -> str:
        assert self.layout is not None
        return self.layout.node_ip

    def image(self, name: str) -> str:
        """The reference of a locally built image, as Pods must name it."""
        return self.images[name].ref

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        assert self.layout is not None
        return subprocess.run(
            ["ctr", "-a", str(self.layout.containerd_socket), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # -- start ----------------------------------------------------------------------------------------
    def _start(self) -> None:
        if os.geteuid() != 0:
            raise procs.StartupError(
                "the real node needs root (network namespaces, containerd, mounts, cgroups): "
                "run the real tier and `make demo` as root"
            )
        t = self.cp.tools
        self.images = images_mod.build_images(list(self.image_names), progress=log.info)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for what in reap_stale():
            log.warning("removed the leftover of a node whose run was killed: %s", what)
        slot = netns.claim_slot()
        layout = self.layout = NodeLayout(self.name, slot, self.workdir)
        STARTED.append(layout)
        self._stack.callback(self._cleanup)
        netns.setup(layout, SERVICE_CIDR)
        ns = layout.netns
        logs = self.workdir / "logs"
        certs = self.workdir / "pki"
        certs.mkdir(parents=True, exist_ok=True)
        ca_dir = self.cp.ca.parent

        # The API server for everything on the node: a forwarder on the host end of the link.
        api_port = self.cp.server.rsplit(":", 1)[1]
        self._stack.add(
            procs.Proc(
                "apiserver-forwarder",
                [
                    "socat",
                    f"TCP-LISTEN:{FORWARD_PORT},bind={layout.host_ip},fork,reuseaddr",
                    f"TCP:127.0.0.1:{api_port}",
                ],
                logs / "forwarder.log",
            )
        )
        server = f"https://{layout.host_ip}:{FORWARD_PORT}"
        procs.wait_until("the API server forwarder", lambda: procs.port_open(FORWARD_PORT, layout.host_ip), 30)

        def client_config(stem: str, cn: str, org: str | None) -> Path:
            pair = pki.issue_client(ca_dir, f"{self.name}-{stem}", cn, org)
            path = certs / f"{stem}.kubeconfig"
            path.write_text(nodeconfig.kubeconfig(server, self.cp.ca, pair.cert, pair.key, cn))
            return path

        kubelet_kc = client_config("kubelet", f"system:node:{self.name}", "system:nodes")
        proxy_kc = client_config("kube-proxy", "system:kube-proxy", None)
        dns_kc = client_config("coredns", "mlinfra:coredns", None)
        self.cp.apply(nodeconfig.coredns_rbac("mlinfra:coredns"))
        self.cp.apply(
            nodeconfig.host_service("default", "kubernetes", layout.host_ip, [("https", "TCP", FORWARD_PORT)])
        )
        self.cp.kubectl("create", "namespace", "kube-system", check=False)
        self.cp.apply(
            nodeconfig.host_service(
                "kube-system",
                "kube-dns",
                layout.node_ip,
                [("dns", "UDP", 53), ("dns-tcp", "TCP", 53)],
                cluster_ip=nodeconfig.CLUSTER_DNS_IP,
            )
        )

        for ctl in _cgroup_controllers():
            (ctl / layout.cgroup_root.lstrip("/")).mkdir(exist_ok=True)

        # containerd, then the images it will run.
        layout.containerd_dir.mkdir(parents=True, exist_ok=True)
        layout.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (layout.cni_conf_dir / "10-mlinfra.conflist").write_text(nodeconfig.to_json(nodeconfig.cni_config(layout)))
        cfg = self.workdir / "containerd.toml"
        cfg.write_text(nodeconfig.containerd_config(layout, self.image("pause")))
        self._containerd = self._stack.add(
            procs.Proc(
                "containerd",
                netns.in_netns(ns, "containerd", f"--config={cfg}", "--log-level=warn"),
                logs / "containerd.log",
            )
        )
        procs.wait_until("containerd", lambda: self.ctr("version", timeout=10).returncode == 0, 60, self._containerd)
        for image in self.images.values():
            log.info("importing %s into the node's containerd", image.ref)
            result = self.ctr("images", "import", "--no-unpack", str(image.archive))
            if result.returncode != 0:
                raise procs.StartupError(f"ctr images import {image.archive} failed: {result.stderr.strip()}")

        # kubelet: registers the Node, runs Pods.
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("")
        kcfg = self.workdir / "kubelet.yaml"
        kcfg.write_text(yaml.safe_dump(nodeconfig.kubelet_config(layout, self.cp.ca, resolv)))
        kubelet = self._stack.add(
            procs.Proc(
                "kubelet",
                netns.in_netns(
                    ns,
                    str(t.kubelet),
                    f"--config={kcfg}",
                    f"--kubeconfig={kubelet_kc}",
                    f"--root-dir={layout.kubelet_dir}",
                    f"--cert-dir={certs / 'kubelet-serving'}",
                    f"--hostname-override={self.name}",
                    f"--node-ip={layout.node_ip}",
                    "--node-labels=mlinfra.io/node-kind=real",
                    "--v=1",
                ),
                logs / "kubelet.log",
            )
        )

        proxy_cfg = self._write_yaml("kube-proxy.yaml", nodeconfig.kube_proxy_config(layout, proxy_kc))
        self._stack.add(
            procs.Proc(
                "kube-proxy",
                netns.in_netns(
                    ns, str(t.kube_proxy), f"--config={proxy_cfg}", f"--hostname-override={self.name}", "--v=1"
                ),
                logs / "kube-proxy.log",
            )
        )

        corefile = self.workdir / "Corefile"
        corefile.write_text(nodeconfig.corefile(dns_kc))
        coredns = self._stack.add(
            procs.Proc("coredns", netns.in_netns(ns, str(t.coredns), "-conf", str(corefile)), logs / "coredns.log")
        )

        self.cp.apply([_storage_class()])
        self._stack.add(
            procs.Proc(
                "volume-provisioner",
                [
                    sys.executable,
                    "-m",
                    "mlinfra.devenv.provisioner",
                    f"--kubeconfig={self.cp.kubeconfig}",
                    f"--root={layout.volumes_dir}",
                    f"--node={self.name}",
                    f"--storage-class={STORAGE_CLASS}",
                ],
                logs / "provisioner.log",
            )
        )

        procs.wait_until(f"node {self.name} Ready", self._ready, 180, kubelet)
        probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8181/ready', timeout=2)"
        procs.wait_until("CoreDNS ready", lambda: self._in_node(sys.executable, "-c", probe), 60, coredns)

    def _write_yaml(self, name: str, obj: dict[str, Any]) -> Path:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(obj))
        return path

    def _in_node(self, *argv: str) -> bool:
        assert self.layout is not None
        return subprocess.run(netns.in_netns(self.layout.netns, *argv), capture_output=True, timeout=10).returncode == 0

    def _ready(self) -> bool:
        out = self.cp.kubectl("get", "node", self.name, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # -- stop -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stack.close()

    def _cleanup(self) -> None:
        """Runs after every process of the stack was stopped (callbacks run last)."""
        if self.layout is None:
            return
        self._kill_containers()
        mounts.unmount_under(self.workdir)
        netns.teardown(self.layout)
        _remove_cgroups(self.layout.cgroup_root)

    def _kill_containers(self) -> None:
        """Container processes and their shims outlive containerd (shims daemonize): find them by the
        socket this node's containerd gave them and kill them, children first."""
        assert self.layout is not None
        for pid in _shims(str(self.layout.containerd_socket)):
            for child in procs.descendants(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _shims(str(self.layout.containerd_socket)) and time.monotonic() < deadline:
            time.sleep(0.1)

    def leftovers(self) -> list[str]:
        return leftovers(self.layout) if self.layout else []


def leftovers(layout: NodeLayout) -> list[str]:
    """Whatever of a stopped node still exists: shims and containers, mounts, network, cgroups."""
    left = [f"shim pid {pid}" for pid in _shims(str(layout.containerd_socket))]
    left += [f"mount {m}" for m in mounts.under(layout.workdir)]
    left += netns.leftovers(layout)
    left += [f"cgroup {d}" for d in _cgroup_dirs(layout.cgroup_root)]
    return left


def _net_members(inode: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "ns" / "net").stat().st_ino == inode:
                    members.append(int(entry.name))
    return members


def reap_stale(min_age: float = 120.0) -> list[str]:
    """Remove what a killed run left of its node (pytest killed by a signal runs no teardown): a node
    namespace in which only containerd shims live — its kubelet and containerd are gone — and that is older
    than ``min_age`` (a node being set up has no processes for a moment). Its shims and their containers
    are killed, its mounts unmounted, its namespace, link and cgroups deleted."""
    reaped = []
    for path in sorted(netns.NETNS_DIR.glob("mlinfra-node-*")):
        with contextlib.suppress(OSError, ValueError):
            if time.time() - path.stat().st_mtime < min_age:
                continue
            slot = int(path.name.rsplit("-", 1)[1])
            members = _net_members(path.stat().st_ino)
            argvs = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in members}
            if any(b"containerd-shim" not in argv[0] for argv in argvs.values()):
                continue  # a live node
            sockets = {argv[argv.index(b"-address") + 1].decode() for argv in argvs.values() if b"-address" in argv}
            for pid in members:
                for child in procs.descendants(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # The socket is <node workdir>/containerd/containerd.sock.
            workdirs = {Path(sock).parent.parent for sock in sockets}
            for workdir in workdirs:
                mounts.unmount_under(workdir)
            layout = NodeLayout("stale", slot, next(iter(workdirs), Path("/nonexistent")))
            netns.teardown(layout)
            _remove_cgroups(layout.cgroup_root)
            reaped.append(f"{path.name} ({len(members)} shims, {', '.join(map(str, workdirs)) or 'no workdir'})")
    return reaped


def _storage_class() -> dict[str, Any]:
    from mlinfra.devenv.provisioner import storage_class

    return storage_class(STORAGE_CLASS, default=True)


def _cgroup_controllers() -> list[Path]:
    """The cgroup v1 hierarchies (cpu, memory, ...), not the empty unified mount."""
    return [
        p
        for p in _CGROUP_FS.iterdir()
        if p.is_dir() and not p.is_symlink() and p.name != "unified" and (p / "cgroup.procs").exists()
    ]


def _cgroup_dirs(root: str) -> list[Path]:
    return [ctl / root.lstrip("/") for ctl in _cgroup_controllers() if (ctl / root.lstrip("/")).exists()]


def _remove_cgroups(root: str) -> None:
    for top in _cgroup_dirs(root):
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _shims(socket: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv and b"containerd-shim" in argv[0] and socket.encode() in argv:
                found.append(int(entry.name))
    return found
