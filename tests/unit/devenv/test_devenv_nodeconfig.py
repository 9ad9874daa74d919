"""The real node's configuration builders: each node gets its own addresses, directories and cgroups, and
nothing in them lets traffic or DNS queries leave the machine."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mlinfra.devenv import nodeconfig
from mlinfra.devenv.nodeconfig import NodeLayout


def layout(slot: int = 7) -> NodeLayout:
    return NodeLayout("real-node", slot, Path(f"/tmp/n{slot}"))


def test_two_slots_share_no_address_directory_or_cgroup() -> None:
    a, b = layout(1), layout(2)
    for attr in ("netns", "host_veth", "host_ip", "node_ip", "pod_cidr", "cgroup_root", "containerd_socket"):
        assert getattr(a, attr) != getattr(b, attr), attr
    assert not ipaddress.ip_network(a.pod_cidr).overlaps(ipaddress.ip_network(b.pod_cidr))
    # The link is a point-to-point /30 holding exactly the host and node ends.
    link = ipaddress.ip_network(a.link_cidr)
    assert [str(h) for h in link.hosts()] == [a.host_ip, a.node_ip]
    assert ipaddress.ip_address(a.pod_gateway) in ipaddress.ip_network(a.pod_cidr)
    assert len(a.host_veth) <= 15  # the kernel's limit on interface names


@pytest.mark.parametrize("slot", [1, 250])
def test_the_containerd_socket_fits_a_unix_socket_path(slot: int) -> None:
    long = NodeLayout("n", slot, Path("/tmp/pytest-of-root/pytest-1234/devenv0/real-node"))
    assert len(f"{long.containerd_socket}.ttrpc") < 108


def test_containerd_clamps_oom_score_and_keeps_its_state_in_the_node_dir() -> None:
    text = nodeconfig.containerd_config(layout(), "localhost/mlinfra/pause:x")
    assert "restrict_oom_score_adj = true" in text
    assert 'sandbox_image = "localhost/mlinfra/pause:x"' in text
    assert "netns_mounts_under_state_dir = true" in text
    assert "/var/lib/containerd" not in text and "/run/containerd" not in text
    assert f'conf_dir = "{layout().cni_conf_dir}"' in text


def test_pods_are_bridged_without_masquerade() -> None:
    bridge = nodeconfig.cni_config(layout())["plugins"][0]
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"][0][0]["subnet"] == layout().pod_cidr


def test_kubelet_on_cgroup_v1_with_its_own_cgroup_root_and_cluster_dns_only() -> None:
    cfg = nodeconfig.kubelet_config(layout(), Path("/ca.crt"), Path("/empty-resolv.conf"))
    assert cfg["failCgroupV1"] is False and cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["cgroupRoot"] == layout().cgroup_root
    assert cfg["clusterDNS"] == [nodeconfig.CLUSTER_DNS_IP]
    assert cfg["resolvConf"] == "/empty-resolv.conf"
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["authorization"]["mode"] == "Webhook"
    assert cfg["imageGCHighThresholdPercent"] == 100  # imported images can never be pulled back


def test_coredns_serves_the_cluster_and_forwards_nothing() -> None:
    text = nodeconfig.corefile(Path("/kc"))
    assert "forward" not in text and "proxy" not in text
    assert "kubernetes cluster.local" in text
    assert "rcode NXDOMAIN" in text


def test_host_service_slices_name_the_host_process() -> None:
    objs = nodeconfig.host_service(
        "kube-system", "kube-dns", "10.89.7.2", [("dns", "UDP", 53)], cluster_ip=nodeconfig.CLUSTER_DNS_IP
    )
    svc, eps = objs
    assert "selector" not in svc["spec"] and svc["spec"]["clusterIP"] == "10.0.0.10"
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "kube-dns"
    assert eps["endpoints"][0]["addresses"] == ["10.89.7.2"]
    only_slice = nodeconfig.host_service("default", "kubernetes", "10.89.7.1", [("https", "TCP", 6443)])
    assert [o["kind"] for o in only_slice] == ["EndpointSlice"]  # the API server owns that Service
