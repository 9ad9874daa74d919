"""Observe a DataStore: the StatefulSet and Pods (managed) and the live server (both modes).

Called by the observing timer and right after a reconcile; the facts it returns go to ``status.compute``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlinfra.api import datastore as api
from mlinfra.engines import names, observation, probe, render
from mlinfra.k8s import objects
from mlinfra.stores import endpoints, status
from mlinfra.stores.reconcile import Applied


def _unreachable(message: str) -> observation.Observation:
    return observation.Observation(reachable=False, error=message)


def facts(body: Mapping[str, Any], ds: api.DataStore, applied: Applied,
          endpoint_map: endpoints.EndpointMap | None = None, timeout: float = 5.0) -> status.Facts:
    ns, name = ds.metadata.namespace or "default", ds.metadata.name
    managed = ds.spec.managed
    conn = applied.conn
    member_names: dict[str, str] = {}
    ready_pods: int | None = None
    pod_names: list[str] = []
    desired = 1
    obs: observation.Observation
    if managed is not None:
        desired = managed.replicas
        sts = objects.get_or_none("StatefulSet", ns, names.statefulset(name))
        ready_pods = int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)
        for pod in objects.list_("Pod", ns, names.selector_labels(ds)):
            pod_name = pod["metadata"]["name"]
            pod_names.append(pod_name)
            ip = (pod.get("status") or {}).get("podIP")
            if ip:
                member_names[ip] = pod_name
                member_names[f"{ip}:{conn.port}"] = pod_name
        if render.PROFILES[ds.spec.engine].primary_only or managed.replicas == 1:
            # The probe reaches the server through the client Service, which selects pod 0 only: the
            # member the engine reports by that address is pod 0.
            member_names[f"{conn.host}:{conn.port}"] = names.pod(name, 0)
        override = (endpoint_map or endpoints.default_map()).lookup(ns, name, conn.port)
        if override is not None:
            member_names.update({addr: pod for pod, addr in override.members.items()})
            member_names.update(override.aliases)
            conn = override.apply(conn)
        if override is not None and override.unserved:
            obs = _unreachable(override.unserved)
        else:
            obs = probe.probe(conn, timeout=timeout)
    else:
        obs = probe.probe(conn, timeout=timeout)
    return status.Facts(
        generation=body["metadata"].get("generation"),
        engine=ds.spec.engine,
        mode="managed" if managed is not None else "external",
        endpoint=applied.endpoint,
        connection_secret=applied.connection_secret,
        desired_replicas=desired,
        ready_pods=ready_pods,
        pod_names=sorted(pod_names),
        observation=obs,
        member_names=member_names,
    )
