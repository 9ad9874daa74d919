"""A managed store keeps the engine version its data was written with: across operator upgrades that change
the default, and against a spec that asks for another major (stores.versions, through the reconcile)."""

from __future__ import annotations

from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra import problems
from mlinfra.api import datastore as api
from mlinfra.context import Context, Obj
from mlinfra.engines import render
from mlinfra.problems import ProblemError
from mlinfra.stores import reconcile, versions

NS = "ml"


def body(engine: str = "postgres", version: str | None = None, uid: str = "uid-db") -> dict[str, Any]:
    managed: dict[str, Any] = {"replicas": 1, "storage": {"size": "1Gi"}}
    if version is not None:
        managed["version"] = version
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": "db", "namespace": NS, "uid": uid, "generation": 1},
        "spec": {"engine": engine, "managed": managed},
    }


def model(b: dict[str, Any]) -> api.DataStore:
    return problems.parse(api.DataStore, b)


def sts(kube: FakeKube) -> dict[str, Any]:
    return kube.get("StatefulSet", NS, "db")


def image(kube: FakeKube) -> str:
    return str(sts(kube)["spec"]["template"]["spec"]["containers"][0]["image"])


def default(monkeypatch: pytest.MonkeyPatch, engine: str, version: str) -> None:
    profile = render.PROFILES[engine]
    monkeypatch.setitem(render.PROFILES, engine, type(profile)(**{**profile.__dict__, "default_version": version}))


def test_an_operator_upgrade_changing_the_default_major_keeps_the_stores_version(
    ctx: Context, kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconcile.reconcile(ctx, Obj(body(), model(body())))
    assert image(kube) == "postgres:15"
    assert sts(kube)["metadata"]["annotations"][versions.ANNOTATION] == "15"
    default(monkeypatch, "postgres", "16")  # the next operator release tests 16
    reconcile.reconcile(ctx, Obj(body(), model(body())))
    assert image(kube) == "postgres:15"  # the data is 15: a 16 server could not open it
    new = body()
    new["metadata"].update(name="fresh", uid="uid-fresh")
    reconcile.reconcile(ctx, Obj(new, model(new)))
    assert kube.get("StatefulSet", NS, "fresh")["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:16"


def test_a_default_moving_within_the_major_upgrades_and_never_downgrades(
    ctx: Context, kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    default(monkeypatch, "redis", "7.2")
    reconcile.reconcile(ctx, Obj(body("redis"), model(body("redis"))))
    default(monkeypatch, "redis", "7.4")
    reconcile.reconcile(ctx, Obj(body("redis"), model(body("redis"))))
    assert image(kube) == "redis:7.4"  # a minor upgrade by the operator's default
    default(monkeypatch, "redis", "7.0")  # an operator rolled back: 7.0 cannot read what 7.4 wrote
    reconcile.reconcile(ctx, Obj(body("redis"), model(body("redis"))))
    assert image(kube) == "redis:7.4"


def test_a_spec_asking_for_another_major_than_the_data_is_stalled_and_nothing_changes(
    ctx: Context, kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconcile.reconcile(ctx, Obj(body(), model(body())))
    default(monkeypatch, "postgres", "16")
    # The CRD's rule compares the spec with the spec (omitted = the new default 16): it lets "16" through.
    before = sts(kube)
    with pytest.raises(ProblemError) as exc:
        reconcile.reconcile(ctx, Obj(body(version="16"), model(body(version="16"))))
    p = exc.value.problem
    assert (p.reason, p.stalled) == (problems.IMMUTABLE_FIELD_CHANGE, True)
    assert "spec.managed.version '16' is major version 16" in p.message and "written by 15" in p.message
    assert sts(kube) == before
    reconcile.reconcile(ctx, Obj(body(version="15.8"), model(body(version="15.8"))))  # a minor upgrade is fine
    assert image(kube) == "postgres:15.8"


def test_a_statefulset_from_before_the_annotation_is_read_from_its_image(kube: FakeKube) -> None:
    legacy = {"metadata": {}, "spec": {"template": {"spec": {"containers": [{"image": "postgres:14.11"}]}}}}
    assert versions.recorded(legacy, "postgres", {}) == "14.11"
    mirrored = {"metadata": {}, "spec": {"template": {"spec": {"containers": [{"image": "m.local/pg:14"}]}}}}
    assert versions.recorded(mirrored, "postgres", {"postgres": "m.local/pg:{version}"}) == "14"
    assert versions.recorded(mirrored, "postgres", {}) is None  # a custom image: nothing to compare with
    assert versions.recorded(None, "postgres", {}) is None


def test_a_statefulset_that_is_not_the_stores_says_nothing_about_its_data(ctx: Context, kube: FakeKube) -> None:
    kube.put(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": NS, "annotations": {versions.ANNOTATION: "9"}},
            "spec": {},
        }
    )
    with pytest.raises(ProblemError) as exc:
        reconcile.reconcile(ctx, Obj(body(), model(body())))
    assert exc.value.problem.reason == "ChildConflict"  # not ImmutableFieldChange about someone else's "9"


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("postgres:16.2", "16.2"),
        ("registry.example:5000/db/postgres:16.2-alpine", "16.2"),
        ("neo4j:5.26-community", "5.26"),
        ("redis:v7.4.1", "7.4.1"),
        ("registry.example:5000/db/postgres", None),  # the colon is the registry's port
        ("postgres@sha256:" + "a" * 64, None),
        ("postgres:stable", None),
        ("postgres:16.2@sha256:" + "a" * 64, "16.2"),
        ("postgres:20240101", None),  # a date, not a version
    ],
)
def test_the_version_an_image_tag_names(image: str, version: str | None) -> None:
    assert versions.image_version(image) == version


def custom(b: dict[str, Any], image: str, version: str | None = None) -> dict[str, Any]:
    b["spec"]["managed"]["image"] = image
    if version is not None:
        b["spec"]["managed"]["version"] = version
    return b


def test_a_custom_image_of_another_major_than_the_data_is_stalled_and_nothing_changes(
    ctx: Context, kube: FakeKube
) -> None:
    reconcile.reconcile(ctx, Obj(body(), model(body())))  # postgres:15, annotated 15
    before = sts(kube)
    # The CRD's rule sees no version change (both omitted): only the image says 16.
    b = custom(body(), "registry.example/postgres:16.1-alpine")
    with pytest.raises(ProblemError) as exc:
        reconcile.reconcile(ctx, Obj(b, model(b)))
    p = exc.value.problem
    assert (p.reason, p.stalled) == (problems.IMMUTABLE_FIELD_CHANGE, True)
    assert p.message.startswith("spec.managed.image 'registry.example/postgres:16.1-alpine' (tagged 16.1) is major")
    assert "written by 15" in p.message
    assert sts(kube) == before
    same_major = custom(body(), "registry.example/postgres:15.9-alpine")
    reconcile.reconcile(ctx, Obj(same_major, model(same_major)))
    assert image(kube) == "registry.example/postgres:15.9-alpine"
    assert sts(kube)["metadata"]["annotations"][versions.ANNOTATION] == "15.9"


def test_an_image_tag_that_contradicts_the_version_is_invalid(ctx: Context, kube: FakeKube) -> None:
    b = custom(body(), "postgres:16.1", version="15")
    with pytest.raises(ProblemError) as exc:
        reconcile.reconcile(ctx, Obj(b, model(b)))
    assert (exc.value.problem.reason, exc.value.problem.stalled) == ("InvalidSpec", True)
    assert "tagged 16.1 (major 16), and spec.managed.version says '15' (major 15)" in exc.value.problem.message
    assert kube.writes == [] or all(kind != "StatefulSet" for _, kind, *_ in kube.writes)


def test_an_image_tag_without_a_version_is_taken_at_the_specs_word(ctx: Context, kube: FakeKube) -> None:
    b = custom(body(), "registry.example/postgres:stable", version="15")
    reconcile.reconcile(ctx, Obj(b, model(b)))
    assert image(kube) == "registry.example/postgres:stable"
    assert sts(kube)["metadata"]["annotations"][versions.ANNOTATION] == "15"
