"""Pruning a store's backup target: archived WAL before the oldest complete base backup (never at or after
its start on any timeline, never history files, nothing when unsure), leftovers of half-written backups (never
one a Backup may still be writing, never a young one), the budget of one look, and the look that runs it."""

from __future__ import annotations

import datetime
import io
import logging
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest
from fakekube import FakeKube

from mlinfra.api import backup as backup_api
from mlinfra.backup import catalog, configured, pg_wal
from mlinfra.backup.target import NotFound, ObjectInfo
from mlinfra.config import Settings
from mlinfra.context import Context
from mlinfra.stores import backupaccess, backupprune, backuprecovery

pytestmark = pytest.mark.unit

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OLD = NOW - datetime.timedelta(days=2)
SIZE = 16 << 20
NS, STORE, UID = "ml", "pg", "uid-1"
PREFIX = configured.store_prefix(NS, STORE, UID)


class MemoryTarget:
    """An in-memory target whose objects carry a modification time the test sets."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, datetime.datetime]] = {}
        self.deleted: list[str] = []

    def describe(self) -> str:
        return "memory"

    def put(self, key: str, source: BinaryIO, size: int | None = None, when: datetime.datetime = OLD) -> None:
        self.objects[key] = (source.read(), when)

    def get(self, key: str, sink: BinaryIO) -> None:
        if key not in self.objects:
            raise NotFound(key)
        sink.write(self.objects[key][0])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                data, when = self.objects[key]
                yield ObjectInfo(key, len(data), when)

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)
        self.deleted.append(key)

    def check(self) -> None:
        pass

    def names(self, under: str) -> list[str]:
        return [k.removeprefix(under) for k in sorted(self.objects) if k.startswith(under)]


def seg(segno: int, timeline: int = 1) -> str:
    return pg_wal.segment_name(timeline, segno, SIZE)


def backup_id(when: datetime.datetime, tail: str = "abcdef") -> str:
    return f"{when:%Y%m%dT%H%M%SZ}-{tail}"


def add_backup(
    t: MemoryTarget, bid: str, start_segment: str | None, engine: str = "postgres", uid: str = UID
) -> catalog.Manifest:
    meta: dict[str, Any] = {"engine": engine}
    if start_segment is not None:
        meta["start_segment"] = start_segment
    if start_segment is not None and pg_wal.is_segment_name(start_segment):
        start = pg_wal.parse_segment(start_segment, SIZE)
        lsn = start.segno * SIZE
        meta.update(
            label=bid,
            timeline=start.timeline,
            start_lsn=pg_wal.format_lsn(lsn + 0x28),
            stop_lsn=pg_wal.format_lsn(lsn + 0x100),
            stop_time=OLD.isoformat(),
            stop_mark_lsn=pg_wal.format_lsn(lsn + 0x200),
            wal_segment_size=SIZE,
            system_identifier="7300000000000000001",
        )
    manifest = catalog.Manifest(
        backup_id=bid,
        engine=engine,
        store=catalog.StoreRef(NS, STORE, uid),
        started=OLD,
        completed=OLD,
        objects=(catalog.ManifestObject("files/base.tar", 1, 1, "0" * 64, False, None, 0o600),),
        dirs=(),
        meta=meta,
    )
    base = catalog.backup_dir(PREFIX, bid)
    t.put(base + "files/base.tar", io.BytesIO(b"x"))
    t.put(base + catalog.MANIFEST, io.BytesIO(manifest.to_json()))
    return manifest


def add_leftover(t: MemoryTarget, bid: str, when: datetime.datetime = OLD) -> None:
    base = catalog.backup_dir(PREFIX, bid)
    t.put(base + "files/base.tar", io.BytesIO(b"half"), when=when)
    t.put(base + "files/pg_wal.tar", io.BytesIO(b"half"), when=when)


def add_wal(t: MemoryTarget, *names: str) -> None:
    for name in names:
        t.put(catalog.wal_key(PREFIX, name), io.BytesIO(b""))


def mark(segno: int, timeline: int = 1) -> str:
    return pg_wal.Mark(seg(segno, timeline), NOW, segno * SIZE + 0x60).name


def survey(t: MemoryTarget) -> catalog.Survey:
    return catalog.survey(t, PREFIX, grace=backupprune.LEFTOVER_GRACE, now=NOW)


def nobody() -> set[str]:
    return set()


# --- which WAL goes ----------------------------------------------------------------------------------------


def test_wal_before_the_oldest_base_backups_start_goes_and_nothing_from_it_on() -> None:
    t = MemoryTarget()
    add_backup(t, backup_id(OLD, "aaaaaa"), seg(5))
    add_backup(t, backup_id(OLD + datetime.timedelta(hours=1), "bbbbbb"), seg(9))
    before = [seg(3), seg(4), seg(4) + ".partial", seg(4) + ".00000028.backup", mark(4)]
    after = [seg(5), seg(5) + ".00000028.backup", mark(5), seg(6), seg(9), seg(10) + ".partial"]
    add_wal(t, *before, *after, "00000002.history")
    got = backupprune.wal_victims(survey(t), catalog.list_wal(t, PREFIX))
    assert got == sorted(before)


def test_timelines_compare_by_position_and_history_files_stay() -> None:
    # A failover at segment 7 (timeline 2 starts there): a base backup taken on timeline 2 at segment 8 needs
    # nothing before 8 of either timeline; a segment of ANY timeline at or after 8 stays, even one of the
    # abandoned timeline 1 (unsure: keep).
    t = MemoryTarget()
    add_backup(t, backup_id(OLD), seg(8, 2))
    names = [seg(6), seg(7), seg(7, 2), seg(8), seg(8, 2), seg(9, 2), "00000002.history", mark(7, 2)]
    add_wal(t, *names)
    assert backupprune.wal_victims(survey(t), catalog.list_wal(t, PREFIX)) == sorted(
        [seg(6), seg(7), seg(7, 2), mark(7, 2)]
    )
    # A base backup still on timeline 1 before the switch keeps timeline 2 from its own start on.
    add_backup(t, backup_id(OLD - datetime.timedelta(hours=1), "cccccc"), seg(6))
    assert backupprune.wal_victims(survey(t), catalog.list_wal(t, PREFIX)) == []


@pytest.mark.parametrize(
    "case",
    ["no backup", "only a leftover", "no start segment", "malformed start segment", "unreadable manifest"],
)
def test_nothing_is_pruned_when_unsure(case: str) -> None:
    t = MemoryTarget()
    add_wal(t, seg(1), seg(2), seg(3))
    if case == "only a leftover":
        add_leftover(t, backup_id(OLD))
    elif case == "no start segment":
        add_backup(t, backup_id(OLD), seg(3))
        add_backup(t, backup_id(OLD, "bbbbbb"), None)
    elif case == "malformed start segment":
        add_backup(t, backup_id(OLD), "garbage")
    elif case == "unreadable manifest":
        add_backup(t, backup_id(OLD), seg(3))
        t.put(catalog.manifest_key(PREFIX, backup_id(OLD - datetime.timedelta(days=1))), io.BytesIO(b"{not ours"))
    found = survey(t)
    assert backupprune.wal_victims(found, catalog.list_wal(t, PREFIX)) == []
    assert backupprune.prune(t, PREFIX, found, catalog.list_wal(t, PREFIX), writing=nobody).wal == []
    assert t.names(catalog.wal_prefix(PREFIX)) == [seg(1), seg(2), seg(3)]


def test_other_engines_manifests_do_not_count_and_other_stores_bases_do() -> None:
    t = MemoryTarget()
    add_backup(t, backup_id(OLD, "aaaaaa"), None, engine="redis")  # needs no WAL: not a reason to keep all
    add_backup(t, backup_id(OLD, "bbbbbb"), seg(3), uid="another")  # a base backup: its WAL stays
    add_backup(t, backup_id(OLD, "cccccc"), seg(5))
    add_wal(t, seg(2), seg(3), seg(4))
    assert backupprune.wal_victims(survey(t), catalog.list_wal(t, PREFIX)) == [seg(2)]


# --- leftovers --------------------------------------------------------------------------------------------


def test_survey_is_one_listing_of_complete_unreadable_and_old_leftovers() -> None:
    t = MemoryTarget()
    complete = add_backup(t, backup_id(OLD, "aaaaaa"), seg(3))
    t.put(catalog.manifest_key(PREFIX, backup_id(OLD, "bbbbbb")), io.BytesIO(b'{"createdBy": "someone else"}'))
    add_leftover(t, backup_id(OLD, "cccccc"))
    add_leftover(t, backup_id(NOW - datetime.timedelta(minutes=5), "dddddd"), when=NOW)  # uploading
    add_leftover(t, backup_id(OLD, "eeeeee"), when=NOW)  # an old id whose newest object is young
    t.put(catalog.backups_prefix(PREFIX) + "notes.txt", io.BytesIO(b"foreign"))
    found = survey(t)
    assert [m.backup_id for m in found.complete] == [complete.backup_id]
    assert found.unreadable == [backup_id(OLD, "bbbbbb")]
    assert found.leftovers == [backup_id(OLD, "cccccc")]
    assert catalog.leftovers(t, PREFIX, grace=backupprune.LEFTOVER_GRACE, now=NOW) == found.leftovers


def test_old_leftovers_go_but_never_one_a_backup_may_be_writing() -> None:
    t = MemoryTarget()
    add_backup(t, backup_id(OLD, "aaaaaa"), seg(3))
    gone, busy = backup_id(OLD, "cccccc"), backup_id(OLD, "dddddd")
    add_leftover(t, gone)
    add_leftover(t, busy)
    foreign = catalog.backup_dir(PREFIX, gone) + "README"  # not files/: not ours, stays
    t.put(foreign, io.BytesIO(b"mine"))
    done = backupprune.prune(t, PREFIX, survey(t), None, writing=lambda: {busy})
    assert list(done.leftovers) == [gone] and done.leftover_objects == 2 and done.wal == []
    remaining = set(t.objects)
    assert foreign in remaining
    assert not [k for k in remaining if k.startswith(catalog.backup_dir(PREFIX, gone) + "files/")]
    assert len([k for k in remaining if k.startswith(catalog.backup_dir(PREFIX, busy))]) == 2
    assert catalog.manifest_key(PREFIX, backup_id(OLD, "aaaaaa")) in remaining


def test_the_backups_are_not_listed_without_a_leftover() -> None:
    t = MemoryTarget()
    add_backup(t, backup_id(OLD), seg(3))

    def boom() -> set[str]:
        raise AssertionError("listed the Backups for nothing")

    assert backupprune.prune(t, PREFIX, survey(t), None, writing=boom).leftovers == {}


def _backup(name: str, store: str = STORE, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "Backup",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"{name}0-1111-2222",
            "creationTimestamp": "2026-11-30T11:00:00Z",
        },
        "spec": {"dataStoreRef": {"name": store}},
        "status": status,
    }


def _ready(status: str, reason: str) -> dict[str, Any]:
    return {"conditions": [{"type": "Ready", "status": status, "reason": reason}]}


def test_writing_ids_are_the_backups_not_complete_nor_failed_of_this_store() -> None:
    items = [
        _backup("aaaaa"),  # just created: no status yet, the id its creation fixes
        _backup("bbbbb", backupId="20261130T110000Z-feedee", storeUid=UID, **_ready("False", "Running")),
        _backup("ccccc", backupId="20261130T110000Z-c0ffee", **_ready("True", "Complete")),
        _backup("ddddd", backupId="20261130T110000Z-dddddd", **_ready("False", "BackupFailed")),
        _backup("eeeee", store="other"),
        _backup("fffff", storeUid="uid-0"),  # a Backup of an earlier store of the same name
    ]
    assert backupprune.writing_ids(items, STORE, UID) == {
        "20261130T110000Z-aaaaa0",
        "20261130T110000Z-bbbbb0",
        "20261130T110000Z-feedee",
    }


# --- the budget -------------------------------------------------------------------------------------------


def test_a_look_deletes_at_most_the_limit_oldest_first_and_the_rest_next_time() -> None:
    t = MemoryTarget()
    add_backup(t, backup_id(OLD), seg(10))
    add_wal(t, *(seg(n) for n in range(1, 10)))
    add_leftover(t, backup_id(OLD, "cccccc"))
    done = backupprune.prune(t, PREFIX, survey(t), catalog.list_wal(t, PREFIX), writing=nobody, limit=4)
    assert done.wal == [seg(1), seg(2), seg(3), seg(4)] and done.cut_short and done.leftovers == {}
    done = backupprune.prune(t, PREFIX, survey(t), catalog.list_wal(t, PREFIX), writing=nobody, limit=10)
    assert done.wal == [seg(n) for n in range(5, 10)] and list(done.leftovers) == [backup_id(OLD, "cccccc")]
    assert not done.cut_short and t.names(catalog.wal_prefix(PREFIX)) == []


def test_a_look_stops_at_its_deadline() -> None:
    t = MemoryTarget()
    add_backup(t, backup_id(OLD), seg(10))
    add_wal(t, *(seg(n) for n in range(1, 10)))
    ticks = iter(range(100))
    done = backupprune.prune(
        t, PREFIX, survey(t), catalog.list_wal(t, PREFIX), writing=nobody, deadline=3.5, clock=lambda: next(ticks)
    )
    assert done.wal == [seg(1), seg(2), seg(3)] and done.cut_short


def test_report_logs_counts_only_when_something_went(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=backupprune.log.name):
        backupprune.report(NS, "reported", backupprune.Pruned(wal=[seg(1), seg(2)], leftovers={"x": ["a", "b", "c"]}))
        backupprune.report(NS, "quiet", backupprune.Pruned())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "2 archived WAL files" in lines[0] and "3 objects of 1 half-written" in lines[0]


# --- the look that runs it --------------------------------------------------------------------------------


def _policy(**extra: Any) -> backup_api.BackupPolicy:
    return backup_api.BackupPolicy.model_validate(
        {"target": {"s3": {"bucket": "b-1", "credentialsSecretRef": {"name": "s3"}}}, **extra}
    )


@pytest.fixture
def looked(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryTarget]:
    t = MemoryTarget()
    monkeypatch.setattr(backupaccess, "target", lambda spec, read, namespace, reach=None: t)
    add_backup(t, backup_id(OLD), seg(5))
    add_wal(t, seg(3), seg(4), seg(5))
    add_leftover(t, backup_id(OLD, "cccccc"))
    backuprecovery.forget(UID)
    yield t
    backuprecovery.forget(UID)


def _look(policy: backup_api.BackupPolicy, engine: str = "postgres") -> dict[str, Any]:
    kube = FakeKube()
    ctx = Context(settings=Settings(), kube=kube)
    body = {"metadata": {"name": STORE, "namespace": NS, "uid": UID}, "spec": {"engine": engine}}
    return backuprecovery.look(ctx, body, policy, None)


def test_the_look_prunes_wal_with_retention(looked: MemoryTarget) -> None:
    _look(_policy(retention={"keepLast": 3}))
    assert looked.names(catalog.wal_prefix(PREFIX)) == [seg(5)]
    assert backup_id(OLD, "cccccc") not in str(looked.objects)


def test_without_retention_only_leftovers_go(looked: MemoryTarget) -> None:
    _look(_policy())
    assert looked.names(catalog.wal_prefix(PREFIX)) == [seg(3), seg(4), seg(5)]
    assert backup_id(OLD, "cccccc") not in str(looked.objects)


def test_suspend_prunes_nothing(looked: MemoryTarget) -> None:
    _look(_policy(retention={"keepLast": 3}, suspend=True))
    assert looked.deleted == []


def test_other_engines_lose_their_leftovers_and_get_no_recoverability_fields(looked: MemoryTarget) -> None:
    assert _look(_policy(retention={"keepLast": 3}), engine="redis") == {}
    assert looked.names(catalog.wal_prefix(PREFIX)) == [seg(3), seg(4), seg(5)]  # not read for redis
    assert backup_id(OLD, "cccccc") not in str(looked.objects)


def test_a_failing_delete_is_logged_and_the_fields_still_come(
    looked: MemoryTarget, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mlinfra.backup.target import TargetError

    def refuse(key: str) -> None:
        raise TargetError(f"AccessDenied deleting {key}")

    monkeypatch.setattr(looked, "delete", refuse)
    with caplog.at_level(logging.WARNING):
        out = _look(_policy(retention={"keepLast": 3}))
    assert "walGaps" in out and "recoverabilityError" not in out
    assert any("pruning the backup target" in r.getMessage() for r in caplog.records)
