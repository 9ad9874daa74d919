"""Conditions in the shape of metav1.Condition, computed as plain data (what status patches carry).

The one rule that matters: ``lastTransitionTime`` changes only when a condition's ``status`` flips, so a
recomputed condition list equals the stored one when nothing changed, and no status write happens.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Cond:
    """A condition as computed by a status function, before timestamps are attached."""

    type: str
    status: Status
    reason: str
    message: str = ""


def iso_utc(value: datetime.datetime) -> str:
    """A status timestamp: RFC 3339 in UTC with ``Z``, microseconds kept (watermarks compare exactly)."""
    return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def get(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    cond = get(conditions, type_)
    return cond is not None and cond.get("status") == "True"


def merge(
    previous: Sequence[Mapping[str, Any]] | None,
    computed: Iterable[Cond],
    generation: int | None,
    timestamp: str | None = None,
) -> list[dict[str, Any]]:
    """The new condition list: ``computed`` in order, each keeping its old transition time unless its
    status flipped. Conditions of other types (written by someone else) are kept after ours."""
    stamp = timestamp or now()
    result: list[dict[str, Any]] = []
    ours = set()
    for cond in computed:
        ours.add(cond.type)
        old = get(previous, cond.type)
        changed = old is None or old.get("status") != cond.status
        result.append(
            {
                "type": cond.type,
                "status": cond.status,
                "observedGeneration": generation,
                "lastTransitionTime": stamp if changed or not old else old.get("lastTransitionTime", stamp),
                "reason": cond.reason,
                "message": cond.message[:32768],
            }
        )
    result.extend(dict(c) for c in previous or () if c.get("type") not in ours)
    return result
