"""DataStore status computation: pure, from observed facts."""

from __future__ import annotations

from typing import Any

from mlinfra.engines.observation import MemberObservation, Observation
from mlinfra.problems import Problem
from mlinfra.stores import status
from mlinfra.stores.status import Facts


def conds(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def primary_with(*replicas: MemberObservation) -> Observation:
    return Observation(
        reachable=True, version="7.0.15", members=[MemberObservation("10.0.0.1:6379", "primary", True), *replicas]
    )


def test_healthy_external_store_with_a_streaming_replica() -> None:
    obs = primary_with(MemberObservation("10.0.0.2:6379", "replica", True, lag_bytes=3000, lag_seconds=1.4))
    st = status.compute(
        Facts(
            generation=2,
            engine="redis",
            mode="external",
            endpoint="h:6379",
            connection_secret="c-conn",
            observation=obs,
        ),
        None,
    )
    assert conds(st) == {
        "Ready": ("True", "Ready"),
        "Reconciling": ("False", "Ready"),
        "Stalled": ("False", "Ready"),
        "Reachable": ("True", "Connected"),
        "Replicating": ("True", "Streaming"),
    }
    assert st["observedGeneration"] == 2
    assert st["members"][0]["role"] == "primary"
    replica = st["members"][1]
    assert (replica["lagBytes"], replica["lagSeconds"]) == (2048, 1)
    assert st["replication"] == {"desiredReplicas": 1, "readyReplicas": 2, "maxLagBytes": 2048, "maxLagSeconds": 1}


def test_heartbeat_noise_does_not_change_status() -> None:
    a = primary_with(MemberObservation("r", "replica", True, lag_bytes=0, lag_seconds=0))
    b = primary_with(MemberObservation("r", "replica", True, lag_bytes=14, lag_seconds=1))
    facts = {"generation": 1, "engine": "redis", "mode": "external", "endpoint": "h:1"}
    first = status.compute(Facts(observation=a, **facts), None)  # type: ignore[arg-type]
    second = status.compute(Facts(observation=b, **facts), first)  # type: ignore[arg-type]
    assert not status.changed(first, second)


def test_real_lag_changes_status() -> None:
    a = primary_with(MemberObservation("r", "replica", True, lag_bytes=0, lag_seconds=0))
    b = primary_with(MemberObservation("r", "replica", True, lag_bytes=70000, lag_seconds=4))
    facts = {"generation": 1, "engine": "redis", "mode": "external", "endpoint": "h:1"}
    first = status.compute(Facts(observation=a, **facts), None)  # type: ignore[arg-type]
    second = status.compute(Facts(observation=b, **facts), first)  # type: ignore[arg-type]
    assert status.changed(first, second)
    assert second["replication"]["maxLagBytes"] == 69632


def test_invalid_spec_is_stalled() -> None:
    st = status.compute(
        Facts(
            generation=4, engine="redis", mode="managed", problem=Problem("InvalidSpec", "spec.x: bad", stalled=True)
        ),
        None,
    )
    assert conds(st)["Stalled"] == ("True", "InvalidSpec")
    assert conds(st)["Ready"] == ("False", "InvalidSpec")
    assert conds(st)["Reconciling"][0] == "False"


def test_missing_secret_is_not_stalled() -> None:
    st = status.compute(
        Facts(
            generation=1,
            engine="redis",
            mode="external",
            problem=Problem("SecretNotFound", "Secret 'x' not found", stalled=False),
        ),
        None,
    )
    assert conds(st)["Ready"] == ("False", "SecretNotFound")
    assert conds(st)["Reconciling"] == ("True", "SecretNotFound")
    assert conds(st)["Stalled"][0] == "False"


def test_unreachable() -> None:
    st = status.compute(
        Facts(
            generation=1,
            engine="postgres",
            mode="external",
            observation=Observation(reachable=False, error="connection refused"),
        ),
        None,
    )
    assert conds(st)["Ready"] == ("False", "Unreachable")
    assert conds(st)["Replicating"][0] == "Unknown"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "connection refused"


def test_managed_store_waits_for_its_pods_and_names_members_by_pod() -> None:
    obs = Observation(
        reachable=True,
        version="15.4",
        members=[
            MemberObservation("10.1.0.5:5432", "primary", True),
            MemberObservation("standby-0", "replica", True, lag_bytes=0, lag_seconds=None),
        ],
    )
    facts = Facts(
        generation=1,
        engine="postgres",
        mode="managed",
        desired_replicas=3,
        ready_pods=2,
        pod_names=["pg-0", "pg-1", "pg-2"],
        observation=obs,
        member_names={"10.1.0.5:5432": "pg-0", "standby-0": "pg-1"},
    )
    st = status.compute(facts, None)
    assert conds(st)["Ready"] == ("False", "Provisioning")
    assert conds(st)["Reconciling"] == ("True", "Provisioning")
    assert [(m["name"], m["role"], m["ready"]) for m in st["members"]] == [
        ("pg-0", "primary", True),
        ("pg-1", "replica", True),
        ("pg-2", "unknown", False),
    ]
    assert conds(st)["Replicating"] == ("False", "ReplicaNotStreaming")


def test_neo4j_replication_is_not_applicable() -> None:
    obs = Observation(reachable=True, version="5.26.0", members=[MemberObservation("n", "standalone", True)])
    st = status.compute(Facts(generation=1, engine="neo4j", mode="external", observation=obs), None)
    assert conds(st)["Replicating"] == ("False", "NotApplicable")
    assert conds(st)["Ready"] == ("True", "Ready")


def test_a_failover_under_way_is_not_ready_and_argo_cd_shows_it_progressing() -> None:
    from mlinfra.build import argocd, crdgen

    record = {"currentPrimary": "db-0", "targetPrimary": "db-2", "primaryEpoch": 1}
    facts = Facts(
        generation=3,
        engine="redis",
        mode="managed",
        desired_replicas=3,
        ready_pods=2,
        observation=Observation.unreachable("timed out"),
        primary=record,
    )
    st = status.compute(facts, None)
    assert {k: st[k] for k in record} == record
    assert conds(st)["Ready"] == ("False", "FailingOver") and conds(st)["Reconciling"] == ("True", "FailingOver")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "failing over: db-0 is fenced before db-2 is promoted"
    health = argocd.evaluate(
        argocd.health_script(crdgen.repo_root(), "DataStore"), {"metadata": {"generation": 3}, "spec": {}, "status": st}
    )
    assert health == {"status": "Progressing", "message": ready["message"]}
    # Done: the new primary, the epoch and when, and Ready again once it answers.
    done = status.compute(
        Facts(
            generation=3,
            engine="redis",
            mode="managed",
            desired_replicas=3,
            ready_pods=3,
            observation=primary_with(),
            primary={"currentPrimary": "db-2", "primaryEpoch": 1, "lastFailoverTime": "2026-12-01T02:00:00Z"},
        ),
        st,
    )
    assert "targetPrimary" not in done and done["currentPrimary"] == "db-2" and conds(done)["Ready"][0] == "True"
