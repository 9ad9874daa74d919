"""The DataStore handlers as Kopf would call them (registered into a registry of their own, called directly):
reconcile then observe into one status patch; a problem becomes the problem status and Kopf's retry policy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
from fakekube import FakeKube

from mlinfra import problems
from mlinfra.config import Settings
from mlinfra.context import Context
from mlinfra.engines import endpoints
from mlinfra.handlers import datastore, kind
from mlinfra.k8s import objects

NS = "hd"


def body(spec: dict[str, Any], generation: int = 2) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "DataStore",
            "metadata": {"name": "db", "namespace": NS, "uid": "u-9", "generation": generation},
            "spec": spec,
        }
    )


def handler(registry: kopf.OperatorRegistry, name: str) -> Callable[..., Any]:
    fns = {h.fn.__name__: h.fn for h in registry._changing.get_all_handlers()}
    fns.update({h.fn.__name__: h.fn for h in registry._spawning.get_all_handlers()})
    return fns[name]


def registered(kube: FakeKube, tmp_path: Path) -> kopf.OperatorRegistry:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps({f"{NS}/db": {"endpoint": "127.0.0.1:1", "unserved": "not served here"}}))
    ctx = Context(settings=Settings(probe_timeout=0.5), kube=kube, endpoints=endpoints.EndpointMap(path))
    registry = kopf.OperatorRegistry()
    kind.register(registry, ctx, datastore.KIND)
    return registry


def test_the_kind_is_wired_with_the_datastore_package() -> None:
    kind = datastore.KIND
    assert kind.controller == "datastore" and kind.retry_delay == 30 and kind.drift_timer
    assert kind.delete is not None and kind.request_sync is None


def test_reconcile_applies_observes_and_patches_status_once(kube: FakeKube, tmp_path: Path) -> None:
    registry = registered(kube, tmp_path)
    patch, memo = kopf.Patch(), kopf.Memo()
    spec = {"engine": "redis", "managed": {"replicas": 1, "storage": {"size": "1Gi"}}}
    handler(registry, "reconcile")(body=body(spec), patch=patch, memo=memo)

    assert kube.get_or_none("Secret", NS, "db-conn") is not None
    st = dict(patch["status"])
    assert st["observedGeneration"] == 2 and st["endpoint"] == f"db.{NS}.svc:6379"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Provisioning")
    assert memo.mlinfra_reconciled == 2


def test_a_refused_spec_is_reported_and_not_retried(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(kopf, "warn", lambda _body, reason, message: warnings.append(reason))
    registry = registered(kube, tmp_path)
    patch = kopf.Patch()
    spec = {"engine": "neo4j", "managed": {"replicas": 3, "storage": {"size": "1Gi"}}}
    with pytest.raises(kopf.PermanentError):
        handler(registry, "reconcile")(body=body(spec), patch=patch, memo=kopf.Memo())
    st = dict(patch["status"])
    assert st["mode"] == "managed"
    assert {c["type"]: c["reason"] for c in st["conditions"]}["Stalled"] == "InvalidSpec"
    assert warnings == ["InvalidSpec"] and kube.writes == []


def test_a_missing_user_secret_is_retried_after_30_seconds(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kopf, "warn", lambda *_a, **_k: None)
    registry = registered(kube, tmp_path)
    spec = {"engine": "redis", "external": {"endpoint": "r.svc:6379", "credentialsSecretRef": {"name": "nope"}}}
    with pytest.raises(kopf.TemporaryError) as exc:
        handler(registry, "reconcile")(body=body(spec), patch=kopf.Patch(), memo=kopf.Memo())
    assert exc.value.delay == 30


class RefusingKube(FakeKube):
    """Kubernetes refusing one kind of child as invalid (what a CRD rule could not foresee), or failing."""

    def __init__(self, kind: str, status: int, causes: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.refused_kind, self.status, self.causes = kind, status, causes

    def apply(self, obj: Any, field_manager: str = "mlinfra-operator", force: bool = True) -> dict[str, Any]:
        if obj["kind"] == self.refused_kind:
            message = f'{obj["kind"]} "{obj["metadata"]["name"]}" is invalid: spec.x: bad'
            raise objects.ApiError(self.status, message, self.causes)
        return super().apply(obj, field_manager, force)


def test_a_child_kubernetes_refuses_is_stalled_invalid_spec_and_rechecked_not_retried_blindly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(kopf, "warn", lambda _body, reason, message: warnings.append(message))
    kube = RefusingKube("StatefulSet", 422)
    registry = registered(kube, tmp_path)
    patch = kopf.Patch()
    spec = {"engine": "redis", "managed": {"replicas": 1, "storage": {"size": "1Gi"}}}
    with pytest.raises(kopf.TemporaryError) as retry:
        handler(registry, "reconcile")(body=body(spec), patch=patch, memo=kopf.Memo())
    assert retry.value.delay == problems.REFUSED_BY_KUBERNETES_RECHECK
    st = {c["type"]: c for c in dict(patch["status"])["conditions"]}
    assert (st["Stalled"]["status"], st["Stalled"]["reason"]) == ("True", "InvalidSpec")
    assert 'Kubernetes refused what the spec asks for: 422: StatefulSet "db" is invalid' in st["Stalled"]["message"]
    assert warnings and "is invalid" in warnings[0]


def test_other_api_errors_are_left_to_kopf_retries(tmp_path: Path) -> None:
    kube = RefusingKube("StatefulSet", 500)
    registry = registered(kube, tmp_path)
    spec = {"engine": "redis", "managed": {"replicas": 1, "storage": {"size": "1Gi"}}}
    with pytest.raises(objects.ApiError):
        handler(registry, "reconcile")(body=body(spec), patch=kopf.Patch(), memo=kopf.Memo())


def test_a_namespace_being_deleted_stalls_the_object_without_a_crash_or_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler creating a child while its namespace is deleted is not a crash: the object goes with the
    namespace, so it is Stalled NamespaceTerminating and not retried; any other 403 stays Kopf's to retry."""
    monkeypatch.setattr(kopf, "warn", lambda *_a, **_k: None)
    kube = RefusingKube("StatefulSet", 403, (objects.NAMESPACE_TERMINATING,))
    registry = registered(kube, tmp_path)
    patch = kopf.Patch()
    spec = {"engine": "redis", "managed": {"replicas": 1, "storage": {"size": "1Gi"}}}
    with pytest.raises(kopf.PermanentError):
        handler(registry, "reconcile")(body=body(spec), patch=patch, memo=kopf.Memo())
    st = {c["type"]: c for c in dict(patch["status"])["conditions"]}
    assert (st["Stalled"]["status"], st["Stalled"]["reason"]) == ("True", "NamespaceTerminating")
    assert "namespace is being deleted" in st["Stalled"]["message"]
    forbidden = registered(RefusingKube("StatefulSet", 403), tmp_path)
    with pytest.raises(objects.ApiError):
        handler(forbidden, "reconcile")(body=body(spec), patch=kopf.Patch(), memo=kopf.Memo())


def test_a_retry_meeting_the_problem_its_status_shows_posts_no_second_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Warning event per problem, not one per retry: a retry whose status would not change is quiet; the
    first attempt of a handler run, and a retry meeting another problem, warn."""
    warnings: list[str] = []
    monkeypatch.setattr(kopf, "warn", lambda _body, reason, message: warnings.append(reason))
    registry = registered(FakeKube(), tmp_path)
    spec = {"engine": "redis", "external": {"endpoint": "r.svc:6379", "credentialsSecretRef": {"name": "nope"}}}
    first = kopf.Patch()
    with pytest.raises(kopf.TemporaryError):
        handler(registry, "reconcile")(body=body(spec), patch=first, memo=kopf.Memo())
    assert warnings == ["SecretNotFound"]
    shown = {**body(spec), "status": dict(first["status"])}  # what the first attempt wrote, as a retry reads it
    with pytest.raises(kopf.TemporaryError):
        handler(registry, "reconcile")(body=kopf.Body(shown), patch=kopf.Patch(), memo=kopf.Memo(), retry=3)
    assert warnings == ["SecretNotFound"]
    other = {**spec, "external": {**spec["external"], "credentialsSecretRef": {"name": "other"}}}
    shown = {**body(other), "status": dict(first["status"])}
    with pytest.raises(kopf.TemporaryError):
        handler(registry, "reconcile")(body=kopf.Body(shown), patch=kopf.Patch(), memo=kopf.Memo(), retry=4)
    assert warnings == ["SecretNotFound", "SecretNotFound"]  # another Secret named: another message
