"""FeatureView on the real control plane with the operator running, over real PostgreSQL and Redis."""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from e2e_support import condition, get_json, wait_for
from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisCluster, start_redis
from mlinfra.features import jobs, layout, syncrole, syncuser


def stores(cp: ControlPlane, ns: str, pg: PostgresCluster, kv: RedisCluster) -> None:
    for name, user, password in (("pg-creds", "postgres", pg.password), ("kv-creds", "default", kv.password)):
        cp.kubectl(
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            f"--from-literal=username={user}",
            f"--from-literal=password={password}",
        )
    cp.apply(
        [
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "DataStore",
                "metadata": {"name": "offline", "namespace": ns},
                "spec": {
                    "engine": "postgres",
                    "external": {
                        "endpoint": f"127.0.0.1:{pg.primary.port}",
                        "credentialsSecretRef": {"name": "pg-creds"},
                    },
                },
            },
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "DataStore",
                "metadata": {"name": "online", "namespace": ns},
                "spec": {
                    "engine": "redis",
                    "external": {
                        "endpoint": f"127.0.0.1:{kv.primary.port}",
                        "credentialsSecretRef": {"name": "kv-creds"},
                    },
                },
            },
        ]
    )


def view(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": "clicks", "type": "int64"}, {"name": "ctr", "type": "float64"}],
            "offline": {"storeRef": {"name": "offline"}, "table": name.replace("-", "_")},
            "online": {"storeRef": {"name": "online"}, "ttl": "24h"},
            "materialization": {"schedule": "*/5 * * * *", "batchSize": 2},
            "freshness": {"maxLag": "10m"},
        },
    }


def fv_condition(cp: ControlPlane, ns: str, name: str, type_: str) -> dict[str, Any]:
    return condition(get_json(cp, "featureview", name, "-n", ns), type_)


def events(cp: ControlPlane, ns: str, name: str) -> list[dict[str, Any]]:
    return list(get_json(cp, "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"])


def mounted(cp: ControlPlane, ns: str, secret: str, directory: Path) -> Path:
    """What a Secret volume would show the Job's pod: one file per key."""
    directory.mkdir(parents=True)
    for key, value in get_json(cp, "secret", secret, "-n", ns)["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def job_command(cp: ControlPlane, ns: str, name: str, directory: Path) -> tuple[list[str], dict[str, str]]:
    """The CronJob's command and the environment its pod would have (spec variable, the Secrets its volumes
    mount, at the directories its environment names)."""
    pod = get_json(cp, "cronjob", jobs.cronjob_name(name), "-n", ns)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    for mount in container["volumeMounts"]:
        if mount["name"] in secrets:
            path = mounted(cp, ns, secrets[mount["name"]], directory / mount["name"])
            [var] = [k for k, v in env.items() if v == mount["mountPath"]]
            env[var] = str(path)
    env.pop("KUBECONFIG", None)  # the Job's pod has no API access
    return [sys.executable, "-m", "mlinfra", *pod["containers"][0]["args"]], env


def run_job(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run the Job's command as a process against the real stores; its summary line."""
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def test_featureview_schema_jobs_sync_and_freshness(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    postgres_cluster: PostgresCluster,
    redis_cluster: RedisCluster,
    namespace: str,
    tmp_path: Path,
) -> None:
    cp = control_plane
    stores(cp, namespace, postgres_cluster, redis_cluster)
    name = f"clicks-{namespace[-6:]}"
    table = name.replace("-", "_")
    cp.apply([view(namespace, name)])
    wait_for("FeatureView Ready", lambda: fv_condition(cp, namespace, name, "Ready").get("status") == "True", 120)
    fv = get_json(cp, "featureview", name, "-n", namespace)
    st = fv["status"]
    assert st["offlineTable"] == f"public.{table}"
    assert st["onlineKeyPattern"] == layout.key_pattern(namespace, name)
    schema_applied = fv_condition(cp, namespace, name, "SchemaApplied")
    assert (schema_applied["status"], schema_applied["message"]) == ("True", f"table public.{table} up to date")
    assert fv_condition(cp, namespace, name, "Materialized")["reason"] == "NeverRun"
    # What the operator did to the table is an event (the status says what the table is).
    wait_for(
        "the TableCreated event",
        lambda: (
            [(e["type"], e["message"]) for e in events(cp, namespace, name) if e["reason"] == "TableCreated"]
            == [("Normal", f"table public.{table} created")]
        ),
        30,
    )

    # The offline table exists in the real PostgreSQL with the spec's columns.
    with postgres_cluster.primary.connect() as conn:
        cols = dict(
            conn.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = 'public' and table_name = %s",
                (table,),
            ).fetchall()
        )
    assert cols["user_id"] == "bigint" and cols["clicks"] == "bigint" and cols["ctr"] == "double precision"
    assert "event_timestamp" in cols and "created_at" in cols

    # The CronJob: schedule, Forbid, owned, running the sync command with both connection Secrets.
    cron = get_json(cp, "cronjob", jobs.cronjob_name(name), "-n", namespace)
    assert cron["spec"]["schedule"] == "*/5 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["metadata"]["ownerReferences"][0]["uid"] == fv["metadata"]["uid"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["sync", "featureview", f"{namespace}/{name}"]
    # The view's own role and user (features.syncrole, features.syncuser), never the stores' admin credentials
    # in offline-conn and online-conn.
    assert {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == {
        syncrole.secret_name(name),
        syncuser.secret_name(name),
    }
    kv_user = {
        k: base64.b64decode(v).decode()
        for k, v in get_json(cp, "secret", syncuser.secret_name(name), "-n", namespace)["data"].items()
    }
    assert kv_user["username"] == syncuser.user_name(namespace, name) and kv_user["password"] != redis_cluster.password
    acl = redis_cluster.primary.client().acl_getuser(kv_user["username"])
    assert acl is not None and sorted(acl["keys"]) == sorted(syncuser.key_patterns(namespace, name))
    role_secret = get_json(cp, "secret", syncrole.secret_name(name), "-n", namespace)
    assert role_secret["metadata"]["ownerReferences"][0]["uid"] == fv["metadata"]["uid"]
    role = {k: base64.b64decode(v).decode() for k, v in role_secret["data"].items()}
    admin = {
        k: base64.b64decode(v).decode()
        for k, v in get_json(cp, "secret", "offline-conn", "-n", namespace)["data"].items()
    }
    assert role["username"] == syncrole.role_name(namespace, name) != admin["username"]
    assert role["password"] != admin["password"]
    assert {k: role[k] for k in ("engine", "host", "port", "database", "tls")} == {
        k: admin[k] for k in ("engine", "host", "port", "database", "tls")
    }
    with postgres_cluster.primary.connect() as conn:
        attrs = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = %s",
            (role["username"],),
        ).fetchone()
    assert attrs == (False, False, False, False)

    # "Sync now": the annotation makes a one-off Job, once per value.
    cp.kubectl("annotate", "featureview", name, "-n", namespace, f"{jobs.SYNC_REQUESTED_ANNOTATION}=now-1")
    job_name = jobs.ondemand_job_name(name, "now-1")
    wait_for(
        "the on-demand Job",
        lambda: cp.kubectl("get", "job", job_name, "-n", namespace, check=False).returncode == 0,
        60,
    )

    # Rows offline, then the Job's command, run as a process against the real stores.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with postgres_cluster.primary.connect() as conn:
        for uid, clicks, age in ((1, 10, 30), (1, 11, 20), (2, 5, 10), (3, 7, 5)):
            conn.execute(
                f"insert into public.{table} (user_id, clicks, ctr, event_timestamp) values (%s, %s, %s, %s)",
                (uid, clicks, clicks / 100, now - datetime.timedelta(minutes=age)),
            )
    argv, env = job_command(cp, namespace, name, tmp_path)
    assert (tmp_path / "offline-conn" / "username").read_text() == role["username"]  # what the run logs in as
    summary = run_job(argv, env)
    assert summary["outcome"] == "Succeeded" and summary["rows"] == 3
    with postgres_cluster.primary.connect() as conn:
        runs = conn.execute(
            "SELECT count(*) FROM mlinfra.sync_runs WHERE namespace = %s AND view = %s", (namespace, name)
        ).fetchone()
    assert runs == (1,)

    def materialized() -> bool:
        s = get_json(cp, "featureview", name, "-n", namespace)["status"]
        return (
            s.get("lastMaterialization", {}).get("outcome") == "Succeeded"
            and s.get("freshness", {}).get("lagSeconds") == 0
        )

    wait_for("status shows the run and freshness", materialized, 60)
    st = get_json(cp, "featureview", name, "-n", namespace)["status"]
    assert st["lastMaterialization"]["rows"] == 3
    assert fv_condition(cp, namespace, name, "Materialized")["status"] == "True"
    assert fv_condition(cp, namespace, name, "FreshnessSLOMet")["status"] == "True"
    online = redis_cluster.primary.client()
    assert online.hget(layout.online_key(namespace, name, [1]), "clicks") == "11"
    assert "mlinfra_featureview_freshness_lag_seconds" in operator.metrics()

    # Breaking the online store makes the view not Ready, with the reason.
    cp.kubectl(
        "patch",
        "datastore",
        "online",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"external": {"endpoint": f"127.0.0.1:{procs.free_port()}"}}}),
    )
    wait_for(
        "FeatureView not Ready", lambda: fv_condition(cp, namespace, name, "Ready").get("reason") == "StoreNotReady", 90
    )
    assert "online" in fv_condition(cp, namespace, name, "Ready")["message"]

    # Deleted, the view's role goes (only the offline store is needed for that); its data stays.
    cp.kubectl("delete", "featureview", name, "-n", namespace, "--wait=true", timeout=90)
    with postgres_cluster.primary.connect() as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role["username"],)).fetchone() is None
        assert conn.execute(f"select count(*) from public.{table}").fetchone() == (4,)


def test_feature_type_change_is_refused(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    postgres_cluster: PostgresCluster,
    redis_cluster: RedisCluster,
    namespace: str,
) -> None:
    """A feature type change passes the API server; the operator refuses it and changes nothing."""
    cp = control_plane
    stores(cp, namespace, postgres_cluster, redis_cluster)
    name = f"typed-{namespace[-6:]}"
    body = view(namespace, name)
    cp.apply([body])
    wait_for("Ready", lambda: fv_condition(cp, namespace, name, "Ready").get("status") == "True", 120)
    body["spec"]["features"][0]["type"] = "string"
    cp.apply([body])
    wait_for("Stalled", lambda: fv_condition(cp, namespace, name, "Stalled").get("status") == "True", 60)
    stalled = fv_condition(cp, namespace, name, "Stalled")
    assert stalled["reason"] == "ImmutableFieldChange"
    assert "clicks" in stalled["message"]
    with postgres_cluster.primary.connect() as conn:
        kind = conn.execute(
            "select data_type from information_schema.columns where table_name = %s and column_name = 'clicks'",
            (name.replace("-", "_"),),
        ).fetchone()
    assert kind == ("bigint",)


def test_lost_online_data_is_said_and_comes_back(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    postgres_cluster: PostgresCluster,
    namespace: str,
    tmp_path: Path,
) -> None:
    """FLUSHALL of the online Redis (one of the test's own: the session's is shared): the view stops saying
    fresh (OnlineDataLost, one Warning event, a sync Job requested), and the next run of the Job's command
    rewrites every key and makes it Ready and fresh again."""
    cp = control_plane
    with procs.ProcStack() as stack:
        kv = start_redis(stack, tmp_path / "redis", replicas=0, config='save ""\nappendonly no')
        stores(cp, namespace, postgres_cluster, kv)
        name = f"lost-{namespace[-6:]}"
        table = name.replace("-", "_")
        cp.apply([view(namespace, name)])
        wait_for("Ready", lambda: fv_condition(cp, namespace, name, "Ready").get("status") == "True", 120)
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        with postgres_cluster.primary.connect() as conn:
            for uid, clicks, age in ((1, 10, 30), (2, 5, 10), (3, 7, 5)):
                conn.execute(
                    f"insert into public.{table} (user_id, clicks, ctr, event_timestamp) values (%s, %s, %s, %s)",
                    (uid, clicks, clicks / 100, now - datetime.timedelta(minutes=age)),
                )
        argv, env = job_command(cp, namespace, name, tmp_path)
        assert run_job(argv, env)["rows"] == 3

        def fresh() -> bool:
            fv = get_json(cp, "featureview", name, "-n", namespace)
            return (
                condition(fv, "Ready").get("status") == "True"
                and fv["status"].get("freshness", {}).get("lagSeconds") == 0
            )

        wait_for("fresh", fresh, 60)

        online = kv.primary.client()
        online.flushall()
        wait_for(
            "OnlineDataLost",
            lambda: fv_condition(cp, namespace, name, "Materialized").get("reason") == "OnlineDataLost",
            60,
        )
        fv = get_json(cp, "featureview", name, "-n", namespace)
        assert "lagSeconds" not in fv["status"]["freshness"]  # unknown, not 0
        assert (condition(fv, "Ready")["status"], condition(fv, "FreshnessSLOMet")["status"]) == ("False", "False")
        assert "no materialization marker" in condition(fv, "Materialized")["message"]

        def lost_events() -> list[dict[str, Any]]:
            return [e for e in events(cp, namespace, name) if e["reason"] == "OnlineDataLost"]

        wait_for("the OnlineDataLost event", lambda: len(lost_events()) == 1, 30)
        assert lost_events()[0]["type"] == "Warning"
        # The view has a schedule: a sync Job was requested rather than waiting for the cron.
        requested = [
            j
            for j in get_json(cp, "jobs", "-n", namespace, "-l", f"{jobs.KIND_LABEL}={name}")["items"]
            if j["metadata"]["annotations"].get(jobs.SYNC_REQUESTED_ANNOTATION, "").startswith("onlinestorelost-")
        ]
        assert len(requested) == 1
        assert requested[0]["metadata"]["name"] in lost_events()[0]["message"]

        # What that Job runs: a full run that says why, and every key back.
        summary = run_job(argv, env)
        assert (summary["outcome"], summary["rows"], summary["fullResync"]) == ("Succeeded", 3, ["OnlineStoreLost"])
        wait_for("fresh again", fresh, 60)
        assert {online.hget(layout.online_key(namespace, name, [u]), "clicks") for u in (1, 2, 3)} == {"10", "5", "7"}
        assert len(lost_events()) == 1  # said once, not at every check
