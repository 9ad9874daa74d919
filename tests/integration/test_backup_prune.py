"""Pruning a store's backup target on the real S3 server (MinIO), with WAL archived from a real PostgreSQL by the
``mlinfra archive wal`` process: after the oldest base backup is gone (as retention deletes it), the WAL before
the start of the oldest one kept is deleted, the WAL from it on is all still there, and a point-in-time restore
of the kept backup from what remains in the bucket gives exactly the rows committed before the target. A
half-written backup (objects without a manifest, as a killed upload leaves) goes once it is old; a young one,
and one a Backup may still be writing, stay.

The module starts its own primary (the archiver switches segments and creates a slot).
"""

from __future__ import annotations

import datetime
import io
import os
from typing import Any

import archive_support as support
import pytest
from test_backup_postgres import ROWS_PER_BATCH, insert_batch, rows, server_now, start_restored

from mlinfra.backup import catalog, pg_wal, recoverability
from mlinfra.devenv import procs
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.stores import backupprune

pytestmark = pytest.mark.integration

pg = support.own_primary("pg-prune")
setup = support.archive_fixture("prune", "pg-pruned")


def switch_wal(pg: PostgresCluster, table: str, batch: int) -> None:
    """A batch in a segment of its own: more archived segments between the two base backups."""
    insert_batch(pg, table, batch)
    with pg.primary.connect() as conn:
        conn.execute("SELECT pg_switch_wal()")


def leftover(s: support.Setup, started: datetime.datetime, name: str) -> str:
    """A half-written backup as a killed upload leaves it: its files uploaded, no manifest."""
    staging = s.root / f"staging-{name}"
    staging.mkdir()
    (staging / "base.tar").write_bytes(os.urandom(4096))
    (staging / "backup_manifest").write_text("{}")
    bid = catalog.new_backup_id(started)
    catalog.upload_backup(s.target, s.prefix, bid, staging, s.key, {}, engine="postgres", store=s.plan.store_ref)
    s.target.delete(catalog.manifest_key(s.prefix, bid))
    return bid


def objects_of(s: support.Setup, bid: str) -> list[str]:
    return [o.key for o in s.target.list(catalog.backup_dir(s.prefix, bid))]


def test_pruning_keeps_what_the_kept_backup_needs_and_its_point_in_time_restore_works(
    pg: PostgresCluster, setup: support.Setup
) -> None:
    s = setup
    table = support.create_table(pg, "prune")
    with support.archiving(s, s.root / "spool", "archiver") as running:
        insert_batch(pg, table, 1)
        oldest = support.take_base(pg, s)
        for batch in (2, 3, 4):
            switch_wal(pg, table, batch)
        support.wait_for_mark_after(s, server_now(pg), running)
        kept = support.take_base(pg, s)
        target = support.target_between(pg, table, 5, 6)
        support.wait_for_mark_after(s, target, running)

    # Retention lets the oldest Backup go: its delete handler removes it from the target.
    catalog.delete_backup(s.target, s.prefix, oldest.backup_id)
    start = str(kept.meta["start_segment"])
    archived = catalog.list_wal(s.target, s.prefix)
    size = int(kept.meta["wal_segment_size"])

    def position(name: str) -> int:  # the segment number, the timeline left out (marks: their segment's)
        return pg_wal.parse_segment(name[:24], size).segno

    before = [n for n in archived if pg_wal.history_timeline(n) is None and position(n) < position(start)]
    assert str(oldest.meta["start_segment"]) in before  # the WAL of the deleted backup's time is there to go
    assert any(pg_wal.parse_mark(n) for n in before) and start in archived

    # Leftovers, looked at as the operator will seven hours from now (MinIO stamps objects with the real time:
    # the look's clock is moved instead). Old: started a day ago. Young: started an hour before that look.
    # Busy: old, but a Backup not yet complete names its id.
    real_now = datetime.datetime.now(datetime.UTC)
    look_now = real_now + backupprune.LEFTOVER_GRACE + datetime.timedelta(hours=1)
    old = leftover(s, real_now - datetime.timedelta(days=1), "old")
    young = leftover(s, look_now - datetime.timedelta(hours=1), "young")
    busy = leftover(s, real_now - datetime.timedelta(days=1, seconds=-5), "busy")
    assert len({old, young, busy}) == 3

    found = catalog.survey(s.target, s.prefix, grace=backupprune.LEFTOVER_GRACE, now=look_now)
    assert [m.backup_id for m in found.complete] == [kept.backup_id] and found.unreadable == []
    assert sorted(found.leftovers) == sorted([old, busy])
    asked: list[bool] = []

    def writing() -> set[str]:
        asked.append(True)
        return {busy}

    done = backupprune.prune(s.target, s.prefix, found, archived, writing=writing)
    assert done.wal == before and not done.cut_short and asked == [True]
    assert list(done.leftovers) == [old] and done.leftover_objects == 2

    remaining = catalog.list_wal(s.target, s.prefix)
    assert remaining == [n for n in archived if n not in before]  # everything from the kept start on, untouched
    assert all(position(n) >= position(start) for n in remaining if pg_wal.history_timeline(n) is None)
    assert objects_of(s, old) == []
    assert len(objects_of(s, young)) == 2 and len(objects_of(s, busy)) == 2
    assert catalog.read_manifest(s.target, s.prefix, kept.backup_id).backup_id == kept.backup_id

    # A second look finds nothing more to delete.
    again = backupprune.prune(
        s.target,
        s.prefix,
        catalog.survey(s.target, s.prefix, now=real_now),
        catalog.list_wal(s.target, s.prefix),
        writing=lambda: set(),
    )
    assert again.wal == [] and again.leftovers == {}

    # What remains still restores: no gap after the kept backup, and a point in time after it.
    window = recoverability.read(s.target, s.prefix, s.key, s.plan.store_uid)
    assert window.gaps == [], [g.describe() for g in window.gaps]
    assert window.first is not None and window.last is not None and window.last.time is not None
    assert window.first.time == datetime.datetime.fromisoformat(kept.meta["stop_time"]) <= target <= window.last.time
    source = rows(pg.primary, table)
    wanted = [r for r in source if r[1] <= 5]
    assert len(wanted) == 5 * ROWS_PER_BATCH and all(r[2] > target for r in source if r[1] == 6)
    plan = pg_wal.plan_restore(kept.meta, remaining, target)
    base_dir, wal_dir = support.download(s, kept, plan, "pitr")
    with procs.ProcStack() as stack:
        restored, _ = start_restored(
            stack, s.root / "restored", "restored", pg.password, base_dir, wal_dir, target_time=target
        )
        assert rows(restored, table) == wanted


def test_a_foreign_object_in_the_archive_and_the_backups_is_never_deleted(setup: support.Setup) -> None:
    s = setup
    stranger: dict[str, Any] = {
        catalog.wal_prefix(s.prefix) + "000000010000000000000001.gz": b"someone else's",
        catalog.backups_prefix(s.prefix) + "notes.txt": b"mine",
        catalog.backups_prefix(s.prefix) + "20200101T000000Z-abcdef/README": b"not under files/",
    }
    for key, data in stranger.items():
        s.target.put(key, io.BytesIO(data), len(data))
    found = catalog.survey(s.target, s.prefix)
    assert found.complete == [] and found.leftovers == [] and found.unreadable == []
    done = backupprune.prune(s.target, s.prefix, found, catalog.list_wal(s.target, s.prefix), writing=lambda: set())
    assert done.wal == [] and done.leftovers == {}
    assert sorted(o.key for o in s.target.list(s.prefix + "/")) == sorted(stranger)
