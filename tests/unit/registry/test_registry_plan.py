"""The registry's pure planning: which migrations run, and how outbox events become Cypher runs."""

from __future__ import annotations

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
