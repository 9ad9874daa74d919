"""What the operator deletes from a store's backup target that no backup needs: archived WAL older than the
oldest complete base backup (PostgreSQL), and the objects of half-written backups (every engine).

Run from :mod:`mlinfra.stores.backuprecovery`'s look at the target (at most once a minute per store, on the
listings that look already made: no second listing). ``spec.backup.suspend`` stops all of it, as it stops the
schedule and the retention of Backups (the user may be working on the bucket).

**WAL** is pruned only with ``spec.backup.retention`` (without it every backup is kept, and so is the WAL) and
only below the start segment of the oldest complete base backup on the target (``retention.wal_to_delete``):
a restore of a base backup replays from its start, so nothing before it is ever read, on any timeline (a
restore never goes back before its base's start; a later timeline continues the earlier one's positions, and
the comparison is by position, the timeline left out, so a segment at or after the start on *any* timeline
stays). History files always stay. The cut is not made when anything is uncertain: no complete base backup,
one without a readable start segment, or a manifest that is not ours or cannot be read (that backup may
need the WAL: :attr:`catalog.Survey.unreadable`). Archiver marks are named after the segment holding them and
go with it. Retention deleting the oldest Backup afterwards only raises the cut at the next look. A base
backup still being taken is safe too, though it is not counted: it carries its own WAL from start to end
(``pg_wal.tar``), so it needs the archive only from its end on, which is later than the start of any backup
already complete.

**Leftovers** (``files/`` objects under a backup id without a manifest: an upload that was killed) go when
their id and their newest object are older than :data:`LEFTOVER_GRACE` AND no Backup of the store that may
still be writing them names that id. The Backup check is the real guard (a running Job is seen by its
Backup); the age is the second one, for a writer the operator cannot see (a Backup deleted while its Job
still ran): it is long because one file of a large base backup is a single multipart upload, invisible in a
listing until it completes, so the newest *listed* object of a backup still uploading can be old.

Each look deletes at most :data:`MAX_DELETIONS` objects and stops at :data:`DEADLINE` seconds (oldest WAL
first): a backlog is worked off over several looks, and the observation that runs this has a bound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from mlinfra.api import backup as backup_api
from mlinfra.backup import catalog, retention
from mlinfra.backup.target import Target
from mlinfra.k8s import conditions

log = logging.getLogger(__name__)

MAX_DELETIONS = 1000
DEADLINE = 20.0  # seconds of deleting per look
LEFTOVER_GRACE = catalog.DEFAULT_GRACE
BACKUP_FAILED = "BackupFailed"  # backups.status.BACKUP_FAILED: the Job gave up, nothing writes any more


@dataclasses.dataclass
class Pruned:
    """What one look deleted: WAL names, and per leftover id its deleted object keys; ``cut_short`` when the
    budget ended it (the rest goes at the next look)."""

    wal: list[str] = dataclasses.field(default_factory=list)
    leftovers: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    cut_short: bool = False

    @property
    def leftover_objects(self) -> int:
        return sum(len(keys) for keys in self.leftovers.values())


def wal_victims(found: catalog.Survey, names: Iterable[str]) -> list[str]:
    """The archived WAL names no complete base backup needs, oldest first ([] whenever unsure: see the module
    docstring). Manifests of other engines do not count (they need no WAL)."""
    if found.unreadable:
        return []
    starts = [str(m.meta.get("start_segment") or "") for m in found.complete if m.engine == "postgres"]
    return retention.wal_to_delete(starts, names)


def wal_enabled(policy: backup_api.BackupPolicy) -> bool:
    return policy.retention is not None and not policy.suspend


def _backup_ids(body: Mapping[str, Any]) -> set[str]:
    """The ids a Backup writes under: the one its status records and the one its creation fixes (the Job may
    upload before the status naming the id is written)."""
    ids = set()
    status = body.get("status") or {}
    if status.get("backupId"):
        ids.add(str(status["backupId"]))
    meta = body.get("metadata") or {}
    with contextlib.suppress(KeyError, ValueError):
        ids.add(catalog.backup_id_of(str(meta["creationTimestamp"]), str(meta["uid"])))
    return ids


def writing_ids(items: Iterable[Mapping[str, Any]], store: str, store_uid: str) -> set[str]:
    """The backup ids that Backups of this store may still be writing: every one not complete (Ready) and not
    failed for good, including those being deleted (their Job may still run)."""
    ids: set[str] = set()
    for body in items:
        if ((body.get("spec") or {}).get("dataStoreRef") or {}).get("name") != store:
            continue
        status = body.get("status") or {}
        if status.get("storeUid") not in (None, store_uid):
            continue  # a Backup of an earlier store of the same name: another prefix
        ready = conditions.get(status.get("conditions"), "Ready") or {}
        if ready.get("status") == "True" or ready.get("reason") == BACKUP_FAILED:
            continue
        ids |= _backup_ids(body)
    return ids


def prune(
    target: Target,
    store_prefix: str,
    found: catalog.Survey,
    wal_names: Sequence[str] | None,
    *,
    writing: Callable[[], set[str]],
    limit: int = MAX_DELETIONS,
    deadline: float = DEADLINE,
    clock: Callable[[], float] = time.monotonic,
) -> Pruned:
    """Delete the WAL :func:`wal_victims` names (``wal_names`` None: no WAL pruning) and then the leftovers in
    ``found`` that ``writing()`` (called only when there are leftovers) does not name, within the budget."""
    out = Pruned()
    stop_at = clock() + deadline
    budget = limit

    def spent() -> bool:
        if budget <= 0 or clock() >= stop_at:
            out.cut_short = True
            return True
        return False

    for name in wal_victims(found, wal_names) if wal_names is not None else []:
        if spent():
            return out
        catalog.delete_wal(target, store_prefix, [name])
        out.wal.append(name)
        budget -= 1
    if not found.leftovers:
        return out
    busy = writing()
    for bid in found.leftovers:
        if bid in busy:
            continue
        if spent():
            return out
        out.leftovers[bid] = catalog.delete_leftover(target, store_prefix, bid)
        budget -= len(out.leftovers[bid])
    return out


def report(namespace: str, name: str, done: Pruned) -> None:
    """An info line when anything was deleted. (No metric: every mlinfra_ series must have a panel on the
    chart's dashboard, and this count is one to read in the log, not to watch.)"""
    if done.wal or done.leftovers:
        log.info(
            "backup target of DataStore %s/%s pruned: %d archived WAL files (%s to %s) before the oldest base "
            "backup, %d objects of %d half-written backups%s",
            namespace,
            name,
            len(done.wal),
            done.wal[0] if done.wal else "-",
            done.wal[-1] if done.wal else "-",
            done.leftover_objects,
            len(done.leftovers),
            " (budget reached: more at the next look)" if done.cut_short else "",
        )
