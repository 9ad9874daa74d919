"""Retention tables: which backups and which WAL files a policy lets go."""

from __future__ import annotations

import datetime

import pytest

from mlinfra.backup.retention import BackupRef, Policy, to_delete, wal_to_delete

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def _daily(ages_in_days: list[float]) -> list[BackupRef]:
    """One backup per age, named by its age: ``d10`` completed ten days ago."""
    return [BackupRef(f"d{a:g}", NOW - a * DAY) for a in ages_in_days]


AGES = [30, 20, 10, 5, 3, 1, 0.5]


@pytest.mark.parametrize(
    ("policy", "deleted"),
    [
        (Policy(), []),
        (Policy(keep_last=3), ["d30", "d20", "d10", "d5"]),
        (Policy(keep_last=7), []),
        (Policy(keep_last=100), []),
        (Policy(keep_last=1), ["d30", "d20", "d10", "d5", "d3", "d1"]),
        # A recovery window of 4 days: d3, d1, d0.5 are inside; d5 is the base a restore to 4 days ago needs.
        (Policy(max_age=4 * DAY), ["d30", "d20", "d10"]),
        # A window boundary exactly on a backup: it is inside, and the older one is still the base before it.
        (Policy(max_age=5 * DAY), ["d30", "d20"]),
        (Policy(max_age=100 * DAY), []),
        # Both: kept if either keeps it. keep_last=5 keeps d10.. ; the 4-day window keeps d5..; union d10..
        (Policy(keep_last=5, max_age=4 * DAY), ["d30", "d20"]),
        (Policy(keep_last=1, max_age=4 * DAY), ["d30", "d20", "d10"]),
        (Policy(keep_last=6, max_age=DAY / 4), ["d30"]),
    ],
)
def test_retention_table(policy: Policy, deleted: list[str]) -> None:
    assert to_delete(_daily(AGES), policy, NOW) == deleted


def test_the_newest_backup_is_never_deleted_even_when_older_than_the_window() -> None:
    backups = _daily([40, 35, 31])
    # All three are older than the window: the newest of them is the base that reaches the window's start.
    assert to_delete(backups, Policy(max_age=7 * DAY), NOW) == ["d40", "d35"]
    assert to_delete(_daily([40]), Policy(max_age=DAY, keep_last=1), NOW) == []


def test_order_of_input_does_not_matter_and_output_is_oldest_first() -> None:
    backups = list(reversed(_daily(AGES)))
    assert to_delete(backups, Policy(keep_last=2), NOW) == ["d30", "d20", "d10", "d5", "d3"]


def test_no_backups() -> None:
    assert to_delete([], Policy(keep_last=1, max_age=DAY), NOW) == []


def test_equal_completion_times_break_ties_by_id() -> None:
    t = NOW - DAY
    backups = [BackupRef("b", t), BackupRef("a", t), BackupRef("c", t)]
    assert to_delete(backups, Policy(keep_last=1), NOW) == ["a", "b"]


@pytest.mark.parametrize("bad", [{"keep_last": 0}, {"keep_last": -1}, {"max_age": datetime.timedelta(0)}])
def test_invalid_policies_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Policy(**bad)  # type: ignore[arg-type]


ARCHIVE = [
    "000000010000000000000001",
    "000000010000000000000002",
    "000000010000000000000002.00000028.backup",
    "000000010000000000000003",
    "0000000100000000000000FF",
    "000000010000000100000000",
    "00000002.history",
    "000000020000000100000000",
    "000000020000000100000001",
    "000000020000000100000002.partial",
]


@pytest.mark.parametrize(
    ("starts", "deletable"),
    [
        ([], []),
        (["000000010000000000000001"], []),
        (
            ["000000010000000000000003", "000000020000000100000001"],
            ["000000010000000000000001", "000000010000000000000002", "000000010000000000000002.00000028.backup"],
        ),
        # Log 0 segment FF sorts before log 1 segment 0, whatever the timeline.
        (
            ["000000020000000100000000"],
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003",
                "0000000100000000000000FF",
            ],
        ),
        # On the new timeline: the old timeline's segment at the same position stays (the start segment is
        # kept on every timeline), the history file stays.
        (
            ["000000020000000100000001"],
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003",
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000020000000100000000",
            ],
        ),
        # A malformed start: nothing is deleted rather than a guess.
        (["000000020000000100000001", "garbage"], []),
    ],
)
def test_wal_retention_table(starts: list[str], deletable: list[str]) -> None:
    assert wal_to_delete(starts, ARCHIVE) == sorted(deletable)
