"""The suite's secret scan: what it tracks, where it finds a secret, and that a finding never shows the value."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlinfra.devenv import secretscan

SECRET = "s3cr3t-0123456789-abcdefgh"


@pytest.fixture(autouse=True)
def _own_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(secretscan, "_secrets", set())
    monkeypatch.setattr(secretscan, "findings", [])
    yield


def test_only_password_like_keys_of_long_values_are_tracked() -> None:
    secretscan.track_secret_data(
        {"password": SECRET, "replication-password": "short", "host": "pg-primary.team-a.svc.cluster.local"}
    )
    secretscan.track_secret_data({"api-key": "k" * 20, "username": "u" * 20})
    assert secretscan.tracked() == {SECRET, "k" * 20}


def test_a_log_line_with_a_secret_is_named_by_file_and_line_without_the_value(tmp_path: Path) -> None:
    secretscan.track(SECRET)
    (tmp_path / "kube" / "logs").mkdir(parents=True)
    (tmp_path / "kube" / "logs" / "operator.log").write_text(f"ok\nconnecting with {SECRET}\nok\n")
    (tmp_path / "redis.conf").write_text(f"requirepass {SECRET}\n")  # a config file is where it belongs
    hits = secretscan.scan_files(tmp_path)
    assert hits == [f"{tmp_path / 'kube' / 'logs' / 'operator.log'}:2"]
    assert SECRET not in " ".join(hits)


def test_events_and_statuses_are_checked() -> None:
    secretscan.track(SECRET)
    event = {"kind": "Event", "metadata": {"namespace": "a", "name": "e1"}, "message": f"failed: {SECRET}"}
    clean = {"kind": "DataStore", "metadata": {"namespace": "a", "name": "pg"}, "status": {"phase": "Ready"}}
    leaky = {"kind": "DataStore", "metadata": {"namespace": "a", "name": "x"}, "status": {"message": SECRET}}
    assert secretscan.check_objects("events", [event], ".") == ["events: Event a/e1 ."]
    assert secretscan.check_objects("datastores", [clean, leaky], "status") == ["datastores: DataStore a/x status"]
    assert len(secretscan.findings) == 2 and all(SECRET not in f for f in secretscan.findings)
