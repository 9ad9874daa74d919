"""Scheduled backups and their retention (``DataStore.spec.backup.schedule / retention / suspend``), and the
store's ``status.backup``.

Where it runs: in the DataStore's observation (``stores.observe``), which Kopf already calls on a timer
(``observe_interval``, 15 s by default) and right after every reconcile. Not a second timer in the ``backups``
layer: a timer on DataStores would need Kopf wiring outside the one handler shape (``handlers/kind.py``), and
``status.backup`` would then come from a second writer of the DataStore's status, which the one status-write
path forbids. Here the Backups are plain dicts (created, listed, deleted through the Kube client) and the
retention rule is the ``backup`` library's, so ``stores`` needs nothing from ``backups``: deleting a Backup
object is enough, its delete handler (``backups.reconcile.delete``) removes its objects from the target.

The schedule is a cron in UTC. At each tick the latest slot at or before now is *due* when it is later than
both the store's creation and the slot recorded in ``status.backup.lastScheduledTime``; a due slot gets one
Backup named ``<store>-<yyyymmddhhmm of the slot>``. Only the latest slot is ever considered, so an operator
that was down over many slots makes one catch-up Backup, not one per missed slot (as a CronJob with a
starting deadline, or CloudNativePG's ScheduledBackup, do). The name is deterministic and created only when
absent, so a second tick in the same minute, or a status write that was lost, creates nothing. The recorded
slot also keeps a Backup deleted by hand from being made again.

Scheduled Backups are labelled ``mlinfra.io/datastore=<store>`` and ``mlinfra.io/scheduled=true`` and have
no ownerReference to the store: backups must outlive it (a restore names a Backup, not the store).

Retention applies to the scheduled Backups of *this* store only (the same name and the same uid in their
status: a store deleted and created again under the same name starts afresh), and only to complete ones
(Ready with ``completedAt``); on-demand Backups are the user's and never deleted by retention, though they
count in ``backupsKept``. The newest complete backup is never deleted. ``suspend: true`` stops both new
Backups and retention; lifting it makes at most one catch-up Backup.

Not here: leftovers of half-written backups on the target (they need the target's Secrets and S3 calls,
which the Backup side owns), and scheduled Backups that failed (kept, with their Stalled reason, for the user).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from croniter import croniter  # type: ignore[import-untyped]  # no stubs shipped

from mlinfra import metrics
from mlinfra.api import backup as backup_api
from mlinfra.api import base, common
from mlinfra.backup import retention
from mlinfra.k8s import conditions, objects

log = logging.getLogger(__name__)

DATASTORE_LABEL = "mlinfra.io/datastore"
SCHEDULED_LABEL = "mlinfra.io/scheduled"
MAX_NAME = 63


def _utc(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def latest_slot(cron: str, now: datetime.datetime) -> datetime.datetime:
    """The newest fire time of ``cron`` at or before ``now`` (UTC)."""
    # croniter's get_prev from an exact fire time returns the one before it: start just after now's second.
    start = now.astimezone(datetime.UTC).replace(microsecond=0) + datetime.timedelta(seconds=1)
    slot: datetime.datetime = croniter(cron, start).get_prev(datetime.datetime)
    return slot.astimezone(datetime.UTC)


def next_slot(cron: str, now: datetime.datetime) -> datetime.datetime:
    """The first fire time of ``cron`` after ``now`` (UTC)."""
    slot: datetime.datetime = croniter(cron, now.astimezone(datetime.UTC)).get_next(datetime.datetime)
    return slot.astimezone(datetime.UTC)


def due(cron: str, now: datetime.datetime, since: datetime.datetime) -> datetime.datetime | None:
    """The slot to back up now: the latest one at or before ``now`` when it is after ``since`` (the store's
    creation, or the last slot already backed up); None otherwise. Missed slots before it are not returned:
    one catch-up at most."""
    slot = latest_slot(cron, now)
    return slot if slot > since else None


def interval_seconds(cron: str, now: datetime.datetime) -> float:
    """The schedule's interval around now: the longer of the gap from the latest fire to the next and the gap
    before the latest fire. A backup older than twice that has missed two fires in a row; where a schedule
    rests (a weekday schedule's weekend, months a schedule leaves out) the gap is as long as the rest, so an
    alert comparing with it does not fire there. It changes only at a fire."""
    latest = latest_slot(cron, now)
    before: datetime.datetime = croniter(cron, latest).get_prev(datetime.datetime)
    return max((next_slot(cron, now) - latest).total_seconds(), (latest - before).total_seconds())


def backup_name(store: str, slot: datetime.datetime) -> str:
    """``<store>-<yyyymmddhhmm>``, at most 63 characters (a long store name is cut and a hash of it added)."""
    stamp = f"{slot.astimezone(datetime.UTC):%Y%m%d%H%M}"
    full = f"{store}-{stamp}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(store.encode()).hexdigest()[:8]
    head = store[: MAX_NAME - len(stamp) - len(digest) - 2].rstrip(".-")
    return f"{head}-{digest}-{stamp}"


def backup_body(namespace: str, store: str, slot: datetime.datetime) -> dict[str, Any]:
    return {
        "apiVersion": base.API_VERSION,
        "kind": "Backup",
        "metadata": {
            "name": backup_name(store, slot),
            "namespace": namespace,
            "labels": {DATASTORE_LABEL: store, SCHEDULED_LABEL: "true"},
            "annotations": {"mlinfra.io/scheduled-time": conditions.iso_utc(slot)},
        },
        "spec": {"dataStoreRef": {"name": store}},
    }


@dataclass(frozen=True)
class Known:
    """One Backup of the store as listed."""

    name: str
    uid: str
    scheduled: bool
    completed: datetime.datetime | None  # complete (Ready, with completedAt) when set


def _complete(body: Mapping[str, Any]) -> datetime.datetime | None:
    st = body.get("status") or {}
    ready = conditions.get(st.get("conditions"), "Ready")
    if ready is None or ready.get("status") != "True":
        return None
    return _utc(st.get("completedAt"))


def backups_of(items: Iterable[Mapping[str, Any]], store: str, store_uid: str) -> list[Known]:
    """The Backups of this store (by ``spec.dataStoreRef``; a complete one also by the uid it recorded), not
    being deleted."""
    found = []
    for body in items:
        meta = body.get("metadata") or {}
        if ((body.get("spec") or {}).get("dataStoreRef") or {}).get("name") != store or meta.get("deletionTimestamp"):
            continue
        uid = (body.get("status") or {}).get("storeUid")
        if uid is not None and uid != store_uid:
            continue  # a Backup of an earlier store of the same name
        labels = meta.get("labels") or {}
        scheduled = labels.get(SCHEDULED_LABEL) == "true" and labels.get(DATASTORE_LABEL) == store
        found.append(Known(str(meta["name"]), str(meta.get("uid", "")), scheduled, _complete(body)))
    return found


def policy_of(spec: backup_api.Retention | None) -> retention.Policy:
    if spec is None:
        return retention.Policy()
    return retention.Policy(
        keep_last=spec.keep_last, max_age=common.parse_duration(spec.max_age) if spec.max_age else None
    )


def to_delete(known: Sequence[Known], policy: retention.Policy, now: datetime.datetime) -> list[Known]:
    """The scheduled complete Backups retention lets go, oldest first. On-demand ones are neither candidates
    nor counted; the newest complete scheduled one is kept by ``retention.to_delete`` itself."""
    candidates = {k.name: k for k in known if k.scheduled and k.completed is not None}
    refs = [retention.BackupRef(k.name, k.completed) for k in candidates.values() if k.completed is not None]
    return [candidates[name] for name in retention.to_delete(refs, policy, now)]


def summary(
    known: Sequence[Known], last_scheduled: datetime.datetime | None, next_time: datetime.datetime | None
) -> dict[str, Any]:
    """``status.backup``: only values that change when something happened (a fire, a completion, a deletion)."""
    complete = sorted((k for k in known if k.completed is not None), key=lambda k: (k.completed, k.name))
    out: dict[str, Any] = {"backupsKept": len(complete)}
    if complete:
        newest = complete[-1]
        out["lastSuccessfulBackup"] = newest.name
        assert newest.completed is not None
        out["lastSuccessfulTime"] = conditions.iso_utc(newest.completed)
    if last_scheduled is not None:
        out["lastScheduledTime"] = conditions.iso_utc(last_scheduled)
    if next_time is not None:
        out["nextScheduledTime"] = conditions.iso_utc(next_time)
    return out


def tick(
    kube: objects.Kube,
    body: Mapping[str, Any],
    policy: backup_api.BackupPolicy | None,
    now: datetime.datetime,
) -> dict[str, Any] | None:
    """One look at the store's backups: create the due Backup, apply retention, and return ``status.backup``
    (None when the store has no spec.backup). Every call is one bounded API request (the client's 30 s)."""
    meta = body["metadata"]
    namespace, store, store_uid = str(meta["namespace"]), str(meta["name"]), str(meta.get("uid", ""))
    previous = (body.get("status") or {}).get("backup") or {}
    if policy is None:
        metrics.set_backup_interval(namespace, store, None)
        return None
    schedule = policy.schedule if not policy.suspend else None
    interval: float | None = None
    if schedule is not None:
        try:
            interval = interval_seconds(schedule, now)
        except ValueError as exc:  # croniter's: a schedule the API accepts but that never fires (0 0 30 2 *)
            log.warning("DataStore %s/%s: spec.backup.schedule %r is not used: %s", namespace, store, schedule, exc)
            schedule = None
    metrics.set_backup_interval(namespace, store, interval)
    last_scheduled = _utc(previous.get("lastScheduledTime"))
    next_time: datetime.datetime | None = None
    if schedule is not None:
        created = _utc(meta.get("creationTimestamp")) or now
        since = max(created, last_scheduled) if last_scheduled else created
        slot = due(schedule, now, since)
        if slot is not None:
            made = kube.create(backup_body(namespace, store, slot))
            if made is not None:
                log.info("scheduled Backup %s/%s created for %s", namespace, made["metadata"]["name"], slot)
            last_scheduled = slot
        next_time = next_slot(schedule, now)
    known = backups_of(kube.list_("Backup", namespace), store, store_uid)
    if not policy.suspend and policy.retention is not None:
        gone = set()
        for victim in to_delete(known, policy_of(policy.retention), now):
            if kube.delete("Backup", namespace, victim.name, uid=victim.uid or None):
                log.info("retention: Backup %s/%s deleted", namespace, victim.name)
            gone.add(victim.name)
        known = [k for k in known if k.name not in gone]
    return summary(known, last_scheduled, next_time)
