"""What the real tier's failover tests share (Redis and PostgreSQL): the application and watcher Pods and their
logs, the gap in acknowledged writes, a member's process frozen from the node, and ``mlinfra promote``."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from real_support import get

from mlinfra.build import argocd
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realnode import RealNode


def secret_env(store: str, name: str, key: str) -> dict[str, Any]:
    """An environment variable from the store's credentials Secret (never on a command line)."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": f"{store}-credentials", "key": key}}}


def app_pod(ns: str, name: str, image: str, script: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    """A Pod running ``script`` in ``image`` (the application, the watcher)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["bash", "-c", script],
                    "env": env,
                }
            ],
        },
    }


def logs(cp: ControlPlane, ns: str, name: str) -> list[str]:
    return cp.kubectl("logs", "-n", ns, name, check=False).stdout.splitlines()


def acked(lines: list[str]) -> list[tuple[int, float]]:
    """The writer's ``ack <n> <time>`` lines."""
    return [(int(p[1]), float(p[2])) for p in (line.split() for line in lines) if len(p) >= 3 and p[0] == "ack"]


def largest_gap(acks: list[tuple[int, float]]) -> float:
    times = [t for _, t in acks]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def two_primaries(lines: list[str], word: str) -> list[str]:
    """The watcher's rounds (``<time> <role of each member>``) in which two members said ``word``."""
    return [line for line in lines if line.split()[1:].count(word) > 1]


def status(cp: ControlPlane, ns: str, store: str) -> dict[str, Any]:
    return dict(get(cp, ns, "datastore", store).get("status") or {})


def replicas_streaming(cp: ControlPlane, ns: str, store: str, count: int = 2) -> None:
    """Wait until ``count`` members are ready replicas in the store's status."""

    def streaming() -> bool:
        return (
            sum(1 for m in status(cp, ns, store).get("members", []) if m["role"] == "replica" and m["ready"]) == count
        )

    procs.wait_until(f"{count} replicas of {store} streaming", streaming, 120)


def role_label(cp: ControlPlane, ns: str, member: str) -> str | None:
    label = get(cp, ns, "pod", member)["metadata"].get("labels", {}).get("mlinfra.io/role")
    return None if label is None else str(label)


def events(cp: ControlPlane, ns: str, store: str) -> list[dict[str, Any]]:
    out = cp.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={store}", "-o", "json")
    return list(json.loads(out.stdout)["items"])


def container_pid(real_node: RealNode, cp: ControlPlane, ns: str, member: str, container: str) -> int:
    """The PID, on this machine, of the container's first process (the server: the scripts exec it)."""
    statuses = get(cp, ns, "pod", member)["status"]["containerStatuses"]
    container_id = next(c for c in statuses if c["name"] == container)["containerID"].split("://", 1)[1]
    tasks = real_node.ctr("task", "ls").stdout.splitlines()
    return int(next(line.split()[1] for line in tasks if line.startswith(container_id)))


def freeze(pid: int) -> None:
    """SIGSTOP the process and every descendant (PostgreSQL's backends and WAL senders too): a hung server."""
    for each in [pid, *procs.descendants(pid)]:
        os.kill(each, signal.SIGSTOP)


def promote(cp: ControlPlane, ns: str, store: str, member: str) -> subprocess.CompletedProcess[str]:
    """``mlinfra promote`` as a user runs it, with the cluster's kubeconfig."""
    return subprocess.run(
        [sys.executable, "-m", "mlinfra", "promote", f"{ns}/{store}", member, "--timeout", "60"],
        env={**os.environ, "KUBECONFIG": str(cp.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=90,
    )


def promote_with_argocd(cp: ControlPlane, ns: str, store: str, member: str, timeout: float = 60) -> dict[str, Any]:
    """The Argo CD ``promote`` action on the live DataStore, run as the UI runs it once the user picked
    ``member`` (the default offered is a replica of the store), its patch applied as Argo CD applies it; the
    operator's answer (``mlinfra.io/promote-result``)."""
    live = get(cp, ns, "datastore", store)
    scripts = argocd.action_scripts(argocd.repo_root(), "DataStore")
    assert argocd.discover(scripts["discovery"], live)["promote"], "the promote action is not offered"
    offered = argocd.action_params(scripts["discovery"], live)["promote"]["member"]
    assert any(m["name"] == offered and m["role"] == "replica" for m in live["status"]["members"]), offered
    [patched] = argocd.run_action(scripts["promote"], live, {"member": member})
    annotations = patched["resource"]["metadata"]["annotations"]
    before = (live["metadata"].get("annotations") or {}).get("mlinfra.io/promote-result")
    cp.kubectl(
        "patch", "datastore", store, "-n", ns, "--type=merge",
        "-p", json.dumps({"metadata": {"annotations": annotations}}),
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = (get(cp, ns, "datastore", store)["metadata"].get("annotations") or {}).get("mlinfra.io/promote-result")
        if found and found != before:
            return dict(json.loads(found))
        time.sleep(0.5)
    raise AssertionError(f"no answer from the operator to the promote action within {timeout:.0f} s")
