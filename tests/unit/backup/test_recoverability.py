"""Recoverability of a PostgreSQL store from its target: the catalog's WAL names (marks included), the pure
computation for the DataStore status, and the same read from a real (volume) target."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from mlinfra.backup import catalog, pg_wal, recoverability
from mlinfra.backup.pg_wal import Mark
from mlinfra.backup.target import VolumeTarget

MB = 1 << 20
SIZE = 16 * MB
T0 = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
PREFIX = "team-a/pg/uid-1"
STORE = catalog.StoreRef("team-a", "pg", "uid-1")


def seg(segno: int, timeline: int = 1) -> str:
    return pg_wal.segment_name(timeline, segno, SIZE)


def mark(segno: int, minutes: float, offset: int = 0x60) -> Mark:
    return Mark(seg(segno), T0 + datetime.timedelta(minutes=minutes), segno * SIZE + offset)


def base_meta(stop_lsn: str, minutes: float, mark_lsn: str) -> dict[str, object]:
    return {
        "engine": "postgres",
        "label": f"mlinfra-{stop_lsn}",
        "timeline": 1,
        "start_lsn": "0/1000028",
        "stop_lsn": stop_lsn,
        "stop_time": (T0 + datetime.timedelta(minutes=minutes)).isoformat(),
        "stop_mark_lsn": mark_lsn,
        "wal_segment_size": SIZE,
        "system_identifier": "7300000000000000001",
    }


B1 = base_meta("0/3000100", 0, "0/3000200")  # ends in segment 3


@pytest.mark.parametrize(
    "name",
    [
        seg(3),
        seg(3) + ".partial",
        seg(3) + ".00000028.backup",
        "00000002.history",
        mark(3, 1).name,
        Mark(seg(0x1FF), T0.replace(microsecond=123456), 0x1FF * SIZE).name,
    ],
)
def test_the_catalog_takes_every_name_the_archiver_ships(name: str) -> None:
    assert catalog.WAL_NAME.match(name)
    assert catalog.wal_key(PREFIX, name) == f"{PREFIX}/wal/{name}"


@pytest.mark.parametrize(
    "name",
    [
        "foreign.txt",
        seg(0x1A).lower(),
        seg(3) + ".mark",
        seg(3) + ".20261130T120000Z.0000000003000060.mark",  # no microseconds: not a mark of ours
        seg(3) + ".20261130T120000.000000Z.3000060.mark",  # the LSN is 16 hex digits
        mark(3, 1).name + ".tmp",
        "../" + mark(3, 1).name,
    ],
)
def test_the_catalog_refuses_other_names(name: str) -> None:
    assert not catalog.WAL_NAME.match(name)
    with pytest.raises(catalog.CatalogError):
        catalog.wal_key(PREFIX, name)


def test_a_window_from_the_base_backup_to_the_last_contiguous_mark() -> None:
    names = [seg(3), seg(4), mark(4, 2).name, seg(5), mark(5, 3).name]
    window = recoverability.compute([B1], names)
    st = recoverability.to_status(window)
    assert st["firstRecoverabilityPoint"] == {"time": "2026-11-30T12:00:00Z", "lsn": "0/3000100"}
    assert st["lastRecoverabilityPoint"] == {"time": "2026-11-30T12:03:00Z", "lsn": "0/6000000"}
    assert st["walGaps"] == [] and st["walGapCount"] == 0


def test_a_gap_cuts_the_window_and_is_reported() -> None:
    names = [seg(3), seg(4), mark(4, 2).name, seg(6), mark(6, 9).name]
    st = recoverability.to_status(recoverability.compute([B1], names))
    assert st["lastRecoverabilityPoint"]["time"] == "2026-11-30T12:02:00Z"  # not 12:09: segment 5 is missing
    assert st["walGaps"] == [
        {
            "from": seg(5),
            "to": seg(5),
            "count": 1,
            "message": f"WAL segment {seg(5)} is missing from the archive (after {seg(4)}, before {seg(6)})",
        }
    ]


def test_without_a_mark_the_last_point_has_no_time() -> None:
    st = recoverability.to_status(recoverability.compute([B1], [seg(4)]))
    # The base backup's segment 3 is not archived: its own mark does not count, so the end of the base backup
    # is reachable only as "the end" (by LSN), not as a time.
    assert st["lastRecoverabilityPoint"] == {"time": None, "lsn": "0/3000100"}
    assert st["walGapCount"] == 1


def test_nothing_is_recoverable_without_a_base_backup() -> None:
    st = recoverability.to_status(recoverability.compute([], [seg(3), mark(3, 1).name]))
    assert st == {"firstRecoverabilityPoint": None, "lastRecoverabilityPoint": None, "walGaps": [], "walGapCount": 0}


def test_many_gaps_are_counted_but_not_all_listed() -> None:
    names = [seg(3)] + [seg(n) for n in range(5, 5 + 2 * (recoverability.MAX_GAPS + 5), 2)]
    st = recoverability.to_status(recoverability.compute([B1], names))
    assert len(st["walGaps"]) == recoverability.MAX_GAPS and st["walGapCount"] == recoverability.MAX_GAPS + 5


def _manifest(meta: dict[str, object], engine: str = "postgres", uid: str = "uid-1") -> catalog.Manifest:
    return catalog.Manifest(
        backup_id="20261130T120000Z-abcdef",
        engine=engine,
        store=catalog.StoreRef("team-a", "pg", uid),
        started=T0,
        completed=T0,
        objects=(),
        dirs=(),
        meta=dict(meta),
    )


def test_only_postgres_base_backups_of_the_store_count() -> None:
    redis = _manifest({"engine": "redis", "keys": 3}, engine="redis")
    other = _manifest(base_meta("0/9000100", 5, "0/9000200"), uid="uid-2")
    assert recoverability.postgres_bases([_manifest(B1), redis, other], "uid-1") == [B1]
    assert len(recoverability.postgres_bases([_manifest(B1), redis, other])) == 2


def _put(target: VolumeTarget, tmp_path: Path, name: str, data: bytes = b"") -> None:
    path = tmp_path / "spool" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data or name.encode())
    catalog.put_wal(target, PREFIX, path, None)


def test_read_lists_the_target_and_fetches_only_the_histories(tmp_path: Path) -> None:
    target = VolumeTarget(tmp_path / "bucket")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "base.tar").write_bytes(b"base")
    catalog.upload_backup(target, PREFIX, "20261130T115900Z-abcdef", staging, None, B1, engine="postgres", store=STORE)
    for name in (seg(3), seg(4), mark(4, 2).name):
        _put(target, tmp_path, name)
    # A promotion at 0/5000100: timeline 2 continues in segment 5; timeline 1's own segment 5 is abandoned.
    _put(target, tmp_path, "00000002.history", b"1\t0/5000100\tno recovery target specified\n")
    for name in (seg(5, 2), mark(5, 4).name.replace(seg(5), seg(5, 2))):
        _put(target, tmp_path, name)
    # The old primary went on writing timeline 1 after the promotion: not on the restored timeline's path.
    for name in (seg(6), mark(6, 9).name):
        _put(target, tmp_path, name)
    st = recoverability.to_status(recoverability.read(target, PREFIX, None))
    assert st["walGaps"] == []
    # 12:04, not 12:09: the history file was fetched, so timeline 1's segment 6 does not extend timeline 2.
    assert st["lastRecoverabilityPoint"]["time"] == "2026-11-30T12:04:00Z"
    names = catalog.list_wal(target, PREFIX)
    assert recoverability.to_status(recoverability.compute([B1], names))["lastRecoverabilityPoint"]["time"] == (
        "2026-11-30T12:09:00Z"
    )
