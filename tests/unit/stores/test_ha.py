"""The failover's acts against the in-memory Kubernetes API, the members simulated (the real node's tier runs
them on real pods): the record leads (it names the new primary before the old pod is deleted), the client
Service follows it, nobody is promoted while a pod of the old primary's uid exists, and the others are pointed
at the new primary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra import problems
from mlinfra.api import datastore as api
from mlinfra.config import Settings
from mlinfra.context import Context, Obj, Recorder
from mlinfra.engines import connection, endpoints, replication
from mlinfra.k8s import podexec
from mlinfra.problems import ProblemError
from mlinfra.stores import ha, primaryrecord, reconcile

pytestmark = pytest.mark.unit

NS = "ml"


class Members:
    """Three Redis servers as the operator's calls see them."""

    def __init__(self) -> None:
        self.role = {"db-0": "primary", "db-1": "replica", "db-2": "replica"}
        self.position = {"db-0": 100, "db-1": 90, "db-2": 95}
        self.following: dict[str, str | None] = {"db-0": None, "db-1": "127.0.0.1:7000", "db-2": "127.0.0.1:7000"}
        self.down: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.synchronous = ""  # the PostgreSQL primary's synchronous_standby_names
        self.refused: set[str] = set()  # down members whose address refuses connections (no process there)

    def member(self, conn: connection.ConnectionInfo) -> str:
        return f"db-{conn.port - 7000}"

    def look(self, conn: connection.ConnectionInfo, timeout: float) -> replication.MemberState:
        m = self.member(conn)
        if m in self.down:
            return replication.MemberState(False, error="timed out", refused=m in self.refused)
        role = self.role[m]
        return replication.MemberState(
            True,
            role,  # type: ignore[arg-type]
            self.position[m],
            following=self.following[m],
            link_up=role == "replica",
            synchronous=self.synchronous if role == "primary" else None,
        )

    def set_synchronous(self, conn: connection.ConnectionInfo, names: str, timeout: float) -> None:
        self.calls.append(("synchronous", f"{self.member(conn)}: {names}"))
        self.synchronous = names

    def promote(self, conn: connection.ConnectionInfo, timeout: float) -> None:
        m = self.member(conn)
        self.calls.append(("promote", m))
        self.role[m], self.following[m] = "primary", None

    def pause(self, conn: connection.ConnectionInfo, seconds: float, timeout: float) -> None:
        self.calls.append(("pause", self.member(conn)))
        # While the writes are held the replicas catch up with the primary's last byte.
        top = max(self.position.values())
        self.position = dict.fromkeys(self.position, top)

    def unpause(self, conn: connection.ConnectionInfo, timeout: float) -> None:
        self.calls.append(("unpause", self.member(conn)))

    def pg_follow(self, conn: connection.ConnectionInfo, conninfo: str, timeout: float) -> None:
        m = self.member(conn)
        self.calls.append(("pg_follow", f"{m}: {conninfo}"))
        self.role[m] = "replica"

    def follow(self, conn: connection.ConnectionInfo, host: str, port: int, timeout: float) -> None:
        m = self.member(conn)
        self.calls.append(("follow", f"{m}->{host}:{port}"))
        self.role[m], self.following[m] = "replica", f"{host}:{port}"


@pytest.fixture
def members(monkeypatch: pytest.MonkeyPatch) -> Members:
    sim = Members()
    monkeypatch.setattr(replication, "look", sim.look)
    monkeypatch.setattr(replication, "promote", sim.promote)
    monkeypatch.setattr(replication, "follow", sim.follow)
    monkeypatch.setattr(replication, "pg_follow", sim.pg_follow)
    monkeypatch.setattr(replication, "pause_writes", sim.pause)
    monkeypatch.setattr(replication, "unpause", sim.unpause)
    monkeypatch.setattr(replication, "pg_set_synchronous", sim.set_synchronous)
    return sim


def body(engine: str = "redis", synchronous: int | None = None) -> dict[str, Any]:
    managed: dict[str, Any] = {"replicas": 3, "failoverDelay": 3}
    if synchronous is not None:
        managed["synchronousReplicas"] = synchronous
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": "db", "namespace": NS, "uid": "u-1", "generation": 1},
        "spec": {"engine": engine, "managed": managed},
    }


def obj(engine: str = "redis", synchronous: int | None = None) -> Obj[api.DataStore]:
    b = body(engine, synchronous)
    return Obj(b, problems.parse(api.DataStore, b), Recorder())


def pod(name: str, uid: str, engine: str = "redis") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "labels": {
                "app.kubernetes.io/name": engine,
                "app.kubernetes.io/instance": "db",
                "mlinfra.io/datastore": "db",
            },
        },
        "status": {"podIP": "10.0.0.1"},
    }


def context(kube: FakeKube, tmp_path: Path, engine: str) -> Context:
    path = tmp_path / "endpoints.json"
    entry = {"endpoint": "127.0.0.1:7000", "members": {f"db-{i}": f"127.0.0.1:{7000 + i}" for i in range(3)}}
    path.write_text(json.dumps({f"{NS}/db": entry}))
    c = Context(settings=Settings(), kube=kube, endpoints=endpoints.EndpointMap(path))
    reconcile.reconcile(c, obj(engine))
    for i in range(3):
        kube.put(pod(f"db-{i}", f"uid-{i}", engine))
    ha.forget("u-1")
    return c


@pytest.fixture
def ctx(kube: FakeKube, tmp_path: Path) -> Context:
    return context(kube, tmp_path, "redis")


def selector(kube: FakeKube) -> str:
    return str(kube.get("Service", NS, "db")["spec"]["selector"]["statefulset.kubernetes.io/pod-name"])


def test_a_healthy_store_is_left_alone(ctx: Context, kube: FakeKube, members: Members) -> None:
    writes = list(kube.writes)
    d = ha.watch(ctx, obj())
    assert d is not None and d.action == "none" and kube.writes == writes and members.calls == []


def test_the_failover_names_fences_then_promotes(
    ctx: Context, kube: FakeKube, members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(ha.time, "time", lambda: clock[0])
    members.down.add("db-0")
    assert ha.watch(ctx, obj()).action == "wait"  # type: ignore[union-attr]
    clock[0] += 1
    assert ha.watch(ctx, obj()).action == "wait"  # type: ignore[union-attr]
    clock[0] += 3
    o = obj()
    writes = len(kube.writes)
    # The old pod is gone at once here (the in-memory API deletes it): fenced, then promoted in one tick.
    d = ha.watch(ctx, o)
    assert d is not None and d.action == "promote" and d.member == "db-2"
    # The record named db-2 (the most advanced) and db-0 as being fenced first, the Service selected db-2, and
    # only then did db-0's pod go; the promotion came after.
    assert kube.writes[writes:] == [
        ("patch", "ConfigMap", NS, "db-primary"),
        ("patch", "Service", NS, "db"),
        ("patch", "ConfigMap", NS, "db-primary"),  # the uid of the incarnation found after the first write
        ("delete", "Pod", NS, "db-0"),
        ("patch", "ConfigMap", NS, "db-primary"),
    ]
    assert selector(kube) == "db-2" and kube.get_or_none("Pod", NS, "db-0") is None
    assert members.calls[0] == ("promote", "db-2")
    assert set(members.calls[1:]) == {("follow", "db-1->127.0.0.1:7002")}  # db-0 has no pod: nothing to point
    assert [e[1] for e in o.report.events] == ["FailingOver", "Promoted"]  # type: ignore[attr-defined]
    record = primaryrecord.read(kube, NS, "db")
    assert record is not None and (record.primary, record.fencing, record.epoch) == ("db-2", None, 1)
    assert record.changed_at
    assert primaryrecord.status_of(record) == {
        "primaryEpoch": 1,
        "currentPrimary": "db-2",
        "lastFailoverTime": record.changed_at,
    }
    assert ha.watch(ctx, obj()).action == "none"  # type: ignore[union-attr]


def running(restarts: int) -> dict[str, Any]:
    return {"containerStatuses": [{"name": "redis", "restartCount": restarts, "state": {"running": {}}}]}


def test_a_hung_primary_is_killed_in_its_pod_and_promoted_once_its_container_restarted(
    ctx: Context, kube: FakeKube, members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a pod sharing its process namespace (as rendered) the fence kills the server from a new process in
    its container (the exec ends with the container: no exit status): once the kubelet reports the restart,
    the old server is gone and the promotion follows, while the deleted pod still waits for the kubelet."""
    clock = [1000.0]
    monkeypatch.setattr(ha.time, "time", lambda: clock[0])
    for i in range(3):
        kube.merge_patch("Pod", NS, f"db-{i}", {"spec": {"shareProcessNamespace": True}})
        kube.merge_patch("Pod", NS, f"db-{i}", {"status": running(0)}, subresource="status")
    killed: list[tuple[str, str, list[str]]] = []

    def kill(ns: str, pod: str, container: str, argv: list[str], timeout: float) -> str:
        killed.append((pod, container, list(argv)))
        kube.merge_patch("Pod", NS, pod, {"status": running(1)}, subresource="status")  # the kubelet's report
        raise podexec.ExecFailed("the session ended without an exit status", ended_with_container=True)

    monkeypatch.setattr(podexec, "run", kill)
    deleted: list[str] = []
    monkeypatch.setattr(kube, "delete", lambda kind, ns, name, **_: deleted.append(name) or True)  # pod stays
    members.down.add("db-0")
    assert ha.watch(ctx, obj()).action == "wait"  # type: ignore[union-attr]
    clock[0] += 4
    o = obj()
    d = ha.watch(ctx, o)
    assert d is not None and d.action == "promote" and d.member == "db-2"
    assert killed == [("db-0", "redis", ["sh", "-c", "kill -KILL -1"])] and deleted[0] == "db-0"
    assert kube.get_or_none("Pod", NS, "db-0") is not None  # the pod has not ended: the restart was the fence
    assert [e[1] for e in o.report.events] == ["FailingOver", "Fenced", "Promoted"]  # type: ignore[attr-defined]
    record = primaryrecord.read(kube, NS, "db")
    assert record is not None and (record.primary, record.fencing, record.fencing_restarts) == ("db-2", None, None)


def test_after_the_kill_a_refused_connection_is_enough(
    ctx: Context, kube: FakeKube, members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kill's exec ended with its container; before the kubelet reports the restart, nothing listens at the
    old primary's address any more (a stopped server would still hold its socket): fenced, promoted."""
    clock = [1000.0]
    monkeypatch.setattr(ha.time, "time", lambda: clock[0])
    kube.merge_patch("Pod", NS, "db-0", {"spec": {"shareProcessNamespace": True}})
    kube.merge_patch("Pod", NS, "db-0", {"status": running(0)}, subresource="status")

    def kill(*_: Any) -> str:
        members.refused.add("db-0")
        raise podexec.ExecFailed("the session ended without an exit status", ended_with_container=True)

    monkeypatch.setattr(podexec, "run", kill)
    monkeypatch.setattr(kube, "delete", lambda *_, **__: True)  # the pod stays, its restart not reported yet
    members.down.add("db-0")
    ha.watch(ctx, obj())
    clock[0] += 4
    d = ha.watch(ctx, obj())
    assert d is not None and d.action == "promote" and d.member == "db-2"


def test_a_refused_connection_without_the_kill_fences_nothing(
    ctx: Context, kube: FakeKube, members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the kill (a pod that does not share its process namespace) a closed port proves nothing a
    server shutting down slowly could not also show: the fence waits for the pod."""
    monkeypatch.setattr(ha, "FENCE_WAIT", 0.5)
    clock = [1000.0]
    monkeypatch.setattr(ha.time, "time", lambda: clock[0])
    monkeypatch.setattr(kube, "delete", lambda *_, **__: True)
    members.down.add("db-0")
    members.refused.add("db-0")
    ha.watch(ctx, obj())
    clock[0] += 4
    d = ha.watch(ctx, obj())
    assert d is not None and d.action == "fence" and members.calls == []


def test_a_failed_kill_leaves_the_fence_to_the_pods_deletion(
    ctx: Context, kube: FakeKube, members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ha, "FENCE_WAIT", 0.5)
    clock = [1000.0]
    monkeypatch.setattr(ha.time, "time", lambda: clock[0])
    kube.merge_patch("Pod", NS, "db-0", {"spec": {"shareProcessNamespace": True}})
    kube.merge_patch("Pod", NS, "db-0", {"status": running(0)}, subresource="status")

    def refused(*_: Any) -> str:
        raise podexec.ExecFailed("exec in ml/db-0: (403) Forbidden")

    monkeypatch.setattr(podexec, "run", refused)
    deleted: list[str] = []
    monkeypatch.setattr(kube, "delete", lambda kind, ns, name, **_: deleted.append(name) or True)
    members.down.add("db-0")
    ha.watch(ctx, obj())
    clock[0] += 4
    d = ha.watch(ctx, obj())
    assert d is not None and d.action == "fence" and "waiting for db-0 to be fenced" in d.reason
    assert members.calls == []  # nothing promoted while the old server may still run
    record = primaryrecord.read(kube, NS, "db")
    assert record is not None and record.fencing == "db-0" and record.fencing_restarts == 0
    # The pod was not marked as being deleted (the delete is faked): asked for again on later ticks, until it is.
    assert set(deleted) == {"db-0"} and len(deleted) >= 2


def test_nobody_is_promoted_while_the_old_primarys_pod_exists(
    ctx: Context, kube: FakeKube, members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ha, "FENCE_WAIT", 0.5)  # how long one tick follows a fence through
    record = primaryrecord.read(kube, NS, "db")
    assert record is not None
    primaryrecord.write(
        kube, NS, "db", primaryrecord.Record("db-2", 1, fencing="db-0", fencing_uid="uid-0", version=record.version)
    )
    members.down.add("db-0")
    kube.merge_patch("Pod", NS, "db-0", {"metadata": {"deletionTimestamp": "2026-12-01T00:00:00Z"}})
    d = ha.watch(ctx, obj())
    assert d is not None and d.action == "fence" and members.calls == []
    assert "waiting for db-0 to be fenced" in d.reason
    # Its containers have all ended: the process is dead, the pod object only waits for the kubelet. Fenced.
    ended = {"containerStatuses": [{"name": "redis", "state": {"terminated": {"exitCode": 137}}}]}
    kube.merge_patch("Pod", NS, "db-0", {"status": ended}, subresource="status")
    d = ha.watch(ctx, obj())
    assert d is not None and d.action == "promote" and members.calls[0] == ("promote", "db-2")


def test_a_primary_whose_pod_is_being_deleted_is_switched_over_at_once(
    ctx: Context, kube: FakeKube, members: Members
) -> None:
    kube.merge_patch("Pod", NS, "db-0", {"metadata": {"deletionTimestamp": "2026-12-01T00:00:00Z"}})
    o = obj()
    d = ha.watch(ctx, o)
    assert d is not None and d.action == "switch" and d.member == "db-2"
    # Held, caught up, recorded, moved, promoted, the others (the old primary among them) following, released.
    assert members.calls[:2] == [("pause", "db-0"), ("promote", "db-2")]
    assert set(members.calls[2:-1]) == {("follow", "db-0->127.0.0.1:7002"), ("follow", "db-1->127.0.0.1:7002")}
    assert members.calls[-1] == ("unpause", "db-0")
    record = primaryrecord.read(kube, NS, "db")
    assert record is not None and (record.primary, record.fencing, record.epoch) == ("db-2", None, 1)
    assert selector(kube) == "db-2" and kube.get_or_none("Pod", NS, "db-0") is not None  # not fenced: it answered
    assert [e[1] for e in o.report.events] == ["FailingOver", "Promoted"]  # type: ignore[attr-defined]


def test_a_switchover_to_a_lagging_replica_is_refused(ctx: Context, members: Members) -> None:
    members.position["db-1"] = 100 - ha.SWITCHOVER_MAX_LAG - 1 + 100
    members.position["db-0"] = 100 + ha.SWITCHOVER_MAX_LAG + 100
    with pytest.raises(ProblemError) as refused:
        ha.switchover(ctx, obj(), "db-1")
    assert refused.value.problem.reason == "SwitchoverRefused" and "db-1 lags the primary by" in str(
        refused.value.problem.message
    )
    with pytest.raises(ProblemError, match="not a replica that answers"):
        ha.switchover(ctx, obj(), "db-9")
    assert members.calls == []


def test_a_store_without_replicas_has_no_failover() -> None:
    single = body()
    single["spec"]["managed"]["replicas"] = 1
    assert not ha.admits(single) and ha.admits(body())
    postgres, neo4j = body(), body()
    postgres["spec"]["engine"], neo4j["spec"]["engine"] = "postgres", "neo4j"
    assert ha.admits(postgres) and not ha.admits(neo4j)


def test_a_postgres_switchover_stops_the_old_primary_then_promotes(
    kube: FakeKube, tmp_path: Path, members: Members
) -> None:
    ctx = context(kube, tmp_path, "postgres")
    members.position["db-1"] = 100  # caught up
    o = obj("postgres")
    writes = len(kube.writes)
    reason = ha.switchover(ctx, o, "db-1")
    assert reason.startswith("switchover: db-1 promoted (epoch 1)")
    # No pause in PostgreSQL: the old primary's pod is stopped (its fast shutdown ships the WAL first), and
    # only once it has ended is db-1 promoted; db-2 is re-pointed by its primary_conninfo.
    assert [w for w in kube.writes[writes:] if w[1] == "Pod"] == [("delete", "Pod", NS, "db-0")]
    assert members.calls[0] == ("promote", "db-1")
    assert (
        "pg_follow",
        "db-2: host=db-1.db-hl.ml.svc port=5432 user=replicator passfile=/run/mlinfra/replication.pgpass "
        "application_name=db-2",
    ) in members.calls
    record = primaryrecord.read(kube, NS, "db")
    assert record is not None and (record.primary, record.fencing, record.epoch) == ("db-1", None, 1)
    assert selector(kube) == "db-1"


def test_a_stale_postgres_primary_is_not_demoted_in_place_its_pod_goes(
    kube: FakeKube, tmp_path: Path, members: Members
) -> None:
    ctx = context(kube, tmp_path, "postgres")
    record = primaryrecord.read(kube, NS, "db")
    assert record is not None
    primaryrecord.write(kube, NS, "db", primaryrecord.Record("db-1", 1, version=record.version))
    members.role["db-1"] = "primary"  # both act as primaries: db-0 is the stale one
    d = ha.watch(ctx, obj("postgres"))
    assert d is not None and d.action == "demote" and d.member == "db-0"
    assert kube.get_or_none("Pod", NS, "db-0") is None and members.calls == []


def test_postgres_commits_wait_for_the_synchronous_standbys_that_stream(
    kube: FakeKube, tmp_path: Path, members: Members
) -> None:
    ctx = context(kube, tmp_path, "postgres")
    o = obj("postgres", synchronous=1)
    assert ha.watch(ctx, o).action == "none"  # type: ignore[union-attr]
    assert members.calls == [("synchronous", 'db-0: ANY 1 ("db-1", "db-2")')]
    assert [e[1] for e in o.report.events] == ["SynchronousStandbys"]  # type: ignore[attr-defined]
    ha.watch(ctx, obj("postgres", synchronous=1))
    assert len(members.calls) == 1  # set only when it differs
    # A standby that stops streaming is no longer waited for; with none, commits are asynchronous again.
    members.down.add("db-1")
    ha.watch(ctx, obj("postgres", synchronous=1))
    assert members.calls[-1] == ("synchronous", 'db-0: ANY 1 ("db-2")')
    members.down.add("db-2")
    ha.watch(ctx, obj("postgres", synchronous=1))
    assert members.calls[-1] == ("synchronous", "db-0: ")
    # synchronousReplicas omitted: asynchronous.
    members.down.clear()
    members.synchronous = 'ANY 1 ("db-1", "db-2")'
    ha.watch(ctx, obj("postgres"))
    assert members.calls[-1] == ("synchronous", "db-0: ")


def test_redis_has_no_synchronous_standbys(ctx: Context, members: Members) -> None:
    ha.watch(ctx, obj())
    assert members.calls == []


def test_synchronous_names() -> None:
    assert replication.pg_synchronous_names([], 1) == ""
    assert replication.pg_synchronous_names(["db-2", "db-1"], 0) == ""
    assert replication.pg_synchronous_names(["db-2", "db-1"], 1) == 'ANY 1 ("db-1", "db-2")'
    assert replication.pg_synchronous_names(["db-1"], 2) == 'ANY 1 ("db-1")'


def test_the_failover_comes_when_the_delay_ends_not_at_the_next_tick(
    ctx: Context, kube: FakeKube, members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    """failoverDelay 3 s, ticks every 1 s: the tick 2.4 s after the primary stopped answering waits the 0.6 s
    left and fails over within itself, instead of leaving it to the tick at 3.4 s."""
    clock = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(ha.time, "time", lambda: clock[0])
    monkeypatch.setattr(ha.time, "sleep", sleep)
    members.down.add("db-0")
    assert ha.watch(ctx, obj()).action == "wait"  # type: ignore[union-attr]
    clock[0] += 1.2
    assert ha.watch(ctx, obj()).action == "wait"  # 1.8 s left: more than a tick  # type: ignore[union-attr]
    assert slept == []
    clock[0] += 1.2
    d = ha.watch(ctx, obj())
    assert d is not None and d.action == "promote" and d.member == "db-2"
    assert slept[0] == pytest.approx(0.6) and clock[0] < 1003.4
