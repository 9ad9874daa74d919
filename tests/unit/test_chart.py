"""The Helm chart and the kustomize base: lint, render, and check what reviewers check.

Runs the pinned helm and kubectl binaries (``make tools``) offline: ``helm lint --strict``, ``helm template``
with the default values and with each optional feature switched on, ``values.schema.json`` refusing bad
values, and ``kubectl kustomize manifests/base`` saying the same as the chart. Installing the chart into a
live control plane is the e2e tier's job.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from typing import Any

import chart_support
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = chart_support.ROOT
CHART = chart_support.CHART
BASE = ROOT / "manifests" / "base"
RELEASE, NAMESPACE = chart_support.RELEASE, chart_support.NAMESPACE
_tools, _run, _helm, _render = chart_support.find_tools, chart_support.run, chart_support.helm, chart_support.render
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")

KINDS = ["datastores", "featureviews", "modelregistries", "vectorindexes", "backups"]
FULL = ["get", "list", "watch", "create", "patch", "update", "delete"]
# The operator's ClusterRole, exactly: (apiGroups, resources, verbs).
OPERATOR_RULES = [
    (["mlinfra.io"], KINDS, ["get", "list", "watch", "patch", "update"]),
    (["mlinfra.io"], [f"{k}/status" for k in KINDS], ["get", "patch", "update"]),
    (["mlinfra.io"], [f"{k}/finalizers" for k in KINDS], ["update"]),
    (["mlinfra.io"], ["backups"], ["create", "delete"]),  # spec.backup.schedule and its retention
    (["apiextensions.k8s.io"], ["customresourcedefinitions"], ["get", "list", "watch"]),
    ([""], ["namespaces"], ["get", "list", "watch"]),
    ([""], ["events"], ["create", "patch"]),
    (["events.k8s.io"], ["events"], ["create", "patch"]),
    (["apps"], ["statefulsets", "deployments"], FULL),
    ([""], ["services", "configmaps"], FULL),
    ([""], ["secrets"], ["get", "create", "patch"]),
    (["policy"], ["poddisruptionbudgets"], FULL),
    (["networking.k8s.io"], ["networkpolicies"], FULL),
    ([""], ["persistentvolumeclaims"], ["get", "list", "watch", "delete"]),
    ([""], ["pods"], ["get", "list", "watch", "patch", "delete"]),
    ([""], ["pods/exec"], ["get", "create"]),  # rbac.killHungPrimary (default on)
    (["batch"], ["jobs", "cronjobs"], FULL),
]
# The cluster-scoped rules of OPERATOR_RULES; every other rule is on objects inside a namespace.
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}
# Namespaced mode (watchNamespaces set): the rules of each watched namespace's Role, and the only rules
# cluster-wide: Kopf's runtime observation of the namespaces and CRDs (read-only, no `get` either).
NAMESPACED_RULES = [rule for rule in OPERATOR_RULES if not CLUSTER_SCOPED & set(rule[1])]
OBSERVATION_RULES = [
    (["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"]),
    ([""], ["namespaces"], ["list", "watch"]),
]
WATCHED = ["ml-a", "ml-b"]
VIEW_VERBS = ["get", "list", "watch"]
EDIT_VERBS = [*VIEW_VERBS, "create", "update", "patch", "delete", "deletecollection"]


@functools.cache
def _kustomize() -> list[dict[str, Any]]:
    proc = _run([str(_tools().kubectl), "kustomize", str(BASE)], check=False)
    if proc.returncode != 0:
        pytest.fail(
            "`kubectl kustomize manifests/base` does not build. The base includes ../../crds, which needs the "
            "kustomization `crds/Kustomization` written by `mlinfra crds` (kustomize loads files only from "
            f"inside a kustomization's directory).\n{proc.stderr}"
        )
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _one(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _rules(role: dict[str, Any]) -> list[tuple[list[str], list[str], list[str]]]:
    return [(r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"]]


def _app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


# --- lint and metadata ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["metrics.serviceMonitor.enabled=true", "networkPolicy.enabled=true", "watchNamespaces={ml-a,ml-b}"],
    ],
)
def test_helm_lint_strict(sets: list[str]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for item in sets:
        args += ["--set", item]
    out = _helm(*args).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.2.0"
    assert chart["appVersion"] == "0.1.0"
    assert chart["kubeVersion"] == ">=1.29.0-0"


def test_default_rendering_has_exactly_the_expected_objects() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in _render())
    assert kinds == sorted(
        [
            ("ServiceAccount", RELEASE),
            ("ClusterRole", RELEASE),
            ("ClusterRoleBinding", RELEASE),
            ("ClusterRole", f"{RELEASE}-view"),
            ("ClusterRole", f"{RELEASE}-edit"),
            ("Service", f"{RELEASE}-metrics"),
            ("Deployment", RELEASE),
        ]
    )
    for doc in _render():
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "mlinfra-operator"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == _app_version()
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "mlinfra-operator-0.2.0"


# --- the Deployment ------------------------------------------------------------------------------------------


def test_deployment_is_one_replica_recreate() -> None:
    spec = _one(_render(), "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "mlinfra-operator",
        "app.kubernetes.io/instance": RELEASE,
    }


def test_image_tag_defaults_to_app_version() -> None:
    assert _container(_render())["image"] == f"ghcr.io/mlinfra/mlinfra-operator:{_app_version()}"
    assert _container(_render("image.tag=dev"))["image"].endswith(":dev")
    digest = "sha256:" + "a" * 64
    assert _container(_render(f"image.digest={digest}"))["image"].endswith(f":{_app_version()}@{digest}")


def test_restricted_pod_security() -> None:
    pod = _one(_render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    sc = _container(_render())["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not sc.get("privileged")
    # A writable /tmp for the read-only root filesystem.
    assert {"name": "tmp", "mountPath": "/tmp"} in _container(_render())["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


def test_command_ports_probe_and_environment() -> None:
    c = _container(_render())
    assert "command" not in c, "the image's ENTRYPOINT is `mlinfra`"
    assert c["args"] == ["run", "--health-port", "8080", "--metrics-port", "9090"]
    assert {"name": "MLINFRA_LOG_FORMAT", "value": "json"} in c["env"]
    namespace = {"fieldRef": {"fieldPath": "metadata.namespace"}}  # the stores' NetworkPolicies admit it from there
    assert {"name": "MLINFRA_OPERATOR_NAMESPACE", "valueFrom": namespace} in c["env"]
    assert {(p["name"], p["containerPort"]) for p in c["ports"]} == {("http-health", 8080), ("http-metrics", 9090)}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-health"}
    assert "readinessProbe" not in c


def test_watch_namespaces_become_namespace_flags() -> None:
    args = _container(_render("watchNamespaces={ml-a,ml-b}"))["args"]
    assert args[args.index("--namespace") :] == ["--namespace", "ml-a", "--namespace", "ml-b"]
    assert "--namespace" not in _container(_render())["args"]


def test_metrics_service() -> None:
    svc = _one(_render(), "Service")
    assert svc["spec"]["ports"] == [
        {"name": "http-metrics", "port": 9090, "targetPort": "http-metrics", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"] == _one(_render(), "Deployment")["spec"]["selector"]["matchLabels"]


# --- optional objects ----------------------------------------------------------------------------------------


def test_service_monitor_is_optional() -> None:
    assert not [d for d in _render() if d["kind"] == "ServiceMonitor"]
    sm = _one(
        _render("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom"), "ServiceMonitor"
    )
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [
        {"port": "http-metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_network_policy_is_optional() -> None:
    assert not [d for d in _render() if d["kind"] == "NetworkPolicy"]
    np = _one(_render("networkPolicy.enabled=true"), "NetworkPolicy")["spec"]
    assert np["policyTypes"] == ["Ingress"]
    assert np["ingress"] == [{"ports": [{"port": "http-metrics", "protocol": "TCP"}]}]
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    egress = [{"ports": [{"port": 443, "protocol": "TCP"}]}]
    np = _one(
        _render(
            "networkPolicy.enabled=true",
            f"json:networkPolicy.metricsFrom={json.dumps([peer])}",
            f"json:networkPolicy.egress={json.dumps(egress)}",
        ),
        "NetworkPolicy",
    )["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    assert np["ingress"][0]["from"] == [peer]
    assert np["egress"] == egress


def test_rbac_and_service_account_can_be_switched_off() -> None:
    kinds = {
        d["kind"]
        for d in _render(
            "rbac.create=false",
            "rbac.aggregateToUserRoles=false",
            "serviceAccount.create=false",
            "serviceAccount.name=existing",
        )
    }
    assert kinds == {"Service", "Deployment"}
    pod = _one(_render("serviceAccount.create=false", "serviceAccount.name=existing"), "Deployment")
    assert pod["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


# --- RBAC ----------------------------------------------------------------------------------------------------


def test_operator_cluster_role_is_exactly_least_privilege() -> None:
    role = _one(_render(), "ClusterRole", RELEASE)
    assert _rules(role) == OPERATOR_RULES
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs"
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]


def test_the_hung_primary_kill_can_be_switched_off() -> None:
    role = _one(_render("rbac.killHungPrimary=false"), "ClusterRole", RELEASE)
    assert _rules(role) == [rule for rule in OPERATOR_RULES if rule[1] != ["pods/exec"]]


def test_cluster_role_binding_binds_the_service_account() -> None:
    binding = _one(_render(), "ClusterRoleBinding", RELEASE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RELEASE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_namespaced_mode_objects() -> None:
    """watchNamespaces set: a Role and RoleBinding per watched namespace besides the ClusterRole and binding."""
    docs = _render(f"watchNamespaces={{{','.join(WATCHED)}}}")
    rbac = sorted(
        (d["kind"], d["metadata"].get("namespace", ""))
        for d in docs
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
        and d["metadata"]["name"] == RELEASE
    )
    assert rbac == sorted(
        [("ClusterRole", ""), ("ClusterRoleBinding", "")]
        + [(kind, ns) for ns in WATCHED for kind in ("Role", "RoleBinding")]
    )
    off = _render("watchNamespaces={ml-a}", "rbac.create=false")
    assert not [d for d in off if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"] == RELEASE]
    assert not [d for d in off if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]


def test_namespaced_mode_cluster_role_is_only_kopf_observation() -> None:
    role = _one(_render(f"watchNamespaces={{{','.join(WATCHED)}}}"), "ClusterRole", RELEASE)
    assert _rules(role) == OBSERVATION_RULES
    binding = _one(_render(f"watchNamespaces={{{','.join(WATCHED)}}}"), "ClusterRoleBinding", RELEASE)
    assert binding["roleRef"]["name"] == RELEASE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


@pytest.mark.parametrize("watched", WATCHED)
def test_namespaced_mode_role_per_watched_namespace(watched: str) -> None:
    docs = _render(f"watchNamespaces={{{','.join(WATCHED)}}}")
    role = _one([d for d in docs if d["metadata"].get("namespace") == watched], "Role", RELEASE)
    # The same rules as the cluster-wide ClusterRole, less the cluster-scoped ones (one rule list, shared).
    assert _rules(role) == NAMESPACED_RULES
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
    binding = _one([d for d in docs if d["metadata"].get("namespace") == watched], "RoleBinding", RELEASE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RELEASE}
    # The ServiceAccount lives in the release namespace, not in the watched one.
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_namespaced_mode_binds_a_custom_service_account() -> None:
    docs = _render("watchNamespaces={ml-a}", "serviceAccount.create=false", "serviceAccount.name=existing")
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        assert _one(docs, kind, RELEASE)["subjects"] == [
            {"kind": "ServiceAccount", "name": "existing", "namespace": NAMESPACE}
        ]


def test_secrets_are_never_listed_watched_or_deleted() -> None:
    """In both modes: Secrets by name only (get, create, patch), whichever role grants them."""
    for docs in (_render(), _render(f"watchNamespaces={{{','.join(WATCHED)}}}")):
        for doc in docs:
            if doc["kind"] not in ("ClusterRole", "Role") or doc["metadata"]["name"] != RELEASE:
                continue
            for groups, resources, verbs in _rules(doc):
                if "" in groups and "secrets" in resources:
                    assert verbs == ["get", "create", "patch"], doc["kind"]


def test_aggregated_user_roles() -> None:
    view = _one(_render(), "ClusterRole", f"{RELEASE}-view")
    edit = _one(_render(), "ClusterRole", f"{RELEASE}-edit")
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k in view["metadata"]["labels"] if k.startswith(aggregate)} == {aggregate + "view"}
    assert {k for k in edit["metadata"]["labels"] if k.startswith(aggregate)} == {
        aggregate + "edit",
        aggregate + "admin",
    }
    assert all(edit["metadata"]["labels"][aggregate + k] == "true" for k in ("edit", "admin"))
    assert _rules(view) == [(["mlinfra.io"], KINDS, VIEW_VERBS)]
    assert _rules(edit) == [(["mlinfra.io"], KINDS, EDIT_VERBS)]


# --- values and their schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (["replicaCount=two"], "/replicaCount"),
        (["replicaCount=2"], "/replicaCount"),
        (["unknownKey=1"], "unknownKey"),
        (["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["logFormat=xml"], "/logFormat"),
        (["metrics.port=0"], "/metrics/port"),
        (["metrics.serviceMonitor.enabled=yes-please"], "/metrics/serviceMonitor/enabled"),
        (["watchNamespaces={Not_A_Namespace}"], "/watchNamespaces"),
        (["image.digest=latest"], "/image/digest"),
        (["networkPolicy.enable=true"], "enable"),
        # The monitoring values (prometheusRule, grafanaDashboard; see test_chart_monitoring.py).
        (["prometheusRule.featureViewFreshness.for=5 minutes"], "/prometheusRule/featureViewFreshness/for"),
        (["prometheusRule.reconcileErrors.window=soon"], "/prometheusRule/reconcileErrors/window"),
        (
            ["prometheusRule.dataStoreReplicationLag.thresholdSeconds=-1"],
            "/prometheusRule/dataStoreReplicationLag/thresholdSeconds",
        ),
        (["prometheusRule.dataStoreDown.severity="], "/prometheusRule/dataStoreDown/severity"),
        (["prometheusRule.enabled=maybe"], "/prometheusRule/enabled"),
        (["prometheusRule.dataStoreDown.threshold=1"], "threshold"),
        (["grafanaDashboard.namespace=Not_A_Namespace"], "/grafanaDashboard/namespace"),
        (["grafanaDashboard.folder=x"], "folder"),
    ],
)
def test_schema_rejects_bad_values(sets: list[str], complaint: str) -> None:
    args = ["template", RELEASE, str(CHART)]
    for item in sets:
        args += ["--set", item]
    proc = _helm(*args, check=False)
    assert proc.returncode != 0, f"{sets} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert complaint in proc.stderr


def test_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Any, sub: dict[str, Any], path: str) -> None:
        assert "type" in sub or "oneOf" in sub or "enum" in sub, f"{path}: no type in the schema"
        if isinstance(node, dict) and "properties" in sub:
            assert sub.get("additionalProperties") is False, f"{path}: unknown keys must be refused"
            for key, child in node.items():
                assert key in sub["properties"], f"{path}.{key} is not in values.schema.json"
                walk(child, sub["properties"][key], f"{path}.{key}")

    walk(values, schema, "")


def test_every_values_key_is_commented() -> None:
    """Each key has a comment right above it, or sits under a commented parent (e.g. resources.requests)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    commented_at: dict[int, bool] = {}  # indentation -> whether the enclosing key there is documented
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        commented_at = {k: v for k, v in commented_at.items() if k < indent}
        above = lines[i - 1].strip() if i else ""
        documented = above.startswith("#") or any(commented_at.values())
        if not documented and not _has_children(lines, i, indent):
            missing.append(m.group(2))
        commented_at[indent] = above.startswith("#") or any(commented_at.values())
    assert not missing, f"values.yaml keys without a comment: {missing}"


def _has_children(lines: list[str], i: int, indent: int) -> bool:
    for line in lines[i + 1 :]:
        if line.strip() and not line.lstrip().startswith("#"):
            return len(line) - len(line.lstrip()) > indent
    return False


# --- the kustomize base ---------------------------------------------------------------------------------------


def _without_helm_labels(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    label_maps = [doc["metadata"].get("labels", {})]
    if doc["kind"] == "Deployment":
        label_maps.append(doc["spec"]["template"]["metadata"]["labels"])
    for labels in label_maps:
        for key in HELM_ONLY_LABELS:
            labels.pop(key, None)
    return doc


def test_kustomize_base_rbac_equals_the_chart() -> None:
    chart_roles = {d["metadata"]["name"]: d for d in _render() if d["kind"] == "ClusterRole"}
    base_roles = {d["metadata"]["name"]: d for d in _kustomize() if d["kind"] == "ClusterRole"}
    assert sorted(base_roles) == sorted(chart_roles)
    for name, role in chart_roles.items():
        assert _rules(base_roles[name]) == _rules(role), name
    assert _rules(base_roles[RELEASE]) == OPERATOR_RULES


def test_kustomize_base_equals_the_chart_default_rendering() -> None:
    base = {(d["kind"], d["metadata"]["name"]): d for d in _kustomize()}
    for doc in _render():
        key = (doc["kind"], doc["metadata"]["name"])
        assert key in base, f"{key} is in the chart but not in manifests/base"
        assert base[key] == _without_helm_labels(doc), f"{key} differs between the chart and manifests/base"
    extra = set(base) - {(d["kind"], d["metadata"]["name"]) for d in _render()}
    crds = {("CustomResourceDefinition", f"{plural}.mlinfra.io") for plural in KINDS}
    assert extra == {("Namespace", NAMESPACE)} | crds


def test_kustomize_base_namespace_and_crds() -> None:
    docs = _kustomize()
    ns = _one(docs, "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] in ("ServiceAccount", "Service", "Deployment"):
            assert doc["metadata"]["namespace"] == NAMESPACE
    for plural in KINDS:
        crd = _one(docs, "CustomResourceDefinition", f"{plural}.mlinfra.io")
        committed = yaml.safe_load((ROOT / "crds" / f"{plural}.mlinfra.io.yaml").read_text())
        assert crd == committed
