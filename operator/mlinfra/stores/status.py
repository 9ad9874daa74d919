"""DataStore status as a pure function of what was observed. Written by the handler only when it changed.

Condition semantics (kstatus): ``Ready`` summarises; ``Reconciling`` is True while the operator is still
converging (pods starting, a referenced Secret missing); ``Stalled`` is True only when nothing will change
without the user fixing the spec; ``Reachable`` says whether the server answers; ``Replicating`` whether
every replica streams from the primary (``NotApplicable`` where the engine or topology has none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mlinfra import problems
from mlinfra.engines import observation as obs
from mlinfra.k8s import conditions, patches
from mlinfra.k8s.conditions import Cond
from mlinfra.problems import READY, Problem

# Reason constants, so that tests, docs and health checks agree on them.
PROVISIONING = "Provisioning"
UNREACHABLE = "Unreachable"
NOT_SERVED_LOCALLY = "NotServedLocally"
CONNECTED = "Connected"
STREAMING = "Streaming"
REPLICA_NOT_STREAMING = "ReplicaNotStreaming"
NOT_APPLICABLE = "NotApplicable"
UNKNOWN = "Unknown"
FAILING_OVER = "FailingOver"


@dataclass(frozen=True)
class Facts:
    generation: int | None
    engine: str
    mode: Literal["managed", "external"] | None
    endpoint: str | None = None
    connection_secret: str | None = None
    problem: Problem | None = None
    desired_replicas: int = 1
    ready_pods: int | None = None  # managed: the StatefulSet's readyReplicas
    pod_names: Sequence[str] = ()
    observation: obs.Observation | None = None
    member_names: Mapping[str, str] = field(default_factory=dict)  # observed address -> pod name
    # Managed redis and postgres: each pod's role label now (stores.roles relabels from the members).
    role_labels: Mapping[str, str | None] = field(default_factory=dict)
    backup: Mapping[str, Any] | None = None  # status.backup (stores.backupschedule), written as it is
    # Managed redis and postgres: the primary record (stores.primaryrecord) as status shows it: currentPrimary,
    # targetPrimary (during a failover), primaryEpoch, lastFailoverTime.
    primary: Mapping[str, Any] | None = None


LAG_BYTES_STEP = 1024


def quantized_lag(lag_bytes: int | None, lag_seconds: float | None) -> dict[str, Any]:
    """Lag as status reports it: bytes in steps of 1 KiB, seconds whole, and no seconds of lag for a
    replica that has every byte. Idle primaries send heartbeats (Redis PINGs its replicas every 10 s), so
    exact figures would flicker by a few bytes and a second at every observation and rewrite the status
    of idle stores; a real backlog is never hidden by this."""
    out: dict[str, Any] = {}
    if lag_bytes is not None:
        out["lagBytes"] = lag_bytes // LAG_BYTES_STEP * LAG_BYTES_STEP
    if lag_seconds is not None:
        out["lagSeconds"] = 0 if out.get("lagBytes") == 0 else round(float(lag_seconds))
    return out


def _members(facts: Facts) -> list[dict[str, Any]]:
    o = facts.observation
    members: list[dict[str, Any]] = []
    seen: set[str] = set()
    for m in o.members if o else []:
        name = facts.member_names.get(m.name, m.name)
        seen.add(name)
        entry: dict[str, Any] = {"name": name, "role": m.role, "ready": m.ready}
        entry.update(quantized_lag(m.lag_bytes, m.lag_seconds))
        members.append(entry)
    # Pods the engine does not (yet) report are members too: not ready.
    members.extend({"name": pod, "role": "unknown", "ready": False} for pod in facts.pod_names if pod not in seen)
    return sorted(members, key=lambda m: (m["role"] != "primary", m["name"]))[:16]


def _replication(facts: Facts, members: list[dict[str, Any]]) -> dict[str, Any]:
    replicas = [m for m in members if m["role"] == "replica"]
    lags_b = [m["lagBytes"] for m in replicas if "lagBytes" in m]
    lags_s = [m["lagSeconds"] for m in replicas if "lagSeconds" in m]
    result: dict[str, Any] = {
        "desiredReplicas": facts.desired_replicas,
        "readyReplicas": sum(1 for m in members if m["ready"]),
    }
    if lags_b:
        result["maxLagBytes"] = max(lags_b)
    if lags_s:
        result["maxLagSeconds"] = max(lags_s)
    return result


def _replicating(facts: Facts, members: list[dict[str, Any]]) -> Cond:
    o = facts.observation
    if facts.engine == "neo4j":
        return Cond("Replicating", "False", NOT_APPLICABLE, "Neo4j Community Edition has no replication")
    if o is None or not o.reachable:
        return Cond("Replicating", "Unknown", UNKNOWN, "the server is not reachable")
    replicas = [m for m in members if m["role"] == "replica"]
    expected = facts.desired_replicas - 1 if facts.mode == "managed" else len(replicas)
    if expected <= 0 and not replicas:
        return Cond("Replicating", "False", NOT_APPLICABLE, "a single member: no replicas to stream to")
    lagging = [m["name"] for m in replicas if not m["ready"]]
    missing = max(0, expected - len(replicas))
    if lagging or missing:
        detail = ", ".join(lagging) or f"{missing} of {expected} replicas not connected"
        return Cond("Replicating", "False", REPLICA_NOT_STREAMING, f"not streaming: {detail}")
    rep = _replication(facts, members)
    lag = ", ".join(
        part
        for part in (
            f"max lag {rep['maxLagBytes']} bytes" if "maxLagBytes" in rep else "",
            f"{rep['maxLagSeconds']}s" if "maxLagSeconds" in rep else "",
        )
        if part
    )
    return Cond("Replicating", "True", STREAMING, f"{len(replicas)} replica(s) streaming" + (f"; {lag}" if lag else ""))


def compute(facts: Facts, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The whole status object; conditions keep their transition times unless their status flipped."""
    prev_conditions = (previous or {}).get("conditions")
    status: dict[str, Any] = {"observedGeneration": facts.generation}
    if facts.mode:
        status["mode"] = facts.mode
    if facts.endpoint:
        status["endpoint"] = facts.endpoint
    if facts.connection_secret:
        status["connectionSecret"] = facts.connection_secret
    if facts.backup is not None:
        status["backup"] = dict(facts.backup)
    # Fixed once by stores.bootstrap before the pods existed; every later status carries it as it is.
    restored = (previous or {}).get("restoredFrom")
    if restored is not None:
        status["restoredFrom"] = restored
    status.update(facts.primary or {})

    conds: list[Cond]
    p = facts.problem
    if p is not None:
        conds = [
            *problems.summary(p),
            Cond("Reachable", "Unknown", p.reason, "not checked until the problem is fixed"),
            Cond("Replicating", "Unknown", p.reason, "not checked until the problem is fixed"),
        ]
        status["conditions"] = conditions.merge(prev_conditions, conds, facts.generation)
        return status

    o = facts.observation
    members = _members(facts)
    if o is not None and o.reachable:
        if o.version:
            status["version"] = o.version
        status["capabilities"] = sorted(set(o.capabilities))[:32]
    if members:
        status["members"] = members
    status["replication"] = _replication(facts, members)

    provisioning = facts.mode == "managed" and (facts.ready_pods or 0) < facts.desired_replicas
    if o is None:
        reachable = Cond("Reachable", "Unknown", UNKNOWN, "not observed yet")
    elif o.reachable:
        reachable = Cond("Reachable", "True", CONNECTED, f"{facts.engine} {o.version or ''}".strip())
    else:
        reachable = Cond("Reachable", "False", UNREACHABLE, o.error or "the server does not answer")
    replicating = _replicating(facts, members)

    reconciling: Cond | None
    target = (facts.primary or {}).get("targetPrimary")
    if target:
        # A failover under way: the old primary is being fenced, the new one not yet promoted. Nobody takes
        # writes meanwhile, and the store says so (Argo CD shows Progressing).
        msg = f"failing over: {(facts.primary or {}).get('currentPrimary')} is fenced before {target} is promoted"
        ready = Cond("Ready", "False", FAILING_OVER, msg)
        reconciling = Cond("Reconciling", "True", FAILING_OVER, msg)
    elif provisioning:
        msg = f"{facts.ready_pods or 0}/{facts.desired_replicas} members ready"
        ready = Cond("Ready", "False", PROVISIONING, msg)
        reconciling = Cond("Reconciling", "True", PROVISIONING, msg)
    elif o is not None and o.reachable:
        ready = Cond("Ready", "True", READY, f"{facts.engine} {o.version or ''} reachable at {facts.endpoint}".strip())
        reconciling = None
    else:
        ready = Cond("Ready", "False", reachable.reason, reachable.message)
        reconciling = Cond("Reconciling", "False", reachable.reason, "")
    conds = [*problems.settled(ready, reconciling), reachable, replicating]
    status["conditions"] = conditions.merge(prev_conditions, conds, facts.generation)
    return status


def problem_status(body: Mapping[str, Any], problem: Problem) -> dict[str, Any]:
    """The status of a DataStore with a problem. Engine and mode come from the raw body's spec: the problem
    may be that the model refuses it."""
    spec = body.get("spec") or {}
    mode: Literal["managed", "external"] | None = (
        "managed" if spec.get("managed") else "external" if spec.get("external") else None
    )
    previous = body.get("status") or {}
    facts = Facts(
        generation=body["metadata"].get("generation"),
        engine=str(spec.get("engine")),
        mode=mode,
        problem=problem,
        backup=previous.get("backup"),  # what was known of the backups stays true while the store has a problem
    )
    return compute(facts, body.get("status"))


def changed(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether ``new`` differs from the stored status in any field this module owns."""
    return bool(patches.status_patch(previous, new, OWNED))


OWNED = (
    "observedGeneration",
    "mode",
    "endpoint",
    "connectionSecret",
    "version",
    "members",
    "replication",
    "capabilities",
    "conditions",
    "backup",
    "restoredFrom",
    "currentPrimary",
    "targetPrimary",
    "primaryEpoch",
    "lastFailoverTime",
)
