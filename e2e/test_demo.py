"""The kwok demo (`mlinfra demo --kwok`) stays true: every sample Ready, the VectorIndex loop on Qdrant's
local mode included, and it cleans up. `make demo` itself runs on the real node: e2e/real/test_demo_real.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlinfra.devenv import procs


def test_demo_brings_the_samples_to_ready(tmp_path: Path) -> None:
    before = set(procs.descendants(1))
    result = subprocess.run(
        [sys.executable, "-m", "mlinfra", "demo", "--kwok", "--once", "--state-dir", str(tmp_path), "--timeout", "240"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "datastores Ready: 7/7" in out
    assert "vectorindexes Ready: 1/1" in out
    assert "featureviews Ready: 1/1" in out
    # The FeatureView loop: rows offline, sync now, an online read with the SDK returning typed values.
    assert "user_id=1: {'clicks_7d': 45, 'ctr_7d': 0.13, 'country': 'DE'}" in out
    assert "user_id=4: None" in out
    for name in ("online-store", "offline-store", "lineage-graph", "shared-redis", "shared-postgres", "shared-neo4j"):
        assert f"datastore.mlinfra.io/{name}" in out
    assert "observed replication" in out
    # The VectorIndex loop: 2,000 rows behind, synced by the Job's command, a query through the alias that
    # agrees with brute force over the source rows.
    assert "status before the sync: rowsBehind=2000 points=0" in out
    assert "points=2000" in out
    assert "brute force over the source rows gives the same ids: True" in out
    vectors = next(line for line in out.splitlines() if "datastore.mlinfra.io/vectors" in line)
    assert "True" in vectors
    # Everything the demo started is gone.
    leftovers = [
        p
        for p in set(procs.descendants(1)) - before
        if procs.pid_alive(p) and any(s in Path(f"/proc/{p}/cmdline").read_bytes() for s in (str(tmp_path).encode(),))
    ]
    assert leftovers == []
