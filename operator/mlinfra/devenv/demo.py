"""``mlinfra demo`` (``make demo``): the whole product on this machine, from nothing to Ready.

Starts the local platform (control plane + real Redis, PostgreSQL, Neo4j), installs the Helm chart, runs
the operator as the chart's ServiceAccount, serves managed stores with real local servers, applies
``manifests/samples/`` and waits until the stores are Ready. External samples point at cluster DNS names
of a real platform; here their endpoints are rewritten to the local servers and their credentials
Secrets are created from the local servers' generated passwords. Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs, tools
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.platform import Platform

log = logging.getLogger(__name__)
NAMESPACE = "mlinfra-demo"


def samples() -> list[dict[str, Any]]:
    folder = tools.repo_root() / "manifests" / "samples"
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob("datastore-*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def localize(doc: dict[str, Any], platform: Platform) -> tuple[dict[str, Any], tuple[str, str, str] | None]:
    """An external sample pointed at the local server of its engine, and the Secret it needs."""
    ext = doc["spec"].get("external")
    if not ext:
        return doc, None
    engine = doc["spec"]["engine"]
    if engine == "redis" and platform.redis:
        port, user, password = platform.redis.primary.port, "default", platform.redis.password
    elif engine == "postgres" and platform.postgres:
        port, user, password = platform.postgres.primary.port, "postgres", platform.postgres.password
        ext["database"] = "postgres"
    elif engine == "neo4j" and platform.neo4j:
        port, user, password = platform.neo4j.port, "neo4j", platform.neo4j.password
    else:
        raise ValueError(f"no local {engine} server for the external sample {doc['metadata']['name']}")
    ext["endpoint"] = f"127.0.0.1:{port}"
    return doc, (ext["credentialsSecretRef"]["name"], user, password)


def table(cp_kubectl: Callable[..., Any]) -> str:
    return str(cp_kubectl("get", "mlinfra", "-n", NAMESPACE, "-o", "wide").stdout)


def lag_report(items: list[dict[str, Any]]) -> str:
    lines = [f"{'DATASTORE':<18} {'MEMBER':<22} {'ROLE':<10} {'READY':<6} {'LAG BYTES':>10} {'LAG S':>6}"]
    for ds in items:
        for m in (ds.get("status") or {}).get("members") or []:
            lines.append(f"{ds['metadata']['name']:<18} {m['name']:<22} {m.get('role', ''):<10} "
                         f"{m.get('ready')!s:<6} {m.get('lagBytes', '-')!s:>10} {m.get('lagSeconds', '-')!s:>6}")
    return "\n".join(lines)


def run(state_dir: Path, once: bool = False, timeout: float = 300) -> int:
    """Run the demo; ``once`` stops after printing the result (exit code 1 when a store is not Ready)."""
    platform = Platform(workdir=state_dir / "run")
    stack = procs.ProcStack()
    backer: Backer | None = None
    keep = False
    try:
        with procs.stopping_on_signals():
            print("== starting the local platform: etcd, kube-apiserver, controller-manager, scheduler, kwok; "
                  "Redis + replica, PostgreSQL + standby, Neo4j", flush=True)
            platform.start()
            cp = platform.control_plane
            assert cp is not None
            print(platform.summary(), flush=True)
            print("== installing the Helm chart (CRDs, RBAC, Deployment on a fake node)", flush=True)
            account = op_mod.install_chart(cp)
            kubeconfig = op_mod.service_account_kubeconfig(cp, op_mod.NAMESPACE, account,
                                                           platform.workdir / "operator.kubeconfig")
            backer = Backer(cp, platform.workdir / "backed", platform.workdir / "endpoint-map.json").start()
            print(f"== running the operator on this host as serviceaccount {op_mod.NAMESPACE}/{account}", flush=True)
            operator = op_mod.start_operator(stack, kubeconfig, platform.workdir, backer.map_path)
            cp.kubectl("create", "namespace", NAMESPACE)
            procs.wait_until("the demo namespace's ServiceAccount", lambda: cp.kubectl(
                "get", "sa", "default", "-n", NAMESPACE, check=False).returncode == 0, 60)
            print(f"== applying manifests/samples/ into namespace {NAMESPACE}", flush=True)
            docs = []
            for doc in samples():
                doc["metadata"]["namespace"] = NAMESPACE
                doc, secret = localize(doc, platform)
                if secret:
                    cp.kubectl("create", "secret", "generic", secret[0], "-n", NAMESPACE,
                               f"--from-literal=username={secret[1]}", f"--from-literal=password={secret[2]}")
                docs.append(doc)
            cp.apply(docs, field_manager="mlinfra-demo")
            # Qdrant has no server binary here: its managed store reports that, it is never Ready locally.
            expected = [d["metadata"]["name"] for d in docs if d["spec"]["engine"] != "qdrant"]
            ok = _wait_ready(cp.kubectl, expected, timeout)
            items = json.loads(cp.kubectl("get", "datastores", "-n", NAMESPACE, "-o", "json").stdout)["items"]
            print("\n$ kubectl get mlinfra -n mlinfra-demo -o wide\n" + table(cp.kubectl), flush=True)
            print("observed replication (from the live servers):\n" + lag_report(items), flush=True)
            print(f"\noperator metrics: {operator.metrics_url}", flush=True)
            if once:
                if not ok:
                    keep = True
                    print(f"logs kept in {platform.workdir}", flush=True)
                return 0 if ok else 1
            print(f"\nrunning; in another shell:  export KUBECONFIG={cp.kubeconfig}\n"
                  f"kubectl: {cp.tools.kubectl}\nCtrl-C stops everything.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\n== stopping", flush=True)
        return 0
    finally:
        if backer is not None:
            backer.stop()
        stack.close()
        platform.stop()
        if not keep:
            platform.remove()


def _wait_ready(kubectl: Callable[..., Any], names: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        items = json.loads(kubectl("get", "datastores", "-n", NAMESPACE, "-o", "json").stdout)["items"]
        ready = sorted(
            i["metadata"]["name"] for i in items
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in (i.get("status") or {}).get("conditions", []))
        )
        line = f"   Ready: {len([n for n in ready if n in names])}/{len(names)}  {', '.join(ready)}"
        if line != last:
            print(line, flush=True)
            last = line
        if set(names) <= set(ready):
            return True
        time.sleep(2)
    print(f"   not Ready after {timeout:.0f}s: {sorted(set(names) - set(ready))}", flush=True)
    return False
