"""Helpers of the real tier's tests: DataStores, their status, and commands run inside their Pods."""

from __future__ import annotations

import base64
import json
from typing import Any

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane


def datastore(ns: str, name: str, engine: str, image: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "engine": engine,
            "deletionPolicy": "Retain",
            "managed": {"replicas": replicas, "image": image, "storage": {"size": "256Mi"}},
        },
    }


def model_registry(ns: str, batch_size: int) -> dict[str, Any]:
    """The ModelRegistry ``models`` on the stores ``meta`` (PostgreSQL) and ``graph`` (Neo4j), its lineage
    synced every minute by the CronJob."""
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "ModelRegistry",
        "metadata": {"name": "models", "namespace": ns},
        "spec": {
            "metadataStoreRef": {"name": "meta"},
            "lineageStoreRef": {"name": "graph"},
            "database": "registry",
            "lineageSync": {"schedule": "* * * * *", "batchSize": batch_size},
        },
    }


def registry_ready(cp: ControlPlane, ns: str) -> None:
    procs.wait_until(
        "ModelRegistry Ready",
        lambda: condition(get(cp, ns, "modelregistry", "models"), "Ready").get("status") == "True",
        180,
    )


def get(cp: ControlPlane, ns: str, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cp.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout))


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def ready(cp: ControlPlane, ns: str, name: str) -> bool:
    ds = get(cp, ns, "datastore", name)
    return bool(
        condition(ds, "Ready").get("status") == "True"
        and ds["status"].get("observedGeneration") == ds["metadata"]["generation"]
    )


def secret(cp: ControlPlane, ns: str, name: str) -> dict[str, str]:
    data = get(cp, ns, "secret", name)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def members_ok(cp: ControlPlane, ns: str, name: str, replicas: int = 2) -> bool:
    """Status names every Pod: pod 0 the primary, the others streaming replicas with a measured lag."""
    ds = get(cp, ns, "datastore", name)
    st = ds.get("status", {})
    members = {m["name"]: m for m in st.get("members", [])}
    pods = [f"{name}-{i}" for i in range(replicas)]
    if set(members) != set(pods) or st.get("replication", {}).get("readyReplicas") != replicas:
        return False
    primary, others = members[pods[0]], [members[p] for p in pods[1:]]
    streaming = condition(ds, "Replicating").get("status") == ("True" if others else "False")
    return bool(
        primary["role"] in ("primary", "standalone")
        and primary["ready"]
        and streaming
        and all(m["role"] == "replica" and m["ready"] and m.get("lagBytes") is not None for m in others)
    )


def in_pod(cp: ControlPlane, ns: str, pod: str, container: str, secret_env: str, secret_value: str, *argv: str) -> str:
    """Run ``argv`` in the container with one secret in its environment, passed on stdin: never on a
    command line (ours or the container's)."""
    script = f'read -r {secret_env}; export {secret_env}; exec "$@"'
    return cp.kubectl(
        "exec", "-i", "-n", ns, pod, "-c", container, "--", "sh", "-c", script, "sh", *argv, input=secret_value + "\n"
    ).stdout.strip()


def redis_cli(cp: ControlPlane, ns: str, pod: str, password: str, *args: str) -> str:
    return in_pod(cp, ns, pod, "redis", "REDISCLI_AUTH", password, "redis-cli", *args)


# --- backups ------------------------------------------------------------------------------------------------


def create_secret(cp: ControlPlane, ns: str, name: str, **values: str) -> None:
    """A generic Secret from ``values``, through stdin (an env file): never on kubectl's command line."""
    env_file = "".join(f"{k}={v}\n" for k, v in values.items())
    cp.kubectl("create", "secret", "generic", name, "-n", ns, "--from-env-file=/dev/stdin", input=env_file)


def backup_policy(bucket: str, prefix: str, endpoint: str) -> dict[str, Any]:
    """spec.backup to ``bucket`` at ``endpoint`` (the node's address of the S3 server: where its Pods reach
    it), plain HTTP, encrypted with the key of Secret backup-key, credentials in Secret s3-creds."""
    return {
        "target": {
            "s3": {
                "bucket": bucket,
                "prefix": prefix,
                "endpoint": endpoint,
                "credentialsSecretRef": {"name": "s3-creds"},
                "tls": {"enabled": False},
            }
        },
        "encryption": {"keySecretRef": {"name": "backup-key", "key": "key"}},
    }


def backup(ns: str, name: str, store: str) -> dict[str, Any]:
    """A Backup ``name`` of DataStore ``store``."""
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"dataStoreRef": {"name": store}},
    }


def job_done(cp: ControlPlane, ns: str, name: str) -> bool:
    """The Job completed (it fails the test at once when it failed)."""
    conds = get(cp, ns, "job", name).get("status", {}).get("conditions", [])
    failed = [c for c in conds if c["type"] == "Failed" and c["status"] == "True"]
    assert not failed, f"Job {name} failed: {failed}"
    return any(c["type"] == "Complete" and c["status"] == "True" for c in conds)


def job_pods(cp: ControlPlane, ns: str, job: str) -> list[dict[str, Any]]:
    return list(json.loads(cp.kubectl("get", "pods", "-n", ns, "-l", f"job-name={job}", "-o", "json").stdout)["items"])
