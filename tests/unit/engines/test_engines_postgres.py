"""PostgreSQL: standbys and their lag from pg_stat_replication rows, the standby's own view, versions."""

from __future__ import annotations

from typing import Any

import pytest

from mlinfra.engines import postgres


def row(
    app: str | None = "standby-0",
    addr: str | None = "10.0.0.2",
    port: int | None = 40000,
    state: str | None = "streaming",
    lag_bytes: int | None = 0,
    replay: float | None = None,
    flush: float | None = None,
    write: float | None = None,
) -> tuple[Any, ...]:
    return (app, addr, port, state, lag_bytes, replay, flush, write)


@pytest.mark.parametrize(
    ("lag_bytes", "replay", "flush", "write", "seconds"),
    [
        (0, None, None, None, 0.0),  # caught up and idle: PostgreSQL reports NULL lag, it is 0
        (0, 0.25, 0.2, 0.1, 0.0),  # caught up: the last measured replay lag is history
        (1024, 0.5, 0.2, 0.1, 0.5),  # behind: replay_lag
        (1024, None, 0.2, 0.1, 0.2),  # no replay_lag yet: flush_lag (a lower bound)
        (1024, None, None, 0.1, 0.1),  # then write_lag
        (1024, None, None, None, None),  # nothing measured: unknown, never invented
        (None, 0.5, None, None, 0.5),  # no privilege to read LSNs: the reported replay lag
        (None, None, None, None, None),
    ],
)
def test_lag_seconds(
    lag_bytes: int | None, replay: float | None, flush: float | None, write: float | None, seconds: float | None
) -> None:
    assert postgres.lag_seconds(lag_bytes, replay, flush, write) == seconds


def test_a_streaming_standby() -> None:
    member = postgres.standby_member(row(lag_bytes=1_048_576, replay=1.5))
    assert (member.name, member.role, member.ready) == ("standby-0", "replica", True)
    assert (member.lag_bytes, member.lag_seconds) == (1_048_576, 1.5)


def test_a_catching_up_standby_is_not_ready() -> None:
    assert postgres.standby_member(row(state="catchup", lag_bytes=10)).ready is False


def test_an_anonymous_standby_is_named_by_its_address() -> None:
    assert postgres.standby_member(row(app="walreceiver")).name == "10.0.0.2:40000"
    assert postgres.standby_member(row(app="", addr="fd00::2", port=5)).name == "[fd00::2]:5"
    assert postgres.standby_member(row(app=None, addr=None)).name == "local"


def test_negative_byte_lag_is_clamped() -> None:
    # replay_lsn can be read a moment after pg_current_wal_lsn() moved on; never report negative lag.
    assert postgres.standby_member(row(lag_bytes=-8)).lag_bytes == 0


def test_colliding_names_are_made_unique() -> None:
    members = postgres.unique_names(
        [
            postgres.standby_member(row(app="s")),
            postgres.standby_member(row(app="s")),
            postgres.standby_member(row(app="t")),
        ]
    )
    assert [m.name for m in members] == ["s-1", "s-2", "t"]


@pytest.mark.parametrize(
    ("status", "has_receiver", "behind", "age", "ready", "lag_bytes", "lag_seconds"),
    [
        ("streaming", True, 0, 3600.0, True, 0, 0.0),  # idle primary: old last replay is not lag
        ("streaming", True, 4096, 2.5, True, 4096, 2.5),
        ("waiting", True, 0, None, False, 0, 0.0),
        (None, False, None, None, False, None, None),  # no WAL receiver at all
        (None, True, 0, None, True, 0, 0.0),  # no pg_read_all_stats: the receiver exists, status hidden
    ],
)
def test_self_as_standby(
    status: str | None,
    has_receiver: bool,
    behind: int | None,
    age: float | None,
    ready: bool,
    lag_bytes: int | None,
    lag_seconds: float | None,
) -> None:
    member = postgres.self_as_standby((status, has_receiver, behind, age), "10.0.0.2:5432")
    assert (member.name, member.role) == ("10.0.0.2:5432", "replica")
    assert (member.ready, member.lag_bytes, member.lag_seconds) == (ready, lag_bytes, lag_seconds)


@pytest.mark.parametrize(
    ("text", "version"),
    [("15.18 (Debian 15.18-0+deb12u1)", "15.18"), ("16.4", "16.4"), ("17devel", "17devel"), ("", "")],
)
def test_parse_version(text: str, version: str) -> None:
    assert postgres.parse_version(text) == version
