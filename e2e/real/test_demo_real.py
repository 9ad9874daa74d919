"""`make demo` on the real node: the samples become Ready through real Pods, the FeatureView's sync runs
as a Job's Pod, the lineage graph lives in a Neo4j Pod, and nothing is left when it stops."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mlinfra.devenv import netns, procs


def test_the_demo_runs_the_samples_as_real_pods(tmp_path: Path) -> None:
    before = set(procs.descendants(1))
    result = subprocess.run(
        [sys.executable, "-m", "mlinfra", "demo", "--once", "--state-dir", str(tmp_path), "--timeout", "300"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-3000:]
    assert "datastores Ready: 6/6" in out  # every sample but Qdrant's (no server binary here)
    assert "featureviews Ready: 1/1" in out and "modelregistries Ready: 1/1" in out
    # The sync ran in the Job's Pod on the real node; the SDK reads what it wrote.
    assert re.search(r"Job user-activity-sync-\w+: Pod \S+ on node real-node, Succeeded", out), out[-3000:]
    assert "user_id=1: {'clicks_7d': 45, 'ctr_7d': 0.13, 'country': 'DE'}" in out
    assert "user_id=4: None" in out
    assert "downstream of feature view user-activity: models=['churn'] deployments=['staging']" in out
    # The store Pods run on the real node; replication lag is measured between them.
    pods = out.split("$ kubectl get pods", 1)[1].split("$ kubectl get mlinfra", 1)[0]
    for pod in ("online-store-0", "online-store-1", "offline-store-0", "offline-store-1", "lineage-graph-0"):
        assert re.search(rf"^{pod}\s+1/1\s+Running\s+\d+\s+\S+\s+10\.88\.\d+\.\d+\s+real-node", pods, re.M), pods
    lag = out.split("observed replication", 1)[1]
    assert re.search(r"^offline-store\s+offline-store-1\s+replica\s+True\s+\d+", lag, re.M), lag
    assert re.search(r"^online-store\s+online-store-1\s+replica\s+True\s+\d+", lag, re.M), lag
    # Nothing is left: processes, the node's network namespace, mounts under the state directory.
    leftovers = [
        p
        for p in set(procs.descendants(1)) - before
        if procs.pid_alive(p) and str(tmp_path).encode() in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert leftovers == []
    used = re.search(r"network namespace (mlinfra-node-\d+)", out)
    assert used, out[:2000]
    assert not (netns.NETNS_DIR / used.group(1)).exists()
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(tmp_path) in line]
