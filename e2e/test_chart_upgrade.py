"""The upgrade path of docs/upgrade.md, step by step, with live resources: the released chart 0.1.0
(``e2e/fixtures/charts``) installed, managed Redis and PostgreSQL stores and a FeatureView over them Ready
with data in the real servers; then the new CRDs applied server-side, ``helm upgrade`` to the working
tree's chart, the operator restarted — and nothing lost, re-created, re-owned or re-generated.

The test has a control plane of its own (about 10 s to start): an upgrade starts from a cluster where
0.1.0 installed its CRDs, which the session cluster cannot guarantee (the ``operator_account`` fixture
installs the current chart, and Helm never replaces existing CRDs), and the session ``operator`` is
cluster-wide: it would reconcile this test's objects too, against servers of the session ``backer``.
Here the only operator is the release's, run as its ServiceAccount with its ``--namespace`` arguments, and
a backer of its own serves the managed stores.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import parser

from e2e_support import condition, get_json, run_job_command, wait_for
from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import procs
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.engines import connection, endpoints
from mlinfra.engines.connection import ConnectionInfo
from mlinfra.features import jobs, layout

PREVIOUS_CHART = Path(__file__).parent / "fixtures" / "charts" / "mlinfra-operator-0.1.0.tgz"
RELEASE, NAMESPACE = "mlinfra-operator", "mlinfra-system"  # as in docs/upgrade.md
TEAM = "ml-team"  # the namespace of the resources
KINDS = ("datastore", "featureview")
CHILD_KINDS = "statefulsets,services,configmaps,secrets,persistentvolumeclaims,cronjobs,jobs,poddisruptionbudgets"
VIEW = "clicks"
# What this release adds to live stores on upgrade (docs/upgrade.md): the primary record of each redis and
# postgres store, the read-only Service of a replicated one and its keys in the connection Secret, and
# MLINFRA_PRIMARY and shareProcessNamespace in every redis and postgres store's pod template (and redis's
# preStop hook): their pods roll once.
ADDED = {"ConfigMap/online-primary", "ConfigMap/offline-primary", "Service/online-ro"}
REWRITTEN = {"StatefulSet/online", "StatefulSet/offline", "Secret/online-conn"}
NEW_STATUS = {
    f"DataStore/{name}": [f".currentPrimary: None -> '{name}-0'", ".primaryEpoch: None -> 0"]
    for name in ("offline", "online")
}


# --- the resources -------------------------------------------------------------------------------------------


def resources(ns: str) -> list[dict[str, Any]]:
    def store(name: str, engine: str, replicas: int) -> dict[str, Any]:
        return {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "DataStore",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"engine": engine, "managed": {"replicas": replicas, "storage": {"size": "1Gi"}}},
        }

    return [
        store("offline", "postgres", 1),
        store("online", "redis", 2),
        {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "FeatureView",
            "metadata": {"name": VIEW, "namespace": ns},
            "spec": {
                "entities": [{"name": "user_id", "type": "int64"}],
                "features": [{"name": "clicks", "type": "int64"}, {"name": "ctr", "type": "float64"}],
                "offline": {"storeRef": {"name": "offline"}, "table": VIEW},
                "online": {"storeRef": {"name": "online"}, "ttl": "24h"},
                # Never due while the test runs (it materializes on request): a scheduled Job would change
                # the CronJob and add a Job between the two snapshots the test compares.
                "materialization": {"schedule": "0 0 1 1 *"},
                "freshness": {"maxLag": "1h"},
            },
        },
    ]


def vector_index_with_a_field_new_in_0_2_0(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": "docs", "namespace": ns},
        "spec": {
            "storeRef": {"name": "vectors"},
            "collection": "docs",
            "vectors": {"size": 4, "distance": "Cosine"},
            "previousCollectionRetention": "72h",
        },
    }


def dry_run(cp: ControlPlane, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj), check=False)


def ready(cp: ControlPlane, ns: str, kind: str, name: str) -> bool:
    return condition(get_json(cp, kind, name, "-n", ns), "Ready").get("status") == "True"


# --- the data in the real servers ----------------------------------------------------------------------------


def conn(cp: ControlPlane, ns: str, store: str, backer: Backer) -> ConnectionInfo:
    """The store's connection Secret, as users get it, pointed at the backer's local server."""
    info = ConnectionInfo.from_secret_base64(get_json(cp, "secret", f"{store}-conn", "-n", ns)["data"])
    return endpoints.EndpointMap(backer.map_path).resolve(info, ns, store)


def write_data(cp: ControlPlane, ns: str, backer: Backer) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with connection.postgres(conn(cp, ns, "offline", backer)) as pg:
        for uid, clicks, age in ((1, 10, 30), (1, 11, 20), (2, 5, 10)):
            pg.execute(
                f"insert into public.{VIEW} (user_id, clicks, ctr, event_timestamp) values (%s, %s, %s, %s)",
                (uid, clicks, clicks / 100, now - datetime.timedelta(minutes=age)),
            )
        pg.execute("create table public.upgrade_canary (note text primary key)")
        pg.execute("insert into public.upgrade_canary values ('written before the upgrade')")
    kv = connection.redis_client(conn(cp, ns, "online", backer))
    try:
        kv.set("upgrade:canary", "written before the upgrade")
    finally:
        kv.close()


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_data(cp: ControlPlane, ns: str, backer: Backer) -> dict[str, Any]:
    with connection.postgres(conn(cp, ns, "offline", backer)) as pg:
        offline = pg.execute(
            f"select user_id, clicks, ctr, event_timestamp, created_at from public.{VIEW} "
            "order by user_id, event_timestamp"
        ).fetchall()
        canary = pg.execute("select note from public.upgrade_canary").fetchall()
        runs = pg.execute("select count(*) from mlinfra.sync_runs").fetchone()
    kv = connection.redis_client(conn(cp, ns, "online", backer))
    try:
        online = {
            text(key): {text(f): text(v) for f, v in kv.hgetall(key).items()}
            for key in sorted(kv.scan_iter(match=layout.key_pattern(ns, VIEW)))
        }
        kv_canary = text(kv.get("upgrade:canary") or b"")
    finally:
        kv.close()
    return {
        "offline": [tuple(map(str, row)) for row in offline],
        "offline canary": canary,
        "sync runs": runs,
        "online": online,
        "online canary": kv_canary,
    }


def materialize(cp: ControlPlane, ns: str, backer: Backer, tmp: Path) -> None:
    """ "Sync now": the annotation makes the Job; its command runs here (kwok's Pods run nothing)."""
    cp.kubectl("annotate", "featureview", VIEW, "-n", ns, f"{jobs.SYNC_REQUESTED_ANNOTATION}=before-upgrade")
    job = jobs.ondemand_job_name(VIEW, "before-upgrade")
    wait_for("the on-demand Job", lambda: cp.kubectl("get", "job", job, "-n", ns, check=False).returncode == 0, 60)
    # As the Job would run it: its args, its env, the Secrets its pod mounts (the view's own credentials).
    run_job_command(cp, ns, get_json(cp, "job", job, "-n", ns)["spec"]["template"]["spec"], backer, tmp)
    wait_for(
        "the run in status",
        lambda: (
            get_json(cp, "featureview", VIEW, "-n", ns)["status"].get("lastMaterialization", {}).get("outcome")
            == "Succeeded"
        ),
        60,
    )


# --- what must survive the upgrade ---------------------------------------------------------------------------


def digest(data: dict[str, Any] | None) -> str:
    return hashlib.sha256(json.dumps(data or {}, sort_keys=True).encode()).hexdigest()


def snapshot(cp: ControlPlane, ns: str) -> dict[str, Any]:
    """Identity, version, owners and data of every object in the namespace; the CRs' status and Kopf state."""
    objects: dict[str, Any] = {}
    for obj in get_json(cp, CHILD_KINDS, "-n", ns)["items"]:
        meta = obj["metadata"]
        objects[f"{obj['kind']}/{meta['name']}"] = {
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "owners": sorted(
                (r["kind"], r["name"], r["uid"], bool(r.get("controller"))) for r in meta.get("ownerReferences") or []
            ),
            "data": digest(obj.get("data")),
            "volumeName": (obj.get("spec") or {}).get("volumeName"),
        }
    crs: dict[str, Any] = {}
    for kind in KINDS:
        for obj in get_json(cp, kind, "-n", ns)["items"]:
            meta = obj["metadata"]
            crs[f"{obj['kind']}/{meta['name']}"] = {
                "uid": meta["uid"],
                "generation": meta["generation"],
                "finalizers": meta.get("finalizers"),
                "annotations": meta.get("annotations"),  # Kopf's last-handled configuration among them
                "status": obj.get("status"),
            }
    return {"objects": objects, "crs": crs}


def changes(old: Any, new: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as ``path: old -> new`` lines (lists of conditions keyed by type)."""
    if isinstance(old, list) and isinstance(new, list) and all(isinstance(x, dict) and "type" in x for x in old + new):
        old, new = {x["type"]: x for x in old}, {x["type"]: x for x in new}
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line
            for key in sorted(set(old) | set(new), key=str)
            for line in changes(old.get(key), new.get(key), f"{path}.{key}")
        ]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str, int]]:
    return {
        c["type"]: (c["status"], c["reason"], c["lastTransitionTime"], c["observedGeneration"])
        for c in status.get("conditions") or []
    }


def kopf_outcomes(log_path: Path, ns: str) -> dict[str, list[str]]:
    """``{kind/name: ["Resuming", ...]}`` from Kopf's "<Cause> is processed" lines in a JSON log."""
    outcomes: dict[str, list[str]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            match = re.match(r"(\w+) is processed", str(record.get("message", "")))
            ref = record.get("object") or {}
            if match and ref.get("namespace") == ns:
                outcomes.setdefault(f"{ref['kind']}/{ref['name']}", []).append(match.group(1))
    return outcomes


def watched_namespaces(cp: ControlPlane) -> tuple[str, ...]:
    """The ``--namespace`` arguments of the release's Deployment: the local process runs with the same."""
    deployment = get_json(cp, "deployment", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    args = deployment[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    return tuple(args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--namespace")


def operator_pods(cp: ControlPlane) -> list[tuple[str, str]]:
    """(uid, helm.sh/chart label) of the release's operator pods on the fake nodes."""
    pods = get_json(cp, "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    return [(p["metadata"]["uid"], p["metadata"]["labels"]["helm.sh/chart"]) for p in pods]


def start_operator(
    cp: ControlPlane, stack: procs.ProcStack, account: str, workdir: Path, backer: Backer
) -> op_mod.OperatorProcess:
    """The operator as the release's Deployment would run it: its ServiceAccount (a fresh token, as a new
    pod gets), its ``--namespace`` arguments."""
    workdir.mkdir()
    kubeconfig = op_mod.service_account_kubeconfig(cp, NAMESPACE, account, workdir / "kubeconfig")
    return op_mod.start_operator(stack, kubeconfig, workdir, backer.map_path, namespaces=watched_namespaces(cp))


def observed_up(op: op_mod.OperatorProcess, ns: str) -> bool:
    """This process (its gauges start empty) has itself observed both stores up and the view's freshness."""
    samples = {
        (s.name, s.labels.get("namespace"), s.labels.get("name")): s.value
        for family in parser.text_string_to_metric_families(op.metrics())
        for s in family.samples
    }
    return (
        samples.get(("mlinfra_datastore_up", ns, "offline")) == 1.0
        and samples.get(("mlinfra_datastore_up", ns, "online")) == 1.0
        and ("mlinfra_featureview_freshness_lag_seconds", ns, VIEW) in samples
    )


# --- the test ------------------------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ControlPlane]:
    """A fresh control plane with the namespace of the resources."""
    with ControlPlane(tmp_path / "kube") as cp:
        cp.kubectl("create", "namespace", TEAM)
        wait_for(
            "the default ServiceAccount",
            lambda: cp.kubectl("get", "sa", "default", "-n", TEAM, check=False).returncode == 0,
            60,
        )
        yield cp


def test_helm_upgrade_from_the_previous_chart_keeps_live_resources(cluster: ControlPlane, tmp_path: Path) -> None:
    cp, ns = cluster, TEAM
    values = tmp_path / "values.yaml"  # the user's values file, passed to install and upgrade alike
    values.write_text(yaml.safe_dump({"watchNamespaces": [ns]}))
    with contextlib.ExitStack() as cleanup:
        # 0.1.0 as released, into a cluster without the CRDs: Helm installs 0.1.0's.
        assert cp.kubectl("get", "crd", "datastores.mlinfra.io", check=False).returncode != 0
        account = op_mod.install_chart(cp, RELEASE, NAMESPACE, ("--values", str(values)), chart=PREVIOUS_CHART)
        assert watched_namespaces(cp) == (ns,)
        old_pods = operator_pods(cp)
        assert [chart for _, chart in old_pods] == ["mlinfra-operator-0.1.0"]
        refused = dry_run(cp, vector_index_with_a_field_new_in_0_2_0(ns))
        assert refused.returncode != 0 and "previousCollectionRetention" in refused.stderr, refused

        backer = Backer(cp, tmp_path / "backed", tmp_path / "endpoint-map.json").start()
        cleanup.callback(backer.stop)
        before_stack = cleanup.enter_context(procs.ProcStack())
        start_operator(cp, before_stack, account, tmp_path / "operator-0.1.0", backer)

        # Live resources, Ready, with data in the real servers.
        cp.apply(resources(ns))
        for kind, name in (("datastore", "offline"), ("datastore", "online"), ("featureview", VIEW)):
            wait_for(f"{kind} {name} Ready", functools.partial(ready, cp, ns, kind, name), 240)
        write_data(cp, ns, backer)
        materialize(cp, ns, backer, tmp_path / "sync")
        wait_for(
            "the view fresh",
            lambda: condition(get_json(cp, "featureview", VIEW, "-n", ns), "FreshnessSLOMet").get("status") == "True",
            60,
        )
        created = kopf_outcomes(tmp_path / "operator-0.1.0" / "operator.log", ns)
        assert {key: outcomes[0] for key, outcomes in created.items()} == {
            key: "Creation" for key in snapshot(cp, ns)["crs"]
        }  # the "sync now" annotation was an update
        servers = {key: [p.pid for p in b.stack.procs] for key, b in backer.backed.items()}
        before, data_before = snapshot(cp, ns), read_data(cp, ns, backer)
        assert data_before["online"] and data_before["online canary"] == "written before the upgrade"
        for owner, child in (
            ("DataStore/offline", "StatefulSet/offline"),
            ("DataStore/online", "StatefulSet/online"),
            (f"FeatureView/{VIEW}", f"CronJob/{jobs.cronjob_name(VIEW)}"),
        ):
            kind, name = owner.split("/")
            assert before["objects"][child]["owners"] == [(kind, name, before["crs"][owner]["uid"], True)], child
        assert sum(key.startswith("PersistentVolumeClaim/") for key in before["objects"]) == 3

        # The upgrade, as docs/upgrade.md says: CRDs server-side, helm upgrade, the operator restarts.
        started = time.monotonic()
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(op_mod.chart_dir() / "crds"))
        crds_done = time.monotonic()
        op_mod.helm(
            cp,
            "upgrade",
            RELEASE,
            str(op_mod.chart_dir()),
            "--namespace",
            NAMESPACE,
            "--values",
            str(values),
            "--wait",
            "--timeout",
            "3m",
        )
        helm_done = time.monotonic()
        before_stack.close()  # Recreate: the old pod stops, then the new one starts
        after_stack = cleanup.enter_context(procs.ProcStack())
        op = start_operator(cp, after_stack, account, tmp_path / "operator-0.2.0", backer)
        log_path = op.proc.log_path
        wait_for("every object resumed", lambda: set(kopf_outcomes(log_path, ns)) == set(before["crs"]), 120)
        wait_for("the stores and the view observed by the new process", lambda: observed_up(op, ns), 120)
        for key in before["crs"]:
            kind, name = key.split("/")
            assert ready(cp, ns, kind.lower(), name), key
        finished = time.monotonic()
        print(
            f"upgrade 0.1.0 -> working tree: CRDs {crds_done - started:.1f}s, helm upgrade "
            f"{helm_done - crds_done:.1f}s, operator restart until resumed and observed {finished - helm_done:.1f}s"
            f"; {finished - started:.1f}s in all"
        )

        # The release: two revisions, the new CRDs served.
        history = json.loads(op_mod.helm(cp, "history", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
        chart_version = yaml.safe_load((op_mod.chart_dir() / "Chart.yaml").read_text())["version"]
        assert [(h["revision"], h["chart"], h["status"]) for h in history] == [
            (1, "mlinfra-operator-0.1.0", "superseded"),
            (2, f"mlinfra-operator-{chart_version}", "deployed"),
        ]
        assert dry_run(cp, vector_index_with_a_field_new_in_0_2_0(ns)).returncode == 0
        # The pod template changed, so in a cluster the Deployment replaced the operator pod (Recreate).
        new_pods = operator_pods(cp)
        assert [chart for _, chart in new_pods] == [f"mlinfra-operator-{chart_version}"]
        assert new_pods[0][0] != old_pods[0][0]
        assert watched_namespaces(cp) == (ns,)  # the values carried over

        # Kopf resumed every object: no handler ran as a creation.
        assert kopf_outcomes(log_path, ns) == {key: ["Resuming"] for key in before["crs"]}

        # Nothing re-created, re-owned or re-generated; nothing rewritten but what this release adds
        # (docs/upgrade.md); the data untouched.
        after = snapshot(cp, ns)
        assert set(after["objects"]) == set(before["objects"]) | ADDED
        for key, was in before["objects"].items():
            now = after["objects"][key]
            if key in REWRITTEN:
                assert {k: now[k] for k in ("uid", "owners")} == {k: was[k] for k in ("uid", "owners")}, key
            else:
                assert now == was, key
        pod_spec = get_json(cp, "statefulset", "online", "-n", ns)["spec"]["template"]["spec"]
        assert "MLINFRA_PRIMARY" in {e["name"] for e in pod_spec["containers"][0]["env"]}
        assert pod_spec["shareProcessNamespace"] is True  # the failover's fence kills a hung server in its pod
        conn = get_json(cp, "secret", "online-conn", "-n", ns)["data"]
        assert {"readOnlyHost", "readOnlyUri"} <= set(conn)
        for key, cr in before["crs"].items():
            new = after["crs"][key]
            assert {k: new[k] for k in ("uid", "generation", "finalizers", "annotations")} == {
                k: cr[k] for k in ("uid", "generation", "finalizers", "annotations")
            }, key
            assert conditions(new["status"]) == conditions(cr["status"]), key  # no flip, no new transition
        # Status exactly as it was (SchemaApplied says what the table is, "up to date", before and after), but
        # for the primary record the stores now show.
        assert {key: changes(cr["status"], after["crs"][key]["status"]) for key, cr in before["crs"].items()} == {
            key: NEW_STATUS.get(key, []) for key in before["crs"]
        }
        assert {key: [p.pid for p in b.stack.procs] for key, b in backer.backed.items()} == servers
        assert read_data(cp, ns, backer) == data_before
