"""Small helpers of the e2e tests: read objects as JSON, find a condition, wait with a deadline, run a Job's
command as kwok never does."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlinfra.devenv import procs
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.engines import endpoints


def get_json(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    procs.wait_until(what, check, timeout)


def variant(base: dict[str, Any], name: str | None = None, **spec_changes: Any) -> dict[str, Any]:
    """A copy of ``base`` (renamed when ``name``) with ``a__b`` spec paths set (``None`` removes the key)."""
    out = copy.deepcopy(base)
    if name is not None:
        out["metadata"]["name"] = name
    for dotted, value in spec_changes.items():
        *parents, leaf = dotted.split("__")
        node = out["spec"]
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


def volume_claim(ns: str, name: str, size: str = "1Gi") -> dict[str, Any]:
    """A ReadWriteOnce PersistentVolumeClaim of the default StorageClass (kwok's, or the real node's host paths)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def secret_data(cp: ControlPlane, ns: str, secret: str) -> dict[str, str]:
    """The Secret's keys and their values, decoded."""
    return {k: base64.b64decode(v).decode() for k, v in get_json(cp, "secret", secret, "-n", ns)["data"].items()}


def mounted(cp: ControlPlane, ns: str, secret: str, directory: Path) -> Path:
    """The Secret's keys as files in ``directory``, as the kubelet mounts a Secret volume."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in get_json(cp, "secret", secret, "-n", ns)["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def job_command(
    cp: ControlPlane, ns: str, pod: dict[str, Any], backer: Backer, tmp: Path
) -> tuple[list[str], dict[str, str]]:
    """A Job's container as a process here: its argv and environment, its Secrets mounted under ``tmp``. Pods
    on kwok run nothing; the endpoint map is how a process on this host reaches the locally served Qdrant store
    (an external store at QDRANT_URL has no entry in it: reached as its connection Secret says)."""
    container = pod["containers"][0]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, endpoints.ENV: str(backer.map_path)}
    for volume in pod["volumes"]:
        if "secret" in volume:
            mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
            var = next(e["name"] for e in container["env"] if e["value"] == mount["mountPath"])
            env[var] = str(mounted(cp, ns, volume["secret"]["secretName"], tmp / volume["name"]))
    env.pop("KUBECONFIG", None)  # the Job's pod has no API access
    return [sys.executable, "-m", "mlinfra", *container["args"]], env


def run_job_command(cp: ControlPlane, ns: str, pod: dict[str, Any], backer: Backer, tmp: Path) -> dict[str, Any]:
    """Run the Job's command (:func:`job_command`) to its end; it must succeed; its JSON summary line."""
    argv, env = job_command(cp, ns, pod, backer, tmp)
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))
