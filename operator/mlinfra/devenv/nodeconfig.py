"""Pure builders of the real node's configuration files: containerd, CNI, kubelet, kube-proxy, CoreDNS.

Called by :mod:`mlinfra.devenv.realnode`, which writes what these return and starts the processes. Every
address and path comes in through :class:`NodeLayout`, so two nodes on one machine (a demo and a test run)
never share a socket, a directory, a cgroup or an address.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CLUSTER_DOMAIN = "cluster.local"
# The second address of the control plane's Service range (the first is the "kubernetes" Service).
CLUSTER_DNS_IP = "10.0.0.10"


@dataclass(frozen=True)
class NodeLayout:
    """Names, addresses and directories of one real node.

    ``slot`` (1-250) makes the node's network unique on this machine: the network namespace
    ``mlinfra-node-<slot>``, the point-to-point link 10.89.<slot>.0/30 between the host (.1) and the node
    (.2), the pod range 10.88.<slot>.0/24 and the cgroup root ``/mlinfra-node-<slot>``.
    """

    name: str
    slot: int
    workdir: Path

    @property
    def netns(self) -> str:
        return f"mlinfra-node-{self.slot}"

    @property
    def host_veth(self) -> str:
        return f"mlnode{self.slot}"

    @property
    def host_ip(self) -> str:
        return f"10.89.{self.slot}.1"

    @property
    def node_ip(self) -> str:
        return f"10.89.{self.slot}.2"

    @property
    def link_cidr(self) -> str:
        return f"10.89.{self.slot}.0/30"

    @property
    def pod_cidr(self) -> str:
        return f"10.88.{self.slot}.0/24"

    @property
    def pod_gateway(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr)[1])

    @property
    def cgroup_root(self) -> str:
        return f"/mlinfra-node-{self.slot}"

    @property
    def containerd_dir(self) -> Path:
        return self.workdir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.workdir / "cni" / "net.d"

    @property
    def kubelet_dir(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def pod_logs_dir(self) -> Path:
        return self.workdir / "pod-logs"

    @property
    def volumes_dir(self) -> Path:
        return self.workdir / "volumes"


def containerd_config(layout: NodeLayout, sandbox_image: str, cni_bin_dir: str = "/usr/lib/cni") -> str:
    """containerd 1.6 (config version 2) with its own root, state and socket."""
    d = layout.containerd_dir
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f'root = "{d / "root"}"',
        f'state = "{d / "state"}"',
        # The node's own cgroup root keeps containerd's own cgroup out of other nodes' way.
        "[grpc]",
        f'  address = "{layout.containerd_socket}"',
        "[ttrpc]",
        f'  address = "{layout.containerd_socket}.ttrpc"',
        "[metrics]",
        '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{d / "opt"}"',
        f"[{cri}]",
        f'  sandbox_image = "{sandbox_image}"',
        # This VM forbids a negative oom_score_adj; pod sandboxes ask for -998 and runc then fails with
        # "can't get final child's PID from pipe: EOF". Clamping to the current value is what makes pods start.
        "  restrict_oom_score_adj = true",
        # Pod network namespaces under the node's state dir, not /var/run/netns, so the node's cleanup finds
        # exactly its own.
        "  netns_mounts_under_state_dir = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "  enable_selinux = false",
        "  disable_apparmor = true",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"[{cri}.cni]",
        f'  bin_dir = "{cni_bin_dir}"',
        f'  conf_dir = "{layout.cni_conf_dir}"',
        "  max_conf_num = 1",
    ]
    return "\n".join(lines) + "\n"


def cni_config(layout: NodeLayout) -> dict[str, Any]:
    """A bridge network over the node's pod range. No masquerade: nothing is routed off the node."""
    return {
        "cniVersion": "0.4.0",
        "name": "mlinfra-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                # A pod reaching its own Service address is DNATed back to itself through the bridge.
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": layout.pod_cidr, "gateway": layout.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.workdir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(layout: NodeLayout, client_ca: Path, resolv_conf: Path) -> dict[str, Any]:
    """KubeletConfiguration for a cgroup-v1 VM with no swap accounting and a shared, loaded disk."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This machine has cgroup v1 only; kubelet 1.35 refuses it unless told (KEP-5573).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": layout.cgroup_root,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "address": layout.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [CLUSTER_DNS_IP],
        # Pods get no search domains or resolvers of the host: only cluster DNS, which forwards nothing.
        "resolvConf": str(resolv_conf),
        "podLogsDir": str(layout.pod_logs_dir),
        "failSwapOn": False,
        "maxPods": 60,
        "serializeImagePulls": False,
        # Images are imported, never pulled: never garbage-collect them, whatever the disk says.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # The disk is shared with builds and other test servers: evict only when it is really gone.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "evictionPressureTransitionPeriod": "10s",
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        "localStorageCapacityIsolation": True,
        "nodeStatusReportFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
        "enableControllerAttachDetach": True,
    }


def kube_proxy_config(layout: NodeLayout, kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": layout.pod_cidr,
        "bindAddress": layout.node_ip,
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        # conntrack limits are global to the machine, not the namespace: leave them as they are.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "nodePortAddresses": [f"{layout.node_ip}/32"],
    }


def corefile(kubeconfig: Path) -> str:
    """Cluster DNS only. Names outside the cluster get NXDOMAIN: no forward plugin exists in our build,
    so no query can leave the node."""
    return "\n".join(
        [
            f"{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{",
            "    errors",
            "    ready 127.0.0.1:8181",
            "    health 127.0.0.1:8080",
            f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{",
            f"        kubeconfig {kubeconfig}",
            "        pods insecure",
            "        ttl 5",
            "    }",
            "    cache 5",
            "    loadbalance",
            "}",
            ".:53 {",
            "    errors",
            "    template ANY ANY {",
            "        rcode NXDOMAIN",
            "    }",
            "}",
            "",
        ]
    )


def coredns_rbac(user: str) -> list[dict[str, Any]]:
    """What CoreDNS's kubernetes plugin reads, granted to the user of its client certificate."""
    role = "mlinfra:coredns"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    ]


def host_service(
    namespace: str, name: str, ip: str, ports: list[tuple[str, str, int]], cluster_ip: str | None = None
) -> list[dict[str, Any]]:
    """A selector-less Service and its EndpointSlice for a process that runs on the node, not in a Pod
    (cluster DNS, the API server's forwarder). ``ports``: (name, protocol, port)."""
    objs: list[dict[str, Any]] = []
    if cluster_ip is not None:
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": {"k8s-app": name}},
                "spec": {
                    "clusterIP": cluster_ip,
                    "ports": [{"name": n, "protocol": p, "port": port, "targetPort": port} for n, p, port in ports],
                },
            }
        )
    objs.append(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-mlinfra-node",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "mlinfra-devenv",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in ports],
        }
    )
    return objs


def kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> str:
    """A kubeconfig reaching the API server through the node's forwarder. The forwarder's address is not
    in the serving certificate: the name checked is ``localhost``, which is."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "mlinfra-local",
                    "cluster": {"server": server, "certificate-authority": str(ca), "tls-server-name": "localhost"},
                }
            ],
            "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "mlinfra-local", "context": {"cluster": "mlinfra-local", "user": user}}],
            "current-context": "mlinfra-local",
        }
    )


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"
