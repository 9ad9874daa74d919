"""manifests/argocd on a real API server: the Applications validate against Argo CD's own Application CRD
(e2e/fixtures/argocd/application-crd.yaml, from the pinned Argo CD module), and the health snippet merges into
an existing argocd-cm without touching its other keys."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e_support import get_json, wait_for
from mlinfra.build import argocd
from mlinfra.devenv.controlplane import ControlPlane

ROOT = argocd.repo_root()
FIXTURES = ROOT / "e2e" / "fixtures" / "argocd"
APPLICATIONS = sorted((ROOT / "manifests" / "argocd").glob("*-application.yaml"))
NAMESPACE = "argocd"


def pinned_version() -> str:
    text = (FIXTURES / "versions.env").read_text()
    match = re.search(r"^ARGOCD_VERSION=(\S+)$", text, re.M)
    assert match
    return match.group(1)


@pytest.fixture(scope="module")
def application_crd(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    cp = control_plane
    cp.kubectl("apply", "--server-side", "--field-manager=argocd-e2e", "-f", str(FIXTURES / "application-crd.yaml"))
    established = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
    wait_for(
        "the Application CRD Established",
        lambda: cp.kubectl("get", "crd", "applications.argoproj.io", "-o", established, check=False).stdout == "True",
        60,
    )
    if cp.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        cp.kubectl("create", "namespace", NAMESPACE)
    yield cp


def dry_run(cp: ControlPlane, doc: dict[str, Any]) -> tuple[int, str]:
    result = cp.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=argocd-e2e",
        "-f",
        "-",
        input=yaml.safe_dump(doc),
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def test_the_crd_is_argo_cds_pinned_release() -> None:
    header = "".join((FIXTURES / "application-crd.yaml").read_text().splitlines(keepends=True)[:3])
    assert f"github.com/argoproj/argo-cd/v3 {pinned_version()} " in header
    crd = yaml.safe_load((FIXTURES / "application-crd.yaml").read_text())
    assert (crd["kind"], crd["metadata"]["name"]) == ("CustomResourceDefinition", "applications.argoproj.io")


def test_there_are_two_applications() -> None:
    assert [p.name for p in APPLICATIONS] == ["operator-application.yaml", "resources-application.yaml"]


@pytest.mark.parametrize("path", APPLICATIONS, ids=lambda p: p.stem)
def test_application_validates_against_argo_cds_schema(application_crd: ControlPlane, path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    code, out = dry_run(application_crd, doc)
    assert code == 0, out
    assert "(server dry run)" in out
    # Nothing was pruned: what the server would store is what the file says (no field silently dropped).
    stored = application_crd.kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=argocd-e2e", "-o", "json", "-f", str(path)
    )
    assert json.loads(stored.stdout)["spec"] == doc["spec"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # The schema's types are enforced: a list given as a string.
        (lambda d: d["spec"]["syncPolicy"].update(syncOptions="ServerSideApply=true"), "syncOptions"),
        (lambda d: d["spec"]["syncPolicy"]["retry"].update(limit="ten"), "limit"),
        # A required field missing.
        (lambda d: d["spec"].pop("destination"), "destination"),
        # A misspelt field (strict field validation): it would otherwise be dropped without a word.
        (lambda d: d["spec"]["syncPolicy"].update(automatd={"prune": True}), "automatd"),
    ],
    ids=["syncOptions-string", "retry-limit-string", "no-destination", "unknown-field"],
)
def test_an_invalid_application_is_rejected(application_crd: ControlPlane, change: Any, message: str) -> None:
    doc = yaml.safe_load((ROOT / "manifests" / "argocd" / "resources-application.yaml").read_text())
    assert dry_run(application_crd, doc)[0] == 0
    change(doc)
    code, out = dry_run(application_crd, doc)
    assert code != 0, out
    assert message in out


def test_health_snippet_merges_into_an_existing_argocd_cm(application_crd: ControlPlane) -> None:
    """As the README says: the snippet, as a merge patch, adds the mlinfra keys to the argocd-cm an Argo CD
    install created (client-side, like `kubectl apply -f install.yaml`), and a later re-apply of the install
    keeps them. Server-side apply would not: kubectl hands the install's keys to the new field manager and
    the apply then removes them, which the last part shows."""
    cp = application_crd
    install = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "argocd-cm",
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
        },
        "data": {
            "resource.customizations.ignoreResourceUpdates.all": "jsonPointers:\n  - /status\n",
            "timeout.reconciliation": "180s",
        },
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(install))
    cp.kubectl(
        "-n",
        NAMESPACE,
        "patch",
        "configmap",
        "argocd-cm",
        "--type",
        "merge",
        "--patch-file",
        str(ROOT / argocd.SNIPPET),
    )
    data = get_json(cp, "configmap", "argocd-cm", "-n", NAMESPACE)["data"]
    snippet = yaml.safe_load((ROOT / argocd.SNIPPET).read_text())["data"]
    assert data == {**install["data"], **snippet}
    for kind in argocd.kinds():
        assert data[argocd.health_key(kind)] == argocd.health_script(ROOT, kind)

    install["data"]["timeout.reconciliation"] = "120s"  # an Argo CD upgrade re-applies its install
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(install))
    data = get_json(cp, "configmap", "argocd-cm", "-n", NAMESPACE)["data"]
    assert data == {**install["data"], **snippet}

    # Why the README says "patch", not "apply --server-side": the install's own keys would be gone.
    cp.kubectl("delete", "configmap", "argocd-cm", "-n", NAMESPACE)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(install))
    cp.kubectl("apply", "--server-side", "--field-manager=mlinfra-health", "-f", str(ROOT / argocd.SNIPPET))
    data = get_json(cp, "configmap", "argocd-cm", "-n", NAMESPACE)["data"]
    assert data == snippet
