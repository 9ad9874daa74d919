"""Sync Jobs in Pods: a FeatureView's on-demand Job and its CronJob run `mlinfra sync` from the operator
image on the real node, with the view's own least-privilege credentials mounted (never the stores' admin
connection Secrets), and the online store holds what they wrote."""

from __future__ import annotations

import json
from typing import Any

from real_support import condition, datastore, get, in_pod, ready, redis_cli, secret

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.realnode import RealNode
from mlinfra.features import jobs, layout, syncrole, syncuser


def view(ns: str, name: str, suspend: bool) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": "clicks", "type": "int64"}, {"name": "ctr", "type": "float64"}],
            "offline": {"storeRef": {"name": "offline"}, "table": "clicks"},
            "online": {"storeRef": {"name": "online"}, "ttl": "24h"},
            "materialization": {"schedule": "* * * * *", "batchSize": 2, "suspend": suspend},
            "freshness": {"maxLag": "10m"},
        },
    }


def job_done(cp: ControlPlane, ns: str, name: str) -> bool:
    conds = get(cp, ns, "job", name).get("status", {}).get("conditions", [])
    failed = [c for c in conds if c["type"] == "Failed" and c["status"] == "True"]
    assert not failed, f"Job {name} failed: {failed}"
    return any(c["type"] == "Complete" and c["status"] == "True" for c in conds)


def job_pods(cp: ControlPlane, ns: str, job: str) -> list[dict[str, Any]]:
    return list(json.loads(cp.kubectl("get", "pods", "-n", ns, "-l", f"job-name={job}", "-o", "json").stdout)["items"])


def test_featureview_sync_runs_as_jobs_in_pods(
    real_cp: ControlPlane, real_node: RealNode, real_operator: str, real_ns: str
) -> None:
    ns, name = real_ns, "clicks"
    real_cp.apply(
        [
            datastore(ns, "offline", "postgres", real_node.image("postgres"), 1),
            datastore(ns, "online", "redis", real_node.image("redis"), 1),
        ],
        field_manager="test",
    )
    for store in ("offline", "online"):
        procs.wait_until(f"DataStore {store} Ready", lambda s=store: ready(real_cp, ns, s), 240)  # type: ignore[misc]
    real_cp.apply([view(ns, name, suspend=True)], field_manager="test")
    procs.wait_until(
        "FeatureView Ready",
        lambda: condition(get(real_cp, ns, "featureview", name), "Ready").get("status") == "True",
        120,
    )

    pg = secret(real_cp, ns, "offline-conn")
    in_pod(
        real_cp,
        ns,
        "offline-0",
        "postgres",
        "PGPASSWORD",
        pg["password"],
        "psql",
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        pg["username"],
        "-d",
        pg["database"],
        "-c",
        "INSERT INTO public.clicks (user_id, clicks, ctr, event_timestamp) VALUES "
        "(1, 10, 0.1, now() - interval '30 minutes'), (1, 11, 0.11, now() - interval '20 minutes'), "
        "(2, 5, 0.05, now() - interval '10 minutes'), (3, 7, 0.07, now() - interval '5 minutes')",
    )

    # "Sync now": a one-off Job whose Pod runs the sync command from the operator image.
    real_cp.kubectl("annotate", "featureview", name, "-n", ns, f"{jobs.SYNC_REQUESTED_ANNOTATION}=now-1")
    job = jobs.ondemand_job_name(name, "now-1")
    procs.wait_until(
        "the on-demand Job", lambda: real_cp.kubectl("get", "job", job, "-n", ns, check=False).returncode == 0, 60
    )
    procs.wait_until("the on-demand Job complete", lambda: job_done(real_cp, ns, job), 180)
    [pod] = job_pods(real_cp, ns, job)
    assert pod["spec"]["nodeName"] == real_node.name and pod["status"]["phase"] == "Succeeded"
    # The pod logged in with the view's own credentials, never the stores' admin ones (features.syncrole,
    # features.syncuser): its Secrets name the view's role and user.
    mounted = {v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
    assert mounted == {syncrole.secret_name(name), syncuser.secret_name(name)}
    for view_secret, store_secret in (
        (syncrole.secret_name(name), "offline-conn"),
        (syncuser.secret_name(name), "online-conn"),
    ):
        own, admin = secret(real_cp, ns, view_secret), secret(real_cp, ns, store_secret)
        assert own["username"] == syncrole.role_name(ns, name) != admin["username"]
        assert own["password"] != admin["password"] and own["host"] == admin["host"]
    assert pod["spec"]["containers"][0]["image"] == real_node.image("operator")
    summary = json.loads(real_cp.kubectl("logs", "-n", ns, pod["metadata"]["name"]).stdout.strip().splitlines()[-1])
    assert summary["outcome"] == "Succeeded" and summary["rows"] == 3

    kv = secret(real_cp, ns, "online-conn")
    key = layout.online_key(ns, name, [1])
    assert redis_cli(real_cp, ns, "online-0", kv["password"], "HGET", key, "clicks") == "11"

    # Status is read from what the Pod wrote (the run recorded in PostgreSQL, the watermark online).
    def materialized() -> bool:
        st = get(real_cp, ns, "featureview", name)["status"]
        return bool(
            st.get("lastMaterialization", {}).get("outcome") == "Succeeded"
            and st["lastMaterialization"].get("rows") == 3
        )

    procs.wait_until("status shows the run", materialized, 60)

    # The CronJob fires on its schedule (every minute) once the view is no longer suspended.
    real_cp.kubectl(
        "patch",
        "featureview",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"materialization": {"suspend": false}}}',
    )

    def scheduled_job() -> str | None:
        for j in json.loads(real_cp.kubectl("get", "jobs", "-n", ns, "-o", "json").stdout)["items"]:
            if any(o["kind"] == "CronJob" for o in j["metadata"].get("ownerReferences", [])):
                return str(j["metadata"]["name"])
        return None

    procs.wait_until("a Job started by the CronJob", lambda: scheduled_job() is not None, 150)
    cron_job = scheduled_job()
    assert cron_job is not None
    procs.wait_until("the scheduled Job complete", lambda: job_done(real_cp, ns, cron_job), 180)
    assert all(p["status"]["phase"] == "Succeeded" for p in job_pods(real_cp, ns, cron_job))
