"""The Argo CD resource actions (manifests/argocd/actions), run as Argo CD runs them (Lua 5.1 in its sandbox):
"backup-now" on a DataStore with spec.backup creates the Backup `mlinfra backup` would, "sync-now" on a
FeatureView or VectorIndex sets the annotation the operator answers with a one-off Job. The kwok tier applies
what they return to a live operator (e2e/test_argocd_actions_live.py)."""

from __future__ import annotations

import datetime
import importlib
import re
from typing import Any

import pytest

from mlinfra import problems
from mlinfra.api import backup as backup_api
from mlinfra.build import argocd
from mlinfra.stores import ha

pytestmark = pytest.mark.unit

ROOT = argocd.repo_root()


def store(name: str = "cache", with_backup: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"engine": "redis", "managed": {"replicas": 1}}
    if with_backup:
        spec["backup"] = {"target": {"volume": {"claimName": "backups"}}}
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": spec,
    }


def test_backup_now_is_offered_only_to_a_store_with_a_backup_policy() -> None:
    discovery = argocd.action_scripts(ROOT, "DataStore")["discovery"]
    assert argocd.discover(discovery, store())["backup-now"] is True
    assert argocd.discover(discovery, store(with_backup=False))["backup-now"] is False


def test_backup_now_creates_the_backup_mlinfra_backup_would() -> None:
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    [created] = argocd.run_action(argocd.action_scripts(ROOT, "DataStore")["backup-now"], store())
    after = datetime.datetime.now(datetime.UTC)
    assert created["operation"] == "create"
    backup = created["resource"]
    name = backup["metadata"]["name"]
    assert re.fullmatch(r"cache-\d{14}", name) and backup["metadata"]["namespace"] == "ml"
    taken = datetime.datetime.strptime(name[-14:], "%Y%m%d%H%M%S").replace(tzinfo=datetime.UTC)
    assert before <= taken <= after
    assert backup["spec"] == {"dataStoreRef": {"name": "cache"}}
    problems.parse(backup_api.Backup, backup)  # a valid Backup: the API server takes it
    # A store whose name leaves no room for the time: backup-<time>, still within 63 characters.
    [long] = argocd.run_action(argocd.action_scripts(ROOT, "DataStore")["backup-now"], store("s" * 52))
    assert re.fullmatch(r"backup-\d{14}", long["resource"]["metadata"]["name"])


@pytest.mark.parametrize("kind", ["FeatureView", "VectorIndex"])
def test_sync_now_sets_the_annotation_the_operator_answers(kind: str) -> None:
    scripts = argocd.action_scripts(ROOT, kind)
    obj = {"apiVersion": "mlinfra.io/v1alpha1", "kind": kind, "metadata": {"name": "v", "namespace": "ml"}, "spec": {}}
    assert argocd.discover(scripts["discovery"], obj) == {"sync-now": True}
    [patched] = argocd.run_action(scripts["sync-now"], obj)
    assert patched["operation"] == "patch"
    requested = patched["resource"]["metadata"]["annotations"]["mlinfra.io/sync-requested-at"]
    at = datetime.datetime.strptime(requested, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - at).total_seconds()) < 5
    # Other annotations stay.
    obj["metadata"]["annotations"] = {"team": "ranking"}
    [again] = argocd.run_action(scripts["sync-now"], obj)
    assert again["resource"]["metadata"]["annotations"]["team"] == "ranking"


def test_the_kinds_without_actions_have_none() -> None:
    assert argocd.action_scripts(ROOT, "ModelRegistry") == {} and argocd.action_scripts(ROOT, "Backup") == {}
    data = argocd.cm_data(ROOT)
    assert {k for k in data if k.startswith("resource.customizations.actions.")} == {
        "resource.customizations.actions.mlinfra.io_DataStore",
        "resource.customizations.actions.mlinfra.io_FeatureView",
        "resource.customizations.actions.mlinfra.io_VectorIndex",
    }


def replicated(members: list[tuple[str, str, bool]], engine: str = "redis") -> dict[str, Any]:
    obj = store(with_backup=False)
    obj["spec"]["engine"] = engine
    obj["status"] = {"members": [{"name": n, "role": r, "ready": ok} for n, r, ok in members]}
    return obj


def test_promote_is_offered_with_the_first_ready_replica_as_its_default() -> None:
    discovery = argocd.action_scripts(ROOT, "DataStore")["discovery"]
    three = replicated([("cache-0", "primary", True), ("cache-1", "replica", False), ("cache-2", "replica", True)])
    assert argocd.discover(discovery, three)["promote"] is True
    assert argocd.action_params(discovery, three)["promote"] == {"member": "cache-2"}
    # Nothing to promote: a single member, replicas not ready, a store the operator does not run, neo4j.
    assert argocd.discover(discovery, replicated([("cache-0", "standalone", True)]))["promote"] is False
    assert (
        argocd.discover(discovery, replicated([("c-0", "primary", True), ("c-1", "replica", False)]))["promote"]
        is False
    )
    assert (
        argocd.discover(discovery, replicated([("g-0", "primary", True), ("g-1", "replica", True)], "neo4j"))["promote"]
        is False
    )
    external = replicated([("c-0", "primary", True), ("c-1", "replica", True)])
    del external["spec"]["managed"]
    assert argocd.discover(discovery, external)["promote"] is False


def test_promote_sets_the_annotation_the_operator_answers() -> None:
    script = argocd.action_scripts(ROOT, "DataStore")["promote"]
    obj = replicated([("pg-0", "primary", True), ("pg-1", "replica", True)], "postgres")
    obj["metadata"]["annotations"] = {"team": "ranking"}
    [patched] = argocd.run_action(script, obj, {"member": "pg-1"})
    assert patched["operation"] == "patch"
    assert patched["resource"]["metadata"]["annotations"] == {"team": "ranking", ha.PROMOTE_ANNOTATION: "pg-1"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (None, "the member parameter is required"),
        ({"member": ""}, "the member parameter is required"),
        ({"member": "pg-0"}, "pg-0 is not a replica of cache"),
        ({"member": "pg-7"}, "pg-7 is not a replica of cache"),
    ],
)
def test_promote_refuses_what_is_not_a_replica(params: dict[str, str] | None, message: str) -> None:
    lua51 = importlib.import_module("lupa.lua51")  # the runtime build.argocd runs Argo CD's Lua 5.1 in
    script = argocd.action_scripts(ROOT, "DataStore")["promote"]
    obj = replicated([("pg-0", "primary", True), ("pg-1", "replica", True)], "postgres")
    with pytest.raises(lua51.LuaError, match=message):
        argocd.run_action(script, obj, params)
