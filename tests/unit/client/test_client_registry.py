"""Pure parts of the registry SDK: references, validation, value encoding (no database)."""

from __future__ import annotations

import datetime

import pytest

from mlinfra.client import registry

UTC = datetime.UTC
NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_version_key_accepts_a_version_a_number_or_an_alias() -> None:
    mv = registry.ModelVersion(id=7, model="churn", version=3, stage="none", aliases=(), created_at=NOW)
    assert registry.version_key(mv) == ("churn", 3)
    assert registry.version_key(("churn", 2)) == ("churn", 2)
    assert registry.version_key(("churn", "champion")) == ("churn", "champion")
    assert mv.ref == ("churn", 3)


@pytest.mark.parametrize("bad", ["churn", ("churn",), ("churn", True), ("churn", 1.5), (1, 2)])
def test_version_key_refuses_anything_else(bad: object) -> None:
    with pytest.raises(TypeError):
        registry.version_key(bad)  # type: ignore[arg-type]


def test_dataset_key_defaults_to_the_unversioned_dataset() -> None:
    assert registry.dataset_key("events") == ("events", "")
    assert registry.dataset_key(("events", "2024-05")) == ("events", "2024-05")
    ds = registry.Dataset(id=1, name="events", version="v2", uri="s3://b/e", checksum=None)
    assert registry.dataset_key(ds) == ("events", "v2")
    with pytest.raises(TypeError):
        registry.dataset_key(("events", 2))  # type: ignore[arg-type]


def test_stage_kind_alias_and_checksum_are_checked_as_the_schema_does() -> None:
    assert registry.check_stage("production") == "production"
    with pytest.raises(ValueError, match="unknown stage 'prod'"):
        registry.check_stage("prod")
    assert registry.check_kind("EVALUATED_ON") == "EVALUATED_ON"
    with pytest.raises(ValueError, match="TRAINED_ON, EVALUATED_ON"):
        registry.check_kind("trained_on")
    assert registry.check_alias("champion-v2.1") == "champion-v2.1"
    for alias in ("", "2nd", "has space", "x" * 64):
        with pytest.raises(ValueError, match="invalid alias"):
            registry.check_alias(alias)
    assert registry.check_checksum("sha256:0af3") == "sha256:0af3"
    for checksum in ("0af3", "SHA256:0af3", "sha256:0AF3", "sha256:"):
        with pytest.raises(ValueError, match="invalid checksum"):
            registry.check_checksum(checksum)


def test_artifact_name_is_the_last_uri_segment() -> None:
    assert registry.artifact_name("s3://bucket/churn/3/model.onnx") == "model.onnx"
    assert registry.artifact_name("gs://bucket/churn/3/") == "3"
    with pytest.raises(ValueError, match="pass name="):
        registry.artifact_name("s3://")


def test_params_are_text_strings_as_is_others_as_json() -> None:
    assert registry.param_text("adam") == "adam"
    assert registry.param_text(0.1) == "0.1"
    assert registry.param_text(True) == "true"
    assert registry.param_text(None) == "null"
    assert registry.param_text({"b": 1, "a": [1, 2]}) == '{"a": [1, 2], "b": 1}'
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        registry.param_text(float("nan"))
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        registry.param_text(object())


def test_metric_rows_default_step_and_timestamp_and_refuse_non_numbers() -> None:
    assert registry.metric_rows({"auc": 0.9, "loss": 1}, None, None) == [("auc", 0.9, 0, None), ("loss", 1.0, 0, None)]
    naive = datetime.datetime(2024, 5, 1, 12, 0)
    assert registry.metric_rows({"auc": 0.9}, 5, naive) == [("auc", 0.9, 5, NOW)]
    with pytest.raises(TypeError, match="metric 'ok' must be a number"):
        registry.metric_rows({"ok": True}, None, None)
    with pytest.raises(TypeError):
        registry.metric_rows({"auc": "0.9"}, None, None)
    with pytest.raises(ValueError, match="NaN"):
        registry.metric_rows({"auc": float("nan")}, None, None)
    with pytest.raises(ValueError, match="step"):
        registry.metric_rows({"auc": 0.9}, -1, None)


def test_the_writer_must_be_a_postgres_connection() -> None:
    with pytest.raises(ValueError, match="must be a postgres store"):
        registry.Registry("redis://:pw@127.0.0.1:6379/0")
    # Resolving never connects: the connection is opened on first use.
    reg = registry.Registry("postgresql://writer:pw@127.0.0.1:1/registry")
    assert reg.info.username == "writer"
    reg.close()
