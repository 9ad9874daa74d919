"""Managed stores on the real node, reconciled by the operator running as the chart's Pod: the operator's
own scripts start the engines in their containers, replicas find pod 0 through the headless Service's DNS
name, and status comes from those Pods."""

from __future__ import annotations

import json

from real_support import datastore, get, in_pod, members_ok, ready, redis_cli, secret

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realnode import RealNode

ROLES = {0: "primary", 1: "replica"}


def roles(cp: ControlPlane, ns: str, store: str) -> dict[int, str | None]:
    """Each pod's role label, by ordinal."""
    pods = json.loads(cp.kubectl("get", "pods", "-n", ns, "-l", f"mlinfra.io/datastore={store}", "-o", "json").stdout)
    return {
        int(p["metadata"]["name"].rpartition("-")[2]): p["metadata"].get("labels", {}).get("mlinfra.io/role")
        for p in pods["items"]
    }


def test_managed_redis_replicates_between_real_pods(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    ns = real_ns
    real_cp.apply([datastore(ns, "cache", "redis", real_node.image("redis"), 2)], field_manager="test")
    procs.wait_until("DataStore cache Ready", lambda: ready(real_cp, ns, "cache"), 240)

    procs.wait_until("both members in status", lambda: members_ok(real_cp, ns, "cache"), 60)
    pods = {
        p["metadata"]["name"]: p
        for p in json.loads(real_cp.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    }
    for name in ("cache-0", "cache-1"):
        assert pods[name]["spec"]["nodeName"] == real_node.name
        assert pods[name]["status"]["phase"] == "Running"
        # Our entrypoint script is the container's command, not the image's.
        assert pods[name]["spec"]["containers"][0]["command"][0] == "bash"

    password = secret(real_cp, ns, "cache-conn")["password"]
    # Written on the primary through the client Service's name, read on the replica Pod.
    host = secret(real_cp, ns, "cache-conn")["host"]
    # Role-aware endpoints: the read-write Service reaches the primary, the read-only one (labels the operator
    # set from the roles the servers report) the replica.
    procs.wait_until("pods labelled with their roles", lambda: roles(real_cp, ns, "cache") == ROLES, 60)
    read_only = secret(real_cp, ns, "cache-conn")["readOnlyHost"]
    assert read_only == f"cache-ro.{ns}.svc"
    assert redis_cli(real_cp, ns, "cache-1", password, "-h", host, "ROLE").splitlines()[0] == "master"

    def role_through_read_only() -> str:
        # The Service's endpoints follow the label a moment later (the EndpointSlice, then kube-proxy).
        return redis_cli(real_cp, ns, "cache-0", password, "-h", read_only, "ROLE").splitlines()[0]

    procs.wait_until("the read-only Service at the replica", lambda: role_through_read_only() == "slave", 30)
    assert redis_cli(real_cp, ns, "cache-0", password, "-h", host, "SET", "greeting", "hello") == "OK"
    procs.wait_until(
        "the key on the replica", lambda: redis_cli(real_cp, ns, "cache-1", password, "GET", "greeting") == "hello", 30
    )
    info = redis_cli(real_cp, ns, "cache-1", password, "INFO", "replication")
    assert "role:slave" in info and "master_link_status:up" in info
    # The replica found its primary through the headless Service's per-pod DNS name.
    assert f"master_host:cache-0.cache-hl.{ns}.svc" in info

    # pod 0 deleted: the operator hands the primary over to cache-1 while cache-0 still answers (its preStop
    # waits), cache-0 comes back as cache-1's replica with the key, and writes through the client Service land
    # on cache-1 and reach it (docs/high-availability.md; e2e/real/test_redis_failover.py measures it).
    old_uid = get(real_cp, ns, "pod", "cache-0")["metadata"]["uid"]
    real_cp.kubectl("delete", "pod", "cache-0", "-n", ns, "--wait=false")
    procs.wait_until("a new cache-0", lambda: get(real_cp, ns, "pod", "cache-0")["metadata"]["uid"] != old_uid, 60)
    real_cp.kubectl("wait", "-n", ns, "--for=condition=Ready", "--timeout=120s", "pod/cache-0")
    procs.wait_until(
        "cache-1 the primary",
        lambda: get(real_cp, ns, "datastore", "cache")["status"]["currentPrimary"] == "cache-1",
        60,
    )
    assert redis_cli(real_cp, ns, "cache-0", password, "GET", "greeting") == "hello"
    assert redis_cli(real_cp, ns, "cache-0", password, "-h", host, "SET", "after", "1") == "OK"
    procs.wait_until(
        "the new key on cache-0", lambda: redis_cli(real_cp, ns, "cache-0", password, "GET", "after") == "1", 60
    )
    assert "role:slave" in redis_cli(real_cp, ns, "cache-0", password, "INFO", "replication")


def test_managed_postgres_standby_streams_and_survives_the_loss_of_pod_0(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    ns = real_ns
    real_cp.apply([datastore(ns, "pg", "postgres", real_node.image("postgres"), 2)], field_manager="test")
    procs.wait_until("DataStore pg Ready", lambda: ready(real_cp, ns, "pg"), 300)
    procs.wait_until("both members in status", lambda: members_ok(real_cp, ns, "pg"), 60)

    conn = secret(real_cp, ns, "pg-conn")
    user, password, host = conn["username"], conn["password"], conn["host"]

    def sql(pod: str, statement: str, via_service: bool = False, host_name: str | None = None) -> str:
        return in_pod(
            real_cp,
            ns,
            pod,
            "postgres",
            "PGPASSWORD",
            password,
            "psql",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            user,
            "-d",
            conn["database"],
            "-c",
            statement,
            "-h",
            host_name or (host if via_service else "127.0.0.1"),
        )

    # The read-write Service reaches the primary, the read-only one the standby (the operator's role labels).
    procs.wait_until("pods labelled with their roles", lambda: roles(real_cp, ns, "pg") == ROLES, 60)
    assert conn["readOnlyHost"] == f"pg-ro.{ns}.svc"
    assert sql("pg-1", "SELECT pg_is_in_recovery()", via_service=True) == "f"
    procs.wait_until(
        "the read-only Service at the standby",
        lambda: sql("pg-0", "SELECT pg_is_in_recovery()", host_name=conn["readOnlyHost"]) == "t",
        30,
    )

    # Written on the primary through the client Service's DNS name, read on the standby Pod.
    sql("pg-1", "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'before')", via_service=True)
    procs.wait_until("the row on the standby", lambda: sql("pg-1", "SELECT v FROM t WHERE id = 1") == "before", 30)
    assert sql("pg-1", "SELECT pg_is_in_recovery()") == "t"
    assert sql("pg-0", "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1"

    # pod 0 deleted: the operator hands the primary over to pg-1 (pod 0's fast shutdown ships its WAL first),
    # pg-0 comes back rewound as pg-1's standby; nothing written before is lost, and writes through the client
    # Service land on pg-1 and reach pg-0 (e2e/real/test_postgres_failover.py measures it).
    old_uid = get(real_cp, ns, "pod", "pg-0")["metadata"]["uid"]
    real_cp.kubectl("delete", "pod", "pg-0", "-n", ns, "--wait=false")
    procs.wait_until("a new pg-0", lambda: get(real_cp, ns, "pod", "pg-0")["metadata"]["uid"] != old_uid, 60)
    procs.wait_until(
        "pg-1 the primary", lambda: get(real_cp, ns, "datastore", "pg")["status"].get("currentPrimary") == "pg-1", 90
    )
    real_cp.kubectl("wait", "-n", ns, "--for=condition=Ready", "--timeout=180s", "pod/pg-0")
    procs.wait_until("DataStore pg Ready again", lambda: ready(real_cp, ns, "pg"), 240)
    assert sql("pg-1", "SELECT v FROM t WHERE id = 1") == "before"
    assert sql("pg-1", "SELECT pg_is_in_recovery()") == "f"
    sql("pg-0", "INSERT INTO t VALUES (2, 'after')", via_service=True)
    procs.wait_until("the new row on pg-0", lambda: sql("pg-0", "SELECT count(*) FROM t") == "2", 60)
    assert sql("pg-0", "SELECT pg_is_in_recovery()") == "t"
