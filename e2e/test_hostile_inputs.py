"""The hostile-input suite (issue 13, "Tests that prove it"): one table of invalid and hostile objects and
scenarios across the four kinds, each with the exact outcome it must have on the real platform (the session's
control plane, operator and databases):

- ``Rejected(message)``: refused at admission with the rule's message (a server-side dry run: nothing is
  stored, and all such cases go to the API server in one request);
- ``Stalled(reason, says)``: accepted, then ``Stalled=True`` with that reason, a message naming the field or
  the fix, ``Ready=False`` for the same reason, and a Warning event saying it;
- ``Waiting(reason, says)``: ``Ready=False`` for that reason and not Stalled (what it waits for may appear
  later: a Secret, a DataStore);
- ``Repaired(event, says)``: a loss or a change made by hand is noticed and said in an event of that reason;
- ``Served(says)``: objects that would collide if a name the operator derives were not injective are all
  served (``verify`` checks what each got).

Each case runs in namespaces of its own. All cases are started together (the ``platform`` fixture), so the operator
works on them side by side as it would in a cluster; each test then waits for its case's outcome. A set of
healthy objects, one of each kind (``bystanders``), must stay Ready after every case, and the operator process
must be the same one, alive and healthy, throughout.

Classes (issue 13): 1 tenants sharing a server stay apart, 2 never take over what the operator did not create,
5 status never says fresh while data is missing, 6 what the API server accepts Kubernetes and the engine accept
too, or the operator says Stalled (InvalidSpec) naming the field.
"""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import qdrant_target
from e2e_support import condition, get_json, variant
from mlinfra.devenv import secretscan
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster
from mlinfra.engines import endpoints
from mlinfra.features import jobs as feature_jobs
from mlinfra.features import layout
from mlinfra.k8s import syncjobs
from mlinfra.registry import reconcile as registry_reconcile
from mlinfra.vectors import jobs as vector_jobs
from mlinfra.vectors.collection import APPLIED_KEY

pytestmark = pytest.mark.e2e

API = "mlinfra.io/v1alpha1"
FIELD_MANAGER = "hostile-inputs"
PLURAL = {
    "DataStore": "datastore",
    "FeatureView": "featureview",
    "ModelRegistry": "modelregistry",
    "VectorIndex": "vectorindex",
}
DIM = 4
OUTCOME_TIMEOUT = 60.0
RUN = secrets.token_hex(3)  # in table and database names: the session's PostgreSQL is shared by every test


# --- outcomes ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    message: str


@dataclass(frozen=True)
class Stalled:
    reason: str
    says: str


@dataclass(frozen=True)
class Waiting:
    reason: str
    says: str


@dataclass(frozen=True)
class Repaired:
    event: str
    says: str


@dataclass(frozen=True)
class Served:
    says: str  # what the case shows to be kept apart (documentation: the check is ``verify``)


Outcome = Rejected | Stalled | Waiting | Repaired | Served


# --- the environment of one case --------------------------------------------------------------------------


@dataclass
class Env:
    """What a case builds with: its namespaces, a tag for server-wide names, the session's servers."""

    case: str
    cp: ControlPlane
    ns: str
    other: str  # a second namespace of the case (class 1: another tenant on the same servers)
    tag: str
    pg: PostgresCluster
    kv: RedisCluster
    backer: Backer
    qdrant: qdrant_target.Server | None
    tmp: Path
    space: qdrant_target.Space | None = None
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return f"h_{self.tag}"

    def vectors(self) -> qdrant_target.Space:
        if self.space is None:
            self.space = qdrant_target.Space(self.cp, self.ns, self.backer, self.qdrant)
        return self.space

    def collection(self, logical: str = "docs") -> str:
        return self.vectors().name(logical)


@dataclass(frozen=True)
class Case:
    id: str
    cls: int
    kind: str
    expect: Outcome
    # Rejected: the objects of the dry run. Otherwise: the objects the case creates once its stores are Ready
    # (the subject, named ``target``, among them).
    subject: Callable[[Env], list[dict[str, Any]]]
    stores: tuple[str, ...] = ()  # healthy DataStores made (and Ready) first: pg, kv, vec; in `other` too if two
    two: bool = False  # the stores are made in both namespaces
    before: Callable[[Env], None] | None = None  # after the stores, before the subject: the user's own objects
    existing: Callable[[Env], list[dict[str, Any]]] | None = None  # Rejected updates: created for real first
    act: Callable[[Env], None] | None = None  # in the test, before the outcome is awaited
    verify: Callable[[Env], None] | None = None  # after the outcome: what must be untouched
    target: str = "x"
    target_ns: str = "ns"  # "ns" or "other"


# --- manifests --------------------------------------------------------------------------------------------


def obj(kind: str, ns: str, name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": ns, **metadata}, "spec": spec}


def secret(ns: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": ns},
        "stringData": data,
    }


def managed(ns: str, name: str, engine: str = "redis", **managed_spec: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"replicas": 1, "storage": {"size": "1Gi"}, **managed_spec}
    return obj("DataStore", ns, name, {"engine": engine, "deletionPolicy": "Delete", "managed": spec})


def external(ns: str, name: str, engine: str, endpoint: str, creds: str, **extra: Any) -> dict[str, Any]:
    spec = {"endpoint": endpoint, "credentialsSecretRef": {"name": creds}, **extra}
    return obj("DataStore", ns, name, {"engine": engine, "external": spec})


def pg_store(env: Env, ns: str, name: str = "pg", **extra: Any) -> list[dict[str, Any]]:
    return [
        secret(ns, "pg-creds", {"username": "postgres", "password": env.pg.password}),
        external(ns, name, "postgres", f"127.0.0.1:{env.pg.primary.port}", "pg-creds", **extra),
    ]


def kv_store(env: Env, ns: str, name: str = "kv", **extra: Any) -> list[dict[str, Any]]:
    return [
        secret(ns, "kv-creds", {"username": "default", "password": env.kv.password}),
        external(ns, name, "redis", f"127.0.0.1:{env.kv.primary.port}", "kv-creds", **extra),
    ]


def store_objects(env: Env, ns: str, which: str) -> list[dict[str, Any]]:
    if which == "pg":
        return pg_store(env, ns)
    if which == "kv":
        return kv_store(env, ns)
    assert which == "vec"
    return qdrant_target.store_objects(ns, env.qdrant)


def view(env: Env, name: str = "x", ns: str | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entities": [{"name": "user_id", "type": "int64"}],
        "features": [{"name": "clicks", "type": "int64"}, {"name": "ctr", "type": "float64"}],
        "offline": {"storeRef": {"name": "pg"}, "table": env.table},
        "online": {"storeRef": {"name": "kv"}, "ttl": "24h"},
    }
    return variant(obj("FeatureView", ns or env.ns, name, body), **spec)


def scheduled_view(env: Env, name: str = "x", **spec: Any) -> dict[str, Any]:
    # A schedule that is never due during the test: the CronJob exists, no run is started by it.
    return view(env, name, materialization={"schedule": "0 0 1 1 *", "batchSize": 50}, **spec)


def registry(env: Env, name: str = "x", ns: str | None = None, **spec: Any) -> dict[str, Any]:
    body = {"metadataStoreRef": {"name": "pg"}, "database": env.table}
    return variant(obj("ModelRegistry", ns or env.ns, name, body), **spec)


def unreachable_graph(env: Env) -> list[dict[str, Any]]:
    """A neo4j DataStore nobody serves: a registry's lineage store that is not Ready only delays the graph."""
    return [
        secret(env.ns, "graph-creds", {"username": "neo4j", "password": "unused-" + env.tag}),
        external(env.ns, "graph", "neo4j", "127.0.0.1:1", "graph-creds"),
    ]


def index(env: Env, name: str = "x", source: bool = True, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "storeRef": {"name": qdrant_target.STORE},
        "collection": env.collection(name),
        "vectors": {"size": DIM, "distance": "Cosine"},
        "hnsw": {"m": 16},
    }
    if source:
        body["source"] = {
            "storeRef": {"name": "pg"},
            "table": env.table,
            "idColumn": "id",
            "vectorColumn": "embedding",
            "payloadColumns": ["lang"],
            "updatedAtColumn": "updated_at",
            "deletedColumn": "deleted",
        }
        body["sync"] = {"schedule": "0 0 1 1 *", "batchSize": 50}
    return variant(obj("VectorIndex", env.ns, name, body), **spec)


def source_table(env: Env, id_type: str = "bigint", deleted: bool = True, rows: int = 3) -> None:
    with env.pg.primary.connect() as conn:
        conn.execute(
            f"create table public.{env.table} (id {id_type} primary key, lang text, embedding real[], "
            "updated_at timestamptz not null default now()"
            + (", deleted boolean not null default false)" if deleted else ")")
        )
        if id_type == "bigint":
            for i in range(1, rows + 1):
                conn.execute(
                    f"insert into public.{env.table} (id, lang, embedding) values (%s, %s, %s)",
                    (i, "en", [float(i), 1.0, 0.5, 0.25]),
                )


def user_object(kind: str, ns: str, name: str) -> dict[str, Any]:
    """A plain object a user made, of a name a child of the operator would have."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": {"app": "users-own"}}
    pod = {
        "metadata": {"labels": {"app": "users-own"}},
        "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox:1.36"}]},
    }
    if kind == "Service":
        spec: dict[str, Any] = {"selector": {"app": "users-own"}, "ports": [{"port": 80, "targetPort": 8080}]}
        return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
    if kind == "Secret":
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"password": "users-own"}}
    if kind == "ConfigMap":
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "users-own"}}
    if kind == "PodDisruptionBudget":
        spec = {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "users-own"}}}
        return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta, "spec": spec}
    if kind == "NetworkPolicy":
        spec = {"podSelector": {"matchLabels": {"app": "users-own"}}, "policyTypes": ["Ingress"]}
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}
    assert kind == "CronJob"
    spec = {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": pod}}}
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta, "spec": spec}


def users_own(kind: str, name: str) -> Callable[[Env], None]:
    """``before``: the user's ``kind/name`` is created, and remembered as it was."""

    def make(env: Env) -> None:
        out = env.cp.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(user_object(kind, env.ns, name)))
        env.memo["users"] = json.loads(out.stdout)

    return make


def as_made(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without what others than its author write: its status (a PodDisruptionBudget's is kept by the
    disruption controller) and the bookkeeping of writes."""
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "managedFields")}
    return out


def left_alone(env: Env) -> None:
    """``verify``: the user's object is exactly as it was made (no owner, label, annotation or data of ours)."""
    made = env.memo["users"]
    now = get_json(env.cp, made["kind"], made["metadata"]["name"], "-n", env.ns)
    assert as_made(now) == as_made(made), f"the user's object was changed:\n{now}"


def nothing_started(env: Env) -> None:
    """``verify`` of a conflicted managed store: nothing was created for it."""
    left_alone(env)
    users = (env.memo["users"]["kind"], env.memo["users"]["metadata"]["name"])
    for kind, name in (("StatefulSet", "x"), ("Secret", "x-credentials"), ("Secret", "x-conn")):
        if (kind, name) != users:
            assert not exists(env.cp, kind, name, env.ns), f"{kind} {name} was created for a conflicted store"


def exists(cp: ControlPlane, kind: str, name: str, ns: str) -> bool:
    return cp.kubectl("get", kind, name, "-n", ns, check=False).returncode == 0


def apply(cp: ControlPlane, objects: list[dict[str, Any]], *flags: str) -> subprocess.CompletedProcess[str]:
    return cp.kubectl(
        "apply",
        "--server-side",
        f"--field-manager={FIELD_MANAGER}",
        *flags,
        "-f",
        "-",
        input=yaml.safe_dump_all(objects),
        check=False,
    )


def status_of(env: Env, kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
    return dict(get_json(env.cp, PLURAL[kind], name, "-n", ns or env.ns))


def is_ready(env: Env, kind: str, name: str, ns: str | None = None) -> bool:
    return condition(status_of(env, kind, name, ns), "Ready").get("status") == "True"


def conditions_text(env: Env, kind: str, name: str, ns: str | None = None) -> str:
    out = env.cp.kubectl("get", PLURAL[kind], name, "-n", ns or env.ns, "-o", "json", check=False)
    if out.returncode != 0:
        return out.stderr.strip()
    st = json.loads(out.stdout).get("status") or {}
    return "\n".join(
        f"  {c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}" for c in st.get("conditions", [])
    )


def wait(what: str, check: Callable[[], bool], show: Callable[[], str], timeout: float = OUTCOME_TIMEOUT) -> None:
    """Poll ``check``; on timeout fail with what ``show`` says of the state (the precise defect report)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception as exc:  # an object not there yet, a kubectl hiccup: look again
            last = f"{type(exc).__name__}: {exc}"
        else:
            last = ""
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; {last}\n{show()}", pytrace=False)
        time.sleep(0.5)


def wait_ready(env: Env, kind: str, name: str, ns: str | None = None) -> None:
    wait(
        f"{kind} {ns or env.ns}/{name} Ready",
        lambda: is_ready(env, kind, name, ns),
        lambda: conditions_text(env, kind, name, ns),
    )


def events(env: Env, name: str, ns: str | None = None) -> list[dict[str, Any]]:
    selector = f"involvedObject.name={name}"
    return list(get_json(env.cp, "events", "-n", ns or env.ns, "--field-selector", selector)["items"])


def patch(env: Env, kind: str, name: str, body: dict[str, Any]) -> None:
    env.cp.kubectl("patch", PLURAL[kind], name, "-n", env.ns, "--type=merge", "-p", json.dumps(body))


# --- running a sync Job's command (Pods on kwok run nothing) ----------------------------------------------


def run_sync_job(env: Env, cronjob: str) -> dict[str, Any]:
    """The CronJob's container run as a process against the real stores: its args, its env, its mounted
    Secrets; the summary line it prints."""
    pod = get_json(env.cp, "cronjob", cronjob, "-n", env.ns)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    run_env = {
        **os.environ,
        **{e["name"]: e["value"] for e in container["env"]},
        endpoints.ENV: str(env.backer.map_path),
    }
    for volume in pod["volumes"]:
        if "secret" in volume:
            mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
            var = next(e["name"] for e in container["env"] if e["value"] == mount["mountPath"])
            directory = env.tmp / f"{cronjob}-{volume['name']}"
            directory.mkdir(parents=True, exist_ok=True)
            data = get_json(env.cp, "secret", volume["secret"]["secretName"], "-n", env.ns)["data"]
            for key, value in data.items():
                (directory / key).write_bytes(base64.b64decode(value))
            run_env[var] = str(directory)
    run_env.pop("KUBECONFIG", None)  # the Job's pod has no API access
    run = subprocess.run(
        [sys.executable, "-m", "mlinfra", *container["args"]], env=run_env, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def materialized(env: Env) -> None:
    """``act`` prelude of the FeatureView loss cases: the view Ready, rows offline, one sync run, and the
    status showing it fresh (a recorded watermark the loss can then contradict)."""
    wait_ready(env, "FeatureView", "x")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with env.pg.primary.connect() as conn:
        for uid, clicks in ((1, 10), (2, 5), (3, 7)):
            conn.execute(
                f"insert into public.{env.table} (user_id, clicks, ctr, event_timestamp) values (%s, %s, %s, %s)",
                (uid, clicks, clicks / 100, now - datetime.timedelta(minutes=uid)),
            )
    summary = run_sync_job(env, "x-materialize")
    assert (summary["outcome"], summary["rows"]) == ("Succeeded", 3), summary

    def fresh() -> bool:
        fv = status_of(env, "FeatureView", "x")
        return condition(fv, "Materialized").get("status") == "True" and condition(fv, "Ready").get("status") == "True"

    wait("the view materialized and fresh", fresh, lambda: conditions_text(env, "FeatureView", "x"))


# --- the table ----------------------------------------------------------------------------------------------

LONG = {kind: kind[0].lower() * 64 for kind in PLURAL}
SAME_NAME = f"v-{RUN}"  # class 1: one view name in two namespaces (unique per run: tables outlive a run)


def adm(
    id_: str,
    kind: str,
    message: str,
    make: Callable[[Env], dict[str, Any]],
    cls: int = 6,
    existing: Callable[[Env], dict[str, Any]] | None = None,
) -> Case:
    """An admission case: ``make`` is dry-run applied and must be refused with ``message``."""
    return Case(
        id_,
        cls,
        kind,
        Rejected(message),
        lambda env: [make(env)],
        existing=(lambda env: [existing(env)]) if existing else None,
    )


# Valid bases the admission cases change one thing of (each named after its case: errors name the object).
def ds_managed(env: Env, name: str) -> dict[str, Any]:
    return managed(env.ns, name, "redis", config={"maxmemory": "256mb", "maxmemory-policy": "allkeys-lru"})


def ds_pg_managed(env: Env, name: str) -> dict[str, Any]:
    return managed(env.ns, name, "postgres")


def ds_external(env: Env, name: str, engine: str = "postgres") -> dict[str, Any]:
    port = {"postgres": 5432, "redis": 6379}[engine]
    return external(env.ns, name, engine, f"db.example.com:{port}", "creds")


def fv_base(env: Env, name: str) -> dict[str, Any]:
    return scheduled_view(env, name, freshness={"maxLag": "15m"})


def mr_base(env: Env, name: str) -> dict[str, Any]:
    return registry(env, name, lineageStoreRef={"name": "graph"}, lineageSync={"interval": "30s"})


def vi_base(env: Env, name: str) -> dict[str, Any]:
    return index(env, name, collection=env.collection("docs"), payloadIndexes=[{"field": "lang", "type": "keyword"}])


PAYLOAD_KEY = "spec.payloadIndexes[].field must be a Qdrant payload key"
SHOULD_MATCH = "in body should match"
ADMISSION: list[Case] = [
    # DataStore: names its children cannot carry
    adm(
        "ds-name-53-managed",
        "DataStore",
        "the name of a managed DataStore must be at most 52 characters",
        lambda e: ds_managed(e, "d" * 53),
    ),
    adm(
        "ds-name-dot-managed",
        "DataStore",
        "must start with a lower-case letter and contain only lower-case",
        lambda e: ds_managed(e, "cache.main"),
    ),
    adm(
        "ds-name-digit-managed",
        "DataStore",
        "must start with a lower-case letter and contain only lower-case",
        lambda e: ds_managed(e, "1cache"),
    ),
    adm(
        "ds-name-64",
        "DataStore",
        "the name of a DataStore must be at most 63 characters",
        lambda e: ds_external(e, LONG["DataStore"]),
    ),
    # DataStore: engine settings the engine refuses, or that the operator owns
    adm(
        "ds-redis-maxmemory-words",
        "DataStore",
        "spec.managed.config[maxmemory] of a redis DataStore must be a number of bytes",
        lambda e: variant(ds_managed(e, "ds-redis-maxmemory-words"), managed__config={"maxmemory": "256 MB"}),
    ),
    adm(
        "ds-redis-eviction-policy",
        "DataStore",
        "spec.managed.config[maxmemory-policy] of a redis DataStore must be one of noeviction",
        lambda e: variant(ds_managed(e, "ds-redis-eviction-policy"), managed__config={"maxmemory-policy": "lru"}),
    ),
    adm(
        "ds-redis-port-setting",
        "DataStore",
        "spec.managed.config allows only these redis settings",
        lambda e: variant(ds_managed(e, "ds-redis-port-setting"), managed__config={"port": "7000"}),
    ),
    adm(
        "ds-pg-shared-buffers-unit",
        "DataStore",
        "spec.managed.config[shared_buffers] of a postgres DataStore must be a number with an optional unit",
        lambda e: variant(ds_pg_managed(e, "ds-pg-shared-buffers-unit"), managed__config={"shared_buffers": "256mb"}),
    ),
    adm(
        "ds-pg-max-connections-3",
        "DataStore",
        "spec.managed.config[max_connections] of a postgres DataStore must be a whole number from 4",
        lambda e: variant(ds_pg_managed(e, "ds-pg-max-connections-3"), managed__config={"max_connections": "3"}),
    ),
    adm(
        "ds-pg-replication-setting",
        "DataStore",
        "spec.managed.config allows only these postgres settings",
        lambda e: variant(ds_pg_managed(e, "ds-pg-replication-setting"), managed__config={"wal_level": "minimal"}),
    ),
    adm(
        "ds-neo4j-query-log",
        "DataStore",
        "spec.managed.config[db.logs.query.enabled] of a neo4j DataStore must be OFF, INFO or VERBOSE",
        lambda e: managed(e.ns, "ds-neo4j-query-log", "neo4j", config={"db.logs.query.enabled": "true"}),
    ),
    adm(
        "ds-neo4j-three-replicas",
        "DataStore",
        "neo4j Community runs a single instance",
        lambda e: managed(e.ns, "ds-neo4j-three-replicas", "neo4j", replicas=3),
    ),
    adm(
        "ds-qdrant-log-level",
        "DataStore",
        "spec.managed.config[log_level] of a qdrant DataStore must be TRACE",
        lambda e: managed(e.ns, "ds-qdrant-log-level", "qdrant", config={"log_level": "loud"}),
    ),
    # DataStore: volumes, resources and images the Pod and PVC APIs refuse
    adm(
        "ds-storage-millibytes",
        "DataStore",
        "must be a positive size in bytes",
        lambda e: variant(ds_managed(e, "ds-storage-millibytes"), managed__storage__size="500m"),
    ),
    adm(
        "ds-storage-zero",
        "DataStore",
        "must be a positive size in bytes",
        lambda e: variant(ds_managed(e, "ds-storage-zero"), managed__storage__size="0"),
    ),
    adm(
        "ds-storage-class-underscore",
        "DataStore",
        "spec.managed.storage.storageClassName",
        lambda e: variant(ds_managed(e, "ds-storage-class-underscore"), managed__storage__storageClassName="Fast_SSD"),
    ),
    adm(
        "ds-resource-name-cpus",
        "DataStore",
        "requests: resource names must be cpu, memory, ephemeral-storage",
        lambda e: variant(ds_managed(e, "ds-resource-name-cpus"), managed__resources={"requests": {"cpus": 1}}),
    ),
    adm(
        "ds-resource-negative",
        "DataStore",
        "limits: resource quantities must not be negative",
        lambda e: variant(ds_managed(e, "ds-resource-negative"), managed__resources={"limits": {"memory": "-1Gi"}}),
    ),
    adm(
        "ds-request-over-limit",
        "DataStore",
        "each request must be at most the limit of the same resource",
        lambda e: variant(
            ds_managed(e, "ds-request-over-limit"),
            managed__resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
        ),
    ),
    adm(
        "ds-image-with-space",
        "DataStore",
        "spec.managed.image must be an image reference",
        lambda e: variant(ds_managed(e, "ds-image-with-space"), managed__image="redis 7.2"),
    ),
    # DataStore: external settings the clients refuse
    adm(
        "ds-endpoint-port-70000",
        "DataStore",
        "must be host:port with a port from 1 to 65535",
        lambda e: variant(ds_external(e, "ds-endpoint-port-70000"), external__endpoint="db.example.com:70000"),
    ),
    adm(
        "ds-endpoint-without-port",
        "DataStore",
        "must be host:port",
        lambda e: variant(ds_external(e, "ds-endpoint-without-port"), external__endpoint="db.example.com"),
    ),
    adm(
        "ds-redis-database-name",
        "DataStore",
        "spec.external.database of a redis DataStore must be a database number",
        lambda e: variant(ds_external(e, "ds-redis-database-name", "redis"), external__database="features"),
    ),
    adm(
        "ds-tls-server-name-spaces",
        "DataStore",
        "spec.external.tls.serverName must be a host name",
        lambda e: variant(
            ds_external(e, "ds-tls-server-name-spaces"), external__tls={"enabled": True, "serverName": "db example"}
        ),
    ),
    adm(
        "ds-redis-tls-server-name",
        "DataStore",
        "spec.external.tls.serverName is not supported for redis",
        lambda e: variant(
            ds_external(e, "ds-redis-tls-server-name", "redis"),
            external__tls={"enabled": True, "serverName": "r.example.com"},
        ),
    ),
    adm(
        "ds-both-modes",
        "DataStore",
        "set exactly one of spec.managed",
        lambda e: variant(ds_external(e, "ds-both-modes"), managed={}),
    ),
    # DataStore: changes Kubernetes or the data forbid (the original is created for real first)
    adm(
        "ds-engine-change",
        "DataStore",
        "spec.engine is immutable",
        lambda e: variant(ds_external(e, "ds-engine-change"), engine="redis", external__endpoint="db.example.com:6379"),
        existing=lambda e: ds_external(e, "ds-engine-change"),
    ),
    adm(
        "ds-managed-to-external",
        "DataStore",
        "spec.managed and spec.external cannot be switched on an existing DataStore",
        lambda e: external(e.ns, "ds-managed-to-external", "qdrant", "q.example.com:6333", "creds"),
        existing=lambda e: managed(e.ns, "ds-managed-to-external", "qdrant"),
    ),
    adm(
        "ds-storage-resize",
        "DataStore",
        "spec.managed.storage cannot change on an existing DataStore",
        lambda e: managed(e.ns, "ds-storage-resize", "qdrant", storage={"size": "2Gi"}),
        existing=lambda e: managed(e.ns, "ds-storage-resize", "qdrant"),
    ),
    adm(
        "ds-major-version-change",
        "DataStore",
        "spec.managed.version cannot change its major version",
        lambda e: managed(e.ns, "ds-major-version-change", "qdrant", version="2.0"),
        existing=lambda e: managed(e.ns, "ds-major-version-change", "qdrant", version="1.12"),
    ),
    # FeatureView
    adm(
        "fv-name-64",
        "FeatureView",
        "the name of a FeatureView must be at most 63 characters",
        lambda e: fv_base(e, LONG["FeatureView"]),
    ),
    adm(
        "fv-cron-minute-60",
        "FeatureView",
        "minute 0-59, hour 0-23",
        lambda e: variant(fv_base(e, "fv-cron-minute-60"), materialization__schedule="60 * * * *"),
    ),
    adm(
        "fv-cron-weekday-7",
        "FeatureView",
        "day of week 0-6 or SUN-SAT",
        lambda e: variant(fv_base(e, "fv-cron-weekday-7"), materialization__schedule="0 0 * * 7"),
    ),
    adm(
        "fv-cron-step-0",
        "FeatureView",
        "cron schedule of 5 fields",
        lambda e: variant(fv_base(e, "fv-cron-step-0"), materialization__schedule="*/0 * * * *"),
    ),
    adm(
        "fv-cron-seconds-field",
        "FeatureView",
        "cron schedule of 5 fields",
        lambda e: variant(fv_base(e, "fv-cron-seconds-field"), materialization__schedule="0 */5 * * * *"),
    ),
    adm(
        "fv-ttl-zero",
        "FeatureView",
        "must be longer than 0",
        lambda e: variant(fv_base(e, "fv-ttl-zero"), online__ttl="0s"),
    ),
    adm(
        "fv-ttl-in-words",
        "FeatureView",
        "such as 30s, 5m or 1h30m",
        lambda e: variant(fv_base(e, "fv-ttl-in-words"), online__ttl="2 days"),
    ),
    adm(
        "fv-max-lag-zero",
        "FeatureView",
        "must be longer than 0",
        lambda e: variant(fv_base(e, "fv-max-lag-zero"), freshness__maxLag="0m"),
    ),
    adm(
        "fv-schema-pg-catalog",
        "FeatureView",
        "choose another schema",
        lambda e: variant(fv_base(e, "fv-schema-pg-catalog"), offline__schema="pg_catalog"),
    ),
    adm(
        "fv-schema-registry",
        "FeatureView",
        "mlinfra and registry are the operator's own",
        lambda e: variant(fv_base(e, "fv-schema-registry"), offline__schema="registry"),
    ),
    adm(
        "fv-reserved-column",
        "FeatureView",
        "reserved for the operator's own columns",
        lambda e: variant(
            fv_base(e, "fv-reserved-column"), features=[{"name": "event_timestamp", "type": "timestamp"}]
        ),
    ),
    adm(
        "fv-feature-named-like-entity",
        "FeatureView",
        "cannot have the name of an entity",
        lambda e: variant(fv_base(e, "fv-feature-named-like-entity"), features=[{"name": "user_id", "type": "string"}]),
    ),
    adm(
        "fv-table-injection",
        "FeatureView",
        SHOULD_MATCH,
        lambda e: variant(fv_base(e, "fv-table-injection"), offline__table='x"; drop table users; --'),
    ),
    adm(
        "fv-entities-change",
        "FeatureView",
        "spec.entities is immutable",
        lambda e: variant(fv_base(e, "fv-entities-change"), entities=[{"name": "user_id", "type": "string"}]),
        existing=lambda e: fv_base(e, "fv-entities-change"),
    ),
    # ModelRegistry
    adm(
        "mr-name-64",
        "ModelRegistry",
        "the name of a ModelRegistry must be at most 63 characters",
        lambda e: mr_base(e, LONG["ModelRegistry"]),
    ),
    adm(
        "mr-database-template1",
        "ModelRegistry",
        "spec.database cannot be template0 or template1",
        lambda e: variant(mr_base(e, "mr-database-template1"), database="template1"),
    ),
    adm(
        "mr-database-injection",
        "ModelRegistry",
        SHOULD_MATCH,
        lambda e: variant(mr_base(e, "mr-database-injection"), database="reg; drop database postgres"),
    ),
    adm(
        "mr-interval-zero",
        "ModelRegistry",
        "must be longer than 0",
        lambda e: variant(mr_base(e, "mr-interval-zero"), lineageSync__interval="0s"),
    ),
    adm(
        "mr-cron-hour-25",
        "ModelRegistry",
        "minute 0-59, hour 0-23",
        lambda e: variant(mr_base(e, "mr-cron-hour-25"), lineageSync__schedule="0 25 * * *"),
    ),
    adm(
        "mr-lineage-is-metadata-store",
        "ModelRegistry",
        "spec.lineageStoreRef must name a neo4j DataStore, not the postgres metadataStoreRef",
        lambda e: variant(mr_base(e, "mr-lineage-is-metadata-store"), lineageStoreRef={"name": "pg"}),
    ),
    adm(
        "mr-schema-version-zero",
        "ModelRegistry",
        "must be 'latest' or a migration number",
        lambda e: variant(mr_base(e, "mr-schema-version-zero"), schemaVersion=0),
    ),
    # VectorIndex
    adm(
        "vi-name-64",
        "VectorIndex",
        "the name of a VectorIndex must be at most 63 characters",
        lambda e: vi_base(e, LONG["VectorIndex"]),
    ),
    adm(
        "vi-cron-day-32",
        "VectorIndex",
        "day of month 1-31",
        lambda e: variant(vi_base(e, "vi-cron-day-32"), sync__schedule="0 0 32 * *"),
    ),
    adm(
        "vi-max-lag-zero",
        "VectorIndex",
        "must be longer than 0",
        lambda e: variant(vi_base(e, "vi-max-lag-zero"), sync__maxLag="0s"),
    ),
    adm(
        "vi-size-zero",
        "VectorIndex",
        "must be a positive number of dimensions",
        lambda e: variant(vi_base(e, "vi-size-zero"), vectors={"size": 0, "distance": "Cosine"}),
    ),
    adm(
        "vi-size-beyond-qdrant",
        "VectorIndex",
        "should be less than or equal to 65536",
        lambda e: variant(vi_base(e, "vi-size-beyond-qdrant"), vectors={"size": 100000, "distance": "Cosine"}),
    ),
    adm(
        "vi-payload-path-traversal",
        "VectorIndex",
        PAYLOAD_KEY,
        lambda e: variant(
            vi_base(e, "vi-payload-path-traversal"), payloadIndexes=[{"field": "/../../../x#", "type": "keyword"}]
        ),
    ),
    adm(
        "vi-payload-quoted-plain",
        "VectorIndex",
        PAYLOAD_KEY,
        lambda e: variant(
            vi_base(e, "vi-payload-quoted-plain"), payloadIndexes=[{"field": '"lang"', "type": "keyword"}]
        ),
    ),
    adm(
        "vi-collection-with-space",
        "VectorIndex",
        "spec.collection",
        lambda e: variant(vi_base(e, "vi-collection-with-space"), collection="my docs"),
    ),
    adm(
        "vi-pq-without-compression",
        "VectorIndex",
        "compression is required for product quantization",
        lambda e: variant(vi_base(e, "vi-pq-without-compression"), quantization={"type": "product"}),
    ),
    adm(
        "vi-source-table-injection",
        "VectorIndex",
        SHOULD_MATCH,
        lambda e: variant(vi_base(e, "vi-source-table-injection"), source__table="docs; drop table docs"),
    ),
]


def first_ready_then(kind: str, first: str, make: Callable[[Env], list[dict[str, Any]]]) -> Callable[[Env], None]:
    """``act`` of a case whose subject is ``first``: wait for it Ready, then create ``make``'s objects."""

    def act(env: Env) -> None:
        wait_ready(env, kind, first)
        env.cp.apply(make(env), field_manager=FIELD_MANAGER)

    return act


def other_ready_then(kind: str, name: str, make: Callable[[Env], list[dict[str, Any]]]) -> Callable[[Env], None]:
    """``act`` of a class 1 case: the other tenant's ``name`` Ready first, then this tenant's objects."""

    def act(env: Env) -> None:
        wait_ready(env, kind, name, env.other)
        env.cp.apply(make(env), field_manager=FIELD_MANAGER)

    return act


def chain(*steps: Callable[[Env], None]) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        for step in steps:
            step(env)

    return run


def still_ready(kind: str, name: str, ns: str = "ns") -> Callable[[Env], None]:
    def verify(env: Env) -> None:
        assert is_ready(env, kind, name, env.ns if ns == "ns" else env.other), f"{kind} {name} is no longer Ready"

    return verify


def user_table(key: str) -> Callable[[Env], None]:
    """``before``: a table of the user's, with a row, named like the view's offline table."""

    def make(env: Env) -> None:
        with env.pg.primary.connect() as conn:
            conn.execute(f"create table public.{env.table} ({key}, note text not null)")
            conn.execute(f"insert into public.{env.table} values (1, 'the user''s own row')")

    return make


def user_table_untouched(key: str) -> Callable[[Env], None]:
    def verify(env: Env) -> None:
        with env.pg.primary.connect() as conn:
            columns = [
                r[0]
                for r in conn.execute(
                    "select column_name from information_schema.columns where table_schema = 'public' "
                    "and table_name = %s order by ordinal_position",
                    (env.table,),
                ).fetchall()
            ]
            rows = conn.execute(f"select * from public.{env.table}").fetchall()
        assert columns == [key, "note"], f"the user's table was altered: {columns}"
        assert rows == [(1, "the user's own row")]

    return verify


def users_role(env: Env) -> None:
    """``before``: a PostgreSQL role of the name the registry's writer role would have, made by hand."""
    role = registry_reconcile.role_name(env.ns, "x", "writer")
    with env.pg.primary.connect() as conn:
        conn.execute(f'create role "{role}" login')
    env.memo["role"] = role


def users_registry_schema(env: Env) -> None:
    """``before``: the registry's database exists, made by a user, with a schema ``registry`` of their own
    holding a table of the name the first migration creates."""
    with env.pg.primary.connect() as conn:
        conn.execute(f"create database {env.table}")
    with env.pg.primary.connect(env.table) as conn:
        conn.execute("create schema registry")
        conn.execute("create table registry.registered_models (id int primary key, note text not null)")
        conn.execute("insert into registry.registered_models values (1, 'the user''s own row')")


def users_registry_schema_untouched(env: Env) -> None:
    with env.pg.primary.connect(env.table) as conn:
        tables = conn.execute(
            "select table_name from information_schema.tables where table_schema = 'registry' order by 1"
        ).fetchall()
        rows = conn.execute("select * from registry.registered_models").fetchall()
    assert tables == [("registered_models",)], f"the user's schema was changed: {tables}"
    assert rows == [(1, "the user's own row")]


def users_collection(alias_too: bool) -> Callable[[Env], None]:
    """``before``: a collection made with a Qdrant client, named like the alias (or an alias onto it)."""

    def make(env: Env) -> None:
        from qdrant_client.http import models

        wait(
            "the qdrant store published",
            env.vectors().published,
            lambda: conditions_text(env, "DataStore", qdrant_target.STORE),
        )
        with env.vectors().client() as client:
            params = models.VectorParams(size=DIM, distance=models.Distance.COSINE)
            alias = env.collection("x")
            if alias_too:
                client.create_collection(env.collection("users-own"), vectors_config=params)
                client.update_collection_aliases(
                    change_aliases_operations=[
                        models.CreateAliasOperation(
                            create_alias=models.CreateAlias(
                                collection_name=env.collection("users-own"), alias_name=alias
                            )
                        )
                    ]
                )
            else:
                client.create_collection(alias, vectors_config=params)

    return make


def role_names_differ(env: Env) -> None:
    wait_ready(env, "ModelRegistry", "x-models", env.other)
    users = set()
    for ns, name in ((env.ns, "models"), (env.other, "x-models")):
        data = get_json(env.cp, "secret", f"{name}-writer", "-n", ns)["data"]
        users.add(base64.b64decode(data["username"]).decode())
    assert len(users) == 2, f"two registries share the writer role {users}"


def vi_ready_then(change: Callable[[Env], None]) -> Callable[[Env], None]:
    def act(env: Env) -> None:
        wait_ready(env, "VectorIndex", "x")
        change(env)

    return act


def delete_active_collection(env: Env) -> None:
    active = status_of(env, "VectorIndex", "x")["status"]["activeCollection"]
    with env.vectors().client() as client:
        client.delete_collection(active)


def delete_alias(env: Env) -> None:
    from qdrant_client.http import models

    with env.vectors().client() as client:
        client.update_collection_aliases(
            change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=env.collection("x")))
            ]
        )


def drift_hnsw(env: Env) -> None:
    """HNSW m changed by hand (the spec says 16): on a server its setting, in local mode the record of the
    applied settings the operator compares (local mode has no HNSW graph)."""
    from qdrant_client.http import models

    active = status_of(env, "VectorIndex", "x")["status"]["activeCollection"]
    with env.vectors().client() as client:
        if env.vectors().real:
            client.update_collection(active, hnsw_config=models.HnswConfigDiff(m=8))
            return
        metadata = client.get_collection(active).config.metadata or {}
        applied = dict(metadata[APPLIED_KEY])
        applied["hnsw"] = {**applied["hnsw"], "m": 8}
        client.update_collection(active, metadata={APPLIED_KEY: applied})


def evict_marker(env: Env) -> None:
    materialized(env)
    env.kv.primary.client().delete(layout.marker_key(env.ns, "x"))


def switch_offline_table(env: Env) -> None:
    materialized(env)
    patch(env, "FeatureView", "x", {"spec": {"offline": {"table": f"{env.table}_v2"}}})


def switch_online_store(env: Env) -> None:
    """The online storeRef moved to another Redis database (the same server, db 1): no marker there."""
    materialized(env)
    env.cp.apply(
        [external(env.ns, "kv1", "redis", f"127.0.0.1:{env.kv.primary.port}", "kv-creds", database="1")],
        field_manager=FIELD_MANAGER,
    )
    wait_ready(env, "DataStore", "kv1")
    patch(env, "FeatureView", "x", {"spec": {"online": {"storeRef": {"name": "kv1"}}}})


def recreate_offline_table(env: Env) -> None:
    """The offline table dropped and created again by hand (same columns, a new table: another OID)."""
    materialized(env)
    with env.pg.primary.connect() as conn:
        conn.execute(f"create table public.{env.table}_copy (like public.{env.table} including all)")
        conn.execute(f"drop table public.{env.table}")
        conn.execute(f"alter table public.{env.table}_copy rename to {env.table}")


def fv_type_change(env: Env) -> None:
    wait_ready(env, "FeatureView", "x")
    patch(
        env,
        "FeatureView",
        "x",
        {"spec": {"features": [{"name": "clicks", "type": "string"}, {"name": "ctr", "type": "float64"}]}},
    )


def mr_downgrade(env: Env) -> None:
    wait_ready(env, "ModelRegistry", "x")
    patch(env, "ModelRegistry", "x", {"spec": {"schemaVersion": 1}})


def vi_resize_without_source(env: Env) -> None:
    wait_ready(env, "VectorIndex", "x")
    patch(env, "VectorIndex", "x", {"spec": {"vectors": {"size": DIM + 1, "distance": "Cosine"}}})


def sync_both_now(env: Env) -> None:
    wait_ready(env, "FeatureView", "x")
    wait_ready(env, "VectorIndex", "x")
    for kind in ("FeatureView", "VectorIndex"):
        env.cp.kubectl("annotate", PLURAL[kind], "x", "-n", env.ns, f"{syncjobs.SYNC_REQUESTED_ANNOTATION}=now-1")


def a_job_each(env: Env) -> None:
    """Each kind's on-demand Job exists under its own name and is controlled by its own object."""
    expected = {
        "FeatureView": feature_jobs.ondemand_job_name("x", "now-1"),
        "VectorIndex": vector_jobs.ondemand_job_name("x", "now-1"),
    }
    assert len(set(expected.values())) == 2, expected

    def both_there() -> bool:
        return all(exists(env.cp, "job", name, env.ns) for name in expected.values())

    wait("both on-demand Jobs", both_there, lambda: str(get_json(env.cp, "jobs", "-n", env.ns)["items"]), 60)
    for kind, name in expected.items():
        owner = status_of(env, kind, "x")["metadata"]["uid"]
        refs = get_json(env.cp, "job", name, "-n", env.ns)["metadata"]["ownerReferences"]
        assert [r["uid"] for r in refs if r.get("controller")] == [owner], (kind, refs)


def conflicted_store(kind: str, name: str, says: str, store: Callable[[Env], dict[str, Any]]) -> Case:
    """Class 2: the user's ``kind/name`` exists; the DataStore that would have it as a child is Stalled."""
    return Case(
        f"ds-leaves-users-{kind.lower()}-{name.removeprefix('x').strip('-') or 'named-x'}",
        2,
        "DataStore",
        Stalled("ChildConflict", says),
        lambda env: [store(env)],
        before=users_own(kind, name),
        verify=nothing_started,
    )


OPERATOR: list[Case] = [
    # --- class 2: never take over what the operator did not create --------------------------------------
    conflicted_store(
        "Service",
        "x",
        "Service x already exists and was created by someone else",
        lambda env: managed(env.ns, "x"),
    ),
    conflicted_store(
        "Service",
        "x-hl",
        "Service x-hl already exists and was created by someone else",
        lambda env: managed(env.ns, "x"),
    ),
    conflicted_store(
        "Secret",
        "x-credentials",
        "Secret x-credentials already exists and was created by someone else",
        lambda env: managed(env.ns, "x"),
    ),
    conflicted_store(
        "ConfigMap",
        "x-config",
        "ConfigMap x-config already exists and was created by someone else",
        lambda env: managed(env.ns, "x"),
    ),
    conflicted_store(
        "PodDisruptionBudget",
        "x",
        "PodDisruptionBudget x already exists and was created by someone else",
        lambda env: managed(env.ns, "x", replicas=2),
    ),
    conflicted_store(
        "NetworkPolicy",
        "x",
        "NetworkPolicy x already exists and was created by someone else",
        lambda env: managed(env.ns, "x", networkPolicy=True),
    ),
    Case(
        "ds-external-leaves-users-conn-secret",
        2,
        "DataStore",
        Stalled("ChildConflict", "Secret x-conn already exists and was created by someone else"),
        lambda env: kv_store(env, env.ns, "x"),
        before=users_own("Secret", "x-conn"),
        verify=left_alone,
    ),
    Case(
        "ds-a-hl-vs-headless-service-of-a",
        2,
        "DataStore",
        Stalled("ChildConflict", "Service a-hl already exists and is controlled by DataStore a"),
        lambda env: [managed(env.ns, "a", "qdrant")],
        act=first_ready_then("DataStore", "a", lambda env: [managed(env.ns, "a-hl", "qdrant")]),
        verify=still_ready("DataStore", "a"),
        target="a-hl",
    ),
    Case(
        "fv-leaves-users-cronjob",
        2,
        "FeatureView",
        Stalled("ChildConflict", "CronJob x-materialize already exists and was created by someone else"),
        lambda env: [scheduled_view(env)],
        stores=("pg", "kv"),
        before=users_own("CronJob", "x-materialize"),
        verify=left_alone,
    ),
    Case(
        "fv-leaves-users-table",
        2,
        "FeatureView",
        Stalled("TableInUse", "is not the offline table of any FeatureView (it has no event_timestamp column)"),
        lambda env: [view(env)],
        stores=("pg", "kv"),
        before=user_table("id int primary key"),
        verify=user_table_untouched("id"),
    ),
    Case(
        "fv-leaves-users-table-keyed-alike",
        2,
        "FeatureView",
        Stalled("TableInUse", "is not the offline table of any FeatureView (it has no event_timestamp column)"),
        lambda env: [view(env)],
        stores=("pg", "kv"),
        before=user_table("user_id bigint primary key"),
        verify=user_table_untouched("user_id"),
    ),
    Case(
        "vi-leaves-users-cronjob",
        2,
        "VectorIndex",
        Stalled("ChildConflict", "CronJob x-index-sync already exists and was created by someone else"),
        lambda env: [index(env)],
        stores=("pg", "vec"),
        before=chain(source_table, users_own("CronJob", "x-index-sync")),
        verify=left_alone,
    ),
    Case(
        "vi-leaves-users-collection",
        2,
        "VectorIndex",
        Stalled("CollectionConflict", "exists and is not an alias: the operator does not adopt it"),
        lambda env: [index(env, source=False)],
        stores=("vec",),
        before=users_collection(alias_too=False),
    ),
    Case(
        "vi-leaves-users-alias",
        2,
        "VectorIndex",
        Stalled("CollectionConflict", "a collection the operator did not create: it does not adopt it"),
        lambda env: [index(env, source=False)],
        stores=("vec",),
        before=users_collection(alias_too=True),
    ),
    Case(
        "mr-leaves-users-writer-secret",
        2,
        "ModelRegistry",
        Stalled("ChildConflict", "Secret x-writer already exists and was created by someone else"),
        lambda env: [registry(env)],
        stores=("pg",),
        before=users_own("Secret", "x-writer"),
        verify=left_alone,
    ),
    Case(
        "mr-leaves-users-role",
        2,
        "ModelRegistry",
        Stalled("RoleConflict", "made outside the operator"),
        lambda env: [registry(env)],
        stores=("pg",),
        before=users_role,
    ),
    Case(
        "mr-leaves-users-registry-schema",
        2,
        "ModelRegistry",
        Stalled("DatabaseInUse", "registry"),
        lambda env: [registry(env)],
        stores=("pg",),
        before=users_registry_schema,
        verify=users_registry_schema_untouched,
    ),
    Case(
        "mr-leaves-users-cronjob",
        2,
        "ModelRegistry",
        Stalled("ChildConflict", "CronJob x-lineage already exists and was created by someone else"),
        lambda env: [
            *unreachable_graph(env),
            registry(env, lineageStoreRef={"name": "graph"}, lineageSync={"schedule": "0 0 1 1 *"}),
        ],
        stores=("pg",),
        before=users_own("CronJob", "x-lineage"),
        verify=left_alone,
    ),
    Case(
        "vi-and-fv-of-one-name-sync-now",
        2,
        "VectorIndex",
        Served("a FeatureView and a VectorIndex of one name asked to sync at one value: a Job each"),
        lambda env: [scheduled_view(env, offline={"storeRef": {"name": "pg"}, "table": f"{env.table}_fv"}), index(env)],
        stores=("pg", "kv", "vec"),
        before=source_table,
        act=sync_both_now,
        verify=a_job_each,
    ),
    # --- class 1: tenants sharing a server stay apart ----------------------------------------------------
    Case(
        "fv-same-name-other-namespace-same-server",
        1,
        "FeatureView",
        Stalled("TableInUse", "holds the offline data of FeatureView"),
        # Both views have one name and the default table name: one table on the one server.
        lambda env: [view(env, SAME_NAME, ns=env.other, offline={"storeRef": {"name": "pg"}})],
        stores=("pg", "kv"),
        two=True,
        act=other_ready_then(
            "FeatureView", SAME_NAME, lambda env: [view(env, SAME_NAME, offline={"storeRef": {"name": "pg"}})]
        ),
        verify=still_ready("FeatureView", SAME_NAME, "other"),
        target=SAME_NAME,
    ),
    Case(
        "fv-two-views-one-table",
        1,
        "FeatureView",
        Stalled("TableInUse", "give this view a table of its own"),
        lambda env: [view(env, "a")],
        stores=("pg", "kv"),
        act=first_ready_then("FeatureView", "a", lambda env: [view(env, "x")]),
        verify=still_ready("FeatureView", "a"),
    ),
    Case(
        "mr-same-database-other-namespace",
        1,
        "ModelRegistry",
        Stalled("DatabaseInUse", "give this registry a database of its own"),
        lambda env: [registry(env, ns=env.other)],
        stores=("pg",),
        two=True,
        act=other_ready_then("ModelRegistry", "x", lambda env: [registry(env)]),
        verify=still_ready("ModelRegistry", "x", "other"),
    ),
    Case(
        "mr-role-names-injective",
        1,
        "ModelRegistry",
        Served("<ns>-x/models and <ns>/x-models read alike as identifiers; their roles differ"),
        lambda env: [
            registry(env, "models", database=f"{env.table}_a"),
            registry(env, "x-models", ns=env.other, database=f"{env.table}_b"),
        ],
        stores=("pg",),
        two=True,
        verify=role_names_differ,
        target="models",
    ),
    Case(
        "vi-same-alias-one-store",
        1,
        "VectorIndex",
        Stalled("CollectionConflict", "which belongs to VectorIndex"),
        lambda env: [index(env, "a", source=False)],
        stores=("vec",),
        act=first_ready_then(
            "VectorIndex", "a", lambda env: [index(env, "x", source=False, collection=env.collection("a"))]
        ),
        verify=still_ready("VectorIndex", "a"),
    ),
    # --- class 6: what no admission rule can say, said by the operator ------------------------------------
    Case(
        "fv-cron-range-backwards",
        6,
        "FeatureView",
        Stalled("InvalidSpec", "the cron range 17-9 runs backwards"),
        lambda env: [view(env, materialization={"schedule": "0 17-9 * * *"})],
        stores=("pg", "kv"),
    ),
    Case(
        "mr-cron-range-backwards",
        6,
        "ModelRegistry",
        Stalled("InvalidSpec", "the cron range 5-1 runs backwards"),
        lambda env: [
            *unreachable_graph(env),
            registry(env, lineageStoreRef={"name": "graph"}, lineageSync={"schedule": "0 0 * * 5-1"}),
        ],
        stores=("pg",),
    ),
    Case(
        "vi-cron-range-backwards",
        6,
        "VectorIndex",
        Stalled("InvalidSpec", "the cron range 30-10 runs backwards"),
        lambda env: [index(env, sync={"schedule": "30-10 * * * *"})],
        stores=("pg", "vec"),
        before=source_table,
    ),
    Case(
        "mr-schema-version-not-shipped",
        6,
        "ModelRegistry",
        Stalled("InvalidSpec", "spec.schemaVersion 999 does not exist"),
        lambda env: [registry(env, schemaVersion=999)],
        stores=("pg",),
    ),
    Case(
        "vi-replication-factor-above-peers",
        6,
        "VectorIndex",
        Stalled("InvalidSpec", "spec.replicationFactor is 3, but the Qdrant of DataStore vectors has 1 server"),
        lambda env: [index(env, source=False, replicationFactor=3)],
        stores=("vec",),
    ),
    Case(
        "vi-source-column-missing",
        6,
        "VectorIndex",
        Stalled("InvalidSpec", "spec.source.deletedColumn: column 'deleted' does not exist"),
        lambda env: [index(env)],
        stores=("pg", "vec"),
        before=lambda env: source_table(env, deleted=False),
    ),
    Case(
        "vi-source-table-missing",
        6,
        "VectorIndex",
        Stalled("InvalidSpec", "spec.source.table: table public.h_"),
        lambda env: [index(env)],
        stores=("pg", "vec"),
    ),
    Case(
        "vi-source-id-is-text",
        6,
        "VectorIndex",
        Stalled("InvalidSpec", "spec.source.idColumn: column 'id' is text, expected an integer or uuid"),
        lambda env: [index(env)],
        stores=("pg", "vec"),
        before=lambda env: source_table(env, id_type="text"),
    ),
    Case(
        "fv-online-store-is-postgres",
        6,
        "FeatureView",
        Stalled("WrongEngine", "spec.online.storeRef: DataStore 'pg' is a postgres store; a redis store is required"),
        lambda env: [view(env, online={"storeRef": {"name": "pg"}})],
        stores=("pg", "kv"),
    ),
    Case(
        "vi-store-is-redis",
        6,
        "VectorIndex",
        Stalled("WrongEngine", "spec.storeRef: DataStore 'kv' is a redis store; a qdrant store is required"),
        lambda env: [index(env, source=False, storeRef={"name": "kv"})],
        stores=("kv",),
    ),
    Case(
        "mr-lineage-store-is-redis",
        6,
        "ModelRegistry",
        Stalled("WrongEngine", "spec.lineageStoreRef: DataStore 'kv' is a redis store; a neo4j store is required"),
        lambda env: [registry(env, lineageStoreRef={"name": "kv"})],
        stores=("pg", "kv"),
    ),
    Case(
        "fv-offline-store-missing",
        6,
        "FeatureView",
        Waiting("StoreNotFound", "spec.offline.storeRef: DataStore 'nowhere' not found"),
        lambda env: [view(env, offline={"storeRef": {"name": "nowhere"}})],
        stores=("kv",),
    ),
    Case(
        "vi-source-store-missing",
        6,
        "VectorIndex",
        Waiting("StoreNotFound", "spec.source.storeRef: DataStore 'pg' not found"),
        lambda env: [index(env)],
        stores=("vec",),
    ),
    Case(
        "mr-metadata-store-missing",
        6,
        "ModelRegistry",
        Waiting("StoreNotFound", "spec.metadataStoreRef: DataStore 'pg' not found"),
        lambda env: [registry(env)],
    ),
    Case(
        "ds-credentials-secret-missing",
        6,
        "DataStore",
        Waiting("SecretNotFound", "Secret 'nope' not found"),
        lambda env: [external(env.ns, "x", "redis", f"127.0.0.1:{env.kv.primary.port}", "nope")],
    ),
    Case(
        "ds-credentials-secret-without-password",
        6,
        "DataStore",
        Waiting("SecretNotFound", "has no key 'password'"),
        lambda env: [
            secret(env.ns, "creds", {"username": "default", "pass": env.kv.password}),
            external(env.ns, "x", "redis", f"127.0.0.1:{env.kv.primary.port}", "creds"),
        ],
    ),
    Case(
        "ds-redis-database-out-of-range",
        6,
        "DataStore",
        Stalled("InvalidSpec", "spec.external.database"),
        lambda env: kv_store(env, env.ns, "x", database="99999"),
    ),
    Case(
        "ds-postgres-database-missing",
        6,
        "DataStore",
        Waiting("Unreachable", "does not exist"),
        lambda env: pg_store(env, env.ns, "x", database=f"{env.table}_nowhere"),
    ),
    Case(
        "ds-endpoint-is-another-engine",
        6,
        "DataStore",
        Waiting("Unreachable", "127.0.0.1"),
        # A postgres store whose endpoint is a Redis server: the probe fails, the operator does not hang.
        lambda env: [
            secret(env.ns, "creds", {"username": "postgres", "password": env.pg.password}),
            external(env.ns, "x", "postgres", f"127.0.0.1:{env.kv.primary.port}", "creds"),
        ],
    ),
    Case(
        "fv-feature-type-change",
        6,
        "FeatureView",
        Stalled("ImmutableFieldChange", "clicks"),
        lambda env: [view(env)],
        stores=("pg", "kv"),
        act=fv_type_change,
    ),
    Case(
        "vi-size-change-without-source",
        6,
        "VectorIndex",
        Stalled("ImmutableFieldChange", f"vectors.size: {DIM} -> {DIM + 1}"),
        lambda env: [index(env, source=False)],
        stores=("vec",),
        act=vi_resize_without_source,
    ),
    Case(
        "mr-schema-downgrade",
        6,
        "ModelRegistry",
        Stalled("InvalidSpec", "migrations never downgrade"),
        lambda env: [registry(env)],
        stores=("pg",),
        act=mr_downgrade,
    ),
    # --- class 5: status never says fresh while data is missing -------------------------------------------
    Case(
        "fv-online-marker-evicted",
        5,
        "FeatureView",
        Repaired("OnlineDataLost", "the online store has no materialization marker"),
        lambda env: [scheduled_view(env)],
        stores=("pg", "kv"),
        act=evict_marker,
    ),
    Case(
        "fv-online-store-switched",
        5,
        "FeatureView",
        Repaired("OnlineDataLost", "storeRef points at another Redis"),
        lambda env: [scheduled_view(env)],
        stores=("pg", "kv"),
        act=switch_online_store,
    ),
    Case(
        "fv-offline-table-switched",
        5,
        "FeatureView",
        Repaired("OfflineTableChanged", "the watermark was taken from table public.h_"),
        lambda env: [scheduled_view(env)],
        stores=("pg", "kv"),
        act=switch_offline_table,
    ),
    Case(
        "fv-offline-table-recreated",
        5,
        "FeatureView",
        Repaired("OfflineTableChanged", "was dropped and created again since the last materialization"),
        lambda env: [scheduled_view(env)],
        stores=("pg", "kv"),
        act=recreate_offline_table,
    ),
    Case(
        "vi-collection-deleted-by-hand",
        5,
        "VectorIndex",
        Repaired("WatermarkReset", "the next sync copies every row"),
        lambda env: [index(env)],
        stores=("pg", "vec"),
        before=source_table,
        act=vi_ready_then(delete_active_collection),
    ),
    Case(
        "vi-alias-deleted-by-hand",
        5,
        "VectorIndex",
        Repaired("DriftRepaired", "changed by hand, restored: alias"),
        lambda env: [index(env, source=False)],
        stores=("vec",),
        act=vi_ready_then(delete_alias),
    ),
    Case(
        "vi-hnsw-changed-by-hand",
        5,
        "VectorIndex",
        Repaired("DriftRepaired", "hnsw.m: 8 -> 16"),
        lambda env: [index(env, source=False)],
        stores=("vec",),
        act=vi_ready_then(drift_hnsw),
    ),
]
CASES = ADMISSION + OPERATOR


def test_the_table_covers_the_kinds_and_classes() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.kind for c in CASES} == set(PLURAL)
    for cls in (1, 2, 5, 6):
        kinds = {c.kind for c in CASES if c.cls == cls}
        assert len([c for c in CASES if c.cls == cls]) >= 3, cls
        assert kinds, cls
    counts = collections.Counter((c.cls, c.kind) for c in CASES)
    print("cases per (class, kind):", dict(sorted(counts.items())))


# --- the platform: bystanders, the operator's identity, the launch ----------------------------------------


def namespace_name(case: str, suffix: str = "") -> str:
    digest = hashlib.sha256(f"{RUN}/{case}/{suffix}".encode()).hexdigest()[:6]
    return f"h-{case[:44]}{suffix}-{digest}"


def make_env(
    case: Case | str,
    cp: ControlPlane,
    pg: PostgresCluster,
    kv: RedisCluster,
    backer: Backer,
    qdrant: qdrant_target.Server | None,
    tmp: Path,
) -> Env:
    cid = case if isinstance(case, str) else case.id
    tag = hashlib.sha256(f"{RUN}/{cid}".encode()).hexdigest()[:10]
    if cid == "mr-role-names-injective":
        # team-x/models and team/x-models: the names read alike once made an identifier.
        ns, other = f"h-{tag}-x", f"h-{tag}"
    else:
        ns, other = namespace_name(cid), namespace_name(cid, "-b")
    return Env(cid, cp, ns, other, tag, pg, kv, backer, qdrant, tmp / cid)


@dataclass
class Platform:
    cp: ControlPlane
    operator: OperatorProcess
    pid: int
    bystanders: Env
    envs: dict[str, Env]
    rejected: dict[str, str]  # case id -> what the API server answered to its dry run
    failures: dict[str, str]  # case id -> why its launch failed

    def check_bystanders_and_operator(self) -> None:
        """Every bystander still Ready; the operator the same process, running and healthy."""
        assert self.operator.proc.running(), "the operator process exited"
        assert self.operator.proc.pid == self.pid, "the operator was restarted"
        try:
            self.operator.healthz()
        except urllib.error.HTTPError as exc:
            pytest.fail(f"the operator's /healthz answered {exc.code}")
        items = get_json(self.cp, "datastores,featureviews,modelregistries,vectorindexes", "-n", self.bystanders.ns)[
            "items"
        ]
        seen = {f"{i['kind']}/{i['metadata']['name']}": condition(i, "Ready") for i in items}
        assert len(seen) == len(BYSTANDERS), seen
        not_ready = {k: f"{c.get('reason')}: {c.get('message')}" for k, c in seen.items() if c.get("status") != "True"}
        assert not not_ready, f"bystanders no longer Ready: {not_ready}"


BYSTANDERS: tuple[str, ...] = (
    "DataStore/pg",
    "DataStore/kv",
    f"DataStore/{qdrant_target.STORE}",
    "FeatureView/fv",
    "ModelRegistry/mr",
    "VectorIndex/vi",
)


@pytest.fixture(scope="module")
def qdrant_server() -> qdrant_target.Server | None:
    return qdrant_target.server_or_fail()


@pytest.fixture(scope="module")
def platform(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    postgres_cluster: PostgresCluster,
    redis_cluster: RedisCluster,
    qdrant_server: qdrant_target.Server | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    cp, tmp = control_plane, tmp_path_factory.mktemp("hostile")
    started = time.monotonic()

    def env_of(case: Case | str) -> Env:
        return make_env(case, cp, postgres_cluster, redis_cluster, backer, qdrant_server, tmp)

    by = env_of("bystanders")
    envs = {case.id: env_of(case) for case in CASES}
    namespaces = [by.ns] + [e.ns for e in envs.values()]
    namespaces += [e.other for c, e in zip(CASES, envs.values(), strict=True) if c.two]
    out = apply(cp, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in namespaces])
    assert out.returncode == 0, out.stderr
    failures: dict[str, str] = {}
    try:
        # The bystanders, and every case's stores, all at once; then everything waits for them together.
        source_table(by)
        by_objects = [*pg_store(by, by.ns), *kv_store(by, by.ns), *qdrant_target.store_objects(by.ns, qdrant_server)]
        stores: list[dict[str, Any]] = list(by_objects)
        for case in OPERATOR:
            env = envs[case.id]
            for ns in (env.ns, env.other) if case.two else (env.ns,):
                for which in case.stores:
                    stores += store_objects(env, ns, which)
        out = apply(cp, stores)
        assert out.returncode == 0, out.stderr
        # Admission: the originals of the update cases for real, then every case in one server-side dry run.
        originals = [o for case in ADMISSION if case.existing for o in case.existing(envs[case.id])]
        out = apply(cp, originals)
        assert out.returncode == 0, out.stderr
        rejected = dry_run(cp, [(case, case.subject(envs[case.id])) for case in ADMISSION])

        wanted = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in stores if o["kind"] == "DataStore"]
        wait(
            f"{len(wanted)} DataStores Ready",
            lambda: not_ready_stores(cp, wanted) == [],
            lambda: f"not Ready: {not_ready_stores(cp, wanted)}",
            180,
        )
        print(f"stores of {len(OPERATOR)} cases Ready after {time.monotonic() - started:.1f}s")
        cp.apply(
            [
                view(by, "fv", offline={"storeRef": {"name": "pg"}, "table": f"{by.table}_fv"}),
                registry(by, "mr"),
                index(by, "vi"),
            ],
            field_manager=FIELD_MANAGER,
        )
        for case in OPERATOR:
            env = envs[case.id]
            try:
                if case.before is not None:
                    case.before(env)
                out = apply(cp, case.subject(env))
                assert out.returncode == 0, out.stderr
            except BaseException as exc:  # reported by the case's own test
                failures[case.id] = f"{type(exc).__name__}: {exc}"
        print(f"{len(OPERATOR)} operator cases launched after {time.monotonic() - started:.1f}s")
        for ref in BYSTANDERS:
            kind, name = ref.split("/")
            wait_ready(by, kind, name)
        print(f"bystanders Ready after {time.monotonic() - started:.1f}s")
        yield Platform(cp, operator, operator.proc.pid, by, envs, rejected, failures)
    finally:
        audit(cp, set(namespaces))
        if qdrant_server is not None:
            for env in [by, *envs.values()]:
                if env.space is not None:
                    env.space.cleanup()
        cp.kubectl("delete", "namespace", *namespaces, "--wait=false", check=False)


def audit(cp: ControlPlane, namespaces: set[str]) -> None:
    """``secretscan.audit_namespace`` for all the suite's namespaces in a few requests: their Secrets'
    passwords tracked, then their events and the mlinfra objects' statuses checked for them."""

    def items(kind: str) -> list[dict[str, Any]]:
        out = cp.kubectl("get", kind, "-A", "-o", "json", check=False)
        found = json.loads(out.stdout)["items"] if out.returncode == 0 else []
        return [i for i in found if i["metadata"].get("namespace") in namespaces]

    for item in items("secrets"):
        data = item.get("data") or {}
        secretscan.track_secret_data(
            {k: base64.b64decode(v).decode("utf-8", errors="replace") for k, v in data.items()}
        )
    secretscan.check_objects("events of the hostile-input cases", items("events"), ".")
    for kind in ("datastores", "featureviews", "modelregistries", "vectorindexes"):
        secretscan.check_objects(f"{kind} of the hostile-input cases", items(kind), "status")


def not_ready_stores(cp: ControlPlane, wanted: list[tuple[str, str]]) -> list[str]:
    items = get_json(cp, "datastores", "-A")["items"]
    ready = {
        (i["metadata"]["namespace"], i["metadata"]["name"])
        for i in items
        if condition(i, "Ready").get("status") == "True"
    }
    return [f"{ns}/{name}" for ns, name in wanted if (ns, name) not in ready]


ERROR_START = re.compile(r"(?m)^Error from server")
ERROR_NAME = re.compile(r'(\w+)\.mlinfra\.io "([^"]+)"')


def dry_run(cp: ControlPlane, cases: list[tuple[Case, list[dict[str, Any]]]]) -> dict[str, str]:
    """One server-side dry run of every admission case's object; case id -> the API server's answer (its
    error, or "accepted" when it took the object). Errors name the kind and the object, which are unique."""
    owner = {(o["kind"], o["metadata"]["name"]): case.id for case, objects in cases for o in objects}
    assert len(owner) == sum(len(objects) for _, objects in cases), "admission objects must have distinct names"
    out = apply(cp, [o for _, objects in cases for o in objects], "--dry-run=server")
    answers = {cid: "accepted (no error from the API server)" for cid in owner.values()}
    for chunk in ERROR_START.split(out.stderr)[1:]:
        found = ERROR_NAME.search(chunk)
        assert found, chunk
        answers[owner[(found.group(1), found.group(2))]] = chunk.strip()
    return answers


# --- the tests --------------------------------------------------------------------------------------------


def contains(actual: Any, expected: Any) -> bool:
    """Whether ``actual`` has everything ``expected`` has (the API server adds defaults)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(contains(actual.get(k), v) for k, v in expected.items())
    return bool(actual == expected)


def await_outcome(env: Env, case: Case) -> None:
    ns = env.ns if case.target_ns == "ns" else env.other
    kind, name = case.kind, case.target
    expect = case.expect

    def show() -> str:
        seen = [f"{e['type']} {e['reason']}: {e.get('message', '')}" for e in events(env, name, ns)]
        return f"conditions of {kind} {ns}/{name}:\n{conditions_text(env, kind, name, ns)}\nevents: {seen}"

    if isinstance(expect, Stalled):

        def stalled() -> bool:
            c = condition(status_of(env, kind, name, ns), "Stalled")
            return c.get("status") == "True" and c.get("reason") == expect.reason

        wait(f"{kind} {name} Stalled ({expect.reason})", stalled, show)
        st = status_of(env, kind, name, ns)
        assert expect.says in condition(st, "Stalled")["message"], show()
        ready = condition(st, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", expect.reason), show()
        wait(
            f"a Warning event {expect.reason}",
            lambda: any(
                e["type"] == "Warning" and e["reason"] == expect.reason and expect.says in e.get("message", "")
                for e in events(env, name, ns)
            ),
            show,
            30,
        )
    elif isinstance(expect, Waiting):

        def waiting() -> bool:
            return condition(status_of(env, kind, name, ns), "Ready").get("reason") == expect.reason

        wait(f"{kind} {name} Ready=False ({expect.reason})", waiting, show)
        st = status_of(env, kind, name, ns)
        ready = condition(st, "Ready")
        assert ready["status"] == "False" and expect.says in ready["message"], show()
        assert condition(st, "Stalled").get("status") != "True", show()
    elif isinstance(expect, Repaired):
        wait(
            f"an event {expect.event} saying {expect.says!r}",
            lambda: any(
                e["reason"] == expect.event and expect.says in e.get("message", "") for e in events(env, name, ns)
            ),
            show,
        )
    else:
        assert isinstance(expect, Served)
        wait_ready(env, kind, name, ns)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in ADMISSION])
def test_rejected_at_admission(platform: Platform, case: Case) -> None:
    answer = platform.rejected[case.id]
    assert isinstance(case.expect, Rejected)
    assert case.expect.message in answer, answer
    env = platform.envs[case.id]
    for o in case.subject(env):
        stored = env.cp.kubectl(
            "get", PLURAL[o["kind"]], o["metadata"]["name"], "-n", env.ns, "-o", "json", check=False
        )
        if case.existing is None:
            assert stored.returncode != 0, f"{o['kind']} {o['metadata']['name']} was stored"
        else:  # the original is unchanged
            original = case.existing(env)[0]
            assert contains(json.loads(stored.stdout)["spec"], original["spec"]), stored.stdout


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in OPERATOR])
def test_hostile_object(platform: Platform, case: Case) -> None:
    env = platform.envs[case.id]
    assert case.id not in platform.failures, platform.failures.get(case.id)
    started = time.monotonic()
    if case.act is not None:
        case.act(env)
    await_outcome(env, case)
    if case.verify is not None:
        case.verify(env)
    print(f"{case.id}: {type(case.expect).__name__} after {time.monotonic() - started:.1f}s")
    platform.check_bystanders_and_operator()


def test_the_operator_survived_everything(platform: Platform) -> None:
    """Last: the same operator process, healthy, and the bystanders Ready after all cases."""
    platform.check_bystanders_and_operator()
    # A handler that met something it does not turn into a Problem: that handler crashed, and Kopf retries it
    # blindly, with nothing in the object's status. The session's operator serves other test files too: only
    # this file's objects count (others' namespaces are deleted under their objects while this runs).
    ours = {platform.bystanders.ns} | {e.ns for e in platform.envs.values()} | {e.other for e in platform.envs.values()}
    crashed: collections.Counter[str] = collections.Counter()
    for line in platform.operator.proc.log_path.read_text(errors="replace").splitlines():
        if "failed with an exception" in line:
            try:
                record = json.loads(line)
            except ValueError:
                crashed[line[:500]] += 1
                continue
            o = record.get("object") or {}
            if o.get("namespace") not in ours:
                continue
            crashed[f"{o.get('kind')} {o.get('namespace')}/{o.get('name')}: {record.get('message', '')[:500]}"] += 1
    assert not crashed, "\n".join(f"{n} times: {what}" for what, n in crashed.most_common())
