"""DataStore observation against the in-memory Kubernetes API: the status from the published connection,
the StatefulSet and Pods and the (unreachable) server; the endpoint map (development only); metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra import metrics, problems
from mlinfra.api import datastore as api
from mlinfra.config import Settings
from mlinfra.context import Context, Obj
from mlinfra.engines import endpoints, observation
from mlinfra.problems import ProblemError
from mlinfra.stores import observe, reconcile

NS = "obs"
CLOSED = "127.0.0.1:1"  # nothing listens: refused at once


def managed_body(replicas: int = 2, generation: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": "db", "namespace": NS, "uid": "u-1", "generation": generation},
        "spec": {"engine": "redis", "managed": {"replicas": replicas, "storage": {"size": "1Gi"}}},
    }


def obj(body: dict[str, Any]) -> Obj[api.DataStore]:
    return Obj(body, problems.parse(api.DataStore, body))


def context(kube: FakeKube, tmp_path: Path, entry: dict[str, Any] | None) -> Context:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps({f"{NS}/db": entry} if entry else {}))
    return Context(settings=Settings(probe_timeout=0.5), kube=kube, endpoints=endpoints.EndpointMap(path))


def pod(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": "redis",
                "app.kubernetes.io/instance": "db",
                "mlinfra.io/datastore": "db",
            },
        },
        "status": {"podIP": ip},
    }


def conds(st: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in st["conditions"]}


def test_a_store_whose_pods_are_not_ready_is_provisioning(kube: FakeKube, tmp_path: Path) -> None:
    ctx = context(kube, tmp_path, {"endpoint": CLOSED, "members": {"db-0": CLOSED}})
    body = managed_body()
    reconcile.reconcile(ctx, obj(body))
    kube.merge_patch("StatefulSet", NS, "db", {"status": {"readyReplicas": 0}}, subresource="status")
    kube.put(pod("db-0", "10.0.0.5"))

    start = time.monotonic()
    st = observe.observe(ctx, obj(body))
    assert time.monotonic() - start < 1

    c = conds(st)
    assert c["Ready"] == ("False", "Provisioning", "0/2 members ready")
    assert c["Reconciling"] == ("True", "Provisioning", "0/2 members ready")
    assert c["Stalled"] == ("False", "Ready", "")
    assert c["Reachable"][:2] == ("False", "Unreachable")
    assert c["Replicating"][:2] == ("Unknown", "Unknown")
    assert st["observedGeneration"] == 4 and st["mode"] == "managed"
    # The endpoint and Secret clients use, not the development-only redirect.
    assert st["endpoint"] == f"db.{NS}.svc:6379" and st["connectionSecret"] == "db-conn"
    assert st["members"] == [{"name": "db-0", "role": "unknown", "ready": False}]
    assert st["replication"] == {"desiredReplicas": 2, "readyReplicas": 0}
    assert metrics.DATASTORE_UP.labels(NS, "db", "redis")._value.get() == 0
    assert metrics.DATASTORE_READY_REPLICAS.labels(NS, "db")._value.get() == 0


def test_a_bootstrapped_store_whose_restore_failed_says_what_the_restore_container_said(
    kube: FakeKube, tmp_path: Path
) -> None:
    ctx = context(kube, tmp_path, {"endpoint": CLOSED, "members": {"db-0": CLOSED}})
    body = managed_body()
    reconcile.reconcile(ctx, obj(body))
    failed = pod("db-0", "10.0.0.5")
    failed["status"]["initContainerStatuses"] = [
        {
            "name": "restore",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 2, "message": "Unusable: the backup's manifest is gone"}},
        }
    ]
    kube.put(failed)
    # Only a store restored from a backup is looked at for it (status.restoredFrom).
    assert conds(observe.observe(ctx, obj(body)))["Ready"][1] == "Provisioning"
    body["status"] = {"restoredFrom": {"backup": "first"}}
    with pytest.raises(ProblemError) as raised:
        observe.observe(ctx, obj(body))
    assert raised.value.problem.reason == "RestoreFailed" and raised.value.problem.stalled
    assert "the backup's manifest is gone" in raised.value.problem.message


def test_a_store_the_local_platform_cannot_serve_says_why_without_probing(kube: FakeKube, tmp_path: Path) -> None:
    ctx = context(kube, tmp_path, {"endpoint": CLOSED, "unserved": "no redis-server binary"})
    body = managed_body(replicas=1)
    reconcile.reconcile(ctx, obj(body))
    kube.merge_patch("StatefulSet", NS, "db", {"status": {"readyReplicas": 1}}, subresource="status")
    c = conds(observe.observe(ctx, obj(body)))
    assert c["Ready"] == ("False", "Unreachable", "no redis-server binary")
    assert c["Reconciling"] == ("False", "Unreachable", "")
    assert c["Reachable"] == ("False", "Unreachable", "no redis-server binary")


def test_observing_keeps_the_transition_time_of_an_unchanged_condition(kube: FakeKube, tmp_path: Path) -> None:
    ctx = context(kube, tmp_path, {"endpoint": CLOSED, "unserved": "not here"})
    body = managed_body(replicas=1)
    reconcile.reconcile(ctx, obj(body))
    first = observe.observe(ctx, obj(body))
    old = [dict(c, lastTransitionTime="2020-01-01T00:00:00Z") for c in first["conditions"]]
    again = observe.observe(ctx, obj({**body, "status": {**first, "conditions": old}}))
    assert {c["lastTransitionTime"] for c in again["conditions"]} == {"2020-01-01T00:00:00Z"}


def test_a_store_without_its_published_connection_is_not_observed(ctx: Context, kube: FakeKube) -> None:
    with pytest.raises(ProblemError) as exc:
        observe.observe(ctx, obj(managed_body()))
    assert exc.value.problem.reason == "SecretNotFound" and not exc.value.problem.stalled
    assert "'db-conn'" in exc.value.problem.message
    assert kube.writes == []


def test_an_unreachable_external_store_is_not_ready_and_not_reconciling(kube: FakeKube) -> None:
    ctx = Context(settings=Settings(probe_timeout=0.5), kube=kube)
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": NS},
            "stringData": {"username": "app", "password": "pw"},
        }
    )
    body = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": "ext", "namespace": NS, "uid": "u-2", "generation": 1},
        "spec": {"engine": "redis", "external": {"endpoint": CLOSED, "credentialsSecretRef": {"name": "creds"}}},
    }
    reconcile.reconcile(ctx, obj(body))
    st = observe.observe(ctx, obj(body))
    c = conds(st)
    assert c["Ready"][:2] == ("False", "Unreachable") and c["Reconciling"][:2] == ("False", "Unreachable")
    assert c["Stalled"] == ("False", "Ready", "")
    assert (st["mode"], st["endpoint"], st["connectionSecret"]) == ("external", CLOSED, "ext-conn")
    assert "members" not in st and st["replication"] == {"desiredReplicas": 1, "readyReplicas": 0}


def external_redis(database: str) -> api.DataStore:
    body = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": "cache", "namespace": NS, "uid": "u-2", "generation": 1},
        "spec": {
            "engine": "redis",
            "external": {"endpoint": "redis.example:6379", "database": database, "credentialsSecretRef": {"name": "c"}},
        },
    }
    return problems.parse(api.DataStore, body)


def test_a_database_number_the_redis_server_refuses_is_stalled_naming_the_field() -> None:
    refused = observation.Observation.unreachable("Redis at redis.example:6379: DB index is out of range")
    problem = observe.refused_database(external_redis("99"), refused)
    assert problem is not None
    assert (problem.reason, problem.stalled, problem.recheck) == ("InvalidSpec", True, observe.REFUSED_DATABASE_RECHECK)
    assert problem.message.startswith("spec.external.database '99': the Redis server at redis.example:6379 refused it")
    # Anything else stays what it is: unreachable is retried, a reachable server is fine.
    assert observe.refused_database(external_redis("99"), observation.Observation.unreachable("timed out")) is None
    assert observe.refused_database(external_redis("1"), None) is None
