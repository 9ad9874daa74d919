"""Status writes as JSON merge patches that say exactly what changed.

A merge patch merges nested objects: writing ``lineage: {pendingEvents: 0}`` over
``lineage: {pendingEvents: 2, oldestPendingAgeSeconds: 8}`` would keep the stale age. So keys that
disappeared are sent as ``null`` (which deletes them), at every depth; lists are replaced whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def merge_diff(old: Any, new: Any) -> Any:
    """The merge patch turning ``old`` into ``new`` (``new`` itself where they are not both objects)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_diff(old[key], value)
    for key in old:
        if key not in new and old[key] is not None:
            patch[key] = None
    return patch


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any], owned: Iterable[str]) -> dict[str, Any]:
    """The patch of the fields in ``owned`` (others' fields are left alone); empty when nothing changed."""
    owned = set(owned)
    before = {k: v for k, v in (old or {}).items() if k in owned}
    after = {k: v for k, v in new.items() if k in owned}
    diff = merge_diff(before, after)
    return dict(diff) if isinstance(diff, Mapping) else {}
