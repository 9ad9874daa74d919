"""status.backup's recoverability fields: times only where a mark vouches for one, the gap count, and a
target that cannot be read keeps the last known points and says why."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra.api import backup as backup_api
from mlinfra.backup import pg_wal
from mlinfra.config import Settings
from mlinfra.context import Context
from mlinfra.stores import backuprecovery

pytestmark = pytest.mark.unit

T0 = datetime.datetime(2026, 11, 30, 3, 0, tzinfo=datetime.UTC)


def window(last_time: datetime.datetime | None, gaps: int = 0) -> Any:
    gap = pg_wal.Gap("000000010000000000000002", "000000010000000000000005", "0" * 23 + "3", "0" * 23 + "4", 2)

    class W:
        first = pg_wal.Point(T0, 0x2000028)
        last = pg_wal.Point(last_time, 0x5000000)

    w = W()
    w.gaps = [gap] * gaps  # type: ignore[attr-defined]
    return w


def test_times_and_gaps_of_a_window() -> None:
    out = backuprecovery.fields(window(T0 + datetime.timedelta(minutes=5), gaps=1))
    assert out == {
        "firstRecoverabilityPoint": "2026-11-30T03:00:00Z",
        "lastRecoverabilityPoint": "2026-11-30T03:05:00Z",
        "walGaps": 1,
    }
    assert "lastRecoverabilityPoint" not in backuprecovery.fields(window(None))  # no mark: no time to promise


def test_an_unreadable_target_keeps_the_last_points_and_says_why() -> None:
    ctx = Context(settings=Settings(), kube=FakeKube())
    body = {"metadata": {"name": "pg", "namespace": "ml", "uid": "u-1"}, "spec": {"engine": "postgres"}}
    policy = backup_api.BackupPolicy.model_validate(
        {"target": {"s3": {"bucket": "b-1", "credentialsSecretRef": {"name": "absent"}}}}
    )
    previous = {"lastRecoverabilityPoint": "2026-11-30T03:05:00Z", "backupsKept": 2}
    backuprecovery.forget("u-1")
    out = backuprecovery.look(ctx, body, policy, previous)
    assert out["lastRecoverabilityPoint"] == "2026-11-30T03:05:00Z" and "backupsKept" not in out
    assert "Secret 'absent' not found" in out["recoverabilityError"]
    assert backuprecovery.look(ctx, body, policy, None) == out  # looked at again only after the interval
