"""PostgreSQL failover and switchover on the real node, done by the operator running as the chart's Pod.

An application Pod inserts a row every 100 ms through the read-write (client) Service (a new connection per
insert) and logs each committed insert with its time; a watcher Pod asks every member ``pg_is_in_recovery()``
every 200 ms. The store has one synchronous standby (a commit returns once a standby has it). The primary's
Pod is deleted, or its processes SIGSTOPped from the node: a standby is promoted,
the inserts resume, every committed insert is on the new primary, the old primary comes back rewound as a
standby that streams, and no round of the watcher ever saw two primaries. The gaps are printed, not asserted.
A switchover to a named standby loses no committed insert.
"""

from __future__ import annotations

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
    freeze,
    largest_gap,
    logs,
    promote,
    replicas_streaming,
    role_label,
    secret_env,
    status,
    two_primaries,
)
from real_support import datastore, in_pod, ready, secret

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realnode import RealNode

STORE = "pg"
MEMBERS = 3
ENV = [secret_env(STORE, "PGUSER", "username"), secret_env(STORE, "PGPASSWORD", "password")]


def store(ns: str, image: str) -> dict[str, Any]:
    body = datastore(ns, STORE, "postgres", image, MEMBERS)
    body["spec"]["managed"]["failoverDelay"] = 2
    # A commit returns once a standby has it: the failover (to the most advanced standby) loses none.
    body["spec"]["managed"]["synchronousReplicas"] = 1
    return body


def writer_script(ns: str) -> str:
    # Each line: ack|err, number, time; ack only when psql says the insert committed (autocommit).
    return f"""
export PGCONNECT_TIMEOUT=2 PGDATABASE=postgres
n=0
while true; do
  n=$((n+1))
  if out=$(timeout 3 psql -X -q -h {STORE}.{ns}.svc -v ON_ERROR_STOP=1 -c "insert into w values ($n)" 2>&1); then
    echo "ack $n $(date +%s.%N)"
  else
    echo "err $n $(date +%s.%N) $(echo "$out" | tr '\\n' ' ')"
  fi
  sleep 0.1
done
"""


def watcher_script(ns: str) -> str:
    hosts = " ".join(f"{STORE}-{i}.{STORE}-hl.{ns}.svc" for i in range(MEMBERS))
    return f"""
export PGCONNECT_TIMEOUT=1 PGDATABASE=postgres
while true; do
  line="$(date +%s.%N)"
  for h in {hosts}; do
    r=$(timeout 1 psql -X -At -h "$h" -c 'select pg_is_in_recovery()' 2>/dev/null)
    case "$r" in f) r=primary ;; t) r=standby ;; *) r=none ;; esac
    line="$line $r"
  done
  echo "$line"
  sleep 0.2
done
"""


def sql(cp: ControlPlane, ns: str, member: str, user: str, password: str, statement: str) -> str:
    """psql in the member's container (its own server), the password in PGPASSWORD (never in argv); "" when
    it does not answer within 3 s."""
    try:
        return in_pod(
            cp, ns, member, "postgres", "PGPASSWORD", password,
            "timeout", "3", "psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-U", user, "-d", "postgres", "-c", statement,
        )  # fmt: skip
    except (subprocess.SubprocessError, RuntimeError, OSError):
        return ""


@pytest.fixture
def pg(real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str) -> Iterator[tuple[str, str]]:
    """A Ready 3-member PostgreSQL store with the writer and the watcher running; yields (user, password)."""
    ns, image = real_ns, real_node.image("postgres")
    real_cp.apply([store(ns, image)], field_manager="test")
    procs.wait_until("DataStore pg Ready", lambda: ready(real_cp, ns, STORE), 300)
    replicas_streaming(real_cp, ns, STORE)
    conn = secret(real_cp, ns, f"{STORE}-conn")
    user, password = conn["username"], conn["password"]
    sql(real_cp, ns, "pg-0", user, password, "create table w (id int primary key)")
    real_cp.apply(
        [app_pod(ns, "writer", image, writer_script(ns), ENV), app_pod(ns, "watcher", image, watcher_script(ns), ENV)]
    )
    for name in ("writer", "watcher"):
        real_cp.kubectl("wait", "-n", ns, "--for=condition=Ready", "--timeout=60s", f"pod/{name}")
    procs.wait_until("the writer writing", lambda: len(acked(logs(real_cp, ns, "writer"))) >= 30, 60)
    yield user, password


def check_failover(cp: ControlPlane, ns: str, user: str, password: str, old: str, since: float, how: str) -> None:
    """After the old primary's loss: a standby promoted, inserts resumed, every committed insert on the new
    primary, the old one back (rewound) as its streaming standby, never two primaries."""

    def promoted() -> bool:
        st = status(cp, ns, STORE)
        return st.get("currentPrimary") not in (None, old) and not st.get("targetPrimary")

    procs.wait_until(f"a standby promoted after {how}", promoted, 120)
    new = status(cp, ns, STORE)["currentPrimary"]
    acks_before = len(acked(logs(cp, ns, "writer")))
    procs.wait_until("inserts resumed", lambda: len(acked(logs(cp, ns, "writer"))) >= acks_before + 30, 90)
    procs.wait_until(
        f"{old} back as a standby", lambda: sql(cp, ns, old, user, password, "select pg_is_in_recovery()") == "t", 180
    )
    procs.wait_until(
        f"{old} streaming from {new}",
        lambda: (
            sql(cp, ns, new, user, password, f"select state from pg_stat_replication where application_name = '{old}'")
            == "streaming"
        ),
        120,
    )
    acks = acked(logs(cp, ns, "writer"))
    on_new = {int(x) for x in sql(cp, ns, new, user, password, "select id from w").split()}
    lost = sorted(n for n, _ in acks if n not in on_new)
    assert not lost, f"{len(lost)} of {len(acks)} committed inserts are not on {new}: {lost[:10]}"
    procs.wait_until(f"{new} labelled primary", lambda: role_label(cp, ns, new) == "primary", 60)
    seen = logs(cp, ns, "watcher")
    assert len(seen) > 20 and not two_primaries(seen, "primary"), two_primaries(seen, "primary")
    reasons = [e["reason"] for e in events(cp, ns, STORE)]
    assert "FailingOver" in reasons and "Promoted" in reasons
    gap = largest_gap([a for a in acks if a[1] >= since - 5])
    print(
        f"\npostgres failover after {how}: {new} promoted; largest gap between committed inserts {gap:.2f} s; "
        f"{len(acks)} inserts committed, none lost; {len(seen)} role rounds, never two primaries"
    )


def test_primary_pod_deleted(real_cp: ControlPlane, real_ns: str, pg: tuple[str, str]) -> None:
    since = time.time()
    real_cp.kubectl("delete", "pod", "pg-0", "-n", real_ns, "--wait=false")
    check_failover(real_cp, real_ns, *pg, "pg-0", since, "the primary's pod was deleted")


def test_primary_processes_stopped(
    real_cp: ControlPlane, real_node: RealNode, real_ns: str, pg: tuple[str, str]
) -> None:
    pid = container_pid(real_node, real_cp, real_ns, "pg-0", "postgres")
    since = time.time()
    freeze(pid)  # the postmaster and every backend: a hung primary
    check_failover(real_cp, real_ns, *pg, "pg-0", since, "the primary's processes were SIGSTOPped")


def test_switchover_loses_nothing(real_cp: ControlPlane, real_ns: str, pg: tuple[str, str]) -> None:
    since = time.time()
    done = promote(real_cp, real_ns, STORE, "pg-2")
    assert done.returncode == 0 and "done: switchover: pg-2 promoted" in done.stdout, done.stdout
    check_failover(real_cp, real_ns, *pg, "pg-0", since, "a switchover to pg-2")
    assert status(real_cp, real_ns, STORE)["currentPrimary"] == "pg-2"
