"""Name rules: every name the operator derives from an object's name is valid at the longest name the rules
allow, the rules refuse the next character, and the models mirror the CRDs' root rules."""

from __future__ import annotations

import re
from typing import Any

import pydantic
import pytest

from mlinfra import api
from mlinfra.api import base, datastore, featureview, modelregistry, vectorindex
from mlinfra.build import crdgen
from mlinfra.engines import names, render
from mlinfra.features import jobs as feature_jobs
from mlinfra.k8s import syncjobs
from mlinfra.registry import jobs as registry_jobs
from mlinfra.registry import reconcile as registry_reconcile
from mlinfra.vectors import jobs as vector_jobs

pytestmark = pytest.mark.unit

# Kubernetes' own limits (k8s.io/apimachinery validation).
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
REVISION_HASH = 10  # the StatefulSet controller's revision hash: a uint32, safe-encoded, at most 10 characters
MAX_ORDINAL = 14  # spec.managed.replicas <= 15


def service_name(name: str) -> bool:
    return len(name) <= 63 and bool(DNS_1035.match(name))


def object_name(name: str, limit: int = 253) -> bool:
    return len(name) <= limit and bool(DNS_1123_SUBDOMAIN.match(name))


def label_value(value: str) -> bool:
    return len(value) <= 63 and bool(LABEL_VALUE.match(value))


def managed_store(name: str) -> datastore.DataStore:
    return datastore.DataStore.model_validate(
        {"metadata": {"name": name, "namespace": "ml"}, "spec": {"engine": "postgres", "managed": {"replicas": 15}}}
    )


def external_store(name: str) -> datastore.DataStore:
    spec = {"engine": "redis", "external": {"endpoint": "r.example.com:6379", "credentialsSecretRef": {"name": "r"}}}
    return datastore.DataStore.model_validate({"metadata": {"name": name, "namespace": "ml"}, "spec": spec})


# The longest names the rules allow, with the characters most likely to break a derived name.
LONGEST_MANAGED = "d" + "-a1" * 17  # 52 characters
LONGEST_ML = "team.models-" + "x" * 51  # 63 characters, a dot and a dash included


def test_the_longest_names_are_the_limits() -> None:
    assert len(LONGEST_MANAGED) == datastore.MAX_MANAGED_NAME == 52
    assert len(LONGEST_ML) == base.MAX_LABEL_VALUE == 63


def test_every_child_of_the_longest_managed_store_is_valid() -> None:
    ds = managed_store(LONGEST_MANAGED)
    name = ds.metadata.name
    for service in (names.client_service(name), names.headless_service(name)):
        assert service_name(service), service
    statefulset = names.statefulset(name)
    assert object_name(statefulset)
    # The controller labels the pods with controller-revision-hash=<statefulset>-<hash>.
    assert label_value(f"{statefulset}-{'x' * REVISION_HASH}")
    for child in (
        names.credentials_secret(name),
        names.connection_secret(name),
        names.config_map(name),
        names.pod_disruption_budget(name),
        names.network_policy(name),
        names.pvc(name, MAX_ORDINAL),
    ):
        assert object_name(child), child
    # Pods: their name is their host name (a DNS label) and a label value (statefulset.kubernetes.io/pod-name).
    pod = names.pod(name, MAX_ORDINAL)
    assert service_name(pod) and label_value(pod)
    assert all(label_value(v) for v in names.labels(ds).values())
    assert all(label_value(v) for v in names.primary_selector(ds).values())
    assert len(names.pod_host(ds, MAX_ORDINAL).split(".")[0]) <= 63


def test_every_child_of_the_longest_ml_objects_is_valid() -> None:
    name = LONGEST_ML
    for cronjob in (
        feature_jobs.cronjob_name(name),
        registry_jobs.cronjob_name(name),
        vector_jobs.cronjob_name(name),
    ):
        # A CronJob's Jobs are named <cronjob>-<minutes since epoch>: 52 characters leave room for them.
        assert object_name(cronjob, 52), cronjob
    job = feature_jobs.ondemand_job_name(name, "2026-01-01T00:00:00Z")
    assert object_name(job, 63) and label_value(job)
    for kind in ("reader", "writer"):
        assert object_name(registry_reconcile.secret_name(name, kind))
    job_spec = syncjobs.SyncJob("mlinfra.io/featureview", name, "ml", (), "SPEC", {}, (), "materialize")
    assert all(label_value(v) for v in syncjobs.labels(job_spec).values())


def test_a_long_name_cut_after_a_dot_still_gives_a_valid_cronjob_name() -> None:
    name = "ml" + ".a-b" * 15 + "c"  # 63 characters; the materialize CronJob keeps its first 31: "ml.a-b...a-b."
    assert object_name(feature_jobs.cronjob_name(name), 52)


def test_the_managed_name_limit_is_what_the_revision_label_leaves() -> None:
    assert datastore.MAX_MANAGED_NAME + len("-") + REVISION_HASH == 63


@pytest.mark.parametrize(
    ("name", "managed_ok", "external_ok"),
    [
        (LONGEST_MANAGED, True, True),
        (LONGEST_MANAGED + "b", False, True),  # 53: too long for a StatefulSet, fine for an external store
        ("a" * 63, False, True),
        ("a" * 64, False, False),  # 64: not a label value
        ("pg.main", False, True),  # a dot: not a Service name
        ("1cache", False, True),  # a digit first: not a DNS-1035 label
        ("cache", True, True),
    ],
)
def test_datastore_name_rules(name: str, managed_ok: bool, external_ok: bool) -> None:
    for build, ok in ((managed_store, managed_ok), (external_store, external_ok)):
        if ok:
            build(name)
        else:
            with pytest.raises(pydantic.ValidationError, match="the name of a"):
                build(name)


def _ml_body(kind: type[base.Resource], name: str) -> dict[str, Any]:
    specs: dict[type[base.Resource], dict[str, Any]] = {
        featureview.FeatureView: {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": "clicks", "type": "int64"}],
            "offline": {"storeRef": {"name": "pg"}},
            "online": {"storeRef": {"name": "cache"}},
        },
        modelregistry.ModelRegistry: {"metadataStoreRef": {"name": "pg"}},
        vectorindex.VectorIndex: {
            "storeRef": {"name": "qdrant"},
            "collection": "docs",
            "vectors": {"size": 3, "distance": "Cosine"},
        },
    }
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": specs[kind]}


@pytest.mark.parametrize("kind", [featureview.FeatureView, modelregistry.ModelRegistry, vectorindex.VectorIndex])
def test_ml_kinds_names_are_label_values(kind: type[base.Resource]) -> None:
    kind.model_validate(_ml_body(kind, LONGEST_ML))
    with pytest.raises(pydantic.ValidationError, match=f"the name of a {kind.crd_info.kind} must be at most 63"):
        kind.model_validate(_ml_body(kind, LONGEST_ML + "z"))


@pytest.mark.parametrize("kind", api.KINDS, ids=lambda kind: kind.crd_info.kind)
def test_name_rules_are_root_rules_of_the_crd(kind: type[base.Resource]) -> None:
    root = crdgen.build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = root["x-kubernetes-validations"]
    assert [rule["message"] for rule in rules] == [rule.message for rule in kind.name_rules]
    assert all("self.metadata.name" in rule["rule"] for rule in rules)
    assert "size(self.metadata.name) <= 63" in rules[0]["rule"]


def test_managed_datastore_name_rules_only_apply_to_managed_stores() -> None:
    for rule in (datastore.MANAGED_NAME_LENGTH, datastore.MANAGED_NAME_DNS):
        assert rule.cel().rule.startswith("!(has(self.spec.managed)) || ")


def test_the_api_defaults_are_the_renderers() -> None:
    # The update rules compare versions and sizes with these; the renderer is what runs.
    renderer = {engine: profile.default_version for engine, profile in render.PROFILES.items()}
    assert renderer == datastore.DEFAULT_VERSIONS
    assert datastore.DEFAULT_STORAGE_SIZE == render.DEFAULT_STORAGE_SIZE
