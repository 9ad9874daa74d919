from __future__ import annotations

from mlinfra.k8s.patches import merge_diff, status_patch


def test_nested_keys_that_disappear_are_deleted() -> None:
    old = {"lineage": {"pendingEvents": 2, "oldestPendingAgeSeconds": 8}, "x": 1}
    new = {"lineage": {"pendingEvents": 0}, "x": 1}
    assert merge_diff(old, new) == {"lineage": {"pendingEvents": 0, "oldestPendingAgeSeconds": None}}


def test_lists_are_replaced_whole_and_equal_values_omitted() -> None:
    old = {"conditions": [{"type": "Ready"}], "members": [1, 2]}
    new = {"conditions": [{"type": "Ready"}, {"type": "Stalled"}], "members": [1, 2]}
    assert merge_diff(old, new) == {"conditions": [{"type": "Ready"}, {"type": "Stalled"}]}


def test_status_patch_touches_only_owned_fields() -> None:
    old = {"mine": {"a": 1}, "theirs": 5}
    assert status_patch(old, {"mine": {"a": 1}}, ["mine"]) == {}
    assert status_patch(old, {}, ["mine"]) == {"mine": None}
    assert status_patch(None, {"mine": {"a": 2}, "theirs": 9}, ["mine"]) == {"mine": {"a": 2}}
