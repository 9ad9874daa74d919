from __future__ import annotations

from mlinfra.k8s import conditions
from mlinfra.k8s.conditions import Cond


def test_new_conditions_get_the_timestamp_and_generation() -> None:
    out = conditions.merge(None, [Cond("Ready", "True", "Ready", "ok")], generation=3, timestamp="T1")
    assert out == [
        {
            "type": "Ready",
            "status": "True",
            "observedGeneration": 3,
            "lastTransitionTime": "T1",
            "reason": "Ready",
            "message": "ok",
        }
    ]


def test_transition_time_changes_only_when_status_flips() -> None:
    first = conditions.merge(None, [Cond("Ready", "True", "Ready", "a")], 1, "T1")
    same = conditions.merge(first, [Cond("Ready", "True", "Ready", "other message")], 2, "T2")
    assert same[0]["lastTransitionTime"] == "T1"
    assert same[0]["observedGeneration"] == 2
    flipped = conditions.merge(same, [Cond("Ready", "False", "Unreachable", "down")], 2, "T3")
    assert flipped[0]["lastTransitionTime"] == "T3"


def test_recomputing_identical_conditions_is_equal() -> None:
    computed = [Cond("Ready", "True", "Ready"), Cond("Stalled", "False", "Ready")]
    first = conditions.merge(None, computed, 1, "T1")
    assert conditions.merge(first, computed, 1, "T2") == first


def test_foreign_conditions_are_kept() -> None:
    prev = [
        {"type": "example.com/Audited", "status": "True", "reason": "Done", "message": "", "lastTransitionTime": "T0"}
    ]
    out = conditions.merge(prev, [Cond("Ready", "True", "Ready")], 1, "T1")
    assert [c["type"] for c in out] == ["Ready", "example.com/Audited"]


def test_get_and_is_true() -> None:
    conds = conditions.merge(None, [Cond("Ready", "True", "Ready"), Cond("Stalled", "False", "Ready")], 1)
    assert conditions.is_true(conds, "Ready")
    assert not conditions.is_true(conds, "Stalled")
    assert conditions.get(conds, "Missing") is None
