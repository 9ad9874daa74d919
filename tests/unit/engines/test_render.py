"""Managed-mode rendering: objects, names, labels, topology, security, and the template safety rails."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jinja2
import pytest

from mlinfra.api.datastore import ALLOWED_CONFIG, DataStore
from mlinfra.engines import names, render

pytestmark = pytest.mark.unit

NAME, NS = "feats", "ml"
CASES = [("redis", 1), ("redis", 3), ("postgres", 1), ("postgres", 3), ("neo4j", 1), ("qdrant", 1), ("qdrant", 3)]


def store(engine: str = "redis", replicas: int = 1, **managed: Any) -> DataStore:
    return DataStore.model_validate(
        {
            "metadata": {
                "name": NAME,
                "namespace": NS,
                "uid": "u-1",
                "generation": 4,
                "labels": {"team": "ranking", "app.kubernetes.io/part-of": "argo-app"},
                "annotations": {
                    "argocd.argoproj.io/tracking-id": "app:mlinfra.io/DataStore:ml/feats",
                    "note": "user-owned",
                },
            },
            "spec": {"engine": engine, "managed": {"replicas": replicas, **managed}},
        }
    )


def by_kind(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def sts_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [sts] = [o for o in objects if o["kind"] == "StatefulSet"]
    return sts


def containers(sts: dict[str, Any]) -> list[dict[str, Any]]:
    spec = sts["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# --- objects, names, labels -----------------------------------------------------------------------------


@pytest.mark.parametrize(("engine", "replicas"), CASES)
def test_objects_and_names(engine: str, replicas: int) -> None:
    objects = render.render_managed(store(engine, replicas))
    expected = [("ConfigMap", "feats-config"), ("Service", "feats-hl"), ("Service", "feats"), ("StatefulSet", "feats")]
    if replicas > 1 and engine in ("redis", "postgres"):
        expected.append(("Service", "feats-ro"))
    if replicas > 1:
        expected.append(("PodDisruptionBudget", "feats"))
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == expected
    assert all(o["metadata"]["namespace"] == NS for o in objects)
    assert {o["apiVersion"] for o in objects} <= {"v1", "apps/v1", "policy/v1"}


@pytest.mark.parametrize(("engine", "replicas"), CASES)
def test_labels_and_selectors(engine: str, replicas: int) -> None:
    ds = store(engine, replicas, networkPolicy=True)
    objects = render.render_managed(ds)
    labels, selector = names.labels(ds), names.selector_labels(ds)
    assert labels == {
        "app.kubernetes.io/name": engine,
        "app.kubernetes.io/instance": NAME,
        "app.kubernetes.io/managed-by": "mlinfra-operator",
        "app.kubernetes.io/component": "datastore",
        "mlinfra.io/datastore": NAME,
    }
    for obj in objects:
        assert obj["metadata"]["labels"] == labels
        if obj["kind"] != "StatefulSet":
            assert "annotations" not in obj["metadata"]
    sts = sts_of(objects)
    # The version the data will be written with (stores.versions keeps it across operator upgrades).
    assert sts["metadata"]["annotations"] == {render.VERSION_ANNOTATION: render.version(ds)}
    assert sts["spec"]["selector"] == {"matchLabels": selector}
    assert sts["spec"]["template"]["metadata"]["labels"] == labels
    assert selector.items() <= labels.items()
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["labels"] == labels  # PVCs are found (and deleted) by these
    objs = by_kind(objects)
    assert objs["Service", "feats-hl"]["spec"]["selector"] == selector
    assert objs["NetworkPolicy", "feats"]["spec"]["podSelector"] == {"matchLabels": selector}
    if replicas > 1:
        pdb = objs["PodDisruptionBudget", "feats"]["spec"]
        assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}


def test_the_datastores_own_labels_and_annotations_are_never_copied() -> None:
    text = json.dumps(render.render_managed(store("postgres", 3, networkPolicy=True)))
    for value in ("ranking", "argo-app", "app.kubernetes.io/part-of", "tracking-id", "user-owned"):
        assert value not in text


@pytest.mark.parametrize(
    ("engine", "primary_only"), [("redis", True), ("postgres", True), ("neo4j", False), ("qdrant", False)]
)
def test_client_service_selects_the_primary_where_replicas_are_read_only(engine: str, primary_only: bool) -> None:
    ds = store(engine, 1 if engine == "neo4j" else 3)
    client = by_kind(render.render_managed(ds))["Service", "feats"]
    expected = names.primary_selector(ds) if primary_only else names.selector_labels(ds)
    assert client["spec"]["selector"] == expected
    if primary_only:
        assert expected["statefulset.kubernetes.io/pod-name"] == "feats-0"


@pytest.mark.parametrize("engine", ["redis", "postgres"])
def test_the_read_only_service_selects_the_replicas_the_operator_labelled(engine: str) -> None:
    ds = store(engine, 3)
    objs = by_kind(render.render_managed(ds))
    read_only, client = objs["Service", "feats-ro"]["spec"], objs["Service", "feats"]["spec"]
    assert read_only["selector"] == {**names.selector_labels(ds), "mlinfra.io/role": "replica"}
    assert read_only["ports"] == client["ports"] and read_only["type"] == "ClusterIP"
    # A single member has no replicas to read from: no read-only Service (the reconcile deletes one left over).
    assert ("Service", "feats-ro") not in by_kind(render.render_managed(store(engine, 1)))
    assert not render.has_read_only_service(store(engine, 1)) and render.has_read_only_service(ds)


@pytest.mark.parametrize(
    ("engine", "ports", "client_ports"),
    [
        ("redis", {"redis": 6379}, {"redis": 6379}),
        ("postgres", {"postgres": 5432}, {"postgres": 5432}),
        ("neo4j", {"bolt": 7687, "http": 7474}, {"bolt": 7687, "http": 7474}),
        ("qdrant", {"http": 6333, "grpc": 6334, "p2p": 6335}, {"http": 6333, "grpc": 6334}),
    ],
)
def test_service_ports(engine: str, ports: dict[str, int], client_ports: dict[str, int]) -> None:
    objs = by_kind(render.render_managed(store(engine)))
    headless, client = objs["Service", "feats-hl"]["spec"], objs["Service", "feats"]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True  # members resolve each other while starting
    assert {p["name"]: p["port"] for p in headless["ports"]} == ports
    assert {p["name"]: p["port"] for p in client["ports"]} == client_ports
    assert all(p["targetPort"] == p["name"] for p in headless["ports"] + client["ports"])
    [main] = sts_of(list(objs.values()))["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == ports


@pytest.mark.parametrize(("engine", "replicas"), CASES)
def test_statefulset(engine: str, replicas: int) -> None:
    sts = sts_of(render.render_managed(store(engine, replicas)))
    spec = sts["spec"]
    assert spec["replicas"] == replicas
    assert spec["serviceName"] == "feats-hl"
    assert spec["podManagementPolicy"] == "OrderedReady"
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    [claim] = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == names.DATA_VOLUME
    assert claim["spec"]["resources"]["requests"]["storage"] == render.DEFAULT_STORAGE_SIZE
    assert "storageClassName" not in claim["spec"]
    pod = spec["template"]["spec"]
    assert pod["enableServiceLinks"] is False  # a Service named like an env var must not leak into the pods
    assert pod["automountServiceAccountToken"] is False
    for container in containers(sts):
        assert any(m["name"] == names.DATA_VOLUME for m in container["volumeMounts"])
    for container in pod["containers"]:
        assert container["readinessProbe"] and container["livenessProbe"]


def test_storage_and_resources() -> None:
    resources = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    sts = sts_of(
        render.render_managed(
            store("postgres", 2, storage={"size": "50Gi", "storageClassName": "fast"}, resources=resources)
        )
    )
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast",
        "resources": {"requests": {"storage": "50Gi"}},
    }
    for container in containers(sts):
        assert container["resources"] == resources


# --- images ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "version", "image"),
    [
        ("redis", None, "redis:7.2"),
        ("redis", "7.4", "redis:7.4"),
        ("postgres", None, "postgres:15"),
        ("postgres", "16", "postgres:16"),
        ("neo4j", None, "neo4j:5.26-community"),
        ("neo4j", "5.20", "neo4j:5.20-community"),
        ("qdrant", None, "qdrant/qdrant:v1.13.6"),
        ("qdrant", "1.14.1", "qdrant/qdrant:v1.14.1"),
    ],
)
def test_image_per_engine_and_version(engine: str, version: str | None, image: str) -> None:
    ds = store(engine, version=version) if version else store(engine)
    assert render.image(ds) == image
    assert {c["image"] for c in containers(sts_of(render.render_managed(ds)))} == {image}


@pytest.mark.parametrize("engine", ["redis", "postgres", "neo4j", "qdrant"])
def test_image_override(engine: str) -> None:
    ds = store(engine, version="7.0", image="registry.example.com/mirror/db:pinned@sha256:abc")
    assert {c["image"] for c in containers(sts_of(render.render_managed(ds)))} == {
        "registry.example.com/mirror/db:pinned@sha256:abc"
    }


# --- security -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("engine", "replicas"), CASES)
def test_restricted_security_context(engine: str, replicas: int) -> None:
    pod = sts_of(render.render_managed(store(engine, replicas)))["spec"]["template"]["spec"]
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] > 0 and sc["runAsGroup"] > 0 and sc["fsGroup"] > 0
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        csc = container["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"] == {"drop": ["ALL"]}
        assert csc["runAsNonRoot"] is True
        assert csc.get("privileged") is False
    # Restricted Pod Security allows only these volume types.
    allowed = {"configMap", "emptyDir", "secret", "downwardAPI", "projected", "persistentVolumeClaim", "name"}
    for volume in pod["volumes"]:
        assert set(volume) <= allowed
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")


@pytest.mark.parametrize(("engine", "replicas"), CASES)
def test_no_secret_in_the_rendered_objects(engine: str, replicas: int) -> None:
    objects = render.render_managed(store(engine, replicas))
    assert "Secret" not in {o["kind"] for o in objects}
    secret_refs = []
    for node in walk(objects):
        if isinstance(node, dict) and "env" in node:
            for var in node["env"]:
                if any(word in var["name"] for word in ("PASSWORD", "API_KEY", "AUTH")):
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == "feats-credentials"
                    secret_refs.append(ref["key"])
    assert set(secret_refs) == set(names.credentials_keys(store(engine).spec.engine)) - {names.USERNAME_KEY}
    # Nor a literal value assigned to a password anywhere (config files, scripts, args): only $VARIABLES
    # (or an @file of neo4j-admin's, named by one).
    literal = re.compile(r"(?i)(password|requirepass|masterauth|api_key)[\s=:]+['\"]?(?![$?%'\"`@-])\S{6,}")
    for node in walk(objects):
        if isinstance(node, str):
            for line in node.splitlines():
                assert line.lstrip().startswith("#") or not literal.search(line), line


def test_neo4j_pod_relies_on_no_convention_of_the_official_image() -> None:
    # NEO4J_AUTH and NEO4J_* settings are read by the official image's entrypoint only, which never runs;
    # the password reaches start.sh as MLINFRA_NEO4J_PASSWORD.
    [main] = sts_of(render.render_managed(store("neo4j")))["spec"]["template"]["spec"]["containers"]
    assert [v["name"] for v in main["env"]] == ["MLINFRA_NEO4J_PASSWORD"]
    assert "/conf" not in {m["mountPath"] for m in main["volumeMounts"]}


# --- PDB, NetworkPolicy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["redis", "postgres", "neo4j", "qdrant"])
def test_network_policy_only_when_asked(engine: str) -> None:
    assert "NetworkPolicy" not in {o["kind"] for o in render.render_managed(store(engine))}
    objs = by_kind(render.render_managed(store(engine, networkPolicy=True)))
    spec = objs["NetworkPolicy", "feats"]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    clients, members = spec["ingress"]
    client_ports = {p["name"] for p in objs["Service", "feats"]["spec"]["ports"]}
    all_ports = {p["name"] for p in objs["Service", "feats-hl"]["spec"]["ports"]}
    assert {p["port"] for p in clients["ports"]} == client_ports
    # Any pod of the namespace; the operator runs outside the cluster (no namespace known): nobody else.
    assert clients["from"] == [{"podSelector": {}}]
    assert {p["port"] for p in members["ports"]} == all_ports
    assert members["from"] == [{"podSelector": {"matchLabels": names.selector_labels(store(engine))}}]
    # The operator as a pod: admitted from its own namespace only, by the label the API server sets on
    # namespaces (a tenant can put the operator's pod labels on its own pods, not rename its namespace).
    objs = by_kind(render.render_managed(store(engine, networkPolicy=True), operator_namespace="mlinfra-system"))
    clients = objs["NetworkPolicy", "feats"]["spec"]["ingress"][0]
    assert clients["from"] == [
        {"podSelector": {}},
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mlinfra-system"}},
            "podSelector": {"matchLabels": names.OPERATOR_POD_LABELS},
        },
    ]


# --- config files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "files"),
    [
        ("redis", {"redis.conf", "entrypoint.sh"}),
        ("postgres", {"postgresql.conf", "pg_hba.conf", "start.sh", "bootstrap.sh", "init-primary.sh"}),
        ("neo4j", {"neo4j.conf", "start.sh"}),
        ("qdrant", {"config.yaml", "entrypoint.sh"}),
    ],
)
def test_config_map_holds_the_config_files(engine: str, files: set[str]) -> None:
    ds = store(engine)
    rendered = render.render_config_files(ds)
    assert set(rendered) == files
    assert by_kind(render.render_managed(ds))["ConfigMap", "feats-config"]["data"] == rendered


@pytest.mark.parametrize(
    ("engine", "config", "lines"),
    [
        (
            "redis",
            {"maxmemory": "1gb", "maxmemory-policy": "allkeys-lru", "save": "3600 1 300 100"},
            ['maxmemory "1gb"', 'maxmemory-policy "allkeys-lru"', 'save "3600 1 300 100"'],
        ),
        (
            "postgres",
            {"shared_buffers": "256MB", "statement_timeout": "30s"},
            ["shared_buffers = '256MB'", "statement_timeout = '30s'", "wal_keep_size = '1GB'"],
        ),
        (
            "neo4j",
            {"server.memory.heap.max_size": "1g", "db.logs.query.enabled": "INFO"},
            ["server.memory.heap.max_size=1g", "db.logs.query.enabled=INFO"],
        ),
    ],
)
def test_allow_listed_config_is_rendered(engine: str, config: dict[str, str], lines: list[str]) -> None:
    text = next(iter(render.render_config_files(store(engine, config=config)).values()))
    for line in lines:
        assert line in text.splitlines()


def test_user_config_overrides_the_operators_default() -> None:
    text = render.render_config_files(store("postgres", config={"wal_keep_size": "4GB"}))["postgresql.conf"]
    assert "wal_keep_size = '4GB'" in text
    assert "1GB" not in text


def test_qdrant_config_is_typed_yaml() -> None:
    import yaml

    config = {"storage.on_disk_payload": "true", "storage.performance.max_search_threads": "4", "log_level": "DEBUG"}
    rendered = yaml.safe_load(render.render_config_files(store("qdrant", config=config))["config.yaml"])
    assert rendered["storage"]["on_disk_payload"] is True
    assert rendered["storage"]["performance"]["max_search_threads"] == 4
    assert rendered["storage"]["storage_path"] == "/qdrant/storage"
    assert rendered["log_level"] == "DEBUG"
    assert rendered["cluster"] == {"enabled": True, "p2p": {"port": 6335}, "consensus": {"tick_period_ms": 100}}


@pytest.mark.parametrize("engine", ["redis", "postgres", "neo4j", "qdrant"])
def test_only_allow_listed_keys_are_written(engine: str) -> None:
    ds = store(engine)
    assert ds.spec.managed is not None
    # The API refuses these; should one get through, it must not reach the config file.
    ds.spec.managed.config = {
        "replicaof": "evil 6379",
        "primary_conninfo": "host=evil",
        "dbms.security.auth_enabled": "false",
        "service.api_key": "x",
    }
    text = "\n".join(render.render_config_files(ds).values())
    for forbidden in ("evil", "auth_enabled=false", "api_key: x"):
        assert forbidden not in text
    assert render.settings(ds) == sorted(render.PROFILES[ds.spec.engine].defaults.items())


@pytest.mark.parametrize("engine", ["redis", "postgres", "neo4j"])
def test_a_line_break_in_a_value_cannot_inject_a_setting(engine: str) -> None:
    key = sorted(ALLOWED_CONFIG[engine])[0]
    ds = store(engine)
    assert ds.spec.managed is not None
    ds.spec.managed.config = {key: "1\nreplicaof evil 6379"}
    with pytest.raises(render.RenderError, match="control character"):
        render.render_config_files(ds)


def test_quoting_filters_keep_one_value_one_argument() -> None:
    env = render.environment()
    assert env.from_string("x {{ v | redis }}").render(v='a "b" \\c') == 'x "a \\"b\\" \\\\c"'
    assert env.from_string("x = {{ v | pgconf }}").render(v="it's \\") == "x = 'it''s \\\\'"
    assert env.from_string("x={{ v | shell }}").render(v="a b; rm -rf /") == "x='a b; rm -rf /'"
    assert env.from_string("{{ v | tojson }}").render(v={"b": 1, "a": "x: y"}) == '{"a": "x: y", "b": 1}'
    with pytest.raises(render.RenderError):
        env.from_string("{{ v | token }}").render(v="two words")
    with pytest.raises(render.RenderError):
        env.from_string("{{ v | setting }}").render(v="key value")


# --- topology scripts -----------------------------------------------------------------------------------


def test_replicated_redis_pods_read_the_primary_record_and_the_client_service_follows_it() -> None:
    def env_of(ds: DataStore) -> dict[str, Any]:
        container = sts_of(render.render_managed(ds))["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e for e in container["env"]}

    assert env_of(store("redis", 3))["MLINFRA_PRIMARY"]["valueFrom"] == {
        "configMapKeyRef": {"name": "feats-primary", "key": "primary", "optional": True}
    }
    # The same template whatever the number of members: scaling never rolls the pods.
    one, three = (sts_of(render.render_managed(store("redis", n)))["spec"]["template"] for n in (1, 3))
    assert one == three
    client = by_kind(render.render_managed(store("redis", 3), primary="feats-2"))["Service", "feats"]
    assert client["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == "feats-2"


def test_scripts_default_to_pod_0_in_the_cluster() -> None:
    redis_files = render.render_config_files(store("redis", 3))
    # The primary record names the primary; without one, pod 0. Replicas follow its per-pod DNS name.
    assert "default_primary=feats-0\n" in redis_files["entrypoint.sh"]
    assert "headless_domain=feats-hl.ml.svc\n" in redis_files["entrypoint.sh"]
    assert "printf 'replicaof %s %s\\n'" in redis_files["entrypoint.sh"]
    pg = render.render_config_files(store("postgres", 3))
    assert "default_primary=feats-0\n" in pg["bootstrap.sh"] and "default_primary=feats-0\n" in pg["start.sh"]
    assert "headless_domain=feats-hl.ml.svc\n" in pg["bootstrap.sh"]
    assert "default_pgdata=/var/lib/postgresql/data/pgdata\n" in pg["bootstrap.sh"]
    # Standbys stream with the password file start.sh writes, never a password on the data volume (no -R).
    assert "-X stream" in pg["bootstrap.sh"] and "-R" not in pg["bootstrap.sh"].split("pg_basebackup", 1)[1]
    assert f"default_passfile={render.PG_PASSFILE}\n" in pg["bootstrap.sh"]
    ds = store("postgres", 3)
    assert render.pg_standby_conninfo(ds, "feats-2", "feats-1") == (
        f"host=feats-2.feats-hl.ml.svc port=5432 user=replicator passfile={render.PG_PASSFILE} application_name=feats-1"
    )
    assert "host    replication  replicator" in pg["pg_hba.conf"]
    assert "host    replication  postgres" in pg["pg_hba.conf"]  # backups and the WAL archiver
    qdrant = render.render_config_files(store("qdrant", 3))["entrypoint.sh"]
    assert "default_bootstrap_uri=http://feats-0.feats-hl.ml.svc:6335\n" in qdrant
    assert '--bootstrap "$bootstrap_uri" --uri "$self_uri"' in qdrant
    neo4j = render.render_config_files(store("neo4j"))["neo4j.conf"]
    assert "server.default_advertised_address=feats.ml.svc" in neo4j.splitlines()


def test_postgres_pods_bootstrap_then_run_the_rendered_config() -> None:
    pod = sts_of(render.render_managed(store("postgres", 3)))["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["command"] == ["bash", "/etc/mlinfra/bootstrap.sh"]
    [main] = pod["containers"]
    assert main["command"] == ["bash", "/etc/mlinfra/start.sh"]
    assert "args" not in main
    env = {v["name"]: v for v in main["env"]}
    assert env["PGDATA"]["value"] == "/var/lib/postgresql/data/pgdata"
    # SIGTERM would be a "smart" shutdown waiting for clients: stop fast within the grace period.
    assert main["lifecycle"]["preStop"]["exec"]["command"] == ["pg_ctl", "stop", "-m", "fast", "-w", "-t", "50"]
    assert pod["terminationGracePeriodSeconds"] == 60
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The official image's initdb convention is gone: start.sh runs init-primary.sh itself.
    assert not any("docker-entrypoint" in json.dumps(v) for v in pod["volumes"])


def test_postgres_start_script_runs_initdb_and_the_rendered_config() -> None:
    files = render.render_config_files(store("postgres", 3))
    start = files["start.sh"]
    assert "default_pgdata=/var/lib/postgresql/data/pgdata\n" in start
    assert "default_config_dir=/etc/mlinfra\n" in start
    assert "default_run_dir=/run/mlinfra\n" in start
    assert '--pwfile="$pwfile"' in start
    # The auth methods initdb writes agree with the rendered pg_hba.conf.
    assert "--auth-local=scram-sha-256 --auth-host=scram-sha-256" in start
    assert [line.split()[-1] for line in files["pg_hba.conf"].splitlines() if line and not line.startswith("#")] == [
        "scram-sha-256"
    ] * 4
    assert 'bash "${config_dir}/init-primary.sh"' in start
    assert 'exec postgres -D "$pgdata" "${server_args[@]}"' in start
    assert '"cluster_name=${pod}"' in start


def test_postgres_socket_directory_is_a_writable_volume() -> None:
    # The server's uid must be able to create its socket there whatever the image's ownership of the path.
    pod = sts_of(render.render_managed(store("postgres", 3)))["spec"]["template"]["spec"]
    [main] = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    conf = render.render_config_files(store("postgres", 3))["postgresql.conf"]
    assert f"unix_socket_directories = '{render.PG_SOCKET_DIR}'" in conf.splitlines()
    assert volumes[mounts[render.PG_SOCKET_DIR]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    # The initdb password file goes to a memory-backed directory, never to the data volume.
    assert volumes[mounts["/run/mlinfra"]]["emptyDir"]["medium"] == "Memory"


def test_neo4j_start_script_owns_the_config_and_the_initial_password() -> None:
    pod = sts_of(render.render_managed(store("neo4j")))["spec"]["template"]["spec"]
    [main] = pod["containers"]
    assert main["command"] == ["bash", "/etc/mlinfra/start.sh"]
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/mlinfra"]]["configMap"] == {"name": "feats-config"}
    assert volumes[mounts["/run/mlinfra"]]["emptyDir"]["medium"] == "Memory"
    files = render.render_config_files(store("neo4j"))
    start, conf = files["start.sh"], files["neo4j.conf"].splitlines()
    assert "default_config=/etc/mlinfra/neo4j.conf\n" in start
    assert 'export NEO4J_CONF="${run_dir}/conf"' in start
    # The password reaches neo4j-admin in an argument file, never as an argument.
    assert 'neo4j-admin dbms set-initial-password "@${argfile}"' in start
    assert start.rstrip().endswith("exec neo4j console")
    # What the script assumes about the rendered config.
    assert "server.directories.data=/data" in conf
    assert "server.directories.run=/run/mlinfra/neo4j" in conf
    assert "dbms.usage_report.enabled=false" in conf


@pytest.mark.parametrize(("engine", "replicas"), CASES)
def test_every_engine_starts_with_a_rendered_script(engine: str, replicas: int) -> None:
    """The pods never depend on an image's entrypoint: the command is one of the ConfigMap's scripts."""
    objects = render.render_managed(store(engine, replicas))
    data = by_kind(objects)["ConfigMap", "feats-config"]["data"]
    for container in containers(sts_of(objects)):
        shell, script = container["command"]
        assert shell == "bash"
        assert script.startswith(render.CONFIG_DIR + "/")
        assert script.removeprefix(render.CONFIG_DIR + "/") in data


# --- determinism and the template rails -----------------------------------------------------------------


@pytest.mark.parametrize(("engine", "replicas"), CASES)
def test_deterministic(engine: str, replicas: int) -> None:
    first = render.render_managed(store(engine, replicas, networkPolicy=True, config={}))
    again = render.render_managed(store(engine, replicas, networkPolicy=True, config={}))
    assert json.dumps(first) == json.dumps(again)


def test_config_change_rolls_the_pods_and_nothing_else_does() -> None:
    def config_hash(ds: DataStore) -> str:
        annotations = sts_of(render.render_managed(ds))["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations[render.CONFIG_HASH_ANNOTATION]
        return value

    base = config_hash(store("redis", 3, config={"maxmemory": "1gb"}))
    assert config_hash(store("redis", 3, config={"maxmemory": "1gb"})) == base
    assert config_hash(store("redis", 3, config={"maxmemory": "2gb"})) != base
    assert config_hash(store("redis", 3, config={"maxmemory": "1gb"}, image="redis:7.4")) == base


def test_strict_undefined_catches_a_missing_variable() -> None:
    env = render.environment()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("image: {{ imgae | tojson }}").render(image="redis:7.2")
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("port {{ ports.nope | redis }}").render(ports={"redis": 6379})


def test_a_value_printed_without_quoting_is_refused() -> None:
    with pytest.raises(render.RenderError, match="without a quoting filter"):
        render.environment().from_string("name: {{ name }}").render(name="x\ninjected: true")


def test_every_template_renders_for_every_engine() -> None:
    # Every template file is used by some engine: none is dead, and none needs a variable the context lacks.
    loader = render.environment().loader
    assert loader is not None
    templates = set(loader.list_templates())
    used = {
        f"common/{t}"
        for t in (
            "configmap.yaml.j2",
            "headless-service.yaml.j2",
            "client-service.yaml.j2",
            "statefulset.yaml.j2",
            "pdb.yaml.j2",
            "networkpolicy.yaml.j2",
        )
    }
    for engine, profile in render.PROFILES.items():
        used |= {f"{engine}/{f}.j2" for f in profile.files} | {f"{engine}/pod.yaml.j2"}
        render.render_managed(store(engine, 1 if engine == "neo4j" else 2, networkPolicy=True))
    assert templates == used


def test_external_stores_are_not_rendered() -> None:
    ds = DataStore.model_validate(
        {
            "metadata": {"name": NAME, "namespace": NS},
            "spec": {
                "engine": "redis",
                "external": {"endpoint": "r.example.com:6379", "credentialsSecretRef": {"name": "r"}},
            },
        }
    )
    with pytest.raises(render.RenderError, match="not managed"):
        render.render_managed(ds)
