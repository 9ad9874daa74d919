"""Names and labels of a DataStore's children: one spelling, used by the templates and everyone else."""

from __future__ import annotations

import pytest

from mlinfra.api.datastore import DataStore
from mlinfra.engines import names, render

pytestmark = pytest.mark.unit


def store(engine: str = "postgres", namespace: str | None = "ml") -> DataStore:
    return DataStore.model_validate(
        {
            "metadata": {"name": "feats", "namespace": namespace, "labels": {"team": "x"}},
            "spec": {"engine": engine, "managed": {"replicas": 3}},
        }
    )


def test_child_names() -> None:
    assert names.statefulset("feats") == "feats"
    assert names.headless_service("feats") == "feats-hl"
    assert names.client_service("feats") == "feats"
    assert names.read_only_service("feats") == "feats-ro"
    assert names.credentials_secret("feats") == "feats-credentials"
    assert names.connection_secret("feats") == "feats-conn"
    assert names.config_map("feats") == "feats-config"
    assert names.pod_disruption_budget("feats") == "feats"
    assert names.network_policy("feats") == "feats"
    assert names.pod("feats", 2) == "feats-2"
    assert names.pvc("feats", 2) == "data-feats-2"


def test_dns_names() -> None:
    ds = store()
    assert names.pod_host(ds) == "feats-0.feats-hl.ml.svc"
    assert names.pod_host(ds, 2) == "feats-2.feats-hl.ml.svc"
    assert names.service_host(ds) == "feats.ml.svc"
    assert names.read_only_host(ds) == "feats-ro.ml.svc"
    assert names.pod_host(store(namespace=None)) == "feats-0.feats-hl.default.svc"


def test_labels_never_include_the_datastores_own() -> None:
    ds = store("qdrant")
    assert names.selector_labels(ds) == {
        "app.kubernetes.io/name": "qdrant",
        "app.kubernetes.io/instance": "feats",
        "mlinfra.io/datastore": "feats",
    }
    assert names.labels(ds) == {
        **names.selector_labels(ds),
        "app.kubernetes.io/managed-by": "mlinfra-operator",
        "app.kubernetes.io/component": "datastore",
    }
    assert "team" not in names.labels(ds)
    assert names.primary_selector(ds) == {**names.selector_labels(ds), "statefulset.kubernetes.io/pod-name": "feats-0"}


def test_credentials_keys_cover_what_the_pods_read() -> None:
    assert names.credentials_keys("postgres") == ("username", "password", "replication-password")
    for engine in ("redis", "neo4j", "qdrant"):
        assert names.credentials_keys(engine) == ("password",)


def test_rendered_objects_use_these_names() -> None:
    ds = store("postgres")
    objects = {(o["kind"], o["metadata"]["name"]) for o in render.render_managed(ds)}
    assert objects == {
        ("ConfigMap", names.config_map("feats")),
        ("Service", names.headless_service("feats")),
        ("Service", names.client_service("feats")),
        ("Service", names.read_only_service("feats")),
        ("StatefulSet", names.statefulset("feats")),
        ("PodDisruptionBudget", names.pod_disruption_budget("feats")),
    }


@pytest.mark.parametrize("engine", ["redis", "postgres", "neo4j", "qdrant"])
def test_credentials_keys_are_exactly_the_keys_the_pods_read(engine: str) -> None:
    ds = (
        store(engine)
        if engine != "neo4j"
        else DataStore.model_validate(
            {"metadata": {"name": "feats", "namespace": "ml"}, "spec": {"engine": "neo4j", "managed": {}}}
        )
    )
    [sts] = [o for o in render.render_managed(ds) if o["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    refs = {
        var["valueFrom"]["secretKeyRef"]["key"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert refs == set(names.credentials_keys(ds.spec.engine))
