"""The probe of a local-mode Qdrant store while a rebuild or a sync holds its directory: observed, not timed out
(the issue 13 e2e test found a rebuild making its own store not Ready for as long as it ran)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mlinfra.engines import connection, qdrant


def test_a_local_directory_held_by_a_rebuild_is_observed_not_timed_out(tmp_path: Path) -> None:
    conn = dataclasses.replace(
        connection.ConnectionInfo.for_engine("qdrant", host="vectors.ml.svc", password=""),
        local_path=str(tmp_path / "qdrant"),
    )
    assert qdrant.probe(conn).reachable  # nobody holds it: opened and observed
    with qdrant.open_client(conn) as client:  # what a rebuild holds for its whole duration
        client.get_collections()
        held = qdrant.probe(conn, timeout=1.0)
    assert held.reachable, held.error
    assert held.capabilities == [qdrant.LOCAL_MODE]
    assert [(m.name, m.ready) for m in held.members] == [(qdrant.LOCAL_MODE, True)]
