"""The registry's pure planning: which migrations run, and how outbox events become Cypher runs (each within
its registry)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from mlinfra.problems import ProblemError
from mlinfra.registry import lineage, migrate, sync_cli
from mlinfra.registry.jobs import cronjob, cronjob_name

M = [
    migrate.Migration(1, "core", "select 1"),
    migrate.Migration(2, "more", "select 2"),
    migrate.Migration(3, "most", "select 3"),
]


def applied(*versions: int) -> dict[int, str]:
    return {v: M[v - 1].checksum for v in versions}


def test_plan_from_empty_and_from_every_intermediate_version() -> None:
    assert [m.version for m in migrate.plan({}, M, "latest")] == [1, 2, 3]
    assert [m.version for m in migrate.plan(applied(1), M, "latest")] == [2, 3]
    assert [m.version for m in migrate.plan(applied(1, 2), M, 2)] == []
    assert [m.version for m in migrate.plan(applied(1), M, 2)] == [2]
    assert migrate.plan(applied(1, 2, 3), M, "latest") == []


@pytest.mark.parametrize(
    ("done", "target", "reason", "words"),
    [
        (applied(1, 2), 1, "InvalidSpec", "never downgrade"),
        ({}, 9, "InvalidSpec", "does not exist"),
        ({1: "0" * 64}, "latest", migrate.MIGRATION_CHECKSUM_MISMATCH, "0001_core.sql"),
        ({**applied(1, 2, 3), 4: "x"}, "latest", migrate.SCHEMA_NEWER_THAN_OPERATOR, "migration 4"),
    ],
)
def test_refusals_say_what_is_wrong(done: dict[int, str], target: migrate.Target, reason: str, words: str) -> None:
    with pytest.raises(ProblemError) as err:
        migrate.plan(done, M, target)
    assert err.value.problem.reason == reason
    assert err.value.problem.stalled
    assert words in err.value.problem.message


def test_shipped_migrations_are_numbered_without_gaps() -> None:
    shipped = migrate.shipped()
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
    assert migrate.latest_version() == len(shipped)


def test_consecutive_events_of_a_kind_share_one_unwind() -> None:
    events = [lineage.Event(i, "registered_models.insert", {"id": i, "name": f"m{i}"}, None) for i in (1, 2, 3)]
    events.append(lineage.Event(4, "datasets.insert", {"id": 1, "name": "d"}, None))
    runs = lineage.plan(events)
    assert [len(params) for _, params in runs] == [3, 1]
    assert all("UNWIND $events AS e" in query for query, _ in runs)


def test_a_relinked_dataset_loses_its_old_edge() -> None:
    old = {"model_version_id": 1, "dataset_id": 2, "relation": "EVALUATED_ON"}
    new = {**old, "relation": "TRAINED_ON"}
    steps = lineage.statements(lineage.Event(9, "model_version_datasets.update", new, old))
    assert len(steps) == 2
    assert "EVALUATED_ON" in steps[0][0] and "TRAINED_ON" in steps[1][0]


def test_events_the_graph_does_not_show_plan_nothing() -> None:
    assert lineage.statements(lineage.Event(1, "params.insert", {"key": "lr"}, None)) == []


def every_statement() -> set[str]:
    """The Cypher of every event kind the graph shows, each operation, each relation."""
    rows: dict[str, dict[str, Any]] = {
        "registered_models": {"id": 1, "name": "m", "description": None},
        "model_versions": {"id": 1, "model_id": 1, "version": 1, "stage": "none", "run_id": None},
        "datasets": {"id": 1, "name": "d", "version": "", "uri": "s3://d", "checksum": None},
        "deployments": {"id": 1, "model_version_id": 1, "environment": "prod", "deployed_at": None},
        "model_version_features": {"model_version_id": 1, "feature_view_namespace": "ml", "feature_view_name": "f"},
    }
    for relation in lineage.RELATIONS:
        rows[f"model_version_datasets:{relation}"] = {"model_version_id": 1, "dataset_id": 1, "relation": relation}
    out = set()
    for key, row in rows.items():
        table = key.split(":")[0]
        for op in ("insert", "update", "delete"):
            event = lineage.Event(1, f"{table}.{op}", None if op == "delete" else row, None if op == "insert" else row)
            out |= {query for query, _ in lineage.statements(event)}
    return out


NODE_PATTERN = re.compile(r"\(\s*\w*\s*:\s*(\w+)\s*(\{[^}]*\})?\s*\)")


def test_every_node_the_sync_touches_is_one_of_its_registry() -> None:
    """Two registries share one Neo4j database, with overlapping ids: a statement that matched or merged a
    labelled node without its registry would reach (or merge into) another registry's node."""
    queries = every_statement()
    assert len(queries) == 4 + 4 + 2 * 2 + 2  # upserts and deletes of 4 tables, 2 relations, features
    labelled = 0
    for query in queries:
        assert "$registry" in query
        for match in NODE_PATTERN.finditer(query):
            labelled += 1
            assert match.group(2) and "registry: $registry" in match.group(2), (match.group(0), query)
    assert labelled >= len(queries)


def test_registry_is_namespace_slash_name() -> None:
    assert lineage.check_registry("ml/models") == "ml/models"
    for bad in ("models", "ml/models/x", "/models", "ml/", "ml /models", ""):
        with pytest.raises(ValueError, match="<namespace>/<name>"):
            lineage.check_registry(bad)


class FakeSession:
    """SHOW CONSTRAINTS / SHOW INDEXES answers (the only calls ``legacy_drops`` makes)."""

    def __init__(self, constraints: list[dict[str, Any]], indexes: list[dict[str, Any]]) -> None:
        self.answers = {"SHOW CONSTRAINTS": constraints, "SHOW INDEXES": indexes}

    def run(self, query: Any) -> FakeSession.Result:
        text = str(query.text)
        return self.Result(next(rows for show, rows in self.answers.items() if text.startswith(show)))

    class Result:
        def __init__(self, rows: list[dict[str, Any]]) -> None:
            self.rows = rows

        def data(self) -> list[dict[str, Any]]:
            return self.rows


def test_only_the_previous_versions_own_constraints_and_indexes_are_dropped() -> None:
    def row(name: str, label: str, *props: str) -> dict[str, Any]:
        return {"name": name, "labelsOrTypes": [label], "properties": list(props)}

    session = FakeSession(
        [
            row("model_id", "Model", "id"),  # the previous version's
            row("deployment_id", "Deployment", "id"),
            row("lineage_model", "Model", "registry", "id"),  # this version's
            row("dataset_id", "Thing", "id"),  # a user's, named like ours
        ],
        [
            row("model_name", "Model", "name"),
            row("dataset_name", "Dataset", "name"),  # a user's: ours was on (name, version)
            row("model_id", "Model", "id"),  # the constraint's own index: goes with it
        ],
    )
    assert lineage.legacy_drops(session) == [  # type: ignore[arg-type]
        "DROP CONSTRAINT model_id IF EXISTS",
        "DROP CONSTRAINT deployment_id IF EXISTS",
        "DROP INDEX model_name IF EXISTS",
    ]


def test_lineage_cronjob_only_with_a_schedule() -> None:
    from mlinfra.api.modelregistry import ModelRegistry

    body = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "ModelRegistry",
        "metadata": {"name": "m", "namespace": "ml"},
        "spec": {"metadataStoreRef": {"name": "pg"}, "lineageStoreRef": {"name": "neo"}},
    }
    owner = {"apiVersion": "mlinfra.io/v1alpha1", "kind": "ModelRegistry", "name": "m", "uid": "u"}
    assert cronjob(ModelRegistry.model_validate(body), "img", owner) is None
    body["spec"]["lineageSync"] = {"schedule": "*/15 * * * *"}
    cj = cronjob(ModelRegistry.model_validate(body), "img", owner)
    assert cj is not None and cj["metadata"]["name"] == cronjob_name("m")
    container = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["sync", "modelregistry", "ml/m"]
    assert {e["name"] for e in container["env"]} >= {
        sync_cli.SPEC_ENV,
        sync_cli.METADATA_DIR_ENV,
        sync_cli.LINEAGE_DIR_ENV,
    }
