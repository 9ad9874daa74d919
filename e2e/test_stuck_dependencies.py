"""A stuck dependency degrades the objects that use it, never the operator (issue 13, class 3).

On a control plane and an operator of their own (short intervals and probe timeout, so the test stays
short), over real PostgreSQL and Redis:

- a PostgreSQL cluster under eight FeatureViews is frozen (SIGSTOP to the postmaster and every backend):
  the eight go Ready=False naming a timeout, while a FeatureView on another PostgreSQL keeps being
  reconciled (a spec change during the stall is applied and observed); after SIGCONT all eight are Ready
  again;
- fifty DataStores point at a black-holed address (a network namespace of the test routes TEST-NET-2 into a
  blackhole route: packets are dropped on this machine, connects time out): each reports a timeout, and the
  healthy FeatureView's spec changes are reconciled meanwhile.

The reconcile latency of the healthy object and the recovery time are measured and printed, never asserted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e_support import condition, get_json, wait_for
from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.postgres import PostgresCluster, start_postgres
from mlinfra.devenv.redis import RedisCluster
from mlinfra.engines import probe

NS = "stuck"
STUCK_VIEWS = 8
BLACKHOLED = 50
PROBE_TIMEOUT = 2.0
OBSERVE_INTERVAL = 2.0
# TEST-NET-2 (RFC 5737): documentation addresses, routed by the test into a blackhole on this machine.
BLACKHOLE_NET = "198.51.100.0/24"
ENGINES = ("postgres", "redis", "neo4j", "qdrant")
PORTS = {"postgres": 5432, "redis": 6379, "neo4j": 7687, "qdrant": 6333}
# How each engine's probe words a timeout (PostgreSQL: connect timeout; the others: their drivers).
TIMEOUT_WORDS = ("no connection in time", "did not answer within", "timeout", "timed out")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, op_mod.OperatorProcess]]:
    """A control plane with the chart installed and an operator of this test only: no other operator
    (the session's is cluster-wide) sees these objects, and its settings are the test's."""
    work = tmp_path_factory.mktemp("stuck")
    with ControlPlane(work / "kube") as cp, procs.ProcStack() as stack:
        account = op_mod.install_chart(cp)
        kubeconfig = op_mod.service_account_kubeconfig(cp, op_mod.NAMESPACE, account, work / "operator.kubeconfig")
        cp.kubectl("create", "namespace", NS)
        wait_for(
            "the default ServiceAccount",
            lambda: cp.kubectl("get", "sa", "default", "-n", NS, check=False).returncode == 0,
        )
        op = op_mod.start_operator(
            stack,
            kubeconfig,
            work,
            None,
            observe_interval=OBSERVE_INTERVAL,
            extra_env={"MLINFRA_PROBE_TIMEOUT": str(PROBE_TIMEOUT)},
        )
        yield cp, op
        log = (work / "operator.log").read_text(errors="replace").splitlines()
        print("--- last operator log lines ---\n" + "\n".join(log[-40:]))


@pytest.fixture(scope="module")
def frozen_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """The PostgreSQL this test freezes: its own (the session's servers serve the other tests)."""
    with procs.ProcStack() as stack:
        yield start_postgres(stack, tmp_path_factory.mktemp("frozen-pg"), standbys=0)


def secret(cp: ControlPlane, name: str, user: str, password: str) -> None:
    cp.kubectl(
        "create", "secret", "generic", name, "-n", NS, f"--from-literal=username={user}",
        f"--from-literal=password={password}",
    )  # fmt: skip


def datastore(name: str, engine: str, endpoint: str, creds: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"engine": engine, "external": {"endpoint": endpoint, "credentialsSecretRef": {"name": creds}}},
    }


def view(name: str, offline: str, features: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": f"f{i}", "type": "int64"} for i in range(features)],
            "offline": {"storeRef": {"name": offline}, "table": name.replace("-", "_")},
            "online": {"storeRef": {"name": "online"}},
        },
    }


def items(cp: ControlPlane, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in get_json(cp, kind, "-n", NS)["items"]}


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    return condition(obj, "Ready")


def names_a_timeout(message: str) -> bool:
    return any(word in message.lower() for word in TIMEOUT_WORDS)


def reconcile_latency(cp: ControlPlane, name: str, features: int) -> float:
    """Seconds from a spec change of FeatureView ``name`` (now ``features`` features) to its status showing
    that generation observed and Ready."""
    cp.apply([view(name, "offline-ok", features)])
    started = time.monotonic()
    generation = get_json(cp, "featureview", name, "-n", NS)["metadata"]["generation"]

    def reconciled() -> bool:
        fv = get_json(cp, "featureview", name, "-n", NS)
        st = fv.get("status") or {}
        return st.get("observedGeneration") == generation and ready(fv).get("status") == "True"

    wait_for(f"FeatureView {name} generation {generation} reconciled", reconciled, 90)
    return time.monotonic() - started


def healthz(op: op_mod.OperatorProcess) -> int:
    try:
        op.healthz()
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


@contextlib.contextmanager
def blackhole(net: str) -> Iterator[None]:
    """Route ``net`` into a network namespace that drops it (a blackhole route, forwarding on): a connect
    to it times out, and no packet leaves this machine. Deleting the namespace removes its link, and with
    it the host's route."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a black-holed route needs root and iproute2")
    tag = secrets.token_hex(2)
    netns, host_if, ns_if = f"mlbh-{tag}", f"mlbh{tag}h", f"mlbh{tag}p"
    third = int(tag, 16) % 250
    host_ip, ns_ip = f"10.253.{third}.1", f"10.253.{third}.2"

    def ip(*args: str, inside: bool = False) -> None:
        argv = ["ip", "netns", "exec", netns, "ip", *args] if inside else ["ip", *args]
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    ip("netns", "add", netns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", netns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("addr", "add", f"{ns_ip}/30", "dev", ns_if, inside=True)
        ip("link", "set", ns_if, "up", inside=True)
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True, timeout=30)
        ip("route", "add", "blackhole", net, inside=True)  # forwarded packets to it are dropped silently
        ip("route", "add", net, "via", ns_ip, "dev", host_if)
        yield
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True, timeout=30)


def stop_probing(cp: ControlPlane, op: op_mod.OperatorProcess, names: list[str]) -> None:
    """Delete the black-holed DataStores and let the probes in flight end, before the route goes: without
    it, these addresses are routed off this machine (the default route)."""
    cp.kubectl("delete", "datastores", "-n", NS, *names, "--ignore-not-found", "--wait=true", "--timeout=90s")
    with contextlib.suppress(Exception):
        wait_for("the operator to forget them", lambda: op.healthz()["objects"] <= 3 + STUCK_VIEWS + 1, 30)
    time.sleep(PROBE_TIMEOUT + probe.GRACE + 1)  # an abandoned probe ends on its driver's own timeout


def sample_during(check: Callable[[], bool], seconds: float) -> list[bool]:
    """``check`` every second for ``seconds``."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(check())
        time.sleep(1)
    return seen


def test_a_frozen_postgres_and_fifty_blackholed_stores_degrade_only_their_objects(
    platform: tuple[ControlPlane, op_mod.OperatorProcess],
    frozen_pg: PostgresCluster,
    postgres_cluster: PostgresCluster,
    redis_cluster: RedisCluster,
) -> None:
    cp, op = platform
    secret(cp, "frozen-creds", "postgres", frozen_pg.password)
    secret(cp, "ok-creds", "postgres", postgres_cluster.password)
    secret(cp, "kv-creds", "default", redis_cluster.password)
    stuck_views = [f"stuck-{i}" for i in range(STUCK_VIEWS)]
    cp.apply(
        [
            datastore("offline-frozen", "postgres", f"127.0.0.1:{frozen_pg.primary.port}", "frozen-creds"),
            datastore("offline-ok", "postgres", f"127.0.0.1:{postgres_cluster.primary.port}", "ok-creds"),
            datastore("online", "redis", f"127.0.0.1:{redis_cluster.primary.port}", "kv-creds"),
        ]
    )
    healthy = f"healthy-{secrets.token_hex(2)}"  # its own table on the shared server
    cp.apply([*(view(name, "offline-frozen") for name in stuck_views), view(healthy, "offline-ok")])
    wait_for(
        "every FeatureView Ready",
        lambda: (
            all(ready(fv).get("status") == "True" for fv in items(cp, "featureviews").values())
            and len(items(cp, "featureviews")) == STUCK_VIEWS + 1
        ),
        120,
    )
    features = 1

    # --- PostgreSQL frozen under eight FeatureViews -----------------------------------------------------
    assert frozen_pg.primary.proc is not None
    frozen_pg.primary.pause()  # SIGSTOP to the postmaster's group and every descendant (each backend)
    stalled_at = time.monotonic()
    latencies: list[float] = []
    seen_reasons: dict[str, tuple[str, str]] = {}
    try:
        for _ in range(3):
            features += 1
            latencies.append(reconcile_latency(cp, healthy, features))

        def all_stuck_report_a_timeout() -> bool:
            views = items(cp, "featureviews")
            for name in stuck_views:
                cond = ready(views[name])
                if cond.get("status") == "False" and name not in seen_reasons:
                    seen_reasons[name] = (cond["reason"], cond["message"])
            return len(seen_reasons) == STUCK_VIEWS

        wait_for("the eight FeatureViews on the frozen PostgreSQL Ready=False", all_stuck_report_a_timeout, 90)
        reported_after = time.monotonic() - stalled_at
        features += 1
        latencies.append(reconcile_latency(cp, healthy, features))  # once all eight are degraded
        health_during = sample_during(lambda: healthz(op) == 200, 3)
        stalled_for = time.monotonic() - stalled_at
    finally:
        frozen_pg.primary.resume()
    resumed_at = time.monotonic()
    wait_for(
        "the eight FeatureViews Ready again",
        lambda: all(ready(items(cp, "featureviews")[n]).get("status") == "True" for n in stuck_views),
        120,
    )
    recovery = time.monotonic() - resumed_at
    print(
        f"\nPostgreSQL frozen for {stalled_for:.1f} s under {STUCK_VIEWS} FeatureViews: all {STUCK_VIEWS} reported "
        f"Ready=False after {reported_after:.1f} s; the healthy FeatureView's spec changes were reconciled in "
        f"{', '.join(f'{s:.2f}' for s in latencies)} s during the stall; all Ready again {recovery:.1f} s after "
        "SIGCONT"
    )
    print("first not-Ready reason per stuck FeatureView:")
    for name, (reason, message) in sorted(seen_reasons.items()):
        print(f"  {name}: {reason}: {message}")
    for name, (reason, message) in seen_reasons.items():
        assert reason in ("DeadlineExceeded", "StoreNotReady"), (name, reason, message)
        assert names_a_timeout(message), (name, reason, message)
    assert all(health_during), health_during
    assert op.proc.running()

    # --- fifty DataStores at a black-holed address ------------------------------------------------------
    secret(cp, "bh-creds", "mlinfra", "not-a-real-password")
    blackholed = [f"bh-{i:02d}" for i in range(BLACKHOLED)]
    with blackhole(BLACKHOLE_NET):
        try:
            created_at = time.monotonic()
            cp.apply(
                [
                    datastore(name, ENGINES[i % 4], f"198.51.100.{i + 1}:{PORTS[ENGINES[i % 4]]}", "bh-creds")
                    for i, name in enumerate(blackholed)
                ]
            )
            bh_latencies = []
            for _ in range(3):
                features += 1
                bh_latencies.append(reconcile_latency(cp, healthy, features))

            def every_blackholed_store_timed_out() -> bool:
                stores = items(cp, "datastores")
                return all(
                    name in stores
                    and ready(stores[name]).get("status") == "False"
                    and names_a_timeout(ready(stores[name]).get("message", ""))
                    for name in blackholed
                )

            wait_for(
                f"the {BLACKHOLED} black-holed DataStores reporting a timeout", every_blackholed_store_timed_out, 120
            )
            all_reported = time.monotonic() - created_at
            features += 1
            bh_latencies.append(reconcile_latency(cp, healthy, features))  # with all fifty probing and timing out
            health_blackholed = sample_during(lambda: healthz(op) == 200, 3)
            objects_counted = op.healthz()["objects"]
            stores = items(cp, "datastores")
            examples = {ENGINES[i % 4]: ready(stores[blackholed[i]])["message"] for i in range(4)}
        finally:
            stop_probing(cp, op, blackholed)
    print(
        f"{BLACKHOLED} DataStores at black-holed addresses (probe timeout {PROBE_TIMEOUT:g} s): all reported a "
        f"timeout {all_reported:.1f} s after creation; the healthy FeatureView's spec changes were reconciled in "
        f"{', '.join(f'{s:.2f}' for s in bh_latencies)} s meanwhile"
    )
    for engine, message in examples.items():
        print(f"  {engine}: {message}")
    assert all(health_blackholed), health_blackholed
    assert op.proc.running()
    assert objects_counted == 3 + STUCK_VIEWS + 1 + BLACKHOLED  # what the liveness probe counts
