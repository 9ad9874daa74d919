"""The rebuild attempts of a VectorIndex as its Jobs show them, and what the operator does next (pure).

The truth decides, not a Job's word: the alias on the target means done (the caller checks it in Qdrant);
a rebuild Job of the target still active in Kubernetes, or the index's rebuild lock held in PostgreSQL, means
running; otherwise the newest attempt ended without moving the alias — Failed, or Complete without a swap
(on kwok every Job is Complete at once while nothing ran) — and the next one starts after a backoff from when
the operator first saw the attempt over (recorded on its Job: :data:`ENDED_ANNOTATION`), doubled per failed
attempt up to :data:`MAX_BACKOFF`.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from mlinfra.k8s import jobstatus
from mlinfra.vectors import jobs

ENDED_ANNOTATION = "mlinfra.io/rebuild-ended-at"  # when the operator first saw the attempt over (ISO, UTC)
ANNOUNCED_ANNOTATION = "mlinfra.io/rebuilt-announced"  # the Rebuilt event of this rebuild was posted
MAX_BACKOFF = datetime.timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class Attempt:
    number: int
    job: str  # the Job's name
    target: str
    active: bool  # not Complete nor Failed yet
    failed: str | None  # the Job's Failed condition ("<reason> <message>"), None when not failed
    ended_at: datetime.datetime | None  # ENDED_ANNOTATION
    announced: bool
    reasons: str  # why the rebuild (REASONS_ANNOTATION)


def attempt_of(job: Mapping[str, Any]) -> Attempt | None:
    """The attempt a rebuild Job is; None for a Job without the rebuild's labels (not ours to count)."""
    meta = job.get("metadata") or {}
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    try:
        number = int(labels.get(jobs.ATTEMPT_LABEL, ""))
    except ValueError:
        return None
    target = notes.get(jobs.TARGET_ANNOTATION)
    if not target:
        return None
    failed = jobstatus.condition(job, "Failed")
    ended = notes.get(ENDED_ANNOTATION)
    try:
        ended_at = datetime.datetime.fromisoformat(ended) if ended else None
    except ValueError:
        ended_at = None
    return Attempt(
        number=number,
        job=str(meta.get("name")),
        target=str(target),
        active=not jobstatus.finished(job),
        failed=f"{failed.get('reason', '')} {failed.get('message', '')}".strip() if failed else None,
        ended_at=ended_at,
        announced=ANNOUNCED_ANNOTATION in notes,
        reasons=str(notes.get(jobs.REASONS_ANNOTATION) or ""),
    )


def attempts_of(items: Iterable[Mapping[str, Any]]) -> list[Attempt]:
    """The rebuild attempts among ``items`` (Jobs), oldest first."""
    found = [a for a in map(attempt_of, items) if a is not None]
    return sorted(found, key=lambda a: (a.target, a.number))


def backoff(base: float, failed: int) -> datetime.timedelta:
    """The wait after ``failed`` failed attempts: ``base`` seconds doubled per attempt after the first."""
    seconds = base * 2 ** min(max(failed - 1, 0), 16)
    return min(datetime.timedelta(seconds=seconds), MAX_BACKOFF)


@dataclasses.dataclass(frozen=True)
class Decision:
    """``running``: nothing to start, look again soon. ``start``: create attempt ``attempt``. ``wait``: the
    newest attempt (``last``) failed; attempt ``attempt`` starts at ``next_at``."""

    action: Literal["running", "start", "wait"]
    attempt: int
    last: Attempt | None = None
    next_at: datetime.datetime | None = None


def running(attempts: Iterable[Attempt], lock_held: bool) -> bool:
    return lock_held or any(a.active for a in attempts)


def decide(attempts: list[Attempt], lock_held: bool, now: datetime.datetime, base: float) -> Decision:
    """What to do about a rebuild the alias shows is not done yet; ``attempts``: those of its target."""
    last = max(attempts, key=lambda a: a.number) if attempts else None
    if running(attempts, lock_held):
        return Decision("running", last.number if last else 0, last)
    if last is None:
        return Decision("start", 1)
    next_at = (last.ended_at or now) + backoff(base, last.number)
    if now >= next_at:
        return Decision("start", last.number + 1, last, next_at)
    return Decision("wait", last.number + 1, last, next_at)
