"""The failover and switchover decisions, step by step, as the operator would replay them: never two primaries,
never a promotion before the old primary is fenced, the most advanced replica chosen, blips ignored, and every
refusal with its reason. A small simulator applies each decision to the members and checks the invariant after
every step."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from mlinfra.stores.failover import Decision, Member, State, decide, most_advanced, request_switchover

pytestmark = pytest.mark.unit

DELAY = 10.0


def members(*positions: int | None, primary: int = 0) -> list[Member]:
    return [
        Member(
            f"db-{i}",
            i,
            reachable=True,
            role="primary" if i == primary else "replica",
            position=p,
            following=None if i == primary else f"db-{primary}",
        )
        for i, p in enumerate(positions)
    ]


def apply(ms: list[Member], d: Decision, old_primary: str = "") -> list[Member]:
    """What the operator's action does to the pods (the caller's side, modelled)."""
    state_before = (old_primary,)
    out = []
    for m in ms:
        if d.member == m.name:
            if d.action == "fence":
                m = dataclasses.replace(m, reachable=False, fenced=True, role="unknown")
            elif d.action in ("promote", "switch"):
                m = dataclasses.replace(m, role="primary", following=None)
            elif d.action in ("demote", "repoint"):
                m = dataclasses.replace(m, role="replica", following=d.state.primary)
        elif d.action == "switch" and m.name == state_before[0]:
            m = dataclasses.replace(m, role="replica", following=d.member)
        out.append(m)
    if d.action in ("promote", "switch"):  # the others follow the new primary
        out = [dataclasses.replace(m, following=d.member) if m.role == "replica" and m.reachable else m for m in out]
    return out


def writable(ms: list[Member]) -> list[str]:
    return [m.name for m in ms if m.reachable and m.role == "primary" and not m.fenced]


def run(ms: list[Member], state: State, t0: float, steps: int = 10) -> tuple[list[Member], State, list[Decision]]:
    log = []
    for t in itertools.islice(itertools.count(t0, 1.0), steps):
        d = decide(ms, state, t, DELAY)
        log.append(d)
        ms, state = apply(ms, d), d.state
        assert len(writable(ms)) <= 1, (d, ms)
        if d.action == "none" and state.fencing is None and state.unreachable_since is None:
            break
    return ms, state, log


def test_a_healthy_store_needs_nothing() -> None:
    d = decide(members(100, 90, 80), State("db-0"), 0.0, DELAY)
    assert d.action == "none" and d.state == State("db-0")


def test_a_blip_shorter_than_the_delay_is_not_a_failover() -> None:
    ms = members(100, 90, 80)
    down = [dataclasses.replace(ms[0], reachable=False), *ms[1:]]
    first = decide(down, State("db-0"), 100.0, DELAY)
    assert first.action == "wait" and first.state.unreachable_since == 100.0
    later = decide(down, first.state, 105.0, DELAY)
    assert later.action == "wait" and "failing over in 5 s" in later.reason
    back = decide(ms, later.state, 106.0, DELAY)
    assert back.action == "none" and back.state.unreachable_since is None


def test_a_lost_primary_is_fenced_then_the_most_advanced_replica_promoted() -> None:
    ms = members(100, 90, 95)
    ms[0] = dataclasses.replace(ms[0], reachable=False)
    state = decide(ms, State("db-0"), 0.0, DELAY).state
    fence = decide(ms, state, 11.0, DELAY)
    # The record names the new primary before the old pod is deleted: its next incarnation starts as a replica.
    assert fence.action == "fence" and fence.member == "db-0"
    assert (fence.state.primary, fence.state.fencing, fence.state.epoch) == ("db-2", "db-0", 1)
    # Until the old primary is fenced, nobody is promoted.
    again = decide(ms, fence.state, 12.0, DELAY)
    assert again.action == "fence" and again.member == "db-0"
    ms = apply(ms, fence)
    promote = decide(ms, fence.state, 13.0, DELAY)
    assert promote.action == "promote" and promote.member == "db-2"
    assert promote.state == State("db-2", epoch=1)


def test_the_whole_failover_never_has_two_writers_and_the_old_primary_comes_back_as_replica() -> None:
    ms = members(100, 90, 95)
    ms[0] = dataclasses.replace(ms[0], reachable=False)
    ms, state, log = run(ms, State("db-0"), 0.0, steps=20)
    assert state.primary == "db-2" and state.epoch == 1
    assert [d.action for d in log if d.action != "wait"] == ["fence", "promote", "none"]
    assert writable(ms) == ["db-2"] and ms[1].following == "db-2"
    # A stale server comes back acting as a primary: demoted at once.
    ms[0] = dataclasses.replace(ms[0], reachable=True, fenced=False, role="primary", position=100)
    d = decide(ms, state, 50.0, DELAY)
    assert d.action == "demote" and d.member == "db-0" and "db-2 is the primary" in d.reason


def test_the_named_primary_acting_as_a_replica_is_promoted() -> None:
    # The operator stopped between recording db-2 and promoting it: it finishes when it is back.
    ms = members(100, 90, 95, primary=-1)
    d = decide(ms, State("db-2", epoch=1), 0.0, DELAY)
    assert d.action == "promote" and d.member == "db-2"


def test_the_old_primary_being_fenced_is_not_demoted_it_is_deleted() -> None:
    ms = members(100, 90, 95)  # db-0 answers again, but it is being fenced
    d = decide(ms, State("db-2", 1, fencing="db-0"), 0.0, DELAY)
    assert d.action == "fence" and d.member == "db-0"


def test_without_a_reachable_replica_it_waits_and_says_why() -> None:
    ms = members(100, None, 80)
    ms[0] = dataclasses.replace(ms[0], reachable=False)
    ms[2] = dataclasses.replace(ms[2], reachable=False)
    state = decide(ms, State("db-0"), 0.0, DELAY).state
    d = decide(ms, state, 30.0, DELAY)
    assert d.action == "wait" and "no replica that answers" in d.reason


def test_ties_go_to_the_lowest_ordinal_and_unknown_positions_never_win() -> None:
    ms = members(100, 90, 90, None)
    assert most_advanced(ms, exclude="db-0") == ms[1]


def test_a_chosen_replica_that_dies_before_promotion_is_replaced() -> None:
    ms = members(100, 90, 95)
    ms[0] = dataclasses.replace(ms[0], reachable=False, fenced=True)
    ms[2] = dataclasses.replace(ms[2], reachable=False)
    d = decide(ms, State("db-2", 1, fencing="db-0"), 20.0, DELAY)
    assert d.action == "wait" and (d.state.primary, d.state.epoch, d.state.fencing) == ("db-1", 2, "db-0")
    d = decide(ms, d.state, 21.0, DELAY)
    assert d.action == "promote" and d.member == "db-1"


def test_a_replica_following_an_old_primary_is_repointed() -> None:
    ms = members(100, 90, 95, primary=1)
    ms[2] = dataclasses.replace(ms[2], following="db-0")
    d = decide(ms, State("db-1", epoch=1), 0.0, DELAY)
    assert d.action == "repoint" and d.member == "db-2"
    # A host the operator cannot name (not one of the pods) is not a reason to re-point.
    ms[2] = dataclasses.replace(ms[2], following="10.0.0.9")
    assert decide(ms, State("db-1", epoch=1), 0.0, DELAY).action == "none"


def test_switchover_to_a_caught_up_replica() -> None:
    ms = members(100, 99, 80)
    d = request_switchover(ms, State("db-0"), "db-1", max_lag_bytes=1000)
    assert d.action == "switch" and d.member == "db-1" and d.state == State("db-1", 1)
    ms = apply(ms, d, old_primary="db-0")
    assert writable(ms) == ["db-1"] and ms[0].following == "db-1" and ms[2].following == "db-1"
    assert decide(ms, d.state, 1.0, DELAY).action == "none"


@pytest.mark.parametrize(
    ("to", "change", "reason"),
    [
        ("db-0", {}, "already the primary"),
        ("db-2", {}, "lags the primary by 20000 bytes (the bound is 1000)"),
        ("db-9", {}, "not a replica that answers"),
        ("db-1", {"db-1": {"reachable": False}}, "not a replica that answers"),
        ("db-1", {"db-0": {"reachable": False}}, "that is a failover"),
    ],
)
def test_a_switchover_that_cannot_be_done_safely_is_refused(to: str, change: dict, reason: str) -> None:
    ms = [dataclasses.replace(m, **change.get(m.name, {})) for m in members(100000, 99900, 80000)]
    d = request_switchover(ms, State("db-0"), to, max_lag_bytes=1000)
    assert d.action == "refuse" and reason in d.reason and d.state == State("db-0")


def test_no_switchover_during_a_failover() -> None:
    d = request_switchover(members(100, 90, 95, primary=2), State("db-2", 1, fencing="db-0"), "db-1", 1000)
    assert d.action == "refuse" and "failover to db-2 is under way" in d.reason


def test_a_primary_whose_pod_is_being_deleted_is_handed_over_without_waiting() -> None:
    ms = members(100, 90, 95)
    ms[0] = dataclasses.replace(ms[0], terminating=True)
    d = decide(ms, State("db-0"), 0.0, DELAY)
    assert d.action == "switch" and d.member == "db-2" and d.state == State("db-2", 1)
    # Gone quiet already: fenced at once (its pod is going anyway), then promoted.
    ms[0] = dataclasses.replace(ms[0], reachable=False, role="unknown")
    d = decide(ms, State("db-0"), 0.0, DELAY)
    assert d.action == "fence" and (d.state.primary, d.state.fencing) == ("db-2", "db-0")


def test_the_delay_counts_from_the_start_of_the_look_the_primary_did_not_answer() -> None:
    """The look began at 99.5 and the primary did not answer it (its timeout ended at 100): it has not answered
    since 99.5, and the delay is over at 99.5 + DELAY."""
    ms = members(100, 90, 95)
    down = [dataclasses.replace(ms[0], reachable=False), *ms[1:]]
    first = decide(down, State("db-0"), 100.0, DELAY, looked_at=99.5)
    assert first.action == "wait" and first.state.unreachable_since == 99.5
    assert decide(down, first.state, 99.5 + DELAY, DELAY).action == "fence"
