"""A stuck Redis or Neo4j under load degrades the objects that use it, never the operator (issue 13, class 3).

On a control plane and an operator of this module's own (test_stuck_dependencies' ``platform``: short observe
interval and probe timeout), over servers of this test's own (the session's serve the other tests and are
never frozen):

- a Redis under four FeatureViews is frozen (SIGSTOP) while a materialization writes to it and another one
  starts: the four go Ready=False naming a timeout, both runs end with a timeout by the sync Job's Redis
  deadline (they never hang), and a FeatureView on the session's Redis keeps being reconciled; after SIGCONT
  and the Jobs' next runs, all four are Ready again;
- a Neo4j under three ModelRegistries is frozen while the operator is in the middle of a call to it and
  models are being registered in all three: LineageInSync turns False naming a timeout, no handler waits on
  the frozen server (a registry on the session's Neo4j and the healthy FeatureView keep being reconciled);
  after SIGCONT everything registered meanwhile is in the graph.

Latencies and recovery times are measured and printed, never asserted; the bounds waited for are the
deadlines the code states, plus slack.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from psycopg import sql

import test_stuck_dependencies as stuck
from e2e_support import condition, get_json, wait_for
from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster, RedisServer, start_redis
from mlinfra.features import jobs, layout, sync_cli
from mlinfra.registry import reconcile as registry_reconcile
from test_modelregistry import secret_conn

NS = stuck.NS
platform = stuck.platform  # a control plane and an operator of this module's own (module-scoped)

FROZEN_VIEWS = 4
BATCH = 100  # rows per write of the sync Job (spec.materialization.batchSize)
ROWS = 100_000  # behind the view whose run is frozen mid-way: hundreds of writes, a run of seconds
# The sync Job waits this long for one Redis answer, and does not try again after a timeout.
JOB_REDIS_TIMEOUT = sync_cli.ONLINE_TIMEOUT
RUN_SLACK = 30.0  # a run's start, its PostgreSQL bookkeeping and the record of its failure
REGISTRIES = 3
# A handler waits at most this long for Neo4j; the probe (2 s + grace) and two observations come on top.
REGISTRY_REPORT_BOUND = registry_reconcile.NEO4J_WAIT + 45.0


# --- shared setup -------------------------------------------------------------------------------------------


def put_secret(cp: ControlPlane, name: str, user: str, password: str) -> None:
    """A credentials Secret (applied: the module's tests may each need it, in any order)."""
    cp.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": name, "namespace": NS},
                "stringData": {"username": user, "password": password},
            }
        ]
    )


@dataclass
class Healthy:
    """A FeatureView on the session's PostgreSQL and Redis: what must keep being reconciled."""

    name: str
    features: int = 1

    def latency(self, cp: ControlPlane) -> float:
        """Seconds from one more feature in its spec to that generation observed and Ready."""
        self.features += 1
        return stuck.reconcile_latency(cp, self.name, self.features)


@pytest.fixture(scope="module")
def healthy(
    platform: tuple[ControlPlane, op_mod.OperatorProcess],
    postgres_cluster: PostgresCluster,
    redis_cluster: RedisCluster,
) -> Healthy:
    cp, _ = platform
    put_secret(cp, "ok-creds", "postgres", postgres_cluster.password)
    put_secret(cp, "kv-creds", "default", redis_cluster.password)
    # The names stuck.reconcile_latency applies the healthy view with.
    cp.apply(
        [
            stuck.datastore("offline-ok", "postgres", f"127.0.0.1:{postgres_cluster.primary.port}", "ok-creds"),
            stuck.datastore("online", "redis", f"127.0.0.1:{redis_cluster.primary.port}", "kv-creds"),
        ]
    )
    view = Healthy(f"healthy-{secrets.token_hex(2)}")  # its own table on the shared server
    cp.apply([stuck.view(view.name, "offline-ok")])
    wait_for(f"FeatureView {view.name} Ready", lambda: all_ready(cp, "featureviews", [view.name]), 120)
    return view


def all_ready(cp: ControlPlane, kind: str, names: list[str]) -> bool:
    found = stuck.items(cp, kind)
    return all(name in found and stuck.ready(found[name]).get("status") == "True" for name in names)


# --- Redis -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frozen_kv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The Redis this test freezes: its own."""
    with procs.ProcStack() as stack:
        workdir = tmp_path_factory.mktemp("frozen-kv")
        yield start_redis(stack, workdir, replicas=0, config='save ""\nappendonly no').primary


def frozen_view(name: str) -> dict[str, Any]:
    """A FeatureView on the test's Redis with a CronJob that never fires: the test runs its Job's command."""
    body = stuck.view(name, "offline-ok")
    body["spec"]["online"] = {"storeRef": {"name": "online-frozen"}}
    body["spec"]["materialization"] = {"schedule": "0 0 1 1 *", "suspend": True, "batchSize": BATCH}
    return body


def add_rows(pg: PostgresCluster, view: str, rows: int) -> None:
    schema, table = layout.offline_table(view, None, view.replace("-", "_"))
    with pg.primary.connect() as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (user_id, f0, event_timestamp) "
                "SELECT g, g, now() - interval '1 minute' FROM generate_series(1, %s) g"
            ).format(sql.Identifier(schema, table)),
            (rows,),
        )


def job_process(cp: ControlPlane, view: str, workdir: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment of the view's sync Job as the operator rendered it (its CronJob), to run
    here as a process: each mounted Secret written out as the files its volume shows."""
    cron = get_json(cp, "cronjob", jobs.cronjob_name(view), "-n", NS)
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secret_of = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounted = {m["mountPath"]: secret_of[m["name"]] for m in container["volumeMounts"] if m["name"] in secret_of}
    env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}  # the pod has no API access
    for var in container["env"]:
        value = var.get("value", "")
        if value in mounted:
            directory = workdir / view / var["name"]
            directory.mkdir(parents=True, exist_ok=True)
            for key, data in get_json(cp, "secret", mounted[value], "-n", NS)["data"].items():
                (directory / key).write_bytes(base64.b64decode(data))
            value = str(directory)
        env[var["name"]] = value
    return [sys.executable, "-m", "mlinfra", *container["args"]], env


@dataclass
class Run:
    """One run of a sync Job's command in the background."""

    view: str
    proc: subprocess.Popen[str]
    log: IO[str]
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def done(self) -> bool:
        if self.proc.poll() is None:
            return False
        if self.ended is None:
            self.ended = time.monotonic()
        return True

    def summary(self) -> dict[str, Any]:
        """Its one summary line (the run's end)."""
        out = self.proc.communicate(timeout=30)[0]
        self.log.close()
        lines = out.strip().splitlines()
        assert lines, f"{self.view}: no summary line; its log: {Path(self.log.name).read_text()[-2000:]}"
        return dict(json.loads(lines[-1]))

    def stop(self) -> None:
        if not self.done():
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


def start_run(cp: ControlPlane, view: str, workdir: Path) -> Run:
    argv, env = job_process(cp, view, workdir)
    log = (workdir / f"{view}.{time.monotonic_ns()}.log").open("w")
    return Run(view, subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, text=True), log)


def runs_to_end(cp: ControlPlane, views: list[str], workdir: Path) -> list[dict[str, Any]]:
    """One run of each view's Job, side by side, each to its end: their summaries."""
    runs = [start_run(cp, view, workdir) for view in views]
    summaries = []
    try:
        for run in runs:
            run.proc.wait(timeout=120)
            summary = run.summary()
            assert run.proc.returncode == sync_cli.EXIT_OK, summary
            summaries.append(summary)
    finally:
        for run in runs:
            run.stop()
    return summaries


def last_run(cp: ControlPlane, view: str) -> dict[str, Any]:
    return dict((get_json(cp, "featureview", view, "-n", NS).get("status") or {}).get("lastMaterialization") or {})


def test_a_frozen_redis_under_materialization_degrades_only_its_views(
    platform: tuple[ControlPlane, op_mod.OperatorProcess],
    healthy: Healthy,
    frozen_kv: RedisServer,
    postgres_cluster: PostgresCluster,
    tmp_path: Path,
) -> None:
    cp, op = platform
    put_secret(cp, "frozen-kv-creds", "default", frozen_kv.password)
    cp.apply([stuck.datastore("online-frozen", "redis", f"127.0.0.1:{frozen_kv.port}", "frozen-kv-creds")])
    views = [f"kv-{secrets.token_hex(2)}-{i}" for i in range(FROZEN_VIEWS)]
    cp.apply([frozen_view(name) for name in views])
    wait_for("the FeatureViews on the test's Redis Ready", lambda: all_ready(cp, "featureviews", views), 120)
    # Load: the first view has a big table (its run is frozen mid-way); the others were materialized once,
    # so the operator reads their marker in this Redis at every observation.
    add_rows(postgres_cluster, views[0], ROWS)
    for name in views[1:]:
        add_rows(postgres_cluster, name, 100)
    assert [s["outcome"] for s in runs_to_end(cp, views[1:], tmp_path)] == ["Succeeded"] * (FROZEN_VIEWS - 1)
    wait_for(
        "the materialized views Ready",
        lambda: all_ready(cp, "featureviews", views) and all(last_run(cp, n).get("outcome") for n in views[1:]),
        60,
    )

    online = frozen_kv.client()
    keys_before = int(online.dbsize())
    writing = start_run(cp, views[0], tmp_path)
    late: Run | None = None
    try:
        deadline = time.monotonic() + 60
        while int(online.dbsize()) < keys_before + 20 * BATCH and not writing.done():
            assert time.monotonic() < deadline, "the run did not start writing within 60 s"
            time.sleep(0.01)
        keys_at_freeze = int(online.dbsize()) - keys_before
        assert not writing.done(), f"the run ended before the freeze: {writing.summary()} (make ROWS larger)"
        frozen_kv.pause()  # SIGSTOP while the run writes
        frozen_at = time.monotonic()
        late = start_run(cp, views[1], tmp_path)  # a run that starts against the frozen Redis
        latencies = [healthy.latency(cp) for _ in range(3)]
        seen: dict[str, tuple[str, str, float]] = {}

        def frozen_views_report_a_timeout() -> bool:
            found = stuck.items(cp, "featureviews")
            for name in views:
                cond = stuck.ready(found[name])
                if cond.get("status") == "False" and name not in seen:
                    seen[name] = (cond["reason"], cond["message"], time.monotonic() - frozen_at)
            return len(seen) == FROZEN_VIEWS

        wait_for("the FeatureViews on the frozen Redis Ready=False", frozen_views_report_a_timeout, 90)
        bound = JOB_REDIS_TIMEOUT + RUN_SLACK
        with contextlib.suppress(Exception):
            wait_for(
                "both runs to end",
                lambda: writing.done() and bool(late and late.done()),
                max(1.0, frozen_at + bound - time.monotonic()),
            )
        assert writing.done() and late.done(), (
            f"a sync run against the frozen Redis has not ended {time.monotonic() - frozen_at:.0f} s after the "
            f"freeze (the Job's Redis timeout is {JOB_REDIS_TIMEOUT:g} s): it waits without a deadline"
        )
        summaries = {run.view: (run.proc.returncode, run.summary(), run.ended) for run in (writing, late)}
        latencies.append(healthy.latency(cp))  # with every view on the frozen Redis degraded
        health = stuck.sample_during(lambda: stuck.healthz(op) == 200, 3)
        stalled_for = time.monotonic() - frozen_at
    finally:
        frozen_kv.resume()
        for run in (writing, late):
            if run is not None:
                run.stop()
    resumed_at = time.monotonic()

    # The two views whose run failed say so (the status reads mlinfra.sync_runs); the other two are Ready.
    wait_for(
        "the views without a failed run Ready again, the others showing the failed run",
        lambda: (
            all_ready(cp, "featureviews", views[2:])
            and all(stuck.ready(stuck.items(cp, "featureviews")[n]).get("reason") == "SyncFailed" for n in views[:2])
        ),
        90,
    )
    unaffected_recovery = time.monotonic() - resumed_at
    failed_runs = {name: last_run(cp, name) for name in views[:2]}
    # The Jobs' next runs (the CronJob's next tick): the interrupted view is written in full.
    rerun = runs_to_end(cp, views[:2], tmp_path)[0]
    wait_for("all four Ready again", lambda: all_ready(cp, "featureviews", views), 90)
    recovery = time.monotonic() - resumed_at

    print(
        f"\nRedis frozen for {stalled_for:.1f} s under {FROZEN_VIEWS} FeatureViews and a running materialization: "
        f"all {FROZEN_VIEWS} reported Ready=False after {max(s[2] for s in seen.values()):.1f} s; the healthy "
        f"FeatureView's spec changes were reconciled in {', '.join(f'{s:.2f}' for s in latencies)} s during the "
        f"stall; the views without a failed run were Ready {unaffected_recovery:.1f} s after SIGCONT, all four "
        f"{recovery:.1f} s after it (with the Jobs' next runs)"
    )
    for run in (writing, late):
        code, summary, ended = summaries[run.view]
        assert ended is not None
        began = f"frozen with {keys_at_freeze} of {ROWS} keys written" if run is writing else "started frozen"
        print(
            f"  sync run of {run.view} ({began}): ended {ended - max(run.started, frozen_at):.1f} s after "
            f"{'the freeze' if run is writing else 'its start'}, exit {code}: {summary.get('error')}"
        )
    print("first not-Ready reason per FeatureView on the frozen Redis:")
    for name, (reason, message, after) in sorted(seen.items()):
        print(f"  {name} (after {after:.1f} s): {reason}: {message}")

    for name, (reason, message, _) in seen.items():
        assert reason in ("DeadlineExceeded", "StoreNotReady"), (name, reason, message)
        assert stuck.names_a_timeout(message), (name, reason, message)
    for view, (code, summary, _) in summaries.items():
        assert (code, summary["outcome"]) == (sync_cli.EXIT_FAILED, "Failed"), (view, summary)
        assert stuck.names_a_timeout(summary["error"]), (view, summary)
    for view, record in failed_runs.items():
        assert record.get("outcome") == "Failed" and stuck.names_a_timeout(record.get("message", "")), (view, record)
    assert rerun["rows"] == ROWS  # nothing of the interrupted run was committed: the next one is whole
    assert all(health), health
    assert op.proc.running()


# --- Neo4j -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frozen_graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Neo4jServer]:
    """The Neo4j this test freezes: its own."""
    with procs.ProcStack() as stack:
        yield Neo4jServer(tmp_path_factory.mktemp("frozen-graph")).start(stack)


def registry(name: str, database: str, graph: str, max_lag: str = "10m") -> dict[str, Any]:
    """A ModelRegistry on the session's PostgreSQL (a database of its own), synced in process every 2 s."""
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "ModelRegistry",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "metadataStoreRef": {"name": "offline-ok"},
            "lineageStoreRef": {"name": graph},
            "database": database,
            "lineageSync": {"interval": "2s", "batchSize": 50, "maxLag": max_lag},
        },
    }


def established_to(port: int) -> int:
    """Client connections to ``port`` on this machine that are established (/proc/net/tcp, IPv4)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def freeze_mid_call(server: Neo4jServer, within: float = 30.0) -> int:
    """SIGSTOP ``server`` as soon as a client (the operator: nothing else talks to it meanwhile) holds a
    connection to it, i.e. in the middle of a lineage pass or a graph read; after ``within`` seconds
    otherwise. The connections open at the freeze."""
    assert server.proc is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and not established_to(server.port):
        time.sleep(0.002)
    server.proc.signal(signal.SIGSTOP)
    return established_to(server.port)


class Registering:
    """Models registered in each registry (through its writer Secret) every 0.1 s, in a thread: the outbox
    the lineage sync drains keeps growing."""

    def __init__(self, cp: ControlPlane, names: list[str]) -> None:
        self.conninfo = {
            name: secret_conn(cp, NS, get_json(cp, "modelregistry", name, "-n", NS)["status"]["writerSecret"])
            for name in names
        }
        self.count = dict.fromkeys(names, 0)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registering", daemon=True)

    def _run(self) -> None:
        try:
            with contextlib.ExitStack() as stack:
                conns = {
                    name: stack.enter_context(psycopg.connect(info, autocommit=True, connect_timeout=10))
                    for name, info in self.conninfo.items()
                }
                n = 0
                while not self._stop.wait(0.1):
                    for name, conn in conns.items():
                        conn.execute("INSERT INTO registry.registered_models (name) VALUES (%s)", (f"load-{n}",))
                        self.count[name] += 1
                    n += 1
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Registering:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __exit__(self, *_: object) -> None:
        self.stop()


def registry_status(cp: ControlPlane, name: str) -> dict[str, Any]:
    return dict(get_json(cp, "modelregistry", name, "-n", NS).get("status") or {})


def registry_latency(cp: ControlPlane, name: str, max_lag: str, database: str, graph: str) -> float:
    """Seconds from a spec change of registry ``name`` to that generation observed, Ready and in sync."""
    cp.apply([registry(name, database, graph, max_lag)])
    started = time.monotonic()
    generation = get_json(cp, "modelregistry", name, "-n", NS)["metadata"]["generation"]

    def reconciled() -> bool:
        mr = get_json(cp, "modelregistry", name, "-n", NS)
        return (mr.get("status") or {}).get("observedGeneration") == generation and all(
            condition(mr, t).get("status") == "True" for t in ("Ready", "LineageInSync")
        )

    wait_for(f"ModelRegistry {name} generation {generation} reconciled", reconciled, 90)
    return time.monotonic() - started


def graph_models(server: Neo4jServer, name: str) -> int:
    with server.driver() as driver:
        records, _, _ = driver.execute_query(
            "MATCH (m:Model {registry: $registry}) RETURN count(m) AS n", registry=f"{NS}/{name}"
        )
    return int(records[0]["n"])


def test_a_frozen_neo4j_under_lineage_sync_degrades_only_its_registries(
    platform: tuple[ControlPlane, op_mod.OperatorProcess],
    healthy: Healthy,
    frozen_graph: Neo4jServer,
    neo4j_server: Neo4jServer,
) -> None:
    cp, op = platform
    assert frozen_graph.proc is not None
    put_secret(cp, "frozen-graph-creds", "neo4j", frozen_graph.password)
    put_secret(cp, "graph-creds", "neo4j", neo4j_server.password)
    cp.apply(
        [
            stuck.datastore("graph-frozen", "neo4j", f"127.0.0.1:{frozen_graph.port}", "frozen-graph-creds"),
            stuck.datastore("graph-ok", "neo4j", f"127.0.0.1:{neo4j_server.port}", "graph-creds"),
        ]
    )
    tag = secrets.token_hex(2)
    frozen = [f"reg-{tag}-{i}" for i in range(REGISTRIES)]
    ok, ok_db = f"reg-{tag}-ok", f"reg_{tag}_ok"
    cp.apply([*(registry(name, f"reg_{tag}_{i}", "graph-frozen") for i, name in enumerate(frozen))])
    cp.apply([registry(ok, ok_db, "graph-ok")])

    def in_sync(names: list[str]) -> bool:
        found = stuck.items(cp, "modelregistries")
        return all(
            name in found and all(condition(found[name], t).get("status") == "True" for t in ("Ready", "LineageInSync"))
            for name in names
        )

    wait_for("the ModelRegistries Ready and in sync", lambda: in_sync([*frozen, ok]), 180)

    seen: dict[str, tuple[str, str, float]] = {}
    with Registering(cp, [*frozen, ok]) as load:
        time.sleep(3)  # a few passes with events to sync
        held = freeze_mid_call(frozen_graph)
        frozen_at = time.monotonic()
        try:
            fv_latencies = [healthy.latency(cp) for _ in range(2)]
            mr_latencies = [registry_latency(cp, ok, f"{11 + i}m", ok_db, "graph-ok") for i in range(2)]

            def frozen_registries_report_a_timeout() -> bool:
                found = stuck.items(cp, "modelregistries")
                for name in frozen:
                    cond = condition(found[name], "LineageInSync")
                    if cond.get("status") == "False" and name not in seen:
                        seen[name] = (cond["reason"], cond["message"], time.monotonic() - frozen_at)
                return len(seen) == REGISTRIES

            with contextlib.suppress(Exception):
                wait_for(
                    "the registries on the frozen Neo4j LineageInSync=False",
                    frozen_registries_report_a_timeout,
                    max(1.0, frozen_at + REGISTRY_REPORT_BOUND - time.monotonic()),
                )
            assert len(seen) == REGISTRIES, (
                f"only {sorted(seen)} of {frozen} reported the frozen Neo4j {REGISTRY_REPORT_BOUND:g} s after the "
                "freeze: a handler waits on it"
            )
            fv_latencies.append(healthy.latency(cp))
            mr_latencies.append(registry_latency(cp, ok, "20m", ok_db, "graph-ok"))
            pending = {n: registry_status(cp, n).get("lineage", {}).get("pendingEvents") for n in frozen}
            still_ready = {n: condition(stuck.items(cp, "modelregistries")[n], "Ready").get("status") for n in frozen}
            health = stuck.sample_during(lambda: stuck.healthz(op) == 200, 3)
            stalled_for = time.monotonic() - frozen_at
        finally:
            frozen_graph.proc.signal(signal.SIGCONT)
            resumed_at = time.monotonic()
            load.stop()
    assert not load.errors, load.errors

    def caught_up() -> bool:
        for name in frozen:
            st = registry_status(cp, name)
            if (
                st.get("counts", {}).get("registeredModels") != load.count[name]
                or st.get("lineage", {}).get("pendingEvents") != 0
            ):
                return False
        return in_sync(frozen)

    wait_for("everything registered during the freeze synced", caught_up, 120)
    recovery = time.monotonic() - resumed_at

    print(
        f"\nNeo4j frozen for {stalled_for:.1f} s under {REGISTRIES} ModelRegistries ({held} operator connection(s) "
        f"open at the freeze), {sum(load.count[n] for n in frozen)} models registered in them meanwhile: all "
        f"reported LineageInSync=False after {max(s[2] for s in seen.values()):.1f} s; reconciled during the "
        f"stall: the healthy FeatureView in {', '.join(f'{s:.2f}' for s in fv_latencies)} s, the registry on "
        f"the healthy Neo4j in {', '.join(f'{s:.2f}' for s in mr_latencies)} s; pending events at the end of "
        f"the stall {pending}, Ready {still_ready}; all synced and in sync {recovery:.1f} s after SIGCONT"
    )
    print("first LineageInSync=False per registry on the frozen Neo4j:")
    for name, (reason, message, after) in sorted(seen.items()):
        print(f"  {name} (after {after:.1f} s): {reason}: {message}")

    for name, (reason, message, _) in seen.items():
        assert reason == "LineageStoreUnavailable", (name, reason, message)
        assert stuck.names_a_timeout(message), (name, reason, message)
    for name in frozen:
        assert graph_models(frozen_graph, name) == load.count[name]  # every model registered is in the graph
    assert all(health), health
    assert op.proc.running()
