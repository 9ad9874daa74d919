"""The ML layer across a failover, on the real node.

- A FeatureView's materialization Job is writing to a 3-member managed Redis when its primary's Pod is
  deleted. The run in flight fails with nothing committed (it never carries on over a new connection), the
  Job's retry runs on the promoted replica with the view's own ACL user (made on every member: Redis does not
  replicate users) and starts again from the committed watermark: every entity is online with its value, no
  key more, one run failed and one succeeded.
- An application registers a model every 100 ms with the registry SDK (one ``Registry`` throughout) while the
  registry's 3-member PostgreSQL loses its primary: the SDK reconnects by itself to the promoted standby,
  every registration it was told succeeded is there, and the lineage CronJob's runs leave the graph holding
  exactly the registry's models.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from failover_support import acked, app_pod, largest_gap, logs, replicas_streaming, status
from real_support import (
    condition,
    datastore,
    get,
    in_pod,
    job_done,
    job_pods,
    model_registry,
    ready,
    redis_cli,
    registry_ready,
    secret,
)

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realdemo import reach
from mlinfra.devenv.realnode import RealNode
from mlinfra.engines import connection
from mlinfra.engines.connection import ConnectionInfo
from mlinfra.features import jobs, layout, syncuser

ROWS = 200_000  # enough that the run is still writing when the primary goes (asserted: a run failed)
VIEW = "clicks"


def view(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": VIEW, "namespace": ns},
        "spec": {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": "clicks", "type": "int64"}],
            "offline": {"storeRef": {"name": "offline"}, "table": "clicks"},
            "online": {"storeRef": {"name": "online"}, "ttl": "24h"},
            "materialization": {"schedule": "0 0 1 1 *", "batchSize": 100, "suspend": True},
        },
    }


def psql(cp: ControlPlane, ns: str, statement: str) -> str:
    pg = secret(cp, ns, "offline-conn")
    return in_pod(
        cp, ns, "offline-0", "postgres", "PGPASSWORD", pg["password"],
        "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", pg["username"],
        "-d", pg["database"], "-c", statement,
    )  # fmt: skip


def dbsize(cp: ControlPlane, ns: str, member: str, password: str) -> int:
    try:
        return int(redis_cli(cp, ns, member, password, "DBSIZE") or 0)
    except (RuntimeError, ValueError):
        return -1


def test_a_materialization_across_an_online_failover(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    ns, cp = real_ns, real_cp
    online = datastore(ns, "online", "redis", real_node.image("redis"), 3)
    online["spec"]["managed"]["failoverDelay"] = 2
    cp.apply([datastore(ns, "offline", "postgres", real_node.image("postgres"), 1), online], field_manager="test")
    for store in ("offline", "online"):
        procs.wait_until(f"DataStore {store} Ready", lambda s=store: ready(cp, ns, s), 300)  # type: ignore[misc]
    replicas_streaming(cp, ns, "online")
    cp.apply([view(ns)], field_manager="test")
    procs.wait_until(
        "FeatureView Ready", lambda: condition(get(cp, ns, "featureview", VIEW), "Ready").get("status") == "True", 120
    )
    admin = secret(cp, ns, "online-conn")["password"]
    user = syncuser.user_name(ns, VIEW)
    # The view's user on every member, not only on the primary the client Service reaches.
    for member in ("online-0", "online-1", "online-2"):
        procs.wait_until(
            f"the sync user on {member}",
            lambda m=member: bool(redis_cli(cp, ns, m, admin, "ACL", "GETUSER", user)),  # type: ignore[misc]
            60,
        )
    psql(
        cp,
        ns,
        "INSERT INTO public.clicks (user_id, clicks, event_timestamp) "
        f"SELECT i, i * 7, now() - interval '1 minute' FROM generate_series(1, {ROWS}) i",
    )

    cp.kubectl("annotate", "featureview", VIEW, "-n", ns, f"{jobs.SYNC_REQUESTED_ANNOTATION}=across-failover")
    job = jobs.ondemand_job_name(VIEW, "across-failover")
    procs.wait_until("the run writing", lambda: dbsize(cp, ns, "online-0", admin) > 2_000, 180)
    written_then = dbsize(cp, ns, "online-0", admin)
    cp.kubectl("delete", "pod", "online-0", "-n", ns, "--wait=false")
    procs.wait_until(
        "a replica promoted", lambda: status(cp, ns, "online").get("currentPrimary") not in (None, "online-0"), 120
    )
    new = status(cp, ns, "online")["currentPrimary"]
    procs.wait_until("the Job complete (after its retry)", lambda: job_done_allowing_retry(cp, ns, job), 300)

    pods = job_pods(cp, ns, job)
    phases = sorted(p["status"]["phase"] for p in pods)
    assert "Failed" in phases and "Succeeded" in phases, (
        f"the run was not interrupted ({written_then} keys written when the primary went; pods {phases}): raise ROWS"
    )
    runs = dict(
        line.split("|")
        for line in psql(
            cp, ns, f"SELECT outcome, count(*) FROM mlinfra.sync_runs WHERE view = '{VIEW}' GROUP BY outcome"
        ).splitlines()
    )
    assert runs.get("Succeeded") == "1" and int(runs.get("Failed", "0")) >= 1, runs

    # Exactly the view's keys on the new primary (every entity, and the marker), each with its value.
    assert dbsize(cp, ns, new, admin) == ROWS + 1
    prefix = layout.key_prefix(ns, VIEW)
    check = (
        "local bad = 0 for i = 1, tonumber(ARGV[2]) do "
        "if redis.call('HGET', ARGV[1] .. i, 'clicks') ~= tostring(i * 7) then bad = bad + 1 end end return bad"
    )
    assert redis_cli(cp, ns, new, admin, "EVAL", check, "0", prefix, str(ROWS)) == "0"

    def materialized() -> bool:
        last = get(cp, ns, "featureview", VIEW).get("status", {}).get("lastMaterialization", {})
        return bool(last.get("outcome") == "Succeeded" and last.get("rows") == ROWS)

    procs.wait_until("status shows the run that finished", materialized, 60)
    failed_log = next(p for p in pods if p["status"]["phase"] == "Failed")["metadata"]["name"]
    summary = json.loads(cp.kubectl("logs", "-n", ns, failed_log).stdout.strip().splitlines()[-1])
    print(
        f"\nmaterialization across a failover: {written_then} of {ROWS} keys written when online-0 was deleted; "
        f"{new} promoted; the interrupted run failed ({summary.get('error', '')[:120]}); its retry wrote all "
        f"{ROWS}, nothing lost, no key more"
    )


def job_done_allowing_retry(cp: ControlPlane, ns: str, name: str) -> bool:
    """The Job succeeded (a failed first pod is expected: the retry is the point); a Job that failed fails the
    test with its pods' logs."""
    conds = get(cp, ns, "job", name).get("status", {}).get("conditions", [])
    if any(c["type"] == "Failed" and c["status"] == "True" for c in conds):
        logs = [cp.kubectl("logs", "-n", ns, p["metadata"]["name"], check=False).stdout for p in job_pods(cp, ns, name)]
        raise AssertionError(f"Job {name} failed: {conds}; logs: {logs}")
    return job_done(cp, ns, name)


# -- the registry: the SDK and the lineage sync across a failover of its PostgreSQL ----------------------------

REGISTRY_WRITER = """
import sys, time
from mlinfra.client.registry import Registry

registry = Registry("/var/run/writer")  # one object throughout: it must reconnect by itself
n = 1
while True:
    try:
        registry.register_model(f"m{n}", exist_ok=True)  # a retry of an uncertain commit is the same model
        print(f"ack {n} {time.time()}", flush=True)
        n += 1
    except Exception as exc:
        print(f"err {n} {time.time()} {type(exc).__name__}", flush=True)
    time.sleep(0.1)
"""


def registry_writer(ns: str, image: str, writer_secret: str) -> dict[str, Any]:
    pod = app_pod(ns, "registry-writer", image, "", [])
    container = pod["spec"]["containers"][0]
    container["command"] = ["python3", "-u", "-c", REGISTRY_WRITER]
    container["volumeMounts"] = [{"name": "writer", "mountPath": "/var/run/writer", "readOnly": True}]
    pod["spec"]["volumes"] = [{"name": "writer", "secret": {"secretName": writer_secret}}]
    return pod


def graph_models(cp: ControlPlane, ns: str) -> set[str]:
    data = get(cp, ns, "secret", "graph-conn")["data"]
    info = ConnectionInfo.from_secret_data({k: base64.b64decode(v).decode() for k, v in data.items()})
    with connection.neo4j_driver(reach(cp, ns)(info, "graph"), 30) as driver:
        records, _, _ = driver.execute_query(
            "MATCH (m:Model {registry: $registry}) RETURN m.name AS name", registry=f"{ns}/models"
        )
    return {str(r["name"]) for r in records}


def test_the_registry_sdk_and_lineage_sync_across_a_metadata_failover(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    ns, cp = real_ns, real_cp
    meta = datastore(ns, "meta", "postgres", real_node.image("postgres"), 3)
    meta["spec"]["managed"]["failoverDelay"] = 2
    meta["spec"]["managed"]["synchronousReplicas"] = 1  # a registration the SDK is told of is on a standby
    graph = datastore(ns, "graph", "neo4j", real_node.image("neo4j"), 1)
    graph["spec"]["managed"]["config"] = {"server.memory.heap.max_size": "512m", "server.memory.pagecache.size": "64m"}
    cp.apply([meta, graph], field_manager="test")
    for store in ("meta", "graph"):
        procs.wait_until(f"DataStore {store} Ready", lambda s=store: ready(cp, ns, s), 300)  # type: ignore[misc]
    replicas_streaming(cp, ns, "meta")
    cp.apply([model_registry(ns, batch_size=10)], field_manager="test")
    registry_ready(cp, ns)
    writer_secret = get(cp, ns, "modelregistry", "models")["status"]["writerSecret"]
    cp.apply([registry_writer(ns, real_node.image("operator"), writer_secret)])
    cp.kubectl("wait", "-n", ns, "--for=condition=Ready", "--timeout=60s", "pod/registry-writer")
    procs.wait_until("the SDK writing", lambda: len(acked(logs(cp, ns, "registry-writer"))) >= 30, 90)

    cp.kubectl("delete", "pod", "meta-0", "-n", ns, "--wait=false")
    procs.wait_until(
        "a standby promoted", lambda: status(cp, ns, "meta").get("currentPrimary") not in (None, "meta-0"), 120
    )
    new = status(cp, ns, "meta")["currentPrimary"]
    before = len(acked(logs(cp, ns, "registry-writer")))
    procs.wait_until("the SDK writing again", lambda: len(acked(logs(cp, ns, "registry-writer"))) >= before + 30, 120)
    acks = acked(logs(cp, ns, "registry-writer"))
    cp.kubectl("delete", "pod", "registry-writer", "-n", ns, "--wait=true")
    admin = secret(cp, ns, "meta-conn")
    in_registry = set(
        in_pod(
            cp, ns, new, "postgres", "PGPASSWORD", admin["password"],
            "psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-U", admin["username"], "-d", "registry",
            "-c", "SELECT name FROM registry.registered_models",
        ).split()
    )  # fmt: skip
    lost = [n for n, _ in acks if f"m{n}" not in in_registry]
    assert not lost, f"{len(lost)} of {len(acks)} models the SDK was told were registered are not on {new}: {lost[:10]}"

    def lineage_exact() -> bool:
        lineage = get(cp, ns, "modelregistry", "models").get("status", {}).get("lineage", {})
        return lineage.get("pendingEvents") == 0 and graph_models(cp, ns) == in_registry

    procs.wait_until("the lineage graph holding exactly the registry's models", lineage_exact, 240)
    print(
        f"\nregistry across a failover: {new} promoted; the SDK's largest gap between registrations "
        f"{largest_gap(acks):.2f} s, {len(acks)} registered, none lost; the lineage graph holds exactly the "
        f"{len(in_registry)} models"
    )
