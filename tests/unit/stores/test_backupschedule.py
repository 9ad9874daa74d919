"""The schedule and retention of a DataStore's backups: fire times, one catch-up, names, idempotent ticks,
which Backups retention deletes (never on-demand ones, never the newest complete one), suspend."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra import metrics
from mlinfra.api import backup as backup_api
from mlinfra.backup import retention
from mlinfra.problems import Problem
from mlinfra.stores import backupschedule as sched
from mlinfra.stores import status

UTC = datetime.UTC
NS, STORE, UID = "ml", "cache", "uid-1"


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_latest_slot_includes_an_exact_fire_time_and_next_slot_is_after_now() -> None:
    assert sched.latest_slot("*/5 * * * *", at("2026-11-30T12:05:00")) == at("2026-11-30T12:05:00")
    assert sched.latest_slot("*/5 * * * *", at("2026-11-30T12:09:59.9")) == at("2026-11-30T12:05:00")
    assert sched.next_slot("*/5 * * * *", at("2026-11-30T12:05:00")) == at("2026-11-30T12:10:00")
    assert sched.next_slot("0 2 * * *", at("2026-11-30T12:05:00")) == at("2026-12-01T02:00:00")


def test_missed_slots_make_one_catch_up_the_latest() -> None:
    since = at("2026-11-30T00:00:00")
    # The operator was down from 00:00 to 05:30: five hourly slots missed, one Backup for the latest.
    assert sched.due("0 * * * *", at("2026-11-30T05:30:00"), since) == at("2026-11-30T05:00:00")
    # Once that slot is recorded, nothing more is due before the next one.
    assert sched.due("0 * * * *", at("2026-11-30T05:59:59"), at("2026-11-30T05:00:00")) is None
    assert sched.due("0 * * * *", at("2026-11-30T06:00:00"), at("2026-11-30T05:00:00")) == at("2026-11-30T06:00:00")


def test_no_slot_before_the_store_existed() -> None:
    created = at("2026-11-30T12:30:00")
    assert sched.due("0 2 * * *", at("2026-11-30T12:31:00"), created) is None
    assert sched.due("0 2 * * *", at("2026-12-01T02:00:05"), created) == at("2026-12-01T02:00:00")


def test_interval_is_the_gap_around_now_long_where_the_schedule_rests() -> None:
    monday = at("2026-11-30T12:00:00")
    assert sched.interval_seconds("* * * * *", monday) == 60
    assert sched.interval_seconds("0 */6 * * *", monday) == 6 * 3600
    assert sched.interval_seconds("@daily", monday) == 86400
    weekdays = "0 2 * * 1-5"
    assert sched.interval_seconds(weekdays, at("2026-12-05T12:00:00")) == 3 * 86400  # Saturday: Friday to Monday
    assert sched.interval_seconds(weekdays, at("2026-12-02T12:00:00")) == 86400  # Wednesday
    # Every 5 minutes in the first quarter: in June the rest (April to January) is the interval.
    assert sched.interval_seconds("*/5 * * JAN-MAR *", at("2026-06-01T00:00:00")) > 200 * 86400
    assert sched.interval_seconds("*/5 * * JAN-MAR *", at("2026-02-01T00:02:00")) == 300


def test_a_schedule_that_never_fires_makes_nothing_and_no_alert(kube: FakeKube) -> None:
    body, policy = _store("0 0 30 2 *")
    assert sched.tick(kube, body, policy, at("2026-11-30T12:05:01")) == {"backupsKept": 0}
    assert kube.writes == [] and (NS, STORE) not in metrics.BACKUP_SCHEDULE_INTERVAL._metrics


def test_names_are_the_slot_in_minutes_and_at_most_63_characters() -> None:
    slot = at("2026-11-30T12:05:00")
    assert sched.backup_name("cache", slot) == "cache-202611301205"
    long_a, long_b = "a" * 60 + "x", "a" * 60 + "y"
    name_a, name_b = sched.backup_name(long_a, slot), sched.backup_name(long_b, slot)
    assert len(name_a) <= 63 and name_a.endswith("-202611301205") and name_a != name_b
    assert sched.backup_name("s" * 50, slot) == "s" * 50 + "-202611301205"  # exactly 63
    assert len(sched.backup_name("d" * 48 + "." + "e" * 12, slot)) <= 63


def _known(name: str, completed: str | None, scheduled: bool = True) -> sched.Known:
    return sched.Known(name, f"uid-{name}", scheduled, at(completed) if completed else None)


def test_retention_deletes_the_oldest_scheduled_complete_backups_only() -> None:
    known = [
        _known("cache-1", "2026-11-30T10:00:00"),
        _known("by-hand", "2026-11-30T10:30:00", scheduled=False),
        _known("cache-2", "2026-11-30T11:00:00"),
        _known("cache-3", "2026-11-30T12:00:00"),
        _known("cache-4", None),  # running or failed: not a candidate
    ]
    victims = sched.to_delete(known, retention.Policy(keep_last=2), at("2026-11-30T12:01:00"))
    assert [v.name for v in victims] == ["cache-1"]
    # keepLast 1 deletes everything but the newest complete scheduled one, never the on-demand one.
    victims = sched.to_delete(known, retention.Policy(keep_last=1), at("2026-11-30T12:01:00"))
    assert [v.name for v in victims] == ["cache-1", "cache-2"]
    assert sched.to_delete(known, retention.Policy(), at("2026-11-30T12:01:00")) == []


def test_policy_of_the_spec() -> None:
    spec = backup_api.Retention(keep_last=3, max_age="48h")
    assert sched.policy_of(spec) == retention.Policy(keep_last=3, max_age=datetime.timedelta(hours=48))


def _store(schedule: str | None = "* * * * *", **policy: Any) -> tuple[dict[str, Any], backup_api.BackupPolicy]:
    spec = {
        "target": {"s3": {"bucket": "backups", "credentialsSecretRef": {"name": "s3"}}},
        **({"schedule": schedule} if schedule else {}),
        **policy,
    }
    body = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": STORE, "namespace": NS, "uid": UID, "creationTimestamp": "2026-11-30T12:00:30Z"},
        "spec": {"backup": spec},
    }
    return body, backup_api.BackupPolicy.model_validate(spec)


def _complete(kube: FakeKube, name: str, completed: str, uid: str = UID) -> None:
    found = kube.get("Backup", NS, name)
    found["status"] = {
        "completedAt": completed,
        "storeUid": uid,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Complete", "message": ""}],
    }
    kube.put(found)


def _names(kube: FakeKube) -> list[str]:
    return sorted(b["metadata"]["name"] for b in kube.kinds("Backup"))


def test_a_tick_creates_the_due_backup_once_labelled_and_without_owner(kube: FakeKube) -> None:
    body, policy = _store()
    assert sched.tick(kube, body, policy, at("2026-11-30T12:00:50")) == {"backupsKept": 0, **_next("12:01:00")}
    assert _names(kube) == []
    status = sched.tick(kube, body, policy, at("2026-11-30T12:01:02"))
    assert status == {"backupsKept": 0, "lastScheduledTime": "2026-11-30T12:01:00Z", **_next("12:02:00")}
    made = kube.get("Backup", NS, "cache-202611301201")
    assert made["metadata"]["labels"] == {"mlinfra.io/datastore": STORE, "mlinfra.io/scheduled": "true"}
    assert "ownerReferences" not in made["metadata"]
    assert made["spec"] == {"dataStoreRef": {"name": STORE}}
    # A second tick in the same minute, before the status was written, creates nothing.
    writes = len(kube.writes)
    assert sched.tick(kube, body, policy, at("2026-11-30T12:01:30")) == status
    assert len(kube.writes) == writes
    # With the status written, a Backup deleted by hand is not made again for its slot.
    body["status"] = {"backup": status}
    kube.delete("Backup", NS, "cache-202611301201")
    sched.tick(kube, body, policy, at("2026-11-30T12:01:40"))
    assert _names(kube) == []
    assert metrics.BACKUP_SCHEDULE_INTERVAL.labels(NS, STORE)._value.get() == 60


def _next(hhmmss: str) -> dict[str, str]:
    return {"nextScheduledTime": f"2026-11-30T{hhmmss}Z"}


def test_retention_deletes_the_oldest_and_status_counts_what_is_kept(kube: FakeKube) -> None:
    body, policy = _store(retention={"keepLast": 2})
    for minute in (1, 2, 3):
        sched.tick(kube, body, policy, at(f"2026-11-30T12:0{minute}:01"))
        _complete(kube, f"cache-20261130120{minute}", f"2026-11-30T12:0{minute}:20Z")
    # An on-demand Backup, older than all of them: never deleted by retention.
    kube.put(
        {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "Backup",
            "metadata": {"name": "by-hand", "namespace": NS},
            "spec": {"dataStoreRef": {"name": STORE}},
        }
    )
    _complete(kube, "by-hand", "2026-11-30T11:00:00Z")
    # A Backup of an earlier store of the same name: neither counted nor deleted.
    kube.put({**kube.get("Backup", NS, "by-hand"), "metadata": {"name": "old-store", "namespace": NS}})
    _complete(kube, "old-store", "2026-11-29T11:00:00Z", uid="uid-0")
    status = sched.tick(kube, body, policy, at("2026-11-30T12:03:30"))
    assert _names(kube) == ["by-hand", "cache-202611301202", "cache-202611301203", "old-store"]
    assert status == {
        "backupsKept": 3,
        "lastSuccessfulBackup": "cache-202611301203",
        "lastSuccessfulTime": "2026-11-30T12:03:20Z",
        "lastScheduledTime": "2026-11-30T12:03:00Z",
        **_next("12:04:00"),
    }


def test_suspend_makes_no_backup_and_deletes_none(kube: FakeKube) -> None:
    body, policy = _store(retention={"keepLast": 1})
    for minute in (1, 2):
        sched.tick(kube, body, policy, at(f"2026-11-30T12:0{minute}:01"))
        _complete(kube, f"cache-20261130120{minute}", f"2026-11-30T12:0{minute}:20Z")
    body, policy = _store(retention={"keepLast": 1}, suspend=True)
    status = sched.tick(kube, body, policy, at("2026-11-30T12:05:01"))
    assert _names(kube) == ["cache-202611301201", "cache-202611301202"]
    assert status is not None and "nextScheduledTime" not in status and status["backupsKept"] == 2
    assert (NS, STORE) not in metrics.BACKUP_SCHEDULE_INTERVAL._metrics  # no alert while suspended


def test_no_policy_no_status_and_no_api_call(kube: FakeKube) -> None:
    body, _ = _store()
    assert sched.tick(kube, body, None, at("2026-11-30T12:05:01")) is None
    assert kube.writes == []


@pytest.mark.parametrize("schedule", [None])
def test_without_a_schedule_only_status(kube: FakeKube, schedule: str | None) -> None:
    body, policy = _store(schedule)
    assert sched.tick(kube, body, policy, at("2026-11-30T12:05:01")) == {"backupsKept": 0}
    assert kube.writes == []


def test_a_store_problem_keeps_what_was_known_of_its_backups() -> None:
    body, _ = _store()
    body["spec"]["engine"] = "redis"
    body["metadata"]["generation"] = 2
    known = {"backupsKept": 2, "lastSuccessfulBackup": "cache-202611301203"}
    body["status"] = {"backup": known}
    new = status.problem_status(body, Problem("SecretNotFound", "connection Secret missing", stalled=False))
    assert new["backup"] == known
    assert not status.changed(body["status"], {**body["status"], "backup": known})
