"""Failover and switchover of a managed Redis store with replicas, driven by the operator (no Sentinel; see
docs/high-availability.md for why): look at every member directly, let ``stores.failover`` decide, act.

Each :func:`watch` tick (every ``settings.failover_interval`` seconds per store) looks at each pod over the
engine's protocol (a short deadline each: a stopped primary costs one timeout), then:

- **fence**: the primary record (``stores.primaryrecord``) names the new primary first, the client Service
  selects it (it refuses writes until it is promoted: a replica is read-only), and the old primary's pod is
  deleted with a short grace period (a SIGSTOPped server is killed, not waited for). Its next incarnation reads
  the record and starts as a replica of the new primary.
- **promote**: once no pod of the old primary's uid exists, ``REPLICAOF NO ONE`` on the new primary, and the
  other replicas are pointed at it.
- **demote / repoint**: a member acting as a primary that is not the named one, or a replica following another
  member, is pointed at the named primary.

Every change of primary is an event on the DataStore with the decision's reason; ``status`` shows the record
(``currentPrimary``, ``targetPrimary``, ``primaryEpoch``, ``lastFailoverTime``). Nothing here runs when the
operator does not: a store whose primary is lost while the operator is down is failed over when it is back.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mlinfra.api import datastore as api
from mlinfra.context import Context, Obj
from mlinfra.engines import connection, names, render, replication
from mlinfra.k8s import conditions, podexec
from mlinfra.problems import Problem, ProblemError
from mlinfra.stores import connsecret, failover, members, primaryrecord

log = logging.getLogger(__name__)

ENGINES = ("redis", "postgres")
LOOK_TIMEOUT = 0.5  # seconds for one member to answer a look
FENCE_WAIT = 15.0  # seconds one tick waits for a fenced pod to end before it leaves the promotion to the next
ACT_TIMEOUT = 10.0  # seconds for a promotion or a re-pointing
FENCE_GRACE_SECONDS = 1  # the old primary's pod: SIGTERM, then SIGKILL after this
KILL_TIMEOUT = 3.0  # seconds for the exec that kills a hung primary's server (then the pod deletion fences)
SWITCHOVER_PAUSE = 5.0  # seconds a switchover may hold the primary's writes
SWITCHOVER_MAX_LAG = 16 * 1024 * 1024  # bytes a switchover target may lag when it is asked for

SWITCHOVER_REFUSED = "SwitchoverRefused"
# The annotation that asks for a switchover: its value is the member to promote (what mlinfra promote sets);
# the outcome is written to <annotation>-result (handlers.kind).
PROMOTE_ANNOTATION = "mlinfra.io/promote"

# When each store's primary was first seen not answering (by uid): the operator's memory, not the record's. A
# restarted operator starts the delay again, which only ever delays a failover.
_unreachable_since: dict[str, float] = {}


def applies(ds: api.DataStore) -> bool:
    """Whether the store has failover: managed Redis or PostgreSQL with more than one member."""
    return ds.spec.engine in ENGINES and ds.spec.managed is not None and ds.spec.managed.replicas > 1


def admits(body: Mapping[str, Any]) -> bool:
    """:func:`applies` on the raw body (the watch timer's filter: no parsing on every event)."""
    spec = body.get("spec") or {}
    managed = spec.get("managed") or {}
    return spec.get("engine") in ENGINES and int(managed.get("replicas") or 1) > 1


@dataclass(frozen=True)
class Seen:
    store: api.DataStore
    members: list[failover.Member]
    conns: dict[str, connection.ConnectionInfo]  # member -> its own endpoint
    addresses: dict[str, tuple[str, int]]  # member -> the address the other members replicate it at
    pods: Mapping[str, Mapping[str, Any]]
    states: Mapping[str, replication.MemberState]  # what each member that has an address said

    @property
    def engine(self) -> str:
        return self.store.spec.engine


def _now_rfc3339() -> str:
    return conditions.now()


def look(ctx: Context, obj: Obj[api.DataStore], conn: connection.ConnectionInfo, record: primaryrecord.Record) -> Seen:
    """Every pod of the store, looked at directly."""
    ds = obj.model
    ns, name = obj.namespace, obj.name
    pods = {p["metadata"]["name"]: p for p in ctx.kube.list_("Pod", ns, names.selector_labels(ds))}
    conns: dict[str, connection.ConnectionInfo] = {}
    addresses: dict[str, tuple[str, int]] = {}
    known: dict[str, str] = {}  # host:port a replica may name its primary by -> member
    for pod_name, address in members.addresses(ctx, ns, name, conn.port, pods).items():
        conns[pod_name] = conn.with_endpoint(address.host, address.port)
        addresses[pod_name] = address.peer
        known[f"{address.host}:{address.port}"] = pod_name
        known[f"{address.peer[0]}:{address.peer[1]}"] = pod_name
    # Every member at once: a stopped one costs one timeout per look, not one per member.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(conns))) as pool:
        states = dict(zip(conns, pool.map(lambda c: replication.look(c, LOOK_TIMEOUT), conns.values()), strict=True))
    looked: list[failover.Member] = []
    for pod_name, pod in sorted(pods.items()):
        ordinal = int(pod_name.rpartition("-")[2]) if pod_name.rpartition("-")[2].isdigit() else 0
        meta = pod.get("metadata") or {}
        terminating = bool(meta.get("deletionTimestamp"))
        # The pod being fenced is fenced once no pod of its uid exists, or its containers have all ended (its
        # process is dead; the pod object only waits for the kubelet's last word). None was there: fenced.
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        ended = terminating and bool(statuses) and all((c.get("state") or {}).get("terminated") for c in statuses)
        gone = (
            record.fencing_uid is None
            or meta.get("uid") != record.fencing_uid
            or ended
            or _server_restarted(pod, ds.spec.engine, record.fencing_restarts)
            or (record.fencing_killed and _killed_server_gone(states.get(pod_name)))
        )
        fenced = record.fencing == pod_name and gone
        state = states.get(pod_name)
        if state is None:
            looked.append(failover.Member(pod_name, ordinal, reachable=False, fenced=fenced, terminating=terminating))
            continue
        looked.append(
            failover.Member(
                pod_name,
                ordinal,
                reachable=state.reachable,
                role=state.role,
                position=state.position,
                following=known.get(state.following or "", state.following),
                fenced=fenced,
                terminating=terminating,
            )
        )
    return Seen(obj.model, looked, conns, addresses, pods, states)


def _client_service_selects(ctx: Context, obj: Obj[api.DataStore], primary: str) -> None:
    """The client Service selects ``primary`` (patched only when it does not: every tick checks it, so a
    reconcile that rendered an older record is corrected within a tick)."""
    ns, svc_name = obj.namespace, names.client_service(obj.name)
    svc = ctx.kube.get_or_none("Service", ns, svc_name)
    if svc is None:
        return
    selector = names.primary_selector(obj.model, primary)
    if (svc.get("spec") or {}).get("selector") != selector:
        ctx.kube.merge_patch("Service", ns, svc_name, {"spec": {"selector": selector}})


def _state(record: primaryrecord.Record, uid: str) -> failover.State:
    return failover.State(
        primary=record.primary,
        epoch=record.epoch,
        fencing=record.fencing,
        unreachable_since=_unreachable_since.get(uid),
    )


def _follow_primary(seen: Seen, primary: str, members: list[str]) -> list[str]:
    """Point each of ``members`` at ``primary``; the members that could not be (logged)."""
    host, port = seen.addresses[primary]
    failed = []
    for member in members:
        try:
            if seen.engine == "postgres":
                # A standby's primary_conninfo (a reload restarts its WAL receiver; the new timeline is followed).
                conninfo = render.pg_standby_conninfo(seen.store, primary, member)
                replication.pg_follow(seen.conns[member], conninfo, ACT_TIMEOUT)
            else:
                replication.follow(seen.conns[member], host, port, ACT_TIMEOUT)
        except (replication.ReplicationError, KeyError) as exc:
            log.warning("pointing %s at %s: %s", member, primary, exc)
            failed.append(member)
    return failed


def watch(ctx: Context, obj: Obj[api.DataStore]) -> failover.Decision | None:
    """One tick: look, decide, act. The decision acted on (None when the store has no failover)."""
    ds = obj.model
    if not applies(ds) or ds.spec.managed is None:
        return None
    uid = str(obj.body["metadata"].get("uid"))
    record = primaryrecord.read(ctx.kube, obj.namespace, obj.name)
    conn = connsecret.read_connection(ctx.kube, obj.namespace, obj.name)
    if record is None or conn is None:
        return None  # before the first reconcile
    delay = ds.spec.managed.failover_delay_seconds
    looked_at = time.time()
    seen = look(ctx, obj, conn, record)
    decision = failover.decide(seen.members, _state(record, uid), time.time(), delay, looked_at)
    done = _follow_through(ctx, obj, conn, uid, record, seen, decision)
    if done.action == "none":
        _keep_synchronous(obj, record, seen)
    return done


def _keep_synchronous(obj: Obj[api.DataStore], record: primaryrecord.Record, seen: Seen) -> None:
    """PostgreSQL: the primary's synchronous standbys are ``spec.managed.synchronousReplicas`` of those that
    stream from it now (all of them while fewer stream: commits never wait for a standby that is not there;
    none, asynchronous, when none does). Set when it differs, with an event."""
    managed = seen.store.spec.managed
    primary = seen.states.get(record.primary)
    if seen.engine != "postgres" or managed is None or primary is None or primary.role != "primary":
        return
    streaming = [
        m.name
        for m in seen.members
        if m.name != record.primary
        and m.role == "replica"
        and m.following == record.primary
        and seen.states.get(m.name, replication.MemberState(False)).link_up
    ]
    wanted = replication.pg_synchronous_names(streaming, managed.synchronous_replicas or 0)
    if (primary.synchronous or "") == wanted:
        return
    try:
        replication.pg_set_synchronous(seen.conns[record.primary], wanted, ACT_TIMEOUT)
    except replication.ReplicationError as exc:
        log.warning("%s/%s: %s", obj.namespace, obj.name, exc)
        return
    obj.report.event(
        "SynchronousStandbys",
        f"commits on {record.primary} wait for {wanted}" if wanted else f"commits on {record.primary} are asynchronous",
    )


def _follow_through(
    ctx: Context,
    obj: Obj[api.DataStore],
    conn: connection.ConnectionInfo,
    uid: str,
    record: primaryrecord.Record,
    seen: Seen,
    decision: failover.Decision,
) -> failover.Decision:
    """Act on ``decision``; a fence (and a PostgreSQL hand-over, which is one) is followed through in this
    tick: the promotion comes the moment the old pod has ended (within FENCE_WAIT)."""
    delay = seen.store.spec.managed.failover_delay_seconds if seen.store.spec.managed else 0.0
    deadline = time.monotonic() + FENCE_WAIT
    waited = False
    while True:
        followed = _act(ctx, obj, record, seen, decision)
        if decision.state.unreachable_since is None:
            _unreachable_since.pop(uid, None)
        else:
            _unreachable_since[uid] = decision.state.unreachable_since
        if not followed:
            # The delay ends before the next tick: look again the moment it does, in this tick (once), rather
            # than up to a whole interval later.
            due = _delay_ends_in(decision, delay)
            if waited or due is None or due > ctx.settings.failover_interval:
                return decision
            waited = True
            time.sleep(due)
        elif time.monotonic() > deadline:
            return decision
        else:
            time.sleep(0.2)
        record = primaryrecord.read(ctx.kube, obj.namespace, obj.name) or record
        looked_at = time.time()
        seen = look(ctx, obj, conn, record)
        decision = failover.decide(seen.members, _state(record, uid), time.time(), delay, looked_at)


def _delay_ends_in(decision: failover.Decision, delay: float) -> float | None:
    """Seconds until ``failoverDelay`` is over for an unanswered primary the decision waits on; None otherwise."""
    since = decision.state.unreachable_since
    if decision.action != "wait" or since is None or time.time() - since >= delay:
        return None
    return since + delay - time.time()


def _record(
    ctx: Context, obj: Obj[api.DataStore], record: primaryrecord.Record, new: primaryrecord.Record
) -> primaryrecord.Record:
    if replace(new, version=None) == replace(record, version=None):
        return record
    return primaryrecord.write(ctx.kube, obj.namespace, obj.name, new)


def _act(
    ctx: Context,
    obj: Obj[api.DataStore],
    record: primaryrecord.Record,
    seen: Seen,
    decision: failover.Decision,
) -> bool:
    """Do what ``decision`` says; whether a fence is under way (the caller follows it through)."""
    state, action, member = decision.state, decision.action, decision.member
    if action == "switch" and seen.engine == "postgres":
        # PostgreSQL's hand-over is a fence with the pod's own grace period: its preStop stops the server
        # fast, which sends every WAL record to the connected standbys before it exits; the target is then
        # promoted like after a failover (nothing acknowledged is lost: it had them all).
        obj.report.warning("FailingOver", decision.reason)
        fencing = failover.Decision("fence", record.primary, decision.reason, replace(state, fencing=record.primary))
        return _fence(ctx, obj, record, seen, fencing, grace=None)
    if action == "fence":
        if record.fencing is None:
            obj.report.warning("FailingOver", decision.reason)
        return _fence(ctx, obj, record, seen, decision, grace=FENCE_GRACE_SECONDS)
    if action == "demote" and seen.engine == "postgres":
        # A PostgreSQL server cannot be made a standby while it runs: its pod goes, and it comes back rewound.
        assert member is not None
        pod = seen.pods.get(member)
        if pod is not None and not pod["metadata"].get("deletionTimestamp"):
            ctx.kube.delete(
                "Pod", obj.namespace, member, uid=pod["metadata"].get("uid"), grace_seconds=FENCE_GRACE_SECONDS
            )
            obj.report.event("Demoted", decision.reason)
        return False
    if action == "promote":
        assert member is not None
        replication.promote(seen.conns[member], ACT_TIMEOUT)
        new = primaryrecord.Record(
            primary=state.primary,
            epoch=state.epoch,
            changed_at=record.changed_at or _now_rfc3339(),
            version=record.version,
        )
        _record(ctx, obj, record, new)
        _client_service_selects(ctx, obj, state.primary)
        # Every other member that answers, the old primary's new incarnation too (it started following the
        # record's primary: pointing it there again changes nothing).
        others = [m.name for m in seen.members if m.name != member and m.reachable]
        _follow_primary(seen, member, others)
        obj.report.event("Promoted", decision.reason)
        return False
    if action == "switch":  # the primary's pod is being deleted while it still answers
        obj.report.warning("FailingOver", decision.reason)
        _hand_over(ctx, obj, record, seen, decision)
        obj.report.event("Promoted", decision.reason)
        return False
    if action in ("demote", "repoint"):
        assert member is not None
        _client_service_selects(ctx, obj, state.primary)
        if state.primary in seen.addresses and not _follow_primary(seen, state.primary, [member]):
            obj.report.event("Demoted" if action == "demote" else "Repointed", decision.reason)
        return False
    _client_service_selects(ctx, obj, state.primary)
    return False


def _fence(
    ctx: Context,
    obj: Obj[api.DataStore],
    record: primaryrecord.Record,
    seen: Seen,
    decision: failover.Decision,
    grace: int | None,
) -> bool:
    """The record names the new primary with the old one being fenced, the Service moves, and then the old
    primary's pod is deleted (``grace``: its grace period, None for the pod's own): the incarnation there is
    once the record is written. An incarnation the StatefulSet started before that (the old pod was already
    gone: a user deleted it) read the old record and may be starting as a primary; one started after reads the
    new record. So the pod fenced is the one found after the write, whatever its uid."""
    state, member = decision.state, decision.member
    assert member is not None
    first = record.fencing is None
    new = primaryrecord.Record(
        primary=state.primary,
        epoch=state.epoch,
        fencing=member,
        fencing_uid=record.fencing_uid,
        fencing_restarts=record.fencing_restarts,
        fencing_killed=record.fencing_killed,
        changed_at=_now_rfc3339() if first else record.changed_at,
        version=record.version,
    )
    record = _record(ctx, obj, record, new)
    _client_service_selects(ctx, obj, state.primary)
    pod = ctx.kube.get_or_none("Pod", obj.namespace, member)
    meta = (pod or {}).get("metadata", {})
    if pod is None or meta.get("uid") is None:
        return True
    if first:
        record = primaryrecord.write(
            ctx.kube,
            obj.namespace,
            obj.name,
            replace(new, fencing_uid=meta["uid"], fencing_restarts=_restarts(pod, seen.engine), version=record.version),
        )
        # A hung primary (not a hand-over, which stops gracefully) is killed in its container at once: the
        # kubelet's report of the container's restart fences it (a second or so), where the pod's deletion
        # waits for the kubelet's own kill first. The pod still goes, and comes back reading the new record.
        if grace is not None and _kill_server(obj, seen.engine, pod):
            record = primaryrecord.write(ctx.kube, obj.namespace, obj.name, replace(record, fencing_killed=True))
    # Deleted on every tick until it is (a tick that ended between the record and the deletion left it).
    if meta["uid"] == record.fencing_uid and (not meta.get("deletionTimestamp") or (first and grace is not None)):
        ctx.kube.delete("Pod", obj.namespace, member, uid=meta["uid"], grace_seconds=grace)
    return True


def _restarts(pod: Mapping[str, Any], container: str) -> int | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return int(status.get("restartCount") or 0)
    return None


def _server_restarted(pod: Mapping[str, Any], container: str, since: int | None) -> bool:
    """Whether the server's container was restarted (or is down) since the fence counted ``since`` restarts."""
    if since is None:
        return False
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            state = status.get("state") or {}
            return int(status.get("restartCount") or 0) > since or "running" not in state
    return False


def _killed_server_gone(state: replication.MemberState | None) -> bool:
    """After the fence's kill: nothing listens at the member's address any more, or what answers there is a
    replica (the restarted container, which read the new record) — either way the old server is gone,
    without waiting for the kubelet's report."""
    return state is not None and (state.refused or (state.reachable and state.role == "replica"))


def _kill_server(obj: Obj[api.DataStore], engine: str, pod: Mapping[str, Any]) -> bool:
    """SIGKILL every process of the pod but its sandbox's, from a new process in the server's container
    (``kill -KILL -1``): a stopped or hung server dies at once. Only in a pod that shares its process
    namespace (the rendered ones do): elsewhere the server is its container's PID 1, which no process of the
    container may kill. The exec itself dies with the container (it ends without an exit status): then
    nothing listening at the member's address, a replica answering there, or the kubelet's report of the
    restart confirms it (``_killed_server_gone``, ``_server_restarted``). Whether the kill was done; one
    that cannot be leaves the fence to the pod's deletion, as for a pod whose node no longer answers."""
    name = pod["metadata"]["name"]
    if not (pod.get("spec") or {}).get("shareProcessNamespace"):
        return False
    try:
        podexec.run(obj.namespace, name, engine, ["sh", "-c", "kill -KILL -1"], KILL_TIMEOUT)
    except podexec.ExecFailed as exc:
        if not exc.ended_with_container:
            log.warning("%s/%s: killing the old primary's server in its container failed: %s", obj.namespace, name, exc)
            return False
    obj.report.event("Fenced", f"{name}: its server was killed in its container (SIGKILL) before the promotion")
    return True


def promote_action(ctx: Context, obj: Obj[api.DataStore], value: str) -> str:
    """The ``mlinfra.io/promote`` annotation: a switchover to the member it names."""
    return switchover(ctx, obj, value.strip())


def switchover(ctx: Context, obj: Obj[api.DataStore], to: str, max_lag_bytes: int = SWITCHOVER_MAX_LAG) -> str:
    """Make ``to`` the primary with no acknowledged write lost: the primary's writes are held, ``to`` catches
    up to the primary's last byte, the record names ``to``, it is promoted, the old primary follows it, and the
    writes resume (on the new primary: the old one answers READONLY). The reason of what was done; a
    ProblemError(SwitchoverRefused) naming why when it is refused or cannot finish (nothing changed)."""
    ds = obj.model
    if not applies(ds):
        raise _refused(f"{obj.name} has no failover: a managed redis store with replicas has")
    uid = str(obj.body["metadata"].get("uid"))
    record = primaryrecord.read(ctx.kube, obj.namespace, obj.name)
    conn = connsecret.read_connection(ctx.kube, obj.namespace, obj.name)
    if record is None or conn is None:
        raise _refused(f"{obj.name} has not been reconciled yet")
    seen = look(ctx, obj, conn, record)
    decision = failover.request_switchover(seen.members, _state(record, uid), to, max_lag_bytes)
    if decision.action != "switch":
        raise _refused(decision.reason)
    if seen.engine == "postgres":
        # The old primary's pod is stopped (fast shutdown: its WAL reaches the standbys first), then the
        # target promoted: followed through here, the request answered when it is done.
        done = _follow_through(ctx, obj, conn, uid, record, seen, decision)
        if done.action != "promote":
            raise _refused(f"switchover to {to} under way but not finished within {FENCE_WAIT:g} s: {done.reason}")
    else:
        _hand_over(ctx, obj, record, seen, decision)
    obj.report.event("SwitchedOver", decision.reason)
    return decision.reason


def _hand_over(
    ctx: Context,
    obj: Obj[api.DataStore],
    record: primaryrecord.Record,
    seen: Seen,
    decision: failover.Decision,
) -> None:
    """A switchover to ``decision.member``: the primary's writes held, the target caught up to its last byte,
    the record names the target, the Service moves, the target is promoted, the others (the old primary
    among them) follow it, the held writes go (and meet a replica: READONLY, never acknowledged and lost).
    ProblemError(SwitchoverRefused) when the target does not catch up while the writes are held: nothing
    changed then."""
    old, to = record.primary, decision.member
    assert to is not None
    replication.pause_writes(seen.conns[old], SWITCHOVER_PAUSE, ACT_TIMEOUT)
    try:
        deadline = time.monotonic() + SWITCHOVER_PAUSE - 1.0
        while True:
            primary_now = replication.look(seen.conns[old], LOOK_TIMEOUT)
            target_now = replication.look(seen.conns[to], LOOK_TIMEOUT)
            if (
                primary_now.position is not None
                and target_now.position is not None
                and target_now.position >= primary_now.position
            ):
                break
            if time.monotonic() > deadline:
                raise _refused(
                    f"{to} did not catch up with {old} within {SWITCHOVER_PAUSE - 1.0:g} s of held writes "
                    f"({target_now.position} of {primary_now.position} bytes): nothing changed"
                )
            time.sleep(0.05)
        new = primaryrecord.Record(
            primary=to, epoch=decision.state.epoch, changed_at=_now_rfc3339(), version=record.version
        )
        primaryrecord.write(ctx.kube, obj.namespace, obj.name, new)
        _client_service_selects(ctx, obj, to)
        replication.promote(seen.conns[to], ACT_TIMEOUT)
        others = [m.name for m in seen.members if m.name != to and m.reachable]
        _follow_primary(seen, to, others)
    finally:
        replication.unpause(seen.conns[old], ACT_TIMEOUT)


def _refused(message: str) -> ProblemError:
    return ProblemError(Problem(SWITCHOVER_REFUSED, message, stalled=False))


def forget(uid: str) -> None:
    _unreachable_since.pop(uid, None)
