"""Each member of a managed store, reached on its own rather than through the client Service.

What must exist on every member because the engine does not replicate it — a Redis ACL user lives only on the
server it was made on — and the failover's look at every pod both need the members' own addresses: the pod's
IP (the operator connects there), the name its peers know it by (``<pod>.<name>-hl.<ns>.svc``), or, in
development, the local server that stands for the pod (``MLINFRA_ENDPOINT_MAP``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlinfra.context import Context
from mlinfra.engines import connection, names


@dataclass(frozen=True)
class Address:
    host: str  # where the operator connects
    port: int
    peer: tuple[str, int]  # the host and port the other members know it by (a replica names its primary so)


def addresses(
    ctx: Context, namespace: str, name: str, port: int, pods: Mapping[str, Mapping[str, Any]]
) -> dict[str, Address]:
    """The address of every pod of ``pods`` that has one (a pod without an IP yet is left out)."""
    override = ctx.endpoints.lookup(namespace, name, port)  # development only: local servers stand for the pods
    headless = f"{names.headless_service(name)}.{namespace}.svc"
    found: dict[str, Address] = {}
    for pod_name, pod in pods.items():
        if override is not None and pod_name in override.members:
            host, member_port = connection.split_endpoint(override.members[pod_name], port)
            found[pod_name] = Address(host, member_port, (host, member_port))
            continue
        ip = (pod.get("status") or {}).get("podIP")
        if ip:
            found[pod_name] = Address(str(ip), port, (f"{pod_name}.{headless}", port))
    return found


def connections(
    ctx: Context, namespace: str, name: str, engine: str, conn: connection.ConnectionInfo
) -> dict[str, connection.ConnectionInfo]:
    """``conn`` (the store's connection) pointed at each of its members, by pod name; empty for a store the
    operator does not run (no pods of its own)."""
    pods = {p["metadata"]["name"]: p for p in ctx.kube.list_("Pod", namespace, names.pod_selector(engine, name))}
    return {
        pod_name: conn.with_endpoint(a.host, a.port)
        for pod_name, a in addresses(ctx, namespace, name, conn.port, pods).items()
    }
