"""The real node's network: one network namespace per node, joined to the host by a point-to-point link.

Called by :mod:`mlinfra.devenv.realnode`. Everything the node routes stays on this machine:

- the node namespace has no default route: pods reach other pods (the bridge), the node, Service addresses
  (kube-proxy's DNAT) and the host end of the link, nothing else;
- the host gets exactly two routes, both on the link it owns: the link's /30 and the node's pod range (so
  replies to pods that call the API server's forwarder go back over the link, never out of the machine);
- deleting the namespace deletes the link, the bridge, the pods' veths and every iptables rule of the node.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from pathlib import Path

from mlinfra.devenv.nodeconfig import NodeLayout

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
MAX_SLOT = 250


class NetworkError(RuntimeError):
    pass


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def in_netns(netns: str, *argv: str) -> list[str]:
    """argv that runs in the node's network namespace and nothing else: unlike ``ip netns exec``,
    ``nsenter --net`` keeps the host's mount namespace, so the kubelet's volume mounts are the ones
    containerd bind-mounts into containers."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]


def claim_slot(start: int = 1) -> int:
    """The first slot whose namespace could be created (``ip netns add`` is the lock: it fails if another
    node, or the leftover of a killed run, holds the name) and whose host link name is free."""
    for slot in range(start, MAX_SLOT + 1):
        name = f"mlinfra-node-{slot}"
        if (NETNS_DIR / name).exists():
            continue
        if _run("ip", "link", "show", f"mlnode{slot}", check=False).returncode == 0:
            continue
        if _run("ip", "netns", "add", name, check=False).returncode == 0:
            return slot
    raise NetworkError(f"no free node slot in 1..{MAX_SLOT} (leftover namespaces? `ip netns list`)")


def setup(layout: NodeLayout, service_cidr: str) -> None:
    """Wire the namespace that :func:`claim_slot` created."""
    ns, veth = layout.netns, layout.host_veth
    _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _run("ip", "addr", "add", f"{layout.host_ip}/30", "dev", veth)
    _run("ip", "link", "set", veth, "up")
    _run("ip", "-n", ns, "link", "set", "lo", "up")
    _run("ip", "-n", ns, "addr", "add", f"{layout.node_ip}/30", "dev", "eth0")
    _run("ip", "-n", ns, "link", "set", "eth0", "up")
    # Service addresses are only ever DNAT targets, but a local process's packet needs a route before the
    # OUTPUT chain rewrites it: an empty bridge gives them one without a default route (this kernel has no
    # dummy device type).
    _run("ip", "-n", ns, "link", "add", "svc0", "type", "bridge")
    _run("ip", "-n", ns, "link", "set", "svc0", "up")
    _run("ip", "-n", ns, "route", "add", service_cidr, "dev", "svc0")
    _run("ip", "route", "add", layout.pod_cidr, "via", layout.node_ip, "dev", veth)
    for key, value in (
        ("net/ipv4/ip_forward", "1"),
        ("net/bridge/bridge-nf-call-iptables", "1"),
        ("net/ipv4/conf/all/route_localnet", "1"),
    ):
        # /proc/sys/net is per network namespace, as seen by the writer.
        _run(*in_netns(ns, "sh", "-c", f"echo {value} > /proc/sys/{key}"))


def teardown(layout: NodeLayout) -> None:
    """Delete the namespace (and with it the link, the routes, the bridge and the node's iptables)."""
    with contextlib.suppress(NetworkError):
        _run("ip", "link", "del", layout.host_veth, check=False)
        if (NETNS_DIR / layout.netns).exists():
            _run("ip", "netns", "del", layout.netns)


def leftovers(layout: NodeLayout) -> list[str]:
    """What of this node's network still exists (for the leak check)."""
    left = []
    if (NETNS_DIR / layout.netns).exists():
        left.append(f"network namespace {layout.netns}")
    if _run("ip", "link", "show", layout.host_veth, check=False).returncode == 0:
        left.append(f"link {layout.host_veth}")
    if layout.pod_cidr in _run("ip", "route", "show", check=False).stdout:
        left.append(f"route {layout.pod_cidr}")
    return left
