"""Retention: which complete backups, and which archived WAL files, may be deleted. Pure functions.

The rule for backups (``keep_last`` and/or ``max_age``):

- ``keep_last = N`` keeps the N newest complete backups (Barman's ``REDUNDANCY``, pgBackRest's count).
- ``max_age = D`` is a *recovery window*, as CloudNativePG (``retentionPolicy: 30d``) and Barman
  (``RECOVERY WINDOW OF``) define it: a restore must be possible to any moment of the last D. So it keeps
  every backup completed within the window **and the newest one completed before the window starts** — the
  base a restore to the window's first instant starts from. (For engines without WAL replay that is one
  backup just older than D: kept for the same rule on every engine.)
- Both set: a backup is deleted only when **both** rules would delete it (it is kept if either keeps it).
  Retention exists to save space, losing data is worse: ``keep_last=7, max_age=30d`` keeps at least seven
  backups however old, and everything needed for the last 30 days however many.
- Neither set: nothing is deleted.
- Whatever the policy, the newest complete backup is never deleted.

Only complete backups are given here (half-written ones are leftovers, cleaned by the catalog); the caller
passes each backup's completion time.

For WAL: an archived WAL file is needed by a backup if it is at or after the position where that backup
starts (on any timeline: a later timeline continues the earlier one's positions). Files before the oldest
kept backup's start segment are deletable; timeline history files are never deleted (tiny, and recovery
follows them across timelines).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class Policy:
    keep_last: int | None = None
    max_age: datetime.timedelta | None = None

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, not {self.keep_last}")
        if self.max_age is not None and self.max_age <= datetime.timedelta(0):
            raise ValueError(f"max_age must be positive, not {self.max_age}")


@dataclasses.dataclass(frozen=True)
class BackupRef:
    backup_id: str
    completed: datetime.datetime


def to_delete(backups: Iterable[BackupRef], policy: Policy, now: datetime.datetime) -> list[str]:
    """The ids of the complete backups the policy lets go, oldest first (see the module docstring)."""
    ordered = sorted(backups, key=lambda b: (b.completed, b.backup_id))
    if not ordered or (policy.keep_last is None and policy.max_age is None):
        return []
    kept = {ordered[-1].backup_id}  # the newest, whatever the policy
    if policy.keep_last is not None:
        kept.update(b.backup_id for b in ordered[-policy.keep_last :])
    if policy.max_age is not None:
        window_start = now - policy.max_age
        inside = [b for b in ordered if b.completed >= window_start]
        before = [b for b in ordered if b.completed < window_start]
        kept.update(b.backup_id for b in inside)
        if before:
            kept.add(before[-1].backup_id)
    return [b.backup_id for b in ordered if b.backup_id not in kept]


_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")
_HISTORY = re.compile(r"^[0-9A-F]{8}\.history$")


def _position(name: str) -> tuple[int, int] | None:
    """(log, segment) of a WAL file name, the timeline left out; None for names without a segment."""
    m = _SEGMENT.match(name)
    return (int(m.group(2), 16), int(m.group(3), 16)) if m else None


def wal_to_delete(kept_start_segments: Sequence[str], archived: Iterable[str]) -> list[str]:
    """Archived WAL file names before the oldest kept backup's start segment (sorted).

    ``kept_start_segments``: the start WAL segment name of each backup that stays. With none (or a malformed
    one), nothing is deleted: WAL is never removed on the strength of an empty or unknown list. Segment,
    ``.partial`` and ``.backup`` names compare by their position; the start segment itself is kept; history
    files stay.
    """
    starts = [p for p in (_position(s) for s in kept_start_segments) if p is not None]
    if not starts or len(starts) != len(kept_start_segments):
        return []
    oldest = min(starts)
    result = []
    for name in archived:
        if _HISTORY.match(name):
            continue
        pos = _position(name)
        if pos is not None and pos < oldest:
            result.append(name)
    return sorted(result)
