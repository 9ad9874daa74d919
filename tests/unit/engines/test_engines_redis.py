"""Redis: members, lag and capabilities from canned INFO replication / MODULE LIST answers."""

from __future__ import annotations

from typing import Any

import pytest

from mlinfra.engines import redis

SELF = "10.0.0.1:6379"


def primary_info(**slaves: Any) -> dict[str, Any]:
    return {"role": "master", "connected_slaves": len(slaves), "master_repl_offset": 5000, **slaves}


def test_primary_with_a_caught_up_replica() -> None:
    info = primary_info(slave0={"ip": "10.0.0.2", "port": 6379, "state": "online", "offset": 5000, "lag": 0})
    members, state = redis.replication_members(info, SELF)
    assert state == "streaming"
    assert [(m.name, m.role, m.ready) for m in members] == [(SELF, "primary", True), ("10.0.0.2:6379", "replica", True)]
    assert (members[0].lag_bytes, members[0].lag_seconds) == (None, None)
    assert (members[1].lag_bytes, members[1].lag_seconds) == (0, 0.0)


def test_lag_bytes_is_the_primary_offset_minus_the_replica_offset() -> None:
    info = primary_info(
        slave0={"ip": "10.0.0.2", "port": 6379, "state": "online", "offset": 3976, "lag": 7},
        slave1={"ip": "10.0.0.3", "port": 6380, "state": "wait_bgsave", "offset": 0, "lag": 1},
    )
    members, state = redis.replication_members(info, SELF)
    assert state == "degraded"  # slave1 is not online yet
    replicas = {m.name: m for m in members if m.role == "replica"}
    assert (replicas["10.0.0.2:6379"].lag_bytes, replicas["10.0.0.2:6379"].lag_seconds) == (1024, 7.0)
    assert replicas["10.0.0.3:6380"].ready is False
    assert replicas["10.0.0.3:6380"].lag_bytes == 5000


def test_a_caught_up_replica_is_zero_seconds_behind_whatever_its_last_ack() -> None:
    # An idle replica acks once a second: `lag` reads 0 or 1 with nothing to replicate.
    info = primary_info(slave0={"ip": "h", "port": 1, "state": "online", "offset": 5000, "lag": 1})
    members, _ = redis.replication_members(info, SELF)
    assert (members[1].lag_bytes, members[1].lag_seconds) == (0, 0.0)


def test_replicas_are_ordered_by_their_index_not_as_text() -> None:
    slaves = {
        f"slave{i}": {"ip": f"10.0.1.{i}", "port": 1, "state": "online", "offset": 5000, "lag": 0} for i in (10, 2, 1)
    }
    members, _ = redis.replication_members(primary_info(**slaves), SELF)
    assert [m.name for m in members[1:]] == ["10.0.1.1:1", "10.0.1.2:1", "10.0.1.10:1"]


def test_an_unparsed_slave_line_is_understood_too() -> None:
    info = primary_info(slave0="ip=10.0.0.2,port=6379,state=online,offset=4990,lag=1")
    members, _ = redis.replication_members(info, SELF)
    assert (members[1].name, members[1].ready, members[1].lag_bytes, members[1].lag_seconds) == (
        "10.0.0.2:6379",
        True,
        10,
        1.0,
    )


def test_a_replica_ahead_of_a_stale_info_never_reports_negative_lag() -> None:
    info = primary_info(slave0={"ip": "h", "port": 1, "state": "online", "offset": 5100, "lag": 0})
    members, _ = redis.replication_members(info, SELF)
    assert members[1].lag_bytes == 0


def test_a_primary_without_replicas_is_standalone() -> None:
    members, state = redis.replication_members(primary_info(), SELF)
    assert [(m.name, m.role) for m in members] == [(SELF, "standalone")]
    assert state == "none"


def test_seen_from_a_replica_with_its_link_up() -> None:
    info = {
        "role": "slave",
        "master_host": "10.0.0.1",
        "master_port": 6379,
        "master_link_status": "up",
        "master_last_io_seconds_ago": 3,
        "master_sync_in_progress": 0,
        "slave_repl_offset": 4000,
    }
    members, state = redis.replication_members(info, "10.0.0.2:6379")
    assert state == "streaming"
    assert len(members) == 1
    me = members[0]
    assert (me.name, me.role, me.ready, me.lag_bytes, me.lag_seconds) == ("10.0.0.2:6379", "replica", True, None, 3.0)


def test_seen_from_a_replica_whose_link_is_down() -> None:
    info = {
        "role": "slave",
        "master_link_status": "down",
        "master_last_io_seconds_ago": -1,
        "master_sync_in_progress": 0,
        "master_link_down_since_seconds": 42,
    }
    members, state = redis.replication_members(info, "r")
    assert state == "degraded"
    assert (members[0].ready, members[0].lag_seconds) == (False, 42.0)


def test_a_replica_still_syncing_is_not_ready() -> None:
    info = {"role": "slave", "master_link_status": "up", "master_last_io_seconds_ago": 0, "master_sync_in_progress": 1}
    members, _ = redis.replication_members(info, "r")
    assert members[0].ready is False


@pytest.mark.parametrize(
    ("modules", "capabilities"),
    [
        ([], []),
        ([{"name": "search", "ver": 21005}, {"name": "ReJSON", "ver": 20803}], ["redisearch", "redisjson"]),
        (
            [{"name": "timeseries"}, {"name": "bf"}, {"name": "vectorset"}],
            ["redisbloom", "redistimeseries", "vectorset"],
        ),
        ([{b"name": b"search"}, {"name": b"ReJSON"}], ["redisjson"]),  # bytes keys are not ours to guess
        ([{"name": "MyModule"}], ["mymodule"]),
    ],
)
def test_capabilities_from_modules(modules: list[dict[Any, Any]], capabilities: list[str]) -> None:
    assert redis.capabilities_from_modules(modules) == capabilities
