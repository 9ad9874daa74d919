"""VectorIndex status, source checks and sync jobs: pure functions, table-driven."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from mlinfra.api import common
from mlinfra.api import vectorindex as api
from mlinfra.problems import Problem
from mlinfra.vectors import jobs, source, status

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def conds(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def healthy(**extra: Any) -> status.Facts:
    values: dict[str, Any] = {
        "generation": 3,
        "active": "docs-1a2b3c4d",
        "points": 10,
        "indexed_vectors": 0,
        "collection_status": "green",
        "has_source": True,
        "rows_behind": 0,
        "source_watermark": T0,
        "index_watermark": T0,
        "lag_seconds": 0.0,
    }
    values.update(extra)
    return status.Facts(**values)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (
            healthy(),
            {
                "Ready": ("True", "Ready"),
                "CollectionReady": ("True", "Ready"),
                "Synced": ("True", "CaughtUp"),
                "Reindexing": ("False", "Idle"),
                "Stalled": ("False", "Ready"),
            },
        ),
        (healthy(rows_behind=5, lag_seconds=30.0), {"Ready": ("True", "Ready"), "Synced": ("False", "Behind")}),
        (
            healthy(rows_behind=5, lag_seconds=3600.0, max_lag=datetime.timedelta(minutes=30)),
            {"Ready": ("True", "Ready"), "Synced": ("False", "LagExceeded")},
        ),
        (
            healthy(rows_behind=5, lag_seconds=60.0, max_lag=datetime.timedelta(minutes=30)),
            {"Synced": ("False", "Behind")},
        ),
        (
            healthy(last_run=common.SyncRun(outcome="Failed", message="boom")),
            {"Ready": ("False", "SyncFailed"), "Synced": ("False", "SyncFailed")},
        ),
        (healthy(job_failed="Job x failed: DeadlineExceeded"), {"Ready": ("False", "SyncFailed")}),
        (healthy(has_source=False), {"Ready": ("True", "Ready"), "Synced": ("True", "NoSource")}),
        (healthy(active=None), {"Ready": ("False", "AliasMissing"), "CollectionReady": ("False", "AliasMissing")}),
        (
            healthy(collection_status="red", optimizer_error="disk full"),
            {"Ready": ("False", "CollectionRed"), "CollectionReady": ("False", "CollectionRed")},
        ),
        (healthy(collection_status="yellow"), {"Ready": ("True", "Ready"), "CollectionReady": ("True", "Ready")}),
        (
            status.Facts(generation=3, rebuilding="vectors.size: 3 -> 4"),
            {
                "Ready": ("False", "Rebuilding"),
                "Reconciling": ("True", "Rebuilding"),
                "Reindexing": ("True", "Rebuilding"),
            },
        ),
    ],
)
def test_conditions(facts: status.Facts, expected: dict[str, tuple[str, str]]) -> None:
    got = conds(status.compute(facts, None))
    for type_, value in expected.items():
        assert got[type_] == value, type_


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        (
            Problem("BackfillFailed", "count mismatch", stalled=False),
            {
                "Ready": ("False", "BackfillFailed"),
                "Reindexing": ("False", "BackfillFailed"),
                "Reconciling": ("True", "BackfillFailed"),
                "Stalled": ("False", "Ready"),
            },
        ),
        (
            Problem("InvalidSpec", "column x missing", stalled=True),
            {
                "Ready": ("False", "InvalidSpec"),
                "Stalled": ("True", "InvalidSpec"),
                "Reconciling": ("False", "InvalidSpec"),
                "Reindexing": ("False", "Idle"),
            },
        ),
    ],
)
def test_problem_conditions(problem: Problem, expected: dict[str, tuple[str, str]]) -> None:
    st = status.problem_status({"metadata": {"generation": 3}}, problem)
    assert st["observedGeneration"] == 3
    got = conds(st)
    assert list(got) == ["Ready", "Reconciling", "Stalled", "Reindexing"]
    for type_, value in expected.items():
        assert got[type_] == value, type_


def test_fields_and_observed_generation() -> None:
    st = status.compute(
        healthy(
            previous="docs-00000000",
            replicas=[(0, 7, "Active")],
            rows_behind=2,
            lag_seconds=12.4,
            last_run=common.SyncRun(outcome="Succeeded", rows=4, start_time=T0),
        ),
        None,
    )
    assert st["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in st["conditions"])
    assert (st["activeCollection"], st["previousCollection"], st["points"]) == ("docs-1a2b3c4d", "docs-00000000", 10)
    assert st["replicas"] == [{"shard": 0, "peer": "7", "state": "Active"}]
    assert st["sync"]["rowsBehind"] == 2 and st["sync"]["lagSeconds"] == 12
    assert st["sync"]["sourceWatermark"] == "2026-01-01T00:00:00Z"
    assert st["sync"]["lastRun"]["outcome"] == "Succeeded"
    assert "previous collection docs-00000000 kept for rollback" in next(
        c["message"] for c in st["conditions"] if c["type"] == "Reindexing"
    )
    # Identical facts compute an identical status: nothing to write when idle.
    assert status.compute(healthy(), st) == status.compute(healthy(), status.compute(healthy(), st))


def test_a_problem_keeps_what_was_observed_and_a_fix_clears_backfill_failed() -> None:
    ok = status.compute(healthy(), None)
    failed = status.problem_status(
        {"metadata": {"generation": 4}, "status": ok}, Problem("BackfillFailed", "x", stalled=False)
    )
    assert failed["activeCollection"] == "docs-1a2b3c4d" and failed["points"] == 10
    again = status.compute(healthy(generation=4), failed)
    assert conds(again)["Reindexing"] == ("False", "Idle")


COLUMNS = {"id": "int8", "embedding": "_float4", "updated_at": "timestamptz", "deleted": "bool", "title": "text"}


def src(**extra: Any) -> api.Source:
    values: dict[str, Any] = {
        "storeRef": {"name": "pg"},
        "table": "docs",
        "idColumn": "id",
        "vectorColumn": "embedding",
        "updatedAtColumn": "updated_at",
        "deletedColumn": "deleted",
        "payloadColumns": ["title"],
    }
    values.update(extra)
    return api.Source.model_validate(values)


@pytest.mark.parametrize(
    ("columns", "source_", "problems"),
    [
        (COLUMNS, src(), []),
        ({**COLUMNS, "embedding": "vector"}, src(), []),
        (
            {k: v for k, v in COLUMNS.items() if k != "deleted"},
            src(),
            ["spec.source.deletedColumn: column 'deleted' does not exist in public.docs"],
        ),
        (
            COLUMNS,
            src(payloadColumns=["title", "lang"]),
            ["spec.source.payloadColumns[1]: column 'lang' does not exist in public.docs"],
        ),
        (
            {**COLUMNS, "embedding": "text"},
            src(),
            [
                "spec.source.vectorColumn: column 'embedding' is text, expected real[], double precision[] or "
                "pgvector's vector"
            ],
        ),
        (
            {**COLUMNS, "id": "float8"},
            src(),
            ["spec.source.idColumn: column 'id' is float8, expected an integer or uuid"],
        ),
        (
            {**COLUMNS, "deleted": "int4"},
            src(),
            ["spec.source.deletedColumn: column 'deleted' is int4, expected boolean"],
        ),
    ],
)
def test_source_column_problems(columns: dict[str, str], source_: api.Source, problems: list[str]) -> None:
    assert source.column_problems(source_, columns) == problems


def test_pgvector_columns_are_read_as_real_arrays() -> None:
    assert source.SourceShape("vector").pgvector and not source.SourceShape("_float4").pgvector
    assert "::real[]" in repr(source.vector_expression(src(), source.SourceShape("vector")))
    assert "::real[]" not in repr(source.vector_expression(src(), source.SourceShape("_float4")))


def index(**spec: Any) -> api.VectorIndex:
    base: dict[str, Any] = {
        "storeRef": {"name": "vectors"},
        "collection": "docs",
        "vectors": {"size": 4, "distance": "Cosine"},
    }
    base.update(spec)
    return api.VectorIndex.model_validate(
        {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "VectorIndex",
            "metadata": {"name": "docs", "namespace": "ml"},
            "spec": base,
        }
    )


def test_cronjob_only_with_a_schedule_and_a_source() -> None:
    owner = {"apiVersion": "mlinfra.io/v1alpha1", "kind": "VectorIndex", "name": "docs", "uid": "u"}
    assert jobs.cronjob(index(), "img", owner) is None
    with_sync = index(
        source=src().model_dump(by_alias=True, exclude_none=True), sync={"schedule": "*/5 * * * *", "suspend": True}
    )
    cron = jobs.cronjob(with_sync, "img", owner)
    assert cron is not None and cron["spec"]["suspend"] is True
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["sync", "vectorindex", "ml/docs"]
    # The source as the index's own sync role (not the store's admin Secret); Qdrant as its store.
    assert {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == {"docs-sync-source", "vectors-conn"}
    assert pod["automountServiceAccountToken"] is False


def test_hard_deletes_make_every_run_a_full_one() -> None:
    owner = {"apiVersion": "mlinfra.io/v1alpha1", "kind": "VectorIndex", "name": "docs", "uid": "u"}
    spec = index(
        source=src().model_dump(by_alias=True, exclude_none=True), sync={"schedule": "*/5 * * * *", "hardDeletes": True}
    )
    cron = jobs.cronjob(spec, "img", owner)
    assert cron is not None
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["sync", "vectorindex", "ml/docs", "--full"]
