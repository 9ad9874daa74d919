from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlinfra.engines import connection, endpoints


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("db.example.com:5432", ("db.example.com", 5432)),
        ("10.0.0.1:6379", ("10.0.0.1", 6379)),
        ("[::1]:7687", ("::1", 7687)),
        ("bare-host", ("bare-host", 1234)),
    ],
)
def test_split_endpoint(text: str, expected: tuple[str, int]) -> None:
    assert connection.split_endpoint(text, 1234) == expected


def test_map_is_reloaded_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    emap = endpoints.EndpointMap(path)
    assert emap.lookup("ns", "db", 6379) is None  # no file yet: no override
    path.write_text(json.dumps({"ns/db": {"endpoint": "127.0.0.1:7000", "members": {"db-0": "127.0.0.1:7000"}}}))
    found = emap.lookup("ns", "db", 6379)
    assert found is not None and (found.host, found.port) == ("127.0.0.1", 7000)
    assert found.members == {"db-0": "127.0.0.1:7000"}
    path.write_text(json.dumps({"ns/db": {"unserved": "no binary"}}))
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    again = emap.lookup("ns", "db", 6379)
    assert again is not None and again.unserved == "no binary"


def test_no_map_configured_means_no_override() -> None:
    assert endpoints.EndpointMap(None).lookup("ns", "db", 1) is None
