"""``mlinfra archive wal`` against a real PostgreSQL and the real S3 server (MinIO): the archiver process as its
Deployment runs it (the plan in the environment, the Secrets as files), a base backup taken into the same
store prefix, recoverability computed from the bucket alone, and a point-in-time restore from what is
downloaded from the bucket (base backup and the WAL the plan names) into a NEW data directory started as a
new server. Killing the archiver (SIGKILL, its whole process tree, as a container kill does) and starting it
again — on the same spool, then on an empty one (a new pod) — loses nothing: no gap, every row restored.

The module starts its own primary: the tests switch segments and create slots.
"""

from __future__ import annotations

import datetime

import archive_support as support
import pytest
from test_backup_postgres import ROWS_PER_BATCH, insert_batch, rows, server_now, start_restored

from mlinfra.backup import catalog, pg_wal, recoverability
from mlinfra.devenv import procs
from mlinfra.devenv.postgres import PostgresCluster

pytestmark = pytest.mark.integration

pg = support.own_primary("pg-wal-archive")
setup = support.archive_fixture("wal", "pg-archived")
served = support.served_archive_fixture("wal-claim", "pg-archived-vol")


def test_point_in_time_restore_through_s3_from_the_archiver_process(pg: PostgresCluster, setup: support.Setup) -> None:
    point_in_time_restore(pg, setup)


def test_point_in_time_restore_through_a_served_volume_from_the_archiver_process(
    pg: PostgresCluster, served: support.Setup
) -> None:
    """The same through a volume target's server (what a claim's pod runs): the archiver ships every segment
    and mark through it, and the restore reads them back from it."""
    point_in_time_restore(pg, served)


def point_in_time_restore(pg: PostgresCluster, s: support.Setup) -> None:
    table = support.create_table(pg, "arch")
    with support.archiving(s, s.root / "spool", "archiver") as running:
        insert_batch(pg, table, 1)
        manifest = support.take_base(pg, s)
        assert manifest.engine == "postgres" and manifest.encrypted
        target = support.target_between(pg, table, 2, 3)
        mark = support.wait_for_mark_after(s, target, running)
        status = running.status()
        assert status["lastSegment"] and status["lastMark"] and status["segmentsShipped"] > 0
        assert status["slot"] == s.plan.slot and status["lastError"] is None
    assert running.stopped["flushedMark"] is not None  # SIGTERM archives every commit made before it
    events = [line["event"] for line in running.lines()]
    assert events[0] == "started" and "status" in events and events[-2:] == ["stopping", "stopped"]
    secret_keys = ("secretAccessKey", "key", "token")  # the target's credential (S3 key or volume token), the key
    hidden = [
        pg.password,
        *(f.read_text() for d in s.secret_dirs.values() for f in d.iterdir() if f.name in secret_keys),
    ]
    for text in (running.out.read_text(), running.err.read_text(), (s.root / "spool" / "status.json").read_text()):
        assert not [h for h in hidden if h in text]

    names_ = catalog.list_wal(s.target, s.prefix)
    assert mark.name in names_ and not [n for n in names_ if n.endswith(".partial")]
    # Segments go compressed: one closed by a mark's switch is mostly zeros.
    stored = {o.key.rsplit("/", 1)[1]: o.size for o in s.target.list(catalog.wal_prefix(s.prefix))}
    segment_size = manifest.meta["wal_segment_size"]
    assert min(size for name, size in stored.items() if pg_wal.is_segment_name(name)) < segment_size // 4
    window = recoverability.read(s.target, s.prefix, s.key, s.plan.store_uid)
    assert window.first is not None and window.last is not None and window.gaps == []
    assert window.first.time is not None and window.last.time is not None
    assert window.first.time <= target <= window.last.time
    assert window.first.time == datetime.datetime.fromisoformat(manifest.meta["stop_time"])
    st = recoverability.to_status(window)
    assert st["walGaps"] == [] and st["lastRecoverabilityPoint"]["lsn"] == pg_wal.format_lsn(window.last.lsn)

    source = rows(pg.primary, table)
    before = [r for r in source if r[1] in (1, 2)]
    assert len(before) == 2 * ROWS_PER_BATCH
    assert all(r[2] < target for r in before) and all(r[2] > target for r in source if r[1] == 3)
    plan = pg_wal.plan_restore(manifest.meta, names_, target)
    assert plan.segments and plan.segments[0] == manifest.meta["stop_segment"]
    base_dir, wal_dir = support.download(s, manifest, plan, "pitr")
    with procs.ProcStack() as stack:
        restored, _ = start_restored(
            stack, s.root / "restored", "restored", pg.password, base_dir, wal_dir, target_time=target
        )
        assert rows(restored, table) == before


def test_killing_and_restarting_the_archiver_loses_nothing(pg: PostgresCluster, setup: support.Setup) -> None:
    s = setup
    table = support.create_table(pg, "arch")
    spool = s.root / "spool"
    first = support.Running(s, spool, "first")
    try:
        first.wait_running()
        manifest = support.take_base(pg, s)
        insert_batch(pg, table, 1)
        support.wait_for_mark_after(s, server_now(pg), first)
    finally:
        first.kill_tree()
    # Written while no archiver runs: the slot keeps this WAL on the server.
    insert_batch(pg, table, 2)
    with pg.primary.connect() as conn:
        conn.execute("SELECT pg_switch_wal()")
    insert_batch(pg, table, 3)

    second = support.Running(s, spool, "second")  # the same spool: a container restarted in its pod
    try:
        second.wait_running()
        insert_batch(pg, table, 4)
        support.wait_for_mark_after(s, server_now(pg), second)
    finally:
        second.kill_tree()
    insert_batch(pg, table, 5)

    with support.archiving(s, s.root / "new-spool", "third") as third:  # an empty spool: a new pod
        insert_batch(pg, table, 6)
        last = support.wait_for_mark_after(s, server_now(pg), third)
    source = rows(pg.primary, table)
    assert sorted({r[1] for r in source}) == [1, 2, 3, 4, 5, 6]

    names_ = catalog.list_wal(s.target, s.prefix)
    window = recoverability.read(s.target, s.prefix, s.key, s.plan.store_uid)
    assert window.gaps == [], [g.describe() for g in window.gaps]
    assert window.last is not None and window.last.time is not None and window.last.time >= last.time
    # To the end of the archive: every row, none lost across the kills.
    plan = pg_wal.plan_restore(manifest.meta, names_)
    base_dir, wal_dir = support.download(s, manifest, plan, "end")
    with procs.ProcStack() as stack:
        restored, _ = start_restored(stack, s.root / "restored", "restored", pg.password, base_dir, wal_dir)
        assert rows(restored, table) == source
