"""A DataStore never takes over what the operator did not create, against the real API server and operator:
a user's Service or Secret named like one of its children makes it Stalled (ChildConflict) and stays exactly
as the user made it; of two DataStores claiming one Service the second is Stalled and the first stays Ready
and keeps it; deleting the conflicting object heals the store (the problem is rechecked)."""

from __future__ import annotations

import json
import time
from typing import Any

from e2e_support import condition, get_json, wait_for
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.operator import OperatorProcess


def managed(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"engine": "redis", "deletionPolicy": "Delete", "managed": {"replicas": 1, "storage": {"size": "1Gi"}}},
    }


def create(cp: ControlPlane, obj: dict[str, Any]) -> dict[str, Any]:
    """Create ``obj`` as a user would (kubectl create); the object as stored."""
    out = cp.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(obj))
    return dict(json.loads(out.stdout))


def ds_condition(cp: ControlPlane, ns: str, name: str, type_: str) -> dict[str, Any]:
    return condition(get_json(cp, "datastore", name, "-n", ns), type_)


def wait_stalled(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    def stalled() -> bool:
        c = ds_condition(cp, ns, name, "Stalled")
        return c.get("status") == "True" and c.get("reason") == "ChildConflict"

    wait_for(f"{ns}/{name} Stalled with ChildConflict", stalled, 90)
    ready = ds_condition(cp, ns, name, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ChildConflict")
    return ready


def wait_ready(cp: ControlPlane, ns: str, name: str, timeout: float = 150) -> dict[str, Any]:
    wait_for(f"{ns}/{name} Ready", lambda: ds_condition(cp, ns, name, "Ready").get("status") == "True", timeout)
    return dict(get_json(cp, "datastore", name, "-n", ns))


def controller_uid(obj: dict[str, Any]) -> str | None:
    return next((r["uid"] for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


def exists(cp: ControlPlane, kind: str, name: str, ns: str) -> bool:
    return cp.kubectl("get", kind, name, "-n", ns, check=False).returncode == 0


def test_a_users_service_of_the_stores_name_stalls_it_untouched_and_deleting_it_heals_the_store(
    control_plane: ControlPlane, operator: OperatorProcess, backer: Backer, namespace: str
) -> None:
    cp, ns = control_plane, namespace
    users = create(
        cp,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "cache", "namespace": ns, "labels": {"app": "web"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    cp.apply([managed(ns, "cache")])
    ready = wait_stalled(cp, ns, "cache")
    assert ready["message"].startswith("Service cache already exists and was created by someone else")
    assert "delete or rename Service cache" in ready["message"]

    after = get_json(cp, "service", "cache", "-n", ns)
    assert after["metadata"]["resourceVersion"] == users["metadata"]["resourceVersion"]
    assert after["spec"] == users["spec"] and after["metadata"].get("ownerReferences") is None
    # Nothing was started for a store that cannot have its Service.
    assert not exists(cp, "statefulset", "cache", ns) and not exists(cp, "secret", "cache-credentials", ns)

    # The user removes their Service: the rechecked store takes the name and becomes Ready.
    healing = time.monotonic()
    cp.kubectl("delete", "service", "cache", "-n", ns)
    ds = wait_ready(cp, ns, "cache", 180)
    print(f"healed {time.monotonic() - healing:.1f}s after the conflicting Service was deleted")
    assert controller_uid(get_json(cp, "service", "cache", "-n", ns)) == ds["metadata"]["uid"]
    stalled = ds_condition(cp, ns, "cache", "Stalled")
    assert stalled["status"] == "False"


def test_a_users_credentials_secret_is_a_conflict_and_stays_untouched(
    control_plane: ControlPlane, operator: OperatorProcess, backer: Backer, namespace: str
) -> None:
    cp, ns = control_plane, namespace
    users = create(
        cp,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "kv-credentials", "namespace": ns},
            "stringData": {"password": "the-users-own"},
        },
    )
    cp.apply([managed(ns, "kv")])
    ready = wait_stalled(cp, ns, "kv")
    assert ready["message"].startswith("Secret kv-credentials already exists and was created by someone else")
    after = get_json(cp, "secret", "kv-credentials", "-n", ns)
    assert after["metadata"]["resourceVersion"] == users["metadata"]["resourceVersion"]
    assert after["data"] == users["data"]
    assert after["metadata"].get("ownerReferences") is None and after["metadata"].get("labels") is None
    assert not exists(cp, "secret", "kv-conn", ns) and not exists(cp, "statefulset", "kv", ns)


def test_of_two_stores_claiming_one_service_the_second_is_stalled_and_the_first_keeps_it(
    control_plane: ControlPlane, operator: OperatorProcess, backer: Backer, namespace: str
) -> None:
    cp, ns = control_plane, namespace
    cp.apply([managed(ns, "a")])
    first = wait_ready(cp, ns, "a")
    headless = get_json(cp, "service", "a-hl", "-n", ns)  # a's headless Service is DataStore a-hl's client name
    assert controller_uid(headless) == first["metadata"]["uid"]

    cp.apply([managed(ns, "a-hl")])
    ready = wait_stalled(cp, ns, "a-hl")
    assert ready["message"].startswith("Service a-hl already exists and is controlled by DataStore a;")
    assert "give this DataStore another name" in ready["message"]

    after = get_json(cp, "service", "a-hl", "-n", ns)
    assert after["metadata"]["resourceVersion"] == headless["metadata"]["resourceVersion"]
    assert controller_uid(after) == first["metadata"]["uid"]
    assert ds_condition(cp, ns, "a", "Ready")["status"] == "True"
    assert not exists(cp, "statefulset", "a-hl", ns)
