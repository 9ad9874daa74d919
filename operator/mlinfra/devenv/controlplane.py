"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler, kwok.

kwok plays the kubelets of the fake nodes: its Stages make their Pods Running/Ready, Job Pods Succeeded and PVCs
Bound (default StorageClass ``kwok-volume``). Nothing runs inside those Pods; the data plane is served by
the real local databases of this package.
"""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mlinfra.devenv import pki as pki_mod
from mlinfra.devenv import procs, tools

log = logging.getLogger(__name__)

SERVICE_CIDR = "10.0.0.0/24"
STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {
        "name": "kwok-volume",
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    },
    "provisioner": "kwok.x-k8s.io/volume",
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call; unlike CalledProcessError its message carries kubectl's stderr."""

    def __str__(self) -> str:
        return f"kubectl {' '.join(map(str, self.cmd[2:]))} failed ({self.returncode}): {self.stderr.strip()}"


def _kubeconfig(server: str, ca: Path, client: pki_mod.CertPair, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mlinfra-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(client.cert), "client-key": str(client.key)}}],
        "contexts": [{"name": "mlinfra-local", "context": {"cluster": "mlinfra-local", "user": user}}],
        "current-context": "mlinfra-local",
    }


def fake_node(name: str, zone: str) -> dict[str, Any]:
    capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # kwok manages the nodes with this annotation; no fake taint, so Pods need no toleration.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "topology.kubernetes.io/zone": zone,
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


class ControlPlane:
    """Starts the control plane in ``start()``, stops every process in ``stop()`` (also a context manager).

    ``kubeconfig`` is an admin (system:masters) kubeconfig; ``kubectl()`` runs the pinned kubectl with it.
    """

    def __init__(self, workdir: Path | None = None, nodes: int = 3) -> None:
        """``nodes``: how many kwok (fake) nodes; 0 starts no kwok, for a platform of real nodes."""
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mlinfra-cp-"))
        self.nodes = nodes
        self.tools = tools.ensure_tools()
        self._stack = procs.ProcStack()
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.server = ""
        self.ca = self.workdir / "pki" / "ca.crt"

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        log.info("control plane ready in %.1fs: %s", time.monotonic() - started, self.server)
        return self

    def stop(self) -> None:
        self._stack.close()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def processes(self) -> list[procs.Proc]:
        return list(self._stack.procs)

    # -- internals ------------------------------------------------------------------------------------
    def _start(self) -> None:
        t, w = self.tools, self.workdir
        logs = w / "logs"
        pki = pki_mod.create_pki(
            w / "pki",
            {
                "admin": ("mlinfra-admin", "system:masters"),
                "controller-manager": ("system:kube-controller-manager", None),
                "scheduler": ("system:kube-scheduler", None),
                # The API server's identity towards kubelets (logs, exec): kubelets reject anonymous calls.
                "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
            },
        )

        etcd_port, etcd_peer = procs.free_port(), procs.free_port()
        etcd = self._stack.add(
            procs.Proc(
                "etcd",
                [
                    str(t.etcd),
                    "--name=default",
                    f"--data-dir={w / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                    f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                    "--unsafe-no-fsync",  # test data only: fsync dominates etcd latency on small disks
                    "--log-level=warn",
                ],
                logs / "etcd.log",
            )
        )
        procs.wait_until("etcd", lambda: procs.port_open(etcd_port), 60, etcd)

        api_port = procs.free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        apiserver = self._stack.add(
            procs.Proc(
                "kube-apiserver",
                [
                    str(t.kube_apiserver),
                    f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={api_port}",
                    f"--tls-cert-file={pki.serving.cert}",
                    f"--tls-private-key-file={pki.serving.key}",
                    f"--client-ca-file={pki.ca.cert}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki.sa_pub}",
                    f"--service-account-signing-key-file={pki.sa_key}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--authorization-mode=Node,RBAC",
                    # A real node's kubelet may change only its own Node and the Pods bound to it.
                    "--enable-admission-plugins=NodeRestriction",
                    f"--kubelet-client-certificate={pki.clients['apiserver-kubelet-client'].cert}",
                    f"--kubelet-client-key={pki.clients['apiserver-kubelet-client'].key}",
                    "--kubelet-preferred-address-types=InternalIP",
                    "--allow-privileged=true",
                    # No kubelets and no kube-proxy: the "kubernetes" Service endpoints are not reconciled.
                    "--endpoint-reconciler-type=none",
                    "--profiling=false",
                ],
                logs / "kube-apiserver.log",
            )
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        procs.wait_until("kube-apiserver /readyz", lambda: self._readyz(ctx), 120, apiserver)

        configs = {}
        for name in ("admin", "controller-manager", "scheduler"):
            path = w / f"{name}.kubeconfig"
            path.write_text(yaml.safe_dump(_kubeconfig(self.server, pki.ca.cert, pki.clients[name], name)))
            configs[name] = path
        self.kubeconfig = configs["admin"]

        kcm = configs["controller-manager"]
        self._stack.add(
            procs.Proc(
                "kube-controller-manager",
                [
                    str(t.kube_controller_manager),
                    f"--kubeconfig={kcm}",
                    f"--authentication-kubeconfig={kcm}",
                    f"--authorization-kubeconfig={kcm}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={procs.free_port()}",
                    "--leader-elect=false",
                    f"--root-ca-file={pki.ca.cert}",
                    f"--service-account-private-key-file={pki.sa_key}",
                    "--use-service-account-credentials=true",
                    # kwok renews the fake nodes' leases; on a loaded 2-core machine a renewal can come late, and
                    # the default 50 s grace would mark nodes NotReady and every pod on them unready for good.
                    "--node-monitor-grace-period=5m",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    f"--cluster-signing-cert-file={pki.ca.cert}",
                    f"--cluster-signing-key-file={pki.ca.key}",
                ],
                logs / "kube-controller-manager.log",
            )
        )

        sched = configs["scheduler"]
        self._stack.add(
            procs.Proc(
                "kube-scheduler",
                [
                    str(t.kube_scheduler),
                    f"--kubeconfig={sched}",
                    f"--authentication-kubeconfig={sched}",
                    f"--authorization-kubeconfig={sched}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={procs.free_port()}",
                    "--leader-elect=false",
                ],
                logs / "kube-scheduler.log",
            )
        )

        if self.nodes == 0:  # a platform of real nodes only (mlinfra.devenv.realnode)
            self._wait_for_default_service_account()
            return
        self._stack.add(
            procs.Proc(
                "kwok",
                [
                    str(t.kwok),
                    f"--kubeconfig={self.kubeconfig}",
                    # Only its own fake nodes: on a real node kwok would fake the status of Pods that really run.
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    f"--config={t.kwok_stages}",
                    "--node-ip=127.0.0.1",
                    "--cidr=10.244.0.0/16",
                    # Renew the fake nodes' Leases, as kubelets do: kwok's heartbeat stage patches node status only
                    # every 10-20 minutes, assuming leases. Without them the node controller marks every node NotReady
                    # once the grace period passes, and with it every pod NotReady for good (kwok's pod-ready stage
                    # does not run again).
                    "--node-lease-duration-seconds=40",
                ],
                logs / "kwok.log",
            )
        )

        self.apply([STORAGE_CLASS] + [fake_node(f"kwok-node-{i}", f"zone-{'abc'[i % 3]}") for i in range(self.nodes)])
        self.wait_for("nodes Ready", self._nodes_ready, 120)
        self._wait_for_default_service_account()

    def _wait_for_default_service_account(self) -> None:
        # Pods can only be created once the ServiceAccount controller has made "default/default".
        self.wait_for(
            "the default ServiceAccount",
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            60,
        )

    def _readyz(self, ctx: ssl.SSLContext) -> bool:
        with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=2) as r:  # noqa: S310
            return bool(r.status == 200)

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        items = json.loads(out.stdout)["items"]
        ready = [
            n
            for n in items
            for c in n.get("status", {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        ]
        return len(ready) >= self.nodes

    # -- helpers for tests and the CLI ----------------------------------------------------------------
    def wait_for(self, what: str, check: Any, timeout: float) -> None:
        procs.wait_until(what, check, timeout)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster; raises with stderr when ``check`` fails."""
        result = subprocess.run(
            [str(self.tools.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def apply(self, objects: Sequence[dict[str, Any]], field_manager: str = "mlinfra-devenv") -> None:
        """Server-side apply a list of objects."""
        self.kubectl(
            "apply", "--server-side", f"--field-manager={field_manager}", "-f", "-", input=yaml.safe_dump_all(objects)
        )

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}
