"""A ModelRegistry whose lineage sync runs as a CronJob: the Job's Pod drains the outbox written through the
SDK into the managed Neo4j Pod, and status follows what it wrote."""

from __future__ import annotations

import base64
import json
from typing import Any

from real_support import datastore, get, model_registry, ready, registry_ready

from mlinfra.client.registry import Registry
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realdemo import reach
from mlinfra.devenv.realnode import RealNode
from mlinfra.engines.connection import ConnectionInfo
from mlinfra.registry import lineagerole


def secret_conn(cp: ControlPlane, ns: str, name: str) -> ConnectionInfo:
    data = get(cp, ns, "secret", name)["data"]
    return ConnectionInfo.from_secret_data({k: base64.b64decode(v).decode() for k, v in data.items()})


def lineage(cp: ControlPlane, ns: str) -> dict[str, Any]:
    return dict(get(cp, ns, "modelregistry", "models").get("status", {}).get("lineage", {}))


def test_the_lineage_cronjob_syncs_the_outbox_from_a_pod(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    ns = real_ns
    graph = datastore(ns, "graph", "neo4j", real_node.image("neo4j"), 1)
    graph["spec"]["managed"]["config"] = {"server.memory.heap.max_size": "512m", "server.memory.pagecache.size": "64m"}
    real_cp.apply([datastore(ns, "meta", "postgres", real_node.image("postgres"), 1), graph], field_manager="test")
    for store in ("meta", "graph"):
        procs.wait_until(f"DataStore {store} Ready", lambda s=store: ready(real_cp, ns, s), 300)  # type: ignore[misc]
    real_cp.apply([model_registry(ns, batch_size=100)], field_manager="test")
    registry_ready(real_cp, ns)

    # The application writes through the SDK with the writer role (from this host, at the primary Pod).
    writer_secret = get(real_cp, ns, "modelregistry", "models")["status"]["writerSecret"]
    writer = reach(real_cp, ns)(secret_conn(real_cp, ns, writer_secret), "meta")
    with Registry(writer) as reg:
        reg.register_model("churn", exist_ok=True)
        version = reg.create_version("churn", stage="staging")
        reg.link_dataset(version, reg.register_dataset("sessions", "s3://ml/sessions/", exist_ok=True), "TRAINED_ON")
    procs.wait_until("pending events in status", lambda: lineage(real_cp, ns).get("pendingEvents", 0) > 0, 60)

    def scheduled_job() -> str | None:
        for j in json.loads(real_cp.kubectl("get", "jobs", "-n", ns, "-o", "json").stdout)["items"]:
            owned = any(o["kind"] == "CronJob" for o in j["metadata"].get("ownerReferences", []))
            conds = j.get("status", {}).get("conditions", [])
            if owned and any(c["type"] == "Complete" and c["status"] == "True" for c in conds):
                return str(j["metadata"]["name"])
        return None

    procs.wait_until("a completed Job of the lineage CronJob", lambda: scheduled_job() is not None, 200)
    pods = json.loads(
        real_cp.kubectl("get", "pods", "-n", ns, "-l", f"job-name={scheduled_job()}", "-o", "json").stdout
    )["items"]
    assert pods and all(p["spec"]["nodeName"] == real_node.name and p["status"]["phase"] == "Succeeded" for p in pods)
    # The Pod logged in to PostgreSQL as the registry's lineage role, not as the store's admin.
    mounted = {v["name"]: v["secret"]["secretName"] for v in pods[0]["spec"]["volumes"] if "secret" in v}
    assert mounted == {"metadata-conn": lineagerole.secret_name("models"), "lineage-conn": "graph-conn"}
    job_conn, admin = secret_conn(real_cp, ns, mounted["metadata-conn"]), secret_conn(real_cp, ns, "meta-conn")
    assert (job_conn.username, job_conn.database) == (lineagerole.role_name(ns, "models"), "registry")
    assert job_conn.username != admin.username and job_conn.password != admin.password
    procs.wait_until(
        "the outbox drained into Neo4j",
        lambda: lineage(real_cp, ns).get("pendingEvents") == 0 and lineage(real_cp, ns).get("nodes", 0) >= 3,
        120,
    )
