"""WAL segment arithmetic, gap detection across timelines, and what an archive can restore (names only)."""

from __future__ import annotations

import datetime
import re

import pytest

from mlinfra.backup import pg_wal
from mlinfra.backup.pg_wal import Gap, Mark, RestoreRefused, WalError

MB = 1 << 20
SIZES = [1 * MB, 2 * MB, 16 * MB, 64 * MB, 256 * MB, 1024 * MB]
T0 = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)


def names(timeline: int, segnos: range | list[int], size: int = 16 * MB) -> list[str]:
    return [pg_wal.segment_name(timeline, n, size) for n in segnos]


# --- LSNs and names ------------------------------------------------------------------------------------


def test_lsn_round_trip() -> None:
    assert pg_wal.parse_lsn("16/B374D848") == 0x16B374D848
    assert pg_wal.format_lsn(0x16B374D848) == "16/B374D848"
    assert pg_wal.format_lsn(0) == "0/0"
    assert pg_wal.parse_lsn("FFFFFFFF/FFFFFFFF") == (1 << 64) - 1


@pytest.mark.parametrize("text", ["", "16", "16/", "/1", "x/1", "1/123456789", "1:2"])
def test_bad_lsns_are_refused(text: str) -> None:
    with pytest.raises(WalError):
        pg_wal.parse_lsn(text)


@pytest.mark.parametrize("size", [0, MB - 1, MB // 2, 3 * MB, 2048 * MB, 16 * MB + 1])
def test_segment_sizes_postgresql_does_not_allow_are_refused(size: int) -> None:
    with pytest.raises(WalError):
        pg_wal.check_segment_size(size)


def test_names_postgresql_writes_for_16mb_segments() -> None:
    size = 16 * MB
    # Known names: LSN 0/3000028 is in segment 3; 1/0 starts the second "log id" (256 segments of 16 MB).
    assert pg_wal.segment_name(1, pg_wal.segment_of(pg_wal.parse_lsn("0/3000028"), size), size) == (
        "000000010000000000000003"
    )
    assert pg_wal.segment_name(1, pg_wal.segment_of(pg_wal.parse_lsn("1/0"), size), size) == (
        "000000010000000100000000"
    )
    assert pg_wal.segment_name(2, 255, size) == "0000000200000000000000FF"
    assert pg_wal.segment_name(0x1A, pg_wal.segment_of(pg_wal.parse_lsn("16/B374D848"), size), size) == (
        "0000001A00000016000000B3"
    )


@pytest.mark.parametrize("size", SIZES)
def test_names_and_numbers_round_trip_for_every_segment_size(size: int) -> None:
    per_id = 0x100000000 // size
    for segno in [0, 1, per_id - 1, per_id, per_id + 1, 5 * per_id + 3]:
        name = pg_wal.segment_name(3, segno, size)
        assert pg_wal.parse_segment(name, size) == pg_wal.Segment(segno, 3)
        # The LSN arithmetic agrees with the name: the segment's first byte is at segno * size.
        assert pg_wal.segment_of(pg_wal.segment_start(segno, size), size) == segno
        assert pg_wal.segment_of(pg_wal.segment_start(segno + 1, size) - 1, size) == segno


def test_the_same_name_is_another_segment_for_another_size() -> None:
    name = "000000010000000100000002"
    assert pg_wal.parse_segment(name, 16 * MB).segno == 256 + 2
    assert pg_wal.parse_segment(name, 1 * MB).segno == 4096 + 2
    # 1 GB segments: four per log id, so a low part of 4 does not exist.
    with pytest.raises(WalError):
        pg_wal.parse_segment("000000010000000000000004", 1024 * MB)
    assert pg_wal.parse_segment("000000010000000100000000", 1024 * MB).segno == 4


@pytest.mark.parametrize(
    "name", ["00000001000000000000000", "00000000000000000000000A", "zz", "0000000100000000000000AA.partial"]
)
def test_not_segment_names(name: str) -> None:
    with pytest.raises(WalError):
        pg_wal.parse_segment(name, 16 * MB)


def test_history_files() -> None:
    assert pg_wal.history_timeline("00000002.history") == 2
    assert pg_wal.history_timeline("000000010000000000000002") is None
    assert pg_wal.history_name(0x1A) == "0000001A.history"
    text = "1\t0/5000100\tno recovery target specified\n\n# comment\n2\t0/9000000\tafter promote\n"
    assert pg_wal.parse_history(text) == [(1, 0x5000100), (2, 0x9000000)]
    with pytest.raises(WalError):
        pg_wal.parse_history("1\n")


def test_mark_names_round_trip() -> None:
    when = datetime.datetime(2026, 11, 30, 13, 4, 5, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    mark = Mark("000000010000000000000003", when, 0x3000060)
    assert mark.name == "000000010000000000000003.20261130T110405.123456Z.0000000003000060.mark"
    parsed = pg_wal.parse_mark(mark.name)
    assert parsed == mark  # equal instants, whatever the zone
    assert pg_wal.parse_mark("000000010000000000000003") is None
    with pytest.raises(WalError):
        Mark("000000010000000000000003", when.replace(tzinfo=None), 1)


# --- gaps ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_a_contiguous_archive_has_no_gap(size: int) -> None:
    per_id = 0x100000000 // size
    run = range(per_id - 3, per_id + 3)  # across the boundary of two log ids
    assert pg_wal.wal_gaps(names(1, run, size), size) == []


@pytest.mark.parametrize("size", SIZES)
def test_gaps_name_the_missing_segments(size: int) -> None:
    per_id = 0x100000000 // size
    b = 2 * per_id  # the second gap crosses into the next log id
    present = [b + 1, b + 2, b + 3, b + 5, b + per_id + 10, b + per_id + 11]
    gaps = pg_wal.wal_gaps([*names(1, present, size), "00000001.history", "junk"], size)
    assert gaps == [
        Gap(*names(1, [b + 3, b + 5, b + 4, b + 4], size), 1),
        Gap(*names(1, [b + 5, b + per_id + 10, b + 6, b + per_id + 9], size), per_id + 4),
    ]
    assert gaps[0].describe() == (
        f"WAL segment {pg_wal.segment_name(1, b + 4, size)} is missing from the archive "
        f"(after {pg_wal.segment_name(1, b + 3, size)}, before {pg_wal.segment_name(1, b + 5, size)})"
    )


def test_a_required_start_that_is_missing_is_a_gap() -> None:
    gaps = pg_wal.wal_gaps(names(1, [7, 8]), 16 * MB, start="000000010000000000000005")
    assert gaps == [Gap(None, "000000010000000000000007", *names(1, [5, 6]), 2)]
    nothing = pg_wal.wal_gaps([], 16 * MB, start="000000010000000000000005")
    assert [(g.first_missing, g.count) for g in nothing] == [("000000010000000000000005", 1)]


def test_a_new_timeline_continues_the_previous_one() -> None:
    # Promotion at 0/5000100: timeline 2 starts with segment 5 (its copy of the switch segment).
    archived = [*names(1, [3, 4]), "00000001000000000000005.partial", *names(2, [5, 6, 7]), "00000002.history"]
    assert pg_wal.wal_gaps(archived, 16 * MB) == []
    histories = {2: "1\t0/5000100\tpromoted\n"}
    assert pg_wal.wal_gaps(archived, 16 * MB, histories) == []


def test_with_history_the_switch_segment_must_come_from_the_new_timeline() -> None:
    histories = {2: "1\t0/5000100\tpromoted\n"}
    # Timeline 1's segments 5 and 6 were written by the old primary after the fork: not on the path.
    archived = [*names(1, [3, 4, 5, 6]), *names(2, [7, 8])]
    assert pg_wal.wal_gaps(archived, 16 * MB) == []  # without the history any timeline counts
    gaps = pg_wal.wal_gaps(archived, 16 * MB, histories)
    assert gaps == [Gap("000000010000000000000004", "000000020000000000000007", *names(2, [5, 6]), 2)]


def test_two_switches_and_an_abandoned_branch() -> None:
    histories = {
        2: "1\t0/5000100\tpromoted\n",
        3: "1\t0/5000100\tpromoted\n2\t0/8800000\tpromoted again\n",
    }
    archived = [*names(1, [4]), *names(2, [5, 6, 7, 8]), *names(3, [8, 9])]
    assert pg_wal.wal_gaps(archived, 16 * MB, histories) == []
    # Timeline 2's segment 9 (after timeline 3 forked at segment 8) is ignored, not a substitute for 3's.
    archived = [*names(1, [4]), *names(2, [5, 6, 7, 8, 9]), *names(3, [8, 10])]
    gaps = pg_wal.wal_gaps(archived, 16 * MB, histories)
    assert [(g.first_missing, g.count) for g in gaps] == [("000000030000000000000009", 1)]


# --- recoverability and restore plans ------------------------------------------------------------------


def base(
    stop_lsn: str, stop_time: datetime.datetime, mark_lsn: str | None = None, **extra: object
) -> dict[str, object]:
    return {
        "label": f"mlinfra-{stop_lsn}",
        "timeline": 1,
        "start_lsn": "0/1000028",
        "stop_lsn": stop_lsn,
        "stop_time": stop_time.isoformat(),
        "stop_mark_lsn": mark_lsn or stop_lsn,
        "wal_segment_size": 16 * MB,
        "system_identifier": "7300000000000000001",
        **extra,
    }


def mark(segno: int, minutes: float, offset: int = 0x60) -> str:
    return Mark(
        pg_wal.segment_name(1, segno, 16 * MB), T0 + datetime.timedelta(minutes=minutes), segno * 16 * MB + offset
    ).name


B1 = base("0/3000100", T0, "0/3000200")
B2 = base("0/8000100", T0 + datetime.timedelta(minutes=30), "0/8000200")


def test_recoverability_spans_the_oldest_base_to_the_last_archived_mark() -> None:
    archive = [*names(1, range(3, 12)), mark(5, 10), mark(11, 50)]
    window = pg_wal.recoverability([B2, B1], archive)
    assert window.first == pg_wal.Point(T0, 0x3000100)
    assert window.last == pg_wal.Point(T0 + datetime.timedelta(minutes=50), 12 * 16 * MB)
    assert window.gaps == []


def test_a_gap_truncates_the_last_point() -> None:
    archive = [*names(1, [3, 4, 5, 6, 8, 9, 10, 11]), mark(5, 10), mark(9, 40), mark(11, 50)]
    window = pg_wal.recoverability([B1], archive)
    assert window.last == pg_wal.Point(T0 + datetime.timedelta(minutes=10), 7 * 16 * MB)
    assert [g.first_missing for g in window.gaps] == ["000000010000000000000007"]
    # A newer base backup after the gap reaches the end again.
    window = pg_wal.recoverability([B1, B2], archive)
    assert window.last == pg_wal.Point(T0 + datetime.timedelta(minutes=50), 12 * 16 * MB)
    assert window.first == pg_wal.Point(T0, 0x3000100)


def test_without_archived_marks_the_last_point_has_no_time() -> None:
    window = pg_wal.recoverability([B1], [])
    assert window.last == pg_wal.Point(None, 0x3000100)
    assert pg_wal.recoverability([], ["x"]) == pg_wal.Recoverability(None, None, [])


def test_choose_base_takes_the_newest_that_ended_before_the_target() -> None:
    assert pg_wal.choose_base([B1, B2], T0 + datetime.timedelta(minutes=29)) is B1
    assert pg_wal.choose_base([B2, B1], T0 + datetime.timedelta(minutes=30)) is B2
    assert pg_wal.choose_base([B1, B2], None) is B2
    with pytest.raises(RestoreRefused, match="earliest recoverability point"):
        pg_wal.choose_base([B1, B2], T0 - datetime.timedelta(seconds=1))
    with pytest.raises(RestoreRefused, match="time zone"):
        pg_wal.choose_base([B1], T0.replace(tzinfo=None))


def test_plan_refuses_targets_outside_the_reach_and_says_what_is_reachable() -> None:
    archive = [*names(1, [3, 4, 5, 7, 8]), mark(4, 10), mark(8, 40)]
    with pytest.raises(
        RestoreRefused, match=re.escape(f"earliest point this base backup can reach is {T0.isoformat()}")
    ):
        pg_wal.plan_restore(B1, archive, T0 - datetime.timedelta(minutes=1))
    with pytest.raises(RestoreRefused) as refused:
        pg_wal.plan_restore(B1, archive, T0 + datetime.timedelta(minutes=20))
    message = str(refused.value)
    assert "WAL segment 000000010000000000000006 is missing" in message
    assert (T0 + datetime.timedelta(minutes=10)).isoformat() in message  # the last recoverability point
    with pytest.raises(RestoreRefused, match="000000010000000000000006"):
        pg_wal.plan_restore(B1, archive)  # the end of the archive is past the gap
    # Recovery stops at the first mark at or after the target: the segments after the mark's are not needed.
    plan = pg_wal.plan_restore(B1, archive, T0 + datetime.timedelta(minutes=5))
    assert plan.segments == names(1, [3, 4])
    assert plan.files == [*names(1, [3, 4]), mark(4, 10)]  # the mark that vouches for the target travels along
    # What the plan names is enough to plan the same restore again (the init container's download).
    assert pg_wal.plan_restore(B1, plan.files, T0 + datetime.timedelta(minutes=5)) == plan
    assert plan.to == pg_wal.Point(T0 + datetime.timedelta(minutes=5), 4 * 16 * MB + 0x60)
    assert pg_wal.plan_restore(B1, archive, T0).segments == names(1, [3])  # the base backup's own mark
    # LSN targets: up to the last mark (a record at or after the target must be in the archive).
    with pytest.raises(RestoreRefused, match="after the last recoverability point LSN 0/4000060"):
        pg_wal.plan_restore(B1, archive, target_lsn=0x4000061)
    assert pg_wal.plan_restore(B1, archive, target_lsn=0x4000000).segments == names(1, [3, 4])
    assert pg_wal.plan_restore(B1, archive, target_lsn=0x3000150).segments == names(1, [3])
    with pytest.raises(RestoreRefused, match="before the end of base backup"):
        pg_wal.plan_restore(B1, archive, target_lsn=0x3000000)
    with pytest.raises(RestoreRefused, match="not both"):
        pg_wal.plan_restore(B1, archive, T0, 0x3000150)


def test_plan_without_archive_restores_to_the_base_end_only() -> None:
    plan = pg_wal.plan_restore(B1, [])
    assert plan.to == pg_wal.Point(None, 0x3000100) and plan.segments == []
    with pytest.raises(RestoreRefused, match="restore without a target time"):
        pg_wal.plan_restore(B1, [], T0)


def test_plan_at_the_base_end_needs_its_mark_archived() -> None:
    assert pg_wal.plan_restore(B1, names(1, [3]), T0).segments == names(1, [3])
    with pytest.raises(RestoreRefused):
        pg_wal.plan_restore(B1, names(1, [3]), T0 + datetime.timedelta(seconds=1))


def test_plan_includes_history_files_and_the_path_across_a_promotion() -> None:
    histories = {2: "1\t0/5000100\tpromoted\n"}
    archive = [*names(1, [3, 4, 5]), *names(2, [5, 6]), "00000002.history"]
    plan = pg_wal.plan_restore(B1, archive, histories=histories)
    assert plan.segments == [*names(1, [3, 4]), *names(2, [5, 6])]
    assert plan.files == [*plan.segments, "00000002.history"]


def test_incomplete_metadata_is_refused() -> None:
    with pytest.raises(WalError, match="incomplete"):
        pg_wal.BaseInfo.from_meta({"stop_lsn": "0/1"})
