"""The operator SIGKILLed mid-reconcile and mid-rebuild, then started again with the same settings (issue 13,
class 3).

On a control plane and an operator of their own, over the session's real PostgreSQL and Redis, and the Qdrant
``qdrant_target`` picks (the real server at ``QDRANT_URL``, else the managed store in qdrant-client local mode):

- a batch of ten external DataStores, six FeatureViews and a ModelRegistry is created at once; the operator is
  killed as soon as the first status appears, started again, and killed again as soon as the FeatureViews and
  the registry are at work (a table or the registry's database created, or one of them Ready), and started
  again. Every object must end Ready at its generation with exactly the children it should own (none twice,
  none orphaned), no Kopf progress annotation left behind, each table, claim, migration and role there once,
  and no handler failing on what the killed run left half done;
- a VectorIndex rebuild (an immutable change: Cosine -> Euclid) runs in a Job (kwok runs nothing: the test runs
  the Job's command as a process). Attempt 1's process is SIGKILLed while it fills the new collection (an OOM
  kill's stand-in: the collection holds a fifth of the points, the alias still serves the old one); the store
  is looked at by another process (local mode: its directory is not left locked); the status says
  BackfillFailed naming attempt 1 and when attempt 2 starts, and no Job of attempt 2 exists before then. The
  operator is SIGKILLed while attempt 2's process runs; the rebuild finishes without it; after the restart
  the status reports it, the alias serves a collection with every row, the killed attempt's half-built
  collection is not left beside it, and similarity search finds each row's own vector first.

The time from each restart to all Ready (the rebuild reported) is measured and printed, never asserted.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

import qdrant_target
from e2e_support import condition, get_json, job_command, wait_for
from mlinfra.api import vectorindex as vectorindex_api
from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster
from mlinfra.engines import names
from mlinfra.features import jobs as fv_jobs
from mlinfra.features import layout, syncrole, syncuser
from mlinfra.registry import migrate
from mlinfra.registry import reconcile as registry_reconcile
from mlinfra.vectors import collection as vi_collection
from mlinfra.vectors import jobs as vi_jobs
from mlinfra.vectors import reconcile as vi_reconcile
from mlinfra.vectors import runs, sync_cli

OBSERVE_INTERVAL = 3.0
BATCH_NS = "killed-batch"
REBUILD_NS = "killed-rebuild"
STORES = 10  # five postgres, five redis
VIEWS = 6
KOPF_PREFIX = "kopf.mlinfra.io/"
# Kopf's own bookkeeping that stays after a handler finished: the spec last handled (the diff base) and the
# dummy it touches to wake itself up. Anything else under its prefix is a handler's progress record.
KOPF_KEEPS = {f"{KOPF_PREFIX}last-handled-configuration", f"{KOPF_PREFIX}touch-dummy"}
# What PostgreSQL says when DDL runs twice or half of it is found done.
HALF_DONE_WORDS = ("already exists", "duplicate key", "does not exist")
DIM = 8
# Rows of the rebuilt index's source: enough that the backfill takes seconds. qdrant-client local mode commits
# every point to SQLite on its own (a few hundred points a second); a server takes batches far faster.
LOCAL_ROWS, SERVER_ROWS = 2500, 60000
LOCAL_BATCH, SERVER_BATCH = 250, 250
# Seconds from a failed rebuild attempt to the next (MLINFRA_REBUILD_BACKOFF; an hour's fraction in production).
REBUILD_BACKOFF = 20.0
RUNNING = vi_reconcile.RUNNING_PROCESS


# --- the platform: a control plane, the Backer (local-mode Qdrant), an operator that can be killed ------------


@dataclass
class Operators:
    """The test's operator, killed and started again with the same settings."""

    stack: procs.ProcStack
    kubeconfig: Path
    work: Path
    backer: Backer
    current: op_mod.OperatorProcess | None = None

    @property
    def log(self) -> Path:
        return self.work / "operator.log"

    def start(self) -> op_mod.OperatorProcess:
        self.current = op_mod.start_operator(
            self.stack,
            self.kubeconfig,
            self.work,
            self.backer.map_path,
            observe_interval=OBSERVE_INTERVAL,
            extra_env={"MLINFRA_REBUILD_BACKOFF": str(REBUILD_BACKOFF)},
        )
        return self.current

    def ensure_running(self) -> None:
        """Started again if a failed test left it killed (the next test, the cleanups need it)."""
        if self.current is None or not self.current.proc.running():
            self.start()

    def kill(self) -> None:
        """SIGKILL to the operator process itself: no handler, no finally, no Kopf shutdown runs."""
        assert self.current is not None and self.current.proc.running()
        os.kill(self.current.proc.pid, signal.SIGKILL)
        self.current.proc.popen.wait(10)
        assert self.current.proc.popen.returncode == -signal.SIGKILL

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_from(self, offset: int) -> list[str]:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()


def default_account_of(cp: ControlPlane, ns: str) -> Callable[[], bool]:
    return lambda: cp.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, Operators]]:
    """A control plane with the chart installed, a Backer serving its managed Qdrant stores (local mode), and
    an operator of this test only (the session's must not see these objects, nor be killed)."""
    work = tmp_path_factory.mktemp("killed")
    with ControlPlane(work / "kube") as cp, procs.ProcStack() as stack:
        account = op_mod.install_chart(cp)
        kubeconfig = op_mod.service_account_kubeconfig(cp, op_mod.NAMESPACE, account, work / "operator.kubeconfig")
        for ns in (BATCH_NS, REBUILD_NS):
            cp.kubectl("create", "namespace", ns)
            wait_for(f"the default ServiceAccount of {ns}", default_account_of(cp, ns))
        backer = Backer(cp, work / "backed", work / "endpoint-map.json").start()
        stack.callback(backer.stop)
        ops = Operators(stack, kubeconfig, work, backer)
        ops.start()
        yield cp, ops
        log = ops.log.read_text(errors="replace").splitlines()
        print("--- last operator log lines ---\n" + "\n".join(log[-15:]))


@pytest.fixture(scope="module")
def qdrant_server() -> qdrant_target.Server | None:
    """The real server at QDRANT_URL (None: local mode); a URL that cannot be used fails the test at once."""
    return qdrant_target.server_or_fail()


# --- small readers ---------------------------------------------------------------------------------------------


def ready(obj: dict[str, Any]) -> bool:
    return condition(obj, "Ready").get("status") == "True"


def settled(obj: dict[str, Any]) -> bool:
    """Ready at the object's current generation."""
    st = obj.get("status") or {}
    return ready(obj) and st.get("observedGeneration") == obj["metadata"]["generation"]


def batch(cp: ControlPlane, ns: str) -> list[dict[str, Any]]:
    return list(get_json(cp, "datastores,featureviews,modelregistries", "-n", ns)["items"])


def events(cp: ControlPlane, ns: str) -> list[dict[str, Any]]:
    return list(get_json(cp, "events", "-n", ns)["items"])


def key(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def secret_data(cp: ControlPlane, ns: str, name: str) -> dict[str, str]:
    data = get_json(cp, "secret", name, "-n", ns)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def creds(cp: ControlPlane, ns: str, name: str, user: str, password: str) -> None:
    cp.kubectl(
        "create", "secret", "generic", name, "-n", ns, f"--from-literal=username={user}",
        f"--from-literal=password={password}",
    )  # fmt: skip


def datastore(ns: str, name: str, engine: str, endpoint: str, secret: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"engine": engine, "external": {"endpoint": endpoint, "credentialsSecretRef": {"name": secret}}},
    }


def killed_at(objs: list[dict[str, Any]]) -> str:
    """What the batch looked like when the operator was killed."""
    by_state: dict[str, list[str]] = collections.defaultdict(list)
    for obj in objs:
        cond = condition(obj, "Ready")
        state = "Ready" if ready(obj) else (f"not Ready ({cond.get('reason')})" if cond else "no status yet")
        by_state[state].append(key(obj))
    return "; ".join(f"{state}: {len(keys)}" for state, keys in sorted(by_state.items()))


def wait_killed_when(
    cp: ControlPlane, ops: Operators, what: str, trigger: Callable[[], str | None], timeout: float = 120
) -> str:
    """Poll ``trigger`` as fast as kubectl answers; SIGKILL the operator the moment it names a reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = trigger()
        if reason:
            ops.kill()
            return reason
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass(frozen=True)
class Restart:
    up: float  # seconds from the restart to the new operator's /healthz answering
    done: float  # seconds from the restart to what was waited for
    log_offset: int  # where the new operator's lines start in the log
    started: float  # time.monotonic() of the restart


def restart_and_wait(ops: Operators, what: str, done: Callable[[], bool], timeout: float = 180) -> Restart:
    """Start the operator again (the same settings) and wait for ``done``."""
    offset = ops.log_size()
    started = time.monotonic()
    ops.start()
    up = time.monotonic() - started
    wait_for(what, done, timeout)
    return Restart(up, time.monotonic() - started, offset, started)


def progress_records(obj: dict[str, Any]) -> list[str]:
    """Kopf's per-handler progress annotations on ``obj``: there only while a handler is unfinished."""
    annotations = obj["metadata"].get("annotations") or {}
    return sorted(k for k in annotations if k.startswith(KOPF_PREFIX) and k not in KOPF_KEEPS)


def handler_failures(lines: list[str]) -> list[str]:
    """Kopf's lines for a handler that raised something the operator did not turn into a Problem."""
    return [line for line in lines if "failed with an exception" in line or "Traceback" in line]


# --- 1: a batch of objects, the operator killed twice mid-reconcile -------------------------------------------


def views(ns: str, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "FeatureView",
            "metadata": {"name": f"fv-{i}", "namespace": ns},
            "spec": {
                "entities": [{"name": "user_id", "type": "int64"}],
                "features": [{"name": "clicks", "type": "int64"}, {"name": "ctr", "type": "float64"}],
                # Tables of their own on the shared server (the session's other tests use it too).
                "offline": {"storeRef": {"name": f"pg-{i % 5}"}, "table": f"k{tag}_fv_{i}"},
                "online": {"storeRef": {"name": f"kv-{i % 5}"}},
                # Suspended: the CronJob is the child counted; no Job of its schedule adds to the count.
                "materialization": {"schedule": "*/5 * * * *", "suspend": True},
            },
        }
        for i in range(VIEWS)
    ]


def registry(ns: str, database: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "ModelRegistry",
        "metadata": {"name": "models", "namespace": ns},
        "spec": {"metadataStoreRef": {"name": "pg-0"}, "database": database},
    }


def expected_children(obj: dict[str, Any]) -> set[tuple[str, str]]:
    name = obj["metadata"]["name"]
    if obj["kind"] == "DataStore":
        return {("Secret", names.connection_secret(name))}
    if obj["kind"] == "FeatureView":  # and the Secrets of its sync Job's own credentials
        return {
            ("CronJob", fv_jobs.cronjob_name(name)),
            ("Secret", syncrole.secret_name(name)),
            ("Secret", syncuser.secret_name(name)),
        }
    assert obj["kind"] == "ModelRegistry"
    return {("Secret", registry_reconcile.secret_name(name, kind)) for kind in ("writer", "reader")}


def children_by_owner(cp: ControlPlane, ns: str) -> tuple[dict[str, set[tuple[str, str]]], list[str]]:
    """Every Secret, ConfigMap, CronJob and Job of ``ns`` by the uid that owns it; and those marked as the
    operator's that name no owner."""
    owned: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    ownerless = []
    for item in get_json(cp, "secrets,configmaps,cronjobs,jobs", "-n", ns)["items"]:
        refs = item["metadata"].get("ownerReferences") or []
        for ref in refs:
            owned[ref["uid"]].add((item["kind"], item["metadata"]["name"]))
        labels = item["metadata"].get("labels") or {}
        if not refs and labels.get("app.kubernetes.io/managed-by") == names.MANAGED_BY:
            ownerless.append(f"{item['kind']}/{item['metadata']['name']}")
    return owned, ownerless


def check_database(pg: PostgresCluster, cp: ControlPlane, ns: str, tag: str, database: str) -> None:
    """Each table, claim, migration and role once, as the objects say."""
    with pg.primary.connect() as conn:
        for i in range(VIEWS):
            schema, table = layout.offline_table(f"fv-{i}", None, f"k{tag}_fv_{i}")
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                (schema, table),
            ).fetchone()
            assert tables == (1,), (schema, table, tables)
            columns = {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                    (schema, table),
                )
            }
            assert columns == {"user_id", "clicks", "ctr", layout.EVENT_TIMESTAMP, layout.CREATED_AT}, columns
            holders = conn.execute(
                "SELECT holder FROM mlinfra.offline_tables WHERE schema_name = %s AND table_name = %s",
                (schema, table),
            ).fetchall()
            assert holders == [(f"{ns}/fv-{i}",)], holders
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (database,)).fetchone() == (1,)
        role_names = [registry_reconcile.role_name(ns, "models", kind) for kind in ("writer", "reader")]
        found = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (role_names,)).fetchall()
        assert sorted(str(r[0]) for r in found) == sorted(role_names), found
    with pg.primary.connect(database) as conn:
        applied = migrate.applied_checksums(conn)
    assert applied == {m.version: m.checksum for m in migrate.shipped()}, applied
    # The roles and their Secrets agree (a password generated twice, once per run, would not).
    for kind in ("writer", "reader"):
        data = secret_data(cp, ns, registry_reconcile.secret_name("models", kind))
        dsn = f"host=127.0.0.1 port={pg.primary.port} dbname={database} user={data['username']}"
        with psycopg.connect(dsn, password=data["password"], autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM registry.registered_models").fetchone() == (0,)


def test_killed_twice_mid_reconcile_every_object_ends_ready_with_its_children_once(
    platform: tuple[ControlPlane, Operators], postgres_cluster: PostgresCluster, redis_cluster: RedisCluster
) -> None:
    cp, ops = platform
    ops.ensure_running()
    ns, pg, kv = BATCH_NS, postgres_cluster, redis_cluster
    tag = secrets.token_hex(3)
    database = f"reg_killed_{tag}"
    creds(cp, ns, "pg-creds", "postgres", pg.password)
    creds(cp, ns, "kv-creds", "default", kv.password)
    stores = [datastore(ns, f"pg-{i}", "postgres", f"127.0.0.1:{pg.primary.port}", "pg-creds") for i in range(5)]
    stores += [datastore(ns, f"kv-{i}", "redis", f"127.0.0.1:{kv.primary.port}", "kv-creds") for i in range(5)]
    objects = [*stores, *views(ns, tag), registry(ns, database)]
    first_log = ops.log_size()
    cp.apply(objects)
    created = time.monotonic()

    # Kill 1: as soon as the first status appears (the DataStores mid-reconcile, the views and the registry
    # finding their stores not Ready yet).
    seen: list[dict[str, Any]] = []

    def first_status() -> str | None:
        seen[:] = batch(cp, ns)
        hit = [key(o) for o in seen if (o.get("status") or {}).get("conditions")]
        return f"the first status, of {hit[0]}" if hit else None

    first_reason = wait_killed_when(cp, ops, "the first status", first_status)
    first_kill = time.monotonic() - created
    first_state = killed_at(seen)
    assert not handler_failures(ops.log_from(first_log)), "a handler failed before the first kill"

    # Kill 2: as soon as the views and the registry are at work: a table or the database created (their handler
    # is between that step and the end), or one of them Ready.
    second_log = ops.log_size()
    ops.start()

    def views_at_work() -> str | None:
        seen[:] = batch(cp, ns)
        for e in events(cp, ns):
            if e["reason"] in ("TableCreated", "DatabaseCreated"):
                return f"{e['reason']} for {e['involvedObject']['name']}"
        hit = [key(o) for o in seen if o["kind"] != "DataStore" and ready(o)]
        return f"{hit[0]} Ready" if hit else None

    second_reason = wait_killed_when(cp, ops, "the views or the registry at work", views_at_work)
    second_kill = time.monotonic() - created
    second_state = killed_at(seen)
    assert not handler_failures(ops.log_from(second_log)), "a handler failed between the kills"

    def all_settled() -> bool:
        objs = batch(cp, ns)
        return len(objs) == len(objects) and all(settled(o) for o in objs)

    restart = restart_and_wait(ops, "every object Ready at its generation", all_settled)
    print(
        f"\n{len(objects)} objects created at once ({STORES} external DataStores, {VIEWS} FeatureViews, a "
        f"ModelRegistry):\n  killed {first_kill:.1f} s after creation ({first_reason}): {first_state}\n"
        f"  killed {second_kill:.1f} s after creation ({second_reason}): {second_state}\n"
        f"  after the second restart: the operator up in {restart.up:.1f} s, all Ready at their generation in "
        f"{restart.done:.1f} s"
    )

    # Exactly the children each object should own, none twice (names are unique, so a duplicate would be an
    # extra name), none owned by something that does not exist, none of the operator's without an owner.
    objs = {o["metadata"]["uid"]: o for o in batch(cp, ns)}
    owned, ownerless = children_by_owner(cp, ns)
    assert not ownerless, ownerless
    assert set(owned) <= set(objs), {uid: kids for uid, kids in owned.items() if uid not in objs}
    for uid, obj in objs.items():
        assert owned.get(uid, set()) == expected_children(obj), (key(obj), owned.get(uid))

    # No handler's progress record left behind, the finalizer once.
    for obj in objs.values():
        meta = obj["metadata"]
        assert not progress_records(obj), (key(obj), progress_records(obj))
        assert meta.get("finalizers") == ["mlinfra.io/finalizer"], (key(obj), meta.get("finalizers"))

    check_database(pg, cp, ns, tag, database)

    # Done once: what the events announce, and no handler met a half-done step.
    all_events = events(cp, ns)
    announced = collections.Counter(
        (e["reason"], e["involvedObject"]["name"])
        for e in all_events
        if e["reason"] in ("TableCreated", "DatabaseCreated")
        for _ in range(e.get("count") or 1)
    )
    assert all(n == 1 for n in announced.values()), announced
    warnings = [
        f"{e['involvedObject']['kind']}/{e['involvedObject']['name']} {e['reason']}: {e.get('message', '')}"
        for e in all_events
        if e["type"] == "Warning"
    ]
    print("warning events: " + ("; ".join(sorted(set(warnings))) or "none"))
    assert not [w for w in warnings if any(word in w for word in HALF_DONE_WORDS)], warnings
    assert not handler_failures(ops.log_from(restart.log_offset))


# --- 2: a VectorIndex rebuild in a Job: its process killed, then the operator killed while it runs -------------


def rebuild_index(ns: str, name: str, alias: str, table: str, distance: str, batch_size: int) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "storeRef": {"name": qdrant_target.STORE},
            "collection": alias,
            "vectors": {"size": DIM, "distance": distance},
            "source": {
                "storeRef": {"name": "source"},
                "table": table,
                "idColumn": "id",
                "vectorColumn": "embedding",
                "payloadColumns": ["title"],
                "updatedAtColumn": "updated_at",
            },
            "sync": {"schedule": "*/10 * * * *", "batchSize": batch_size, "suspend": True},
        },
    }


class Peek:
    """The rebuild's progress as seen from outside, without disturbing it: a server is asked; local mode's
    directory is held by the rebuild process for the whole backfill, so its files are read (meta.json is
    replaced whole, each collection's points are an SQLite database)."""

    def __init__(self, space: qdrant_target.Space, backer: Backer, ns: str) -> None:
        self.space = space
        self.local = None if space.real else Path(backer.backed[f"{ns}/{qdrant_target.STORE}"].entry["localPath"])

    def state(self, alias: str, target: str) -> tuple[str | None, int | None]:
        """Where ``alias`` points, and how many points ``target`` holds (None: it does not exist)."""
        if self.local is None:
            with self.space.client() as client:
                where = vi_collection.alias_target(client, alias)
                count = client.count(target, exact=True).count if client.collection_exists(target) else None
            return where, count
        meta = json.loads((self.local / "meta.json").read_text())
        if target not in meta["collections"]:
            return meta["aliases"].get(alias), None
        db = self.local / "collection" / target / "storage.sqlite"
        if not db.exists():
            return meta["aliases"].get(alias), 0
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as points:
            row = points.execute("SELECT count(*) FROM points").fetchone()
        return meta["aliases"].get(alias), int(row[0])


def start_job(
    cp: ControlPlane, ns: str, job: str, backer: Backer, tmp: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """The rebuild Job's container started as a process (kwok runs nothing): its command, env and Secrets."""
    pod = get_json(cp, "job", job, "-n", ns)["spec"]["template"]["spec"]
    argv, env = job_command(cp, ns, pod, backer, tmp)
    return subprocess.Popen(
        argv, env={**env, **(extra_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def paused(proc: subprocess.Popen[str], reported: Callable[[], bool], timeout: float = 120) -> str:
    """Wait for the process's ``paused after batch N`` (the pause hook: the collection is being filled, the
    alias has not moved), then for the operator to have ``reported`` the rebuild running."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if "paused after batch" in line:
            wait_for("the operator reporting the rebuild's process", reported, timeout)
            return line.strip()
    proc.wait(30)
    raise AssertionError(f"the rebuild process ended (exit {proc.returncode}) before it paused")


def exists(cp: ControlPlane, ns: str, job: str) -> bool:
    return cp.kubectl("get", "job", job, "-n", ns, check=False).returncode == 0


def test_killed_mid_rebuild_the_rebuild_completes_and_leaves_no_half_built_collection(
    platform: tuple[ControlPlane, Operators],
    qdrant_server: qdrant_target.Server | None,
    postgres_cluster: PostgresCluster,
    tmp_path: Path,
) -> None:
    """The rebuild runs in a Job: (1) its process killed mid-backfill (an OOM kill's stand-in): BackfillFailed
    naming the attempt, no new Job before the backoff, then attempt 2; (2) the operator killed while attempt 2's
    process runs: the rebuild finishes without it, and the restarted operator reports it."""
    cp, ops = platform
    ops.ensure_running()
    ns, pg = REBUILD_NS, postgres_cluster
    space = qdrant_target.Space(cp, ns, ops.backer, qdrant_server)
    rows, batch_size = (SERVER_ROWS, SERVER_BATCH) if space.real else (LOCAL_ROWS, LOCAL_BATCH)
    table = f"killed_vec_{secrets.token_hex(3)}"
    name, alias = "docs", space.name("docs")
    with pg.primary.connect() as conn:
        conn.execute(
            f"create table public.{table} (id bigint primary key, title text, embedding real[], "
            "updated_at timestamptz not null default now())"
        )
        # The correlated subquery (WHERE i > 0) gives each row vectors of its own.
        conn.execute(
            f"insert into public.{table} (id, title, embedding) select i, 'doc ' || i, "
            f"array(select (random() * 2 - 1)::real from generate_series(1, {DIM}) where i > 0) "
            f"from generate_series(1, {rows}) i"
        )
    procs_started: list[subprocess.Popen[str]] = []
    blockers: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        creds(cp, ns, "pg-creds", "postgres", pg.password)
        cp.apply(
            [
                datastore(ns, "source", "postgres", f"127.0.0.1:{pg.primary.port}", "pg-creds"),
                *space.store_objects(),
                rebuild_index(ns, name, alias, table, "Cosine", batch_size),
            ]
        )

        def vi() -> dict[str, Any]:
            return dict(get_json(cp, "vectorindex", name, "-n", ns))

        wait_for("the VectorIndex Ready", lambda: settled(vi()), 150)
        first = vi()["status"]["activeCollection"]
        spec = rebuild_index(ns, name, alias, table, "Euclid", batch_size)["spec"]
        target = vi_collection.physical_name(vectorindex_api.VectorIndexSpec.model_validate(spec))
        assert target != first
        peek = Peek(space, ops.backer, ns)

        # The immutable change: attempt 1 in a Job. Its process is killed once the new collection holds some
        # points and the alias has not moved.
        cp.kubectl("patch", "vectorindex", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec}))
        patched = time.monotonic()
        job1, job2 = (vi_jobs.rebuild_job_name(name, target, n) for n in (1, 2))
        wait_for("rebuild attempt 1's Job", lambda: exists(cp, ns, job1), 60)
        # Paused (the sync commands' test hook) after a fifth of the rows: substantially filled, far from done.
        pause_after = (rows // 5) // batch_size
        proc = start_job(cp, ns, job1, ops.backer, tmp_path / "attempt1", {sync_cli.PAUSE_ENV: str(pause_after)})
        procs_started.append(proc)

        def reported(job: str) -> Callable[[], bool]:
            """The operator's status says the rebuild of ``job`` runs, its process seen (its lock held)."""

            def check() -> bool:
                reindexing = condition(vi(), "Reindexing")
                message = reindexing.get("message", "")
                return reindexing.get("status") == "True" and f"Job {job} " in message and RUNNING in message

            return check

        reason = paused(proc, reported(job1))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        killed_after = time.monotonic() - patched
        # What the killed process left, looked at by another one: with local mode this also shows the directory
        # is not left locked (qdrant-client's portalocker and the engine's flock die with the process).
        opened = time.monotonic()
        with space.client() as client:
            left_alias = vi_collection.alias_target(client, alias)
            left_points = client.count(target, exact=True).count
            left = sorted(c.name for c in client.get_collections().collections if c.name.startswith(space.prefix))
        opened_in = time.monotonic() - opened
        assert left_alias == first and 0 < left_points < rows, (left_alias, left_points)
        assert left == sorted({first, target}), left

        def attempt1_failed() -> bool:
            reindexing = condition(vi(), "Reindexing")
            return reindexing.get("reason") == "BackfillFailed" and "rebuild attempt 1 failed" in reindexing["message"]

        wait_for("BackfillFailed naming attempt 1", attempt1_failed, 60)
        failed = condition(vi(), "Reindexing")["message"]
        seen_failed = datetime.datetime.now(datetime.UTC)
        assert condition(vi(), "Ready")["status"] == "False"
        found = re.search(r"attempt 2 starts at (\S+Z)", failed)
        assert found, failed
        next_at = datetime.datetime.fromisoformat(found.group(1))
        if seen_failed < next_at:
            assert not exists(cp, ns, job2), "attempt 2 started before the backoff was over"
        wait_for("rebuild attempt 2's Job", lambda: exists(cp, ns, job2), REBUILD_BACKOFF * 2 + 60)
        created = datetime.datetime.fromisoformat(get_json(cp, "job", job2, "-n", ns)["metadata"]["creationTimestamp"])
        assert created >= next_at, (created, next_at)

        # Attempt 2's process runs; the operator is killed meanwhile; the rebuild finishes without it. The
        # source table locked by the test holds the process at the start of its backfill (its locks taken, the
        # new collection made) until the operator has reported it and been killed.
        blocker = pg.primary.connect(autocommit=False)
        blockers.append(blocker)
        blocker.execute(f"lock table public.{table} in access exclusive mode")
        proc = start_job(cp, ns, job2, ops.backer, tmp_path / "attempt2")
        procs_started.append(proc)

        attempt2_reported = reported(job2)

        def running_again() -> str | None:
            """Attempt 2's process holds the rebuild lock and the operator's status says so."""
            if proc.poll() is not None:
                raise AssertionError(f"attempt 2's process ended (exit {proc.returncode}) before the kill")
            with pg.primary.connect() as conn:
                held = runs.rebuild_running(conn, ns, name)
            if not held or not attempt2_reported():
                return None
            return f"its process running, Reindexing=True, {peek.state(alias, target)[1]} points in"

        op_reason = wait_killed_when(cp, ops, "attempt 2's process running", running_again, 120)
        blocker.rollback()
        blocker.close()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
        summary = json.loads(out.strip().splitlines()[-1])
        assert (summary["rebuilt"], summary["active"], summary["previous"], summary["points"]) == (
            True,
            target,
            first,
            rows,
        )

        def rebuilt() -> bool:
            obj = vi()
            st = obj.get("status") or {}
            return (
                settled(obj)
                and st.get("activeCollection") == target
                and condition(obj, "Reindexing").get("reason") == "Idle"
            )

        restart = restart_and_wait(ops, "the rebuild reported", rebuilt)
        # Kopf is done with the object too: no handler left waiting for a retry (its progress record gone).
        wait_for("no Kopf progress record left on the VectorIndex", lambda: not progress_records(vi()), 90)
        settled_in = time.monotonic() - restart.started
        where = f"the real server {space.server.url}" if space.server else "local mode"
        print(
            f"\nVectorIndex rebuild of {rows} rows ({where}, batches of {batch_size}), "
            f"backoff {REBUILD_BACKOFF:.0f} s: "
            f"attempt 1's process killed {killed_after:.1f} s after the spec change ({reason}); the store opened "
            f"by another process {opened_in:.2f} s after the kill; attempt 2's Job created "
            f"{(created - seen_failed).total_seconds():.1f} s after BackfillFailed was seen, at or after the "
            f"announced {next_at:%H:%M:%S}; the operator killed during attempt 2 ({op_reason}); after the restart: "
            f"the operator up in {restart.up:.1f} s, the rebuild reported in {restart.done:.1f} s, no handler "
            f"left pending in {settled_in:.1f} s"
        )
        outcomes = [
            line
            for line in ops.log_from(restart.log_offset)
            if '"VectorIndex"' in line and ("Handler" in line or "Updating" in line)
        ]
        print("the restarted operator's handler runs of the VectorIndex:")
        for line in outcomes:
            print("  " + str(json.loads(line)["message"])[:220])

        st = vi()["status"]
        assert st["previousCollection"] == first and st["points"] == rows, st
        assert st["sync"]["rowsBehind"] == 0, st["sync"]
        msgs = [f"{e['reason']}: {e.get('message', '')}" for e in events(cp, ns) if e["involvedObject"]["name"] == name]
        assert [m for m in msgs if m.startswith("Rebuilding: ") and f"Job {job1} (attempt 1)" in m], msgs
        assert [m for m in msgs if m.startswith("Rebuilding: ") and f"Job {job2} (attempt 2)" in m], msgs
        rebuilt_events = [m for m in msgs if m.startswith(f"Rebuilt: alias {alias} moved from {first} to {target}")]
        assert len(rebuilt_events) == 1, msgs
        assert not exists(cp, ns, vi_jobs.rebuild_job_name(name, target, 3))
        with space.client() as client:
            assert vi_collection.alias_target(client, alias) == target
            assert client.count(alias, exact=True).count == rows
            # The killed attempt's half-built collection was emptied and filled again under its name: nothing
            # else beside the live collection and the previous one kept for rollback.
            names_now = sorted(c.name for c in client.get_collections().collections if c.name.startswith(space.prefix))
            assert names_now == sorted({first, target}), names_now
            assert client.get_collection(target).config.params.vectors.distance.value == "Euclid"  # type: ignore[union-attr]
            probes = [1, rows // 2, rows]
            with pg.primary.connect() as conn:
                got = conn.execute(f"select id, embedding from public.{table} where id = any(%s)", (probes,))
                vectors: dict[Any, Any] = {row[0]: row[1] for row in got}
            for pid in probes:
                hits = client.query_points(alias, query=list(vectors[pid]), limit=3, with_payload=True).points
                assert hits[0].id == pid and hits[0].payload == {"title": f"doc {pid}"}, (pid, hits)
        assert not handler_failures(ops.log_from(restart.log_offset))
    finally:
        for held in blockers:
            held.close()
        for started in procs_started:
            if started.poll() is None:
                started.kill()
                started.wait(30)
        ops.ensure_running()  # the deletion the cleanup waits for needs it
        removed, still = space.cleanup()
        print(f"--- removed from Qdrant under {space.prefix}: {removed}")
        assert not still, f"still on the Qdrant server after the cleanup: {still}"
