"""Who is the primary of a replicated store, and what the operator does next: the failover and switchover
decisions, pure (no Kubernetes, no database: ``stores.ha`` observes the members and acts on the decision).

The rules that keep a store from ever having two writers:

- The primary is data (``State.primary``, kept in the store's primary record and read by every pod when it
  starts), never an ordinal. It changes only through a decision of this module.
- A failover names the new primary first and then **fences** the old one: its pod is deleted, which also
  ends a process that is stopped rather than dead, and its next incarnation starts as a replica because the
  record names another. Only when the old pod is gone (``Member.fenced``) is the new primary **promoted**:
  between the two nobody takes writes, which is the price of never having two writers.
- It waits ``failover_delay`` seconds of continuous unreachability first, so that a blip is not a failover;
  without a reachable replica with a known position it waits, and says so.
- A member other than the named primary that acts as a primary (a stale server back from the dead) is
  demoted at once; the named primary found acting as a replica (the operator stopped between naming and
  promoting it) is promoted.
- A primary whose pod is being deleted is handed over at once, as a switchover while it still answers (its
  pod waits a few seconds before the server is stopped), fenced otherwise.
- A switchover holds the primary's writes, waits until the target has every byte, and only then makes the
  target the primary and the old one its replica. It is refused, with the reason, when the target is not a
  streaming replica or lags by more than the bound.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

Role = Literal["primary", "replica", "unknown"]
Action = Literal["none", "wait", "demote", "fence", "promote", "repoint", "switch", "refuse"]


@dataclasses.dataclass(frozen=True)
class Member:
    """One pod as the operator saw it just now, by connecting to it directly."""

    name: str
    ordinal: int
    reachable: bool
    role: Role = "unknown"
    position: int | None = None  # replication position (bytes): Redis offset, PostgreSQL WAL received
    following: str | None = None  # the member it replicates from, when a replica and known
    fenced: bool = False  # the pod being fenced is gone: the process that was primary can never write again
    terminating: bool = False  # its pod is being deleted (a drain, a rolling update, a user)


@dataclasses.dataclass(frozen=True)
class State:
    """What the primary record keeps between decisions (``unreachable_since`` is the operator's memory)."""

    primary: str
    epoch: int = 0  # primaries named so far
    fencing: str | None = None  # the old primary whose pod is being deleted before ``primary`` is promoted
    unreachable_since: float | None = None  # when the primary was first seen not answering


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    member: str | None  # the member the action is on
    reason: str  # for the event and the condition's message
    state: State  # the state to record (before acting: the record leads, the pods follow)


def most_advanced(members: Sequence[Member], exclude: str) -> Member | None:
    """The reachable replica with the highest known position (the lowest ordinal on a tie); None without one."""
    candidates = [
        m
        for m in members
        if m.name != exclude and m.reachable and not m.fenced and m.role == "replica" and m.position is not None
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda m: (-(m.position or 0), m.ordinal))


def decide(
    members: Sequence[Member], state: State, now: float, failover_delay: float, looked_at: float | None = None
) -> Decision:
    """The next step for a store whose members are ``members``; call again after acting on it. ``looked_at``:
    when the look that saw ``members`` began (a primary that did not answer it has not answered since then;
    ``now`` when omitted)."""
    seen = {m.name: m for m in members}
    primary = seen.get(state.primary)
    for m in members:
        if m.name not in (state.primary, state.fencing) and m.reachable and m.role == "primary":
            why = f"{m.name} acts as a primary but {state.primary} is the primary (epoch {state.epoch}): demoted"
            return Decision("demote", m.name, why, state)
    if state.fencing is not None:
        return _finish_failover(members, state)
    if primary is not None and primary.terminating and (primary.role == "primary" or not primary.reachable):
        # Its pod is going away: hand the primary over now rather than after the delay. While it still
        # answers, as a switchover (nothing acknowledged is lost); once it does not, fenced at once.
        candidate = most_advanced(members, exclude=state.primary)
        if candidate is not None:
            named = State(candidate.name, state.epoch + 1)
            if primary.reachable:
                why = f"{state.primary}'s pod is being deleted: {candidate.name} takes over (switchover)"
                return Decision("switch", candidate.name, why, named)
            why = f"{state.primary}'s pod is being deleted and it does not answer: {candidate.name} is promoted"
            return Decision("fence", state.primary, why, dataclasses.replace(named, fencing=state.primary))
    if primary is not None and primary.reachable:
        healed = dataclasses.replace(state, unreachable_since=None)
        if primary.role == "replica":
            why = f"{primary.name} is the primary (epoch {state.epoch}) but acts as a replica: promoted"
            return Decision("promote", primary.name, why, healed)
        for m in members:
            if m.reachable and m.role == "replica" and m.following in seen and m.following != state.primary:
                return Decision("repoint", m.name, f"{m.name} follows {m.following}: re-pointed", healed)
        if state.unreachable_since is not None:
            return Decision("none", None, f"{state.primary} answers again", healed)
        return Decision("none", None, f"{state.primary} is the primary", state)
    since = state.unreachable_since if state.unreachable_since is not None else min(now, looked_at or now)
    waiting = dataclasses.replace(state, unreachable_since=since)
    if now - since < failover_delay:
        left = failover_delay - (now - since)
        return Decision("wait", None, f"{state.primary} does not answer: failing over in {left:.0f} s", waiting)
    candidate = most_advanced(members, exclude=state.primary)
    if candidate is None:
        why = f"{state.primary} does not answer and no replica that answers can be promoted"
        return Decision("wait", None, why, waiting)
    fencing = State(candidate.name, state.epoch + 1, fencing=state.primary, unreachable_since=since)
    why = (
        f"{state.primary} did not answer for {now - since:.0f} s: fenced, then {candidate.name} "
        f"(position {candidate.position}) is promoted"
    )
    return Decision("fence", state.primary, why, fencing)


def _finish_failover(members: Sequence[Member], state: State) -> Decision:
    seen = {m.name: m for m in members}
    old = state.fencing
    assert old is not None
    gone = seen.get(old)
    if gone is not None and not gone.fenced:
        return Decision("fence", old, f"waiting for {old} to be fenced before {state.primary} is promoted", state)
    chosen = seen.get(state.primary)
    if chosen is None or not chosen.reachable:
        # The chosen replica went away meanwhile: choose again among those that answer (never the old one).
        again = most_advanced([m for m in members if m.name != old], exclude=state.primary)
        if again is None:
            return Decision("wait", None, f"{state.primary} does not answer and no other replica does", state)
        state = dataclasses.replace(state, primary=again.name, epoch=state.epoch + 1)
        return Decision(
            "wait", None, f"{chosen.name if chosen else 'the target'} went away: {again.name} chosen", state
        )
    done = State(chosen.name, state.epoch)
    return Decision("promote", chosen.name, f"{chosen.name} promoted (epoch {state.epoch}): {old} fenced", done)


def request_switchover(members: Sequence[Member], state: State, to: str, max_lag_bytes: int) -> Decision:
    """A planned switchover to ``to``: ``switch`` (the caller holds the primary's writes, waits until ``to``
    has every byte, and only then records and promotes it) or ``refuse`` with the reason."""
    seen = {m.name: m for m in members}
    primary, target = seen.get(state.primary), seen.get(to)
    if to == state.primary:
        return Decision("refuse", to, f"{to} is already the primary", state)
    if state.fencing is not None:
        return Decision("refuse", to, f"a failover to {state.primary} is under way", state)
    if primary is None or not primary.reachable or primary.role != "primary" or primary.position is None:
        return Decision("refuse", to, f"the primary {state.primary} does not answer: that is a failover", state)
    if target is None or not target.reachable or target.role != "replica" or target.position is None:
        return Decision("refuse", to, f"{to} is not a replica that answers", state)
    lag = primary.position - target.position
    if lag > max_lag_bytes:
        return Decision("refuse", to, f"{to} lags the primary by {lag} bytes (the bound is {max_lag_bytes})", state)
    switched = State(to, state.epoch + 1)
    return Decision(
        "switch", to, f"switchover: {to} promoted (epoch {switched.epoch}), {state.primary} follows it", switched
    )
