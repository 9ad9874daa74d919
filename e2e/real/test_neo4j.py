"""A managed Neo4j on the real node, reconciled by the operator running as the chart's Pod: the locally built
neo4j image (Debian's Java 17, Neo4j 5.26's jars, our launchers of Neo4j's bootloader) runs the operator's
start.sh, which sets the generated password before the first start; the operator reaches the server through
its Service's name, and a Bolt client on the host reaches it at the Pod's address."""

from __future__ import annotations

import logging
import re
import time

import neo4j
import pytest
from real_support import condition, datastore, get, ready, secret

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realnode import RealNode
from mlinfra.engines.render import CONFIG_DIR, PROFILES

UID = PROFILES["neo4j"].uid


class HelloRecorder(logging.Handler):
    """The connection.recv_timeout_seconds hints of the server's HELLO answers, from the driver's debug log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.recv_timeouts: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"'connection\.recv_timeout_seconds': (\d+)", record.getMessage())
        if found:
            self.recv_timeouts.append(int(found.group(1)))


def test_managed_neo4j_answers_bolt_with_the_generated_password(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    ns = real_ns
    store = datastore(ns, "graph", "neo4j", real_node.image("neo4j"), 1)
    # A small heap and page cache: two cores and other tests share the machine (the allow-listed settings).
    store["spec"]["managed"]["config"] = {"server.memory.heap.max_size": "512m", "server.memory.pagecache.size": "64m"}
    real_cp.apply([store], field_manager="test")
    procs.wait_until("DataStore graph Ready", lambda: ready(real_cp, ns, "graph"), 300)

    # Status comes from the server: the operator's probe connected with Bolt to the connection's host, the
    # client Service's name, and the server it found there is pod 0.
    conn = secret(real_cp, ns, "graph-conn")
    assert conn["host"].startswith(f"graph.{ns}.svc"), conn["host"]
    ds = get(real_cp, ns, "datastore", "graph")
    st = ds["status"]
    assert condition(ds, "Ready")["status"] == "True"
    assert str(st.get("version", "")).startswith("5.26."), st
    members = {m["name"]: m for m in st.get("members", [])}
    assert list(members) == ["graph-0"] and members["graph-0"]["role"] == "standalone", st
    assert members["graph-0"]["ready"], st

    pod = get(real_cp, ns, "pod", "graph-0")
    assert pod["spec"]["nodeName"] == real_node.name
    assert pod["status"]["phase"] == "Running"
    container = pod["spec"]["containers"][0]
    # The operator's start.sh is the container's command, not the image's Cmd (`neo4j console`).
    assert container["command"] == ["bash", f"{CONFIG_DIR}/start.sh"]
    assert container["image"] == real_node.image("neo4j")

    # The server runs as the profile's uid, which has a passwd entry in the image; PID 1 is Neo4j's
    # bootloader (start.sh exec'd `neo4j console`, which exec'd java).
    def in_pod(*argv: str) -> str:
        return real_cp.kubectl("exec", "-n", ns, "graph-0", "-c", "neo4j", "--", *argv).stdout.strip()

    assert in_pod("id", "-u") == str(UID) and in_pod("id", "-g") == str(UID)
    assert in_pod("id", "-un") == "neo4j"
    status = dict(line.split(":", 1) for line in in_pod("cat", "/proc/1/status").splitlines() if ":" in line)
    assert status["Uid"].split() == [str(UID)] * 4 and status["Gid"].split() == [str(UID)] * 4
    cmdline = in_pod("cat", "/proc/1/cmdline").split("\0")
    assert "org.neo4j.server.startup.Neo4jCommand" in cmdline and "console" in cmdline, cmdline

    # Bolt from the host, straight to the Pod's address (the node's pod range is routed over its link), with
    # the connection Secret's username and generated password.
    pod_ip = pod["status"]["podIP"]
    uri = f"bolt://{pod_ip}:7687"
    hello = HelloRecorder()
    logging.getLogger("neo4j").addHandler(hello)
    level = logging.getLogger("neo4j").level
    logging.getLogger("neo4j").setLevel(logging.DEBUG)
    try:
        with neo4j.GraphDatabase.driver(
            uri, auth=(conn["username"], conn["password"]), connection_timeout=10
        ) as driver:
            records = driver.execute_query("RETURN 1 AS one").records
            assert [r["one"] for r in records] == [1]
    finally:
        logging.getLogger("neo4j").removeHandler(hello)
        logging.getLogger("neo4j").setLevel(level)
    # The rendered keep-alive reached the server: it tells drivers to give a silent connection up after 20 s
    # (the driver sets it as its socket's read timeout), not Neo4j's default 120 s.
    assert hello.recv_timeouts and set(hello.recv_timeouts) == {20}, hello.recv_timeouts
    with (
        neo4j.GraphDatabase.driver(
            uri, auth=(conn["username"], conn["password"] + "-wrong"), connection_timeout=10
        ) as driver,
        pytest.raises(neo4j.exceptions.AuthError),
    ):
        driver.execute_query("RETURN 1 AS one")
    # Its liveness probe (HTTP on 7474, after the startup probe) passes: the server is not restarted.
    time.sleep(75)
    status = get(real_cp, ns, "pod", "graph-0")["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0 and status["ready"], status
