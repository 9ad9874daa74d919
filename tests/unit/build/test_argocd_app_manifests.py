"""The Argo CD Applications of manifests/argocd point at what this repository has, and the samples carry the
sync waves that order them (schema validation against Argo CD's CRD: e2e/test_argocd_applications.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlinfra.build import argocd

ROOT = argocd.repo_root()
SAMPLES = ROOT / "manifests" / "samples"
WAVE = "argocd.argoproj.io/sync-wave"
FINALIZER = "resources-finalizer.argocd.argoproj.io"


def application(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "manifests" / "argocd" / f"{name}-application.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("argoproj.io/v1alpha1", "Application")
    return dict(doc)


def test_operator_application_is_the_chart_applied_server_side() -> None:
    app = application("operator")
    source = app["spec"]["source"]
    assert (ROOT / source["path"] / "Chart.yaml").is_file()
    assert source["path"] == "charts/mlinfra-operator"
    assert source["helm"]["releaseName"] == "mlinfra-operator"
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    # Deleting it must never cascade by default: that would take the CRDs and every CR with them.
    assert FINALIZER not in app["metadata"].get("finalizers", [])


def test_resources_application_is_the_samples_and_cascades() -> None:
    app = application("resources")
    source = app["spec"]["source"]
    assert source["path"] == "manifests/samples"
    assert (ROOT / source["path"] / "kustomization.yaml").is_file()
    assert source["repoURL"] == application("operator")["spec"]["source"]["repoURL"]
    assert "SkipDryRunOnMissingResource=true" in app["spec"]["syncPolicy"]["syncOptions"]
    assert app["metadata"]["finalizers"] == [FINALIZER]
    # The operator's Application comes first when an app-of-apps syncs both.
    assert int(application("operator")["metadata"]["annotations"][WAVE]) < int(app["metadata"]["annotations"][WAVE])


def samples() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and str(doc.get("apiVersion", "")).startswith("mlinfra.io/"):
                found.append((path, doc))
    return found


def test_datastores_sync_before_what_references_them() -> None:
    waves: dict[str, list[int]] = {}
    for path, doc in samples():
        annotations = doc["metadata"].get("annotations") or {}
        assert WAVE in annotations, f"{path.name}: no {WAVE} annotation"
        waves.setdefault(doc["kind"], []).append(int(annotations[WAVE]))
    assert set(waves) >= {"DataStore", "FeatureView", "ModelRegistry", "VectorIndex"}
    last_store = max(waves.pop("DataStore"))
    assert all(wave > last_store for kind_waves in waves.values() for wave in kind_waves), waves


def test_the_resources_application_syncs_every_sample() -> None:
    kustomization = yaml.safe_load((SAMPLES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted({p.name for p, _ in samples()})
