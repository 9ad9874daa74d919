"""Observe a DataStore: the StatefulSet and Pods (managed) and the live server (both modes).

Called by the observing timer and right after a reconcile: reads the published connection, builds the
Facts, computes the status (``status.compute``) and records the store's metrics.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Any

from mlinfra import metrics
from mlinfra.api import datastore as api
from mlinfra.context import Context, Obj
from mlinfra.engines import connection, names, observation, probe, render
from mlinfra.k8s import objects
from mlinfra.problems import INVALID_SPEC, SECRET_NOT_FOUND, Problem, ProblemError
from mlinfra.stores import backuprecovery, backupschedule, bootstrap, connsecret, primaryrecord, roles, status

log = logging.getLogger(__name__)

# Redis's answer to SELECT of a database it does not have (it has `databases` of them, 16 by default). The
# schema takes any number: only the server knows how many it has.
REDIS_DB_OUT_OF_RANGE = "DB index is out of range"
# Seconds between looks at a database number the server refused: its `databases` setting may be raised.
REFUSED_DATABASE_RECHECK = 300.0


def _unreachable(message: str) -> observation.Observation:
    return observation.Observation(reachable=False, error=message)


def facts(ctx: Context, obj: Obj[api.DataStore], conn: connection.ConnectionInfo) -> status.Facts:
    """What is observed of the store published as ``conn``."""
    ds = obj.model
    ns, name = obj.namespace, obj.name
    managed = ds.spec.managed
    endpoint = f"{conn.host}:{conn.port}"
    timeout = ctx.settings.probe_timeout
    member_names: dict[str, str] = {}
    ready_pods: int | None = None
    pod_names: list[str] = []
    pods: list[dict[str, Any]] = []
    desired = 1
    obs: observation.Observation
    record = None
    if managed is not None and render.PROFILES[ds.spec.engine].primary_only:
        record = primaryrecord.read(ctx.kube, ns, name)
    if managed is not None:
        desired = managed.replicas
        sts = ctx.kube.get_or_none("StatefulSet", ns, names.statefulset(name))
        ready_pods = int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)
        pods = ctx.kube.list_("Pod", ns, names.selector_labels(ds))
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            pod_names.append(pod_name)
            ip = (pod.get("status") or {}).get("podIP")
            if ip:
                member_names[ip] = pod_name
                member_names[f"{ip}:{conn.port}"] = pod_name
        if render.PROFILES[ds.spec.engine].primary_only or managed.replicas == 1:
            # The probe reaches the server through the client Service, which selects the primary only (the
            # pod the primary record names): the member the engine reports by that address is that pod.
            member_names[f"{conn.host}:{conn.port}"] = record.primary if record else names.pod(name, 0)
        # Development only: a managed store served by local servers (see engines.endpoints).
        override = ctx.endpoints.lookup(ns, name, conn.port)
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
        generation=obj.generation,
        engine=ds.spec.engine,
        mode="managed" if managed is not None else "external",
        endpoint=endpoint,
        connection_secret=names.connection_secret(name),
        desired_replicas=desired,
        ready_pods=ready_pods,
        pod_names=sorted(pod_names),
        observation=obs,
        member_names=member_names,
        role_labels=roles.current(pods) if render.PROFILES[ds.spec.engine].primary_only else {},
        primary=primaryrecord.status_of(record),
    )


def refused_database(ds: api.DataStore, obs: observation.Observation | None) -> Problem | None:
    """An external Redis that refuses ``spec.external.database``: not unreachable (it answered), and only the
    spec (or the server's configuration) can fix it, so Stalled, naming the field. None otherwise."""
    ext = ds.spec.external
    if ds.spec.engine != "redis" or ext is None or obs is None or obs.reachable:
        return None
    if REDIS_DB_OUT_OF_RANGE not in (obs.error or ""):
        return None
    return Problem(
        INVALID_SPEC,
        f"spec.external.database {ext.database!r}: the Redis server at {ext.endpoint} refused it "
        f"({REDIS_DB_OUT_OF_RANGE}): it has fewer databases (its 'databases' setting, 16 by default); "
        "choose a database number the server has",
        stalled=True,
        recheck=REFUSED_DATABASE_RECHECK,
    )


def restore_failed(ctx: Context, obj: Obj[api.DataStore], found: status.Facts) -> Problem | None:
    """A bootstrapped store whose pod 0 is not serving yet: what its restore container said, if it failed."""
    served = found.observation is not None and found.observation.reachable
    if not obj.status.get(bootstrap.FIELD) or served or obj.model.spec.managed is None:
        return None
    pods = ctx.kube.list_("Pod", obj.namespace, names.selector_labels(obj.model))
    return bootstrap.restore_failure(obj.name, pods)


def backups(ctx: Context, obj: Obj[api.DataStore]) -> Mapping[str, Any] | None:
    """The schedule's tick and ``status.backup`` (see stores.backupschedule). A refusal of the API server or a
    missed deadline is logged and the previous ``status.backup`` kept: the store's own status still comes."""
    policy = obj.model.spec.backup
    try:
        summary = backupschedule.tick(ctx.kube, obj.body, policy, datetime.datetime.now(datetime.UTC))
    except (objects.ApiError, TimeoutError) as exc:
        log.warning("backups of DataStore %s/%s: %s", obj.namespace, obj.name, exc)
        return obj.status.get("backup")
    if summary is not None and policy is not None:
        # Every engine: the look prunes the target (leftovers; PostgreSQL's WAL); the recoverability fields
        # it returns are PostgreSQL's only.
        summary = {**summary, **backuprecovery.look(ctx, obj.body, policy, obj.status.get("backup"))}
    return summary


def observe(ctx: Context, obj: Obj[api.DataStore]) -> dict[str, Any]:
    """The DataStore's whole new status, from the published connection, Kubernetes and the live server."""
    backup = backups(ctx, obj)
    conn = connsecret.read_connection(ctx.kube, obj.namespace, obj.name)
    if conn is None:
        # Only after the Secret was deleted by hand (a reconcile publishes it before the first observation):
        # clients cannot connect until the next reconcile (the drift timer) publishes it again.
        secret = names.connection_secret(obj.name)
        raise ProblemError(
            Problem(
                SECRET_NOT_FOUND,
                f"connection Secret {secret!r} not found in namespace "
                f"{obj.namespace!r}: it is published again at the next reconcile",
                stalled=False,
            )
        )
    found = facts(ctx, obj, conn)
    refused = refused_database(obj.model, found.observation) or restore_failed(ctx, obj, found)
    if refused is not None:
        raise ProblemError(refused)
    new = status.compute(dataclasses.replace(found, backup=backup), obj.status)
    if found.role_labels and found.observation is not None and found.observation.reachable:
        try:
            roles.relabel(ctx.kube, obj.namespace, found.role_labels, new.get("members") or [])
        except (objects.ApiError, TimeoutError) as exc:  # the labels wait for the next look; status comes now
            log.warning("role labels of DataStore %s/%s: %s", obj.namespace, obj.name, exc)
    metrics.record_datastore(obj.namespace, obj.name, obj.model.spec.engine, new)
    return new
