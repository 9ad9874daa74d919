"""A Neo4j backup in a Pod: the operator's Backup Job runs `mlinfra take backup` from the operator image on the
real node, exports a managed Neo4j (a real Pod of the locally built neo4j image) over Bolt through the store's
Service, and writes it, sealed, into a real S3 server (MinIO) in the node's network namespace. The Backup's
status comes from the manifest; the export, downloaded and verified here, restores the same graph into the
emptied store."""

from __future__ import annotations

import secrets
from pathlib import Path

import neo4j
from real_support import (
    backup,
    backup_policy,
    condition,
    create_secret,
    datastore,
    get,
    job_done,
    job_pods,
    ready,
    secret,
)

from mlinfra.backup import catalog
from mlinfra.backup import neo4j as neo4j_backup
from mlinfra.backup.sealed import EncryptionKey
from mlinfra.backups import job as backup_job
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.minio import MinioServer
from mlinfra.devenv.realnode import RealNode
from mlinfra.engines import connection

PREFIX = "graphs"
PEOPLE = 300


def _graph(driver: neo4j.Driver) -> tuple[list[tuple[int, str]], list[tuple[int, int, int]]]:
    people = driver.execute_query("MATCH (p:Person) RETURN p.id AS id, p.name AS name ORDER BY id").records
    knows = driver.execute_query(
        "MATCH (a:Person)-[k:KNOWS]->(b:Person) RETURN a.id AS a, b.id AS b, k.since AS since ORDER BY a, b"
    ).records
    return [(r["id"], r["name"]) for r in people], [(r["a"], r["b"], r["since"]) for r in knows]


def test_a_neo4j_backup_job_runs_in_a_pod_and_the_export_restores_the_graph(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_s3: MinioServer, real_ns: str, tmp_path: Path
) -> None:
    cp, ns = real_cp, real_ns
    bucket, key = real_s3.new_bucket("graph"), secrets.token_hex(32)
    user = real_s3.add_user(bucket)
    create_secret(cp, ns, "s3-creds", accessKeyId=user.access_key, secretAccessKey=user.secret_key)
    create_secret(cp, ns, "backup-key", key=key)
    store = datastore(ns, "graph", "neo4j", real_node.image("neo4j"), 1)
    # A small heap and page cache: two cores and other tests share the machine (the allow-listed settings).
    store["spec"]["managed"]["config"] = {"server.memory.heap.max_size": "512m", "server.memory.pagecache.size": "64m"}
    store["spec"]["backup"] = backup_policy(bucket, PREFIX, real_s3.endpoint)
    cp.apply([store], field_manager="test")
    procs.wait_until("DataStore graph Ready", lambda: ready(cp, ns, "graph"), 300)

    # A graph written over Bolt to the Pod's address (the node's pod range is routed here).
    conn_secret = secret(cp, ns, "graph-conn")
    pod_ip = get(cp, ns, "pod", "graph-0")["status"]["podIP"]
    conn = connection.ConnectionInfo.for_engine(
        "neo4j", pod_ip, conn_secret["password"], port=7687, username=conn_secret["username"]
    )
    with connection.neo4j_driver(conn, 30) as driver:
        driver.execute_query("CREATE CONSTRAINT person_id IF NOT EXISTS FOR (p:Person) REQUIRE p.id IS UNIQUE")
        driver.execute_query(
            "UNWIND range(1, $n) AS i CREATE (:Person {id: i, name: 'person-' + toString(i)})", n=PEOPLE
        )
        driver.execute_query(
            "MATCH (a:Person), (b:Person) WHERE b.id = a.id % $n + 1 "
            "CREATE (a)-[:KNOWS {since: 2000 + a.id % 20}]->(b)",
            n=PEOPLE,
        )
        before = _graph(driver)
    assert len(before[0]) == PEOPLE and len(before[1]) == PEOPLE

    cp.apply(
        [backup(ns, "graph-first", "graph")],
        field_manager="test",
    )
    name = backup_job.job_name("graph-first")
    procs.wait_until(
        "the backup Job", lambda: cp.kubectl("get", "job", name, "-n", ns, check=False).returncode == 0, 90
    )
    procs.wait_until("the backup Job complete", lambda: job_done(cp, ns, name), 300)
    [pod] = job_pods(cp, ns, name)
    assert pod["spec"]["nodeName"] == real_node.name and pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["containers"][0]["image"] == real_node.image("operator")
    procs.wait_until(
        "Backup graph-first Ready",
        lambda: condition(get(cp, ns, "backup", "graph-first"), "Ready").get("status") == "True",
        90,
    )
    st = get(cp, ns, "backup", "graph-first")["status"]
    assert st["engine"] == "neo4j" and st["encrypted"] is True and st["sizeBytes"] > 0, st

    # Downloaded and verified here (every object's checksum and seal), the export holds the whole graph.
    store_prefix = f"{ns}/graph/{get(cp, ns, 'datastore', 'graph')['metadata']['uid']}"
    target = real_s3.target(bucket, PREFIX, user=user)
    files = tmp_path / "backup"
    manifest = catalog.download_backup(
        target, store_prefix, st["backupId"], files, EncryptionKey.from_secret_value("backup-key/key", key.encode())
    )
    assert manifest.engine == "neo4j" and manifest.encrypted

    # The store emptied (what a user does before `mlinfra restore --to`), then the export restores into it.
    with connection.neo4j_driver(conn, 30) as driver:
        driver.execute_query("MATCH (n) DETACH DELETE n")
        assert _graph(driver) == ([], [])
    counts = neo4j_backup.restore(files, conn, timeout=240)
    assert counts.get("nodes") == PEOPLE and counts.get("relationships") == PEOPLE, counts
    with connection.neo4j_driver(conn, 30) as driver:
        assert _graph(driver) == before
        constraints = driver.execute_query("SHOW CONSTRAINTS YIELD name RETURN name").records
        assert "person_id" in {r["name"] for r in constraints}
