"""Redis failover and switchover on the real node, done by the operator running as the chart's Pod.

An application Pod writes a key every 100 ms through the read-write (client) Service and logs each
acknowledged write with its time; a watcher Pod asks every member its role every 200 ms. The primary's Pod is
deleted, or its process SIGSTOPped from the node: a replica is promoted, the writes resume, every acknowledged
write is on the new primary, the old primary comes back as a replica that streams, and no round of the watcher
ever saw two primaries. The gap in acknowledged writes is printed (not asserted: timing belongs to bench/).
With the operator scaled to 0 nobody promotes anything; back, it finishes the failover. A switchover to a named
replica loses no acknowledged write (asked for with Argo CD's "promote" action), and is refused while the
target lags beyond the bound (asked for with ``mlinfra promote``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from failover_support import (
    acked,
    app_pod,
    container_pid,
    events,
    largest_gap,
    logs,
    promote,
    promote_with_argocd,
    replicas_streaming,
    role_label,
    secret_env,
    status,
    two_primaries,
)
from real_support import datastore, get, in_pod, ready, redis_cli, secret

from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realnode import RealNode

STORE = "cache"
MEMBERS = 3


def store(ns: str, image: str) -> dict[str, Any]:
    body = datastore(ns, STORE, "redis", image, MEMBERS)
    body["spec"]["managed"]["failoverDelay"] = 2
    return body


def writer_script(ns: str) -> str:
    # One connection per write, through the Service's name: after a failover the next write lands on the new
    # primary (an application with a pool reconnects the same way). Each line: ack|err, number, time.
    return f"""
n=0
while true; do
  n=$((n+1))
  out=$(timeout 1 redis-cli --no-auth-warning -h {STORE}.{ns}.svc SET "w:$n" "$n" 2>&1 | tr '\\n' ' ')
  if [ "$out" = "OK " ]; then echo "ack $n $(date +%s.%N)"; else echo "err $n $(date +%s.%N) $out"; fi
  sleep 0.1
done
"""


def watcher_script(ns: str) -> str:
    hosts = " ".join(f"{STORE}-{i}.{STORE}-hl.{ns}.svc" for i in range(MEMBERS))
    return f"""
while true; do
  line="$(date +%s.%N)"
  for h in {hosts}; do
    r=$(timeout 0.5 redis-cli --no-auth-warning -h "$h" ROLE 2>/dev/null | head -1)
    line="$line ${{r:-none}}"
  done
  echo "$line"
  sleep 0.2
done
"""


def ask(cp: ControlPlane, ns: str, member: str, password: str, *args: str) -> str:
    """redis-cli in the member's Pod, given 3 s (a stopped or restarting server answers ""); never raises."""
    try:
        return in_pod(cp, ns, member, "redis", "REDISCLI_AUTH", password, "timeout", "3", "redis-cli", *args)
    except (subprocess.SubprocessError, RuntimeError, OSError):
        return ""


def shell(cp: ControlPlane, ns: str, member: str, password: str, script: str) -> str:
    """A shell script in the member's redis container, the password in REDISCLI_AUTH (never in argv)."""
    return in_pod(cp, ns, member, "redis", "REDISCLI_AUTH", password, "sh", "-c", script)


def role(cp: ControlPlane, ns: str, member: str, password: str) -> str:
    return (ask(cp, ns, member, password, "ROLE").splitlines() or [""])[0]


def streaming(cp: ControlPlane, ns: str, member: str, password: str) -> bool:
    return "master_link_status:up" in ask(cp, ns, member, password, "INFO", "replication")


def all_acked_on(cp: ControlPlane, ns: str, member: str, password: str) -> list[tuple[int, float]]:
    """The writes the writer saw acknowledged so far, each checked on ``member`` (assert: none lost)."""
    acks = acked(logs(cp, ns, "writer"))
    keys = [f"w:{n}" for n, _ in acks]
    values: list[str] = []
    for i in range(0, len(keys), 500):
        batch = keys[i : i + 500]
        got = redis_cli(cp, ns, member, password, "MGET", *batch).splitlines()
        values += got + [""] * (len(batch) - len(got))  # trailing nils are blank lines the output lost
    lost = [k for k, v in zip(keys, values, strict=True) if v != k[2:]]
    assert not lost, f"{len(lost)} of {len(keys)} acknowledged writes are not on {member}: {lost[:10]}"
    return acks


@pytest.fixture
def cache(real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str) -> Iterator[str]:
    """A Ready 3-member Redis store with the writer and the watcher running; yields the password."""
    ns, image = real_ns, real_node.image("redis")
    real_cp.apply([store(ns, image)], field_manager="test")
    procs.wait_until("DataStore cache Ready", lambda: ready(real_cp, ns, STORE), 240)
    replicas_streaming(real_cp, ns, STORE)
    assert status(real_cp, ns, STORE)["currentPrimary"] == "cache-0" and status(real_cp, ns, STORE)["primaryEpoch"] == 0
    env = [secret_env(STORE, "REDISCLI_AUTH", "password")]
    real_cp.apply(
        [app_pod(ns, "writer", image, writer_script(ns), env), app_pod(ns, "watcher", image, watcher_script(ns), env)]
    )
    for name in ("writer", "watcher"):
        real_cp.kubectl("wait", "-n", ns, "--for=condition=Ready", "--timeout=60s", f"pod/{name}")
    procs.wait_until("the writer writing", lambda: len(acked(logs(real_cp, ns, "writer"))) >= 30, 60)
    yield secret(real_cp, ns, f"{STORE}-conn")["password"]


def check_failover(
    cp: ControlPlane, ns: str, password: str, old: str, since: float, how: str
) -> tuple[str, list[tuple[int, float]]]:
    """After the old primary's loss: a replica promoted, writes resumed, every acknowledged write on the new
    primary, the old one back as its streaming replica, never two primaries. The new primary and the acks."""

    def promoted() -> bool:
        st = status(cp, ns, STORE)
        return st.get("currentPrimary") not in (None, old) and not st.get("targetPrimary")

    procs.wait_until(f"a replica promoted after {how}", promoted, 90)
    new = status(cp, ns, STORE)["currentPrimary"]
    acks_before = len(acked(logs(cp, ns, "writer")))
    procs.wait_until("writes resumed", lambda: len(acked(logs(cp, ns, "writer"))) >= acks_before + 30, 60)
    # The old primary's pod comes back as a replica of the new one, and streams.
    procs.wait_until(f"{old} back as a replica", lambda: role(cp, ns, old, password) == "slave", 120)
    procs.wait_until(f"{old} streaming from {new}", lambda: streaming(cp, ns, old, password), 120)
    acks = all_acked_on(cp, ns, new, password)
    # The role labels follow: the read-only Service's replicas are the new primary's.
    procs.wait_until(f"{new} labelled primary", lambda: role_label(cp, ns, new) == "primary", 60)
    procs.wait_until(f"{old} labelled replica", lambda: role_label(cp, ns, old) == "replica", 60)
    seen = logs(cp, ns, "watcher")
    assert len(seen) > 20 and not two_primaries(seen, "master"), two_primaries(seen, "master")
    st = status(cp, ns, STORE)
    assert st["primaryEpoch"] >= 1 and st["lastFailoverTime"]
    assert st["lastFailoverTime"] >= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since - 1))
    reasons = [e["reason"] for e in events(cp, ns, STORE)]
    assert "FailingOver" in reasons and "Promoted" in reasons
    gap = largest_gap([a for a in acks if a[1] >= since - 5])
    print(
        f"\nredis failover after {how}: {new} promoted; largest gap between acknowledged writes {gap:.2f} s; "
        f"{len(acks)} writes acknowledged, none lost; {len(seen)} role rounds, never two primaries"
    )
    return new, acks


def test_primary_pod_deleted(real_cp: ControlPlane, real_ns: str, cache: str) -> None:
    since = time.time()
    real_cp.kubectl("delete", "pod", "cache-0", "-n", real_ns, "--wait=false")
    new, _ = check_failover(real_cp, real_ns, cache, "cache-0", since, "the primary's pod was deleted")
    # Clients of the read-write Service reach the new primary; the read-only one its replicas.
    procs.wait_until(
        "the Service at the new primary",
        lambda: (
            get(real_cp, real_ns, "service", STORE)["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == new
        ),
        10,
    )


def test_primary_process_stopped(real_cp: ControlPlane, real_node: RealNode, real_ns: str, cache: str) -> None:
    pid = container_pid(real_node, real_cp, real_ns, "cache-0", "redis")
    since = time.time()
    os.kill(pid, signal.SIGSTOP)  # a hung primary: its port accepts nothing, its pod looks alive
    check_failover(real_cp, real_ns, cache, "cache-0", since, "the primary's process was SIGSTOPped")


def test_nothing_is_promoted_while_the_operator_is_down(
    real_cp: ControlPlane, real_node: RealNode, real_ns: str, cache: str
) -> None:
    deployment = ["deployment", "-l", f"app.kubernetes.io/instance={op_mod.RELEASE}", "-n", op_mod.NAMESPACE]
    real_cp.kubectl("scale", *deployment, "--replicas=0")
    try:
        real_cp.kubectl(
            "wait",
            "-n",
            op_mod.NAMESPACE,
            "--for=delete",
            "pod",
            "-l",
            "app.kubernetes.io/name=mlinfra-operator",
            "--timeout=90s",
            check=False,
        )
        pid = container_pid(real_node, real_cp, real_ns, "cache-0", "redis")
        since = time.time()
        os.kill(pid, signal.SIGSTOP)
        time.sleep(15)  # well past failoverDelay: with no operator nobody promotes anyone
        for member in ("cache-1", "cache-2"):
            assert role(real_cp, real_ns, member, cache) == "slave"
        assert status(real_cp, real_ns, STORE)["currentPrimary"] == "cache-0"
    finally:
        real_cp.kubectl("scale", *deployment, "--replicas=1")
    check_failover(real_cp, real_ns, cache, "cache-0", since, "the operator came back")


def test_switchover_loses_nothing_and_is_refused_while_the_target_lags(
    real_cp: ControlPlane, real_ns: str, cache: str
) -> None:
    ns = real_ns
    # cache-2 cut off from its primary (a wrong masterauth, the link dropped) falls behind by 20 MB.
    shell(
        real_cp,
        ns,
        "cache-2",
        cache,
        "printf wrong | redis-cli --no-auth-warning -x CONFIG SET masterauth >/dev/null; "
        "redis-cli --no-auth-warning CLIENT KILL TYPE master",
    )
    shell(
        real_cp, ns, "cache-0", cache, "head -c 20000000 /dev/zero | redis-cli --no-auth-warning -x SET big >/dev/null"
    )
    refused = promote(real_cp, ns, STORE, "cache-2")
    assert refused.returncode == 1 and "cache-2 lags the primary by" in refused.stdout, refused.stdout
    assert status(real_cp, ns, STORE)["currentPrimary"] == "cache-0"
    # Healed, it catches up; the switchover then waits for its last byte with the writes held.
    shell(
        real_cp,
        ns,
        "cache-2",
        cache,
        'printf %s "$REDISCLI_AUTH" | redis-cli --no-auth-warning -x CONFIG SET masterauth >/dev/null',
    )
    procs.wait_until("cache-2 streaming again", lambda: streaming(real_cp, ns, "cache-2", cache), 60)
    since = time.time()
    # This time through Argo CD's "promote" action, cache-2 picked as a user picks it in the UI.
    done = promote_with_argocd(real_cp, ns, STORE, member="cache-2")
    assert done["outcome"] == "done" and "switchover: cache-2 promoted" in done["message"], done
    assert role(real_cp, ns, "cache-2", cache) == "master"
    procs.wait_until("status naming cache-2", lambda: status(real_cp, ns, STORE).get("currentPrimary") == "cache-2", 30)
    procs.wait_until("cache-0 a replica of cache-2", lambda: role(real_cp, ns, "cache-0", cache) == "slave", 30)
    acks_before = len(acked(logs(real_cp, ns, "writer")))
    procs.wait_until("writes resumed", lambda: len(acked(logs(real_cp, ns, "writer"))) >= acks_before + 20, 60)
    acks = all_acked_on(real_cp, ns, "cache-2", cache)
    gap = largest_gap([a for a in acks if a[1] >= since - 5])
    print(
        f"\nredis switchover to cache-2: largest gap between acknowledged writes {gap:.2f} s; "
        f"{len(acks)} writes acknowledged, none lost"
    )
