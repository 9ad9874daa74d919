"""Every metric the chart's alerts and the Grafana dashboard use exists in the operator's real /metrics.

One DataStore of each engine (the PostgreSQL one with a backup schedule and one complete Backup in a real S3
server), a FeatureView, a ModelRegistry with lineage and a VectorIndex, all Ready with the real operator;
then the operator's /metrics is scraped and every metric name in the rendered
PrometheusRule's expressions and in the dashboard's queries must have samples there — for the mlinfra_*
names, samples of this test's own objects. A name that is misspelt, renamed in metrics.py, or never set by a
handler fails here, not in someone's Prometheus at 3 a.m.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from e2e_support import condition, get_json, run_job_command, wait_for
from mlinfra.devenv import operator as op_mod
from mlinfra.devenv import tools
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.minio import MinioServer
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.operator import OperatorProcess
from mlinfra.devenv.postgres import PostgresCluster

DASHBOARD = tools.repo_root() / "charts" / "mlinfra-operator" / "dashboards" / "mlinfra.json"
# A metric name in PromQL: our prefixes, then identifier characters. Label names and values never start so.
NAME = re.compile(r"\b(?:mlinfra|controller_runtime)_[A-Za-z0-9_]*[A-Za-z0-9]\b")
# A series name -> (the family it belongs to, the family types that have such series). A gauge is referred
# to by its own name; a counter only as _total; a histogram only through _bucket, _sum or _count.
SUFFIXES = (
    ("_total", {"counter"}),
    ("_bucket", {"histogram"}),
    ("_sum", {"histogram", "summary"}),
    ("_count", {"histogram", "summary"}),
)
KINDS = {
    "DataStore": "datastores",
    "FeatureView": "featureviews",
    "ModelRegistry": "modelregistries",
    "VectorIndex": "vectorindexes",
}


def family_of(series: str, types: dict[str, str]) -> str | None:
    """The declared family ``series`` belongs to, or None when the scrape has no family with such series."""
    if types.get(series) in ("gauge", "untyped"):
        return series
    for suffix, kinds in SUFFIXES:
        base = series.removesuffix(suffix)
        if series.endswith(suffix) and types.get(base) in kinds:
            return base
    return None


def rule_exprs(cp: ControlPlane) -> list[str]:
    rendered = op_mod.helm(
        cp,
        "template",
        "mlinfra",
        str(tools.repo_root() / "charts" / "mlinfra-operator"),
        "--kube-version",
        cp.tools.kubernetes_version,
        "--set",
        "prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ).stdout
    [rule] = [d for d in yaml.safe_load_all(rendered) if d]
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return exprs + [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def scene(cp: ControlPlane, ns: str, pg: PostgresCluster, graph: Neo4jServer, s3: MinioServer) -> None:
    table = f"emb_{ns[-6:]}"
    bucket = s3.new_bucket("metrics")
    s3_user = s3.add_user(bucket)
    cp.kubectl(
        "create",
        "secret",
        "generic",
        "s3-creds",
        "-n",
        ns,
        f"--from-literal=accessKeyId={s3_user.access_key}",
        f"--from-literal=secretAccessKey={s3_user.secret_key}",
    )
    with pg.primary.connect() as conn:
        conn.execute(
            f"create table public.{table} (id bigint primary key, embedding real[], "
            "updated_at timestamptz not null default now())"
        )
    for secret, user, password in (("pg-creds", "postgres", pg.password), ("neo-creds", "neo4j", graph.password)):
        cp.kubectl(
            "create",
            "secret",
            "generic",
            secret,
            "-n",
            ns,
            f"--from-literal=username={user}",
            f"--from-literal=password={password}",
        )

    def store(name: str, engine: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "DataStore",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"engine": engine, **spec},
        }

    def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }

    cp.apply(
        [
            store(
                "offline",
                "postgres",
                {
                    "external": {
                        "endpoint": f"127.0.0.1:{pg.primary.port}",
                        "credentialsSecretRef": {"name": "pg-creds"},
                    },
                    # Backups: the schedule's interval gauge, and (with the Backup below) the last success.
                    "backup": {
                        "target": {
                            "s3": {
                                "bucket": bucket,
                                "endpoint": s3.endpoint,
                                "credentialsSecretRef": {"name": "s3-creds"},
                                "tls": {"enabled": False},
                            }
                        },
                        "schedule": "0 3 * * *",
                    },
                },
            ),
            store(
                "graph",
                "neo4j",
                {"external": {"endpoint": f"127.0.0.1:{graph.port}", "credentialsSecretRef": {"name": "neo-creds"}}},
            ),
            # Managed, with a replica: replication lag series come from a live replica the backer runs.
            store("online", "redis", {"managed": {"replicas": 2, "storage": {"size": "1Gi"}}}),
            store("vectors", "qdrant", {"managed": {"replicas": 1, "storage": {"size": "1Gi"}}}),
            resource(
                "FeatureView",
                "clicks",
                {
                    "entities": [{"name": "user_id", "type": "int64"}],
                    "features": [{"name": "clicks", "type": "int64"}],
                    "offline": {"storeRef": {"name": "offline"}, "table": f"clicks_{ns[-6:]}"},
                    "online": {"storeRef": {"name": "online"}, "ttl": "1h"},
                    "materialization": {"schedule": "*/5 * * * *"},
                    "freshness": {"maxLag": "10m"},
                },
            ),
            resource(
                "ModelRegistry",
                "models",
                {
                    "metadataStoreRef": {"name": "offline"},
                    "lineageStoreRef": {"name": "graph"},
                    "database": f"reg_{ns[-6:]}",
                    "lineageSync": {"interval": "2s", "maxLag": "5m"},
                },
            ),
            resource(
                "VectorIndex",
                "docs",
                {
                    "storeRef": {"name": "vectors"},
                    "collection": f"docs_{ns[-6:]}",
                    "vectors": {"size": 4, "distance": "Cosine"},
                    "source": {
                        "storeRef": {"name": "offline"},
                        "table": table,
                        "idColumn": "id",
                        "vectorColumn": "embedding",
                        "updatedAtColumn": "updated_at",
                    },
                    "sync": {"schedule": "*/10 * * * *", "maxLag": "1h"},
                },
            ),
        ]
    )


def all_ready(cp: ControlPlane, ns: str) -> bool:
    items = get_json(cp, ",".join(KINDS.values()), "-n", ns)["items"]
    return len(items) == 7 and all(condition(o, "Ready").get("status") == "True" for o in items)


def scrape(operator: OperatorProcess) -> tuple[dict[str, str], dict[str, list[dict[str, str]]]]:
    """Family name -> type, and series name -> the label sets of its samples."""
    types: dict[str, str] = {}
    samples: dict[str, list[dict[str, str]]] = defaultdict(list)
    for family in text_string_to_metric_families(operator.metrics()):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name].append(sample.labels)
    return types, samples


def missing(referenced: set[str], ns: str, operator: OperatorProcess) -> list[str]:
    types, samples = scrape(operator)
    problems = []
    for name in sorted(referenced):
        family = family_of(name, types)
        if family is None:
            declared = {n: t for n, t in types.items() if name.startswith(n)}
            problems.append(f"{name}: no such series family in /metrics (families with that prefix: {declared})")
        elif name.startswith("mlinfra_") and not any(s.get("namespace") == ns for s in samples.get(name, [])):
            problems.append(f"{name}: declared ({types[family]}), but no sample for this test's objects")
        elif not samples.get(name):
            problems.append(f"{name}: declared ({types[family]}), but no samples")
    return problems


def test_every_alerted_and_charted_metric_is_exported(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    backer: Backer,
    postgres_cluster: PostgresCluster,
    neo4j_server: Neo4jServer,
    s3_server: MinioServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    cp, ns = control_plane, namespace
    alerts = {n for e in rule_exprs(cp) for n in NAME.findall(e)}
    charted = {n for e in dashboard_exprs() for n in NAME.findall(e)}
    # The sets are not trivially small: a regex that matched nothing would pass vacuously.
    assert len(alerts) >= 9 and len(charted) >= 15, (alerts, charted)
    assert "controller_runtime_reconcile_errors_total" in alerts
    assert "controller_runtime_reconcile_time_seconds_bucket" in charted

    scene(cp, ns, postgres_cluster, neo4j_server, s3_server)
    wait_for("every object Ready", lambda: all_ready(cp, ns), 240)
    # One complete Backup of the store: its Job's command run here (kwok runs no pod).
    cp.apply(
        [
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "Backup",
                "metadata": {"name": "first", "namespace": ns},
                "spec": {"dataStoreRef": {"name": "offline"}},
            }
        ]
    )
    wait_for("the backup Job", lambda: get_json(cp, "jobs", "-n", ns, "-l", "mlinfra.io/backup")["items"] != [], 60)
    pod = get_json(cp, "job", "first-backup", "-n", ns)["spec"]["template"]["spec"]
    run_job_command(cp, ns, pod, backer, tmp_path / "backup-job")
    wait_for(
        "Backup first Ready",
        lambda: condition(get_json(cp, "backup", "first", "-n", ns), "Ready").get("status") == "True",
        60,
    )
    # Gauges are set by the observing timers: give them a few ticks, then say exactly what is missing.
    problems: list[str] = []

    def complete() -> bool:
        problems[:] = missing(alerts | charted, ns, operator)
        return not problems

    try:
        wait_for("every referenced metric in /metrics", complete, 60)
    except Exception as exc:
        raise AssertionError("\n".join(problems)) from exc


def test_suffixes_resolve_to_their_family_type() -> None:
    types = {"c": "counter", "h": "histogram", "g": "gauge", "s": "summary"}
    assert [family_of(n, types) for n in ("c_total", "h_bucket", "h_sum", "h_count", "g", "s_count")] == [
        "c",
        "h",
        "h",
        "h",
        "g",
        "s",
    ]
    # A counter's bare name, a histogram's bare name and a gauge with a suffix are not series Prometheus has.
    assert [family_of(n, types) for n in ("c", "h", "g_total", "s_bucket", "nope")] == [None] * 5
