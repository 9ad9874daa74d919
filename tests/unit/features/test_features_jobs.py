"""The materialization CronJob and on-demand Job manifests."""

from __future__ import annotations

import json
from typing import Any

from mlinfra.api.featureview import FeatureView
from mlinfra.features import jobs

OWNER = {
    "apiVersion": "mlinfra.io/v1alpha1",
    "kind": "FeatureView",
    "name": "users",
    "uid": "u-1",
    "controller": True,
    "blockOwnerDeletion": True,
}


def view(**spec: Any) -> FeatureView:
    body = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "users", "namespace": "ml"},
        "spec": {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": "clicks", "type": "int64"}],
            "offline": {"storeRef": {"name": "pg"}},
            "online": {"storeRef": {"name": "kv"}},
            **spec,
        },
    }
    return FeatureView.model_validate(body)


def test_cronjob_runs_the_sync_command_with_the_views_role_and_the_online_connection() -> None:
    cj = jobs.cronjob(view(materialization={"schedule": "*/5 * * * *", "suspend": True}), "img:1", OWNER)
    assert cj is not None
    assert cj["metadata"]["name"] == "users-materialize"
    assert cj["metadata"]["ownerReferences"] == [OWNER]
    spec = cj["spec"]
    assert (spec["schedule"], spec["suspend"], spec["concurrencyPolicy"]) == ("*/5 * * * *", True, "Forbid")
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "img:1"
    assert container["args"] == ["sync", "featureview", "ml/users"]
    # Offline: the view's own least-privilege role (features.syncrole), never the store's admin in pg-conn.
    assert {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == {"users-sync-offline", "kv-conn"}
    assert pod["automountServiceAccountToken"] is False
    assert container["resources"]["requests"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env[jobs.SPEC_ENV])["entities"] == [{"name": "user_id", "type": "int64"}]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_no_schedule_means_no_cronjob() -> None:
    assert jobs.cronjob(view(), "img:1", OWNER) is None


def test_ondemand_job_name_is_deterministic_per_request() -> None:
    a = jobs.ondemand_job(view(), "img:1", OWNER, "2026-11-23T10:00:00Z")
    b = jobs.ondemand_job(view(), "img:1", OWNER, "2026-11-23T10:00:00Z")
    c = jobs.ondemand_job(view(), "img:1", OWNER, "2026-11-23T11:00:00Z")
    assert a["metadata"]["name"] == b["metadata"]["name"] != c["metadata"]["name"]
    assert a["metadata"]["annotations"][jobs.SYNC_REQUESTED_ANNOTATION] == "2026-11-23T10:00:00Z"


def test_long_names_stay_within_kubernetes_limits() -> None:
    long = "v" * 200
    assert len(jobs.cronjob_name(long)) <= 52
    assert len(jobs.ondemand_job_name(long, "x")) <= 63
    assert jobs.cronjob_name(long) != jobs.cronjob_name("w" * 200)
