"""Shared API types: durations, cron schedules, quantities, names, conditions and the CEL helpers."""

from __future__ import annotations

import datetime
from typing import Any

import pydantic
import pytest

from mlinfra.api import base, common

pytestmark = pytest.mark.unit


class _Holder(base.SpecModel):
    duration: common.Duration | None = pydantic.Field(default=None, description="d")
    schedule: common.CronSchedule | None = pydantic.Field(default=None, description="s")
    quantity: common.Quantity | None = pydantic.Field(default=None, description="q")
    name: common.ObjectName | None = pydantic.Field(default=None, description="n")
    column: common.SqlIdentifier | None = pydantic.Field(default=None, description="c")


def _valid(**values: Any) -> bool:
    try:
        _Holder.model_validate(values)
    except pydantic.ValidationError:
        return False
    return True


@pytest.mark.parametrize("value", ["30s", "5m", "1h30m", "250ms", "2h", "1h0m5s", "100000s"])
def test_good_durations(value: str) -> None:
    assert _valid(duration=value)


@pytest.mark.parametrize("value", ["", "30", "5 m", "1.5h", "1d", "-5m", "m", "5M", "PT5M", "1h 30m"])
def test_bad_durations(value: str) -> None:
    assert not _valid(duration=value)


def test_bad_duration_message_says_what_is_expected() -> None:
    with pytest.raises(pydantic.ValidationError, match="such as 30s, 5m or 1h30m"):
        _Holder.model_validate({"duration": "1 day"})


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1h0m5s", 3605)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert common.parse_duration(text) == datetime.timedelta(seconds=seconds)


def test_parse_duration_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="duration"):
        common.parse_duration("soon")


@pytest.mark.parametrize(
    "value",
    [
        "*/5 * * * *",
        "0 3 * * *",
        "0 0 1 1 *",
        "15,45 9-17 * * MON-FRI",
        "0 0 ? * SUN",
        "0  */2 * JAN *",
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
    ],
)
def test_good_cron_schedules(value: str) -> None:
    assert _valid(schedule=value)


@pytest.mark.parametrize(
    "value",
    ["", "* * * *", "* * * * * *", "every 5 minutes", "@every 5m", "@often", "*/5 * * * * ", "0 0 * * MONDAY"],
)
def test_bad_cron_schedules(value: str) -> None:
    assert not _valid(schedule=value)


@pytest.mark.parametrize("value", [1, 0, "500m", "2", "512Mi", "10Gi", "1.5", "1e3", "100k"])
def test_good_quantities(value: int | str) -> None:
    assert _valid(quantity=value)


@pytest.mark.parametrize("value", ["ten", "10 Gi", "10GB", "", "1.2.3"])
def test_bad_quantities(value: str) -> None:
    assert not _valid(quantity=value)


@pytest.mark.parametrize(("value", "ok"), [("pg-main", True), ("a.b", True), ("PG", False), ("-x", False)])
def test_object_names(value: str, ok: bool) -> None:
    assert _valid(name=value) is ok


@pytest.mark.parametrize(
    ("value", "ok"), [("user_id", True), ("_ts", True), ("UserId", False), ("1st", False), ("a" * 64, False)]
)
def test_sql_identifiers(value: str, ok: bool) -> None:
    assert _valid(column=value) is ok


def test_condition_has_the_metav1_shape() -> None:
    condition = common.Condition.model_validate(
        {
            "type": "Ready",
            "status": "True",
            "observedGeneration": 3,
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "reason": "Available",
            "message": "",
        }
    )
    assert condition.last_transition_time.tzinfo is not None
    dumped = condition.model_dump(mode="json")
    assert set(dumped) == {"type", "status", "observedGeneration", "lastTransitionTime", "reason", "message"}
    assert dumped["lastTransitionTime"] == "2026-01-02T03:04:05Z"


@pytest.mark.parametrize(
    "change", [{"status": "Yes"}, {"reason": "not camel"}, {"lastTransitionTime": "2026-01-02T03:04:05"}]
)
def test_bad_conditions(change: dict[str, str]) -> None:
    body = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-02T03:04:05Z", "reason": "Ok"}
    with pytest.raises(pydantic.ValidationError):
        common.Condition.model_validate({**body, "message": "", **change})


def test_status_models_ignore_unknown_fields_but_specs_refuse_them() -> None:
    run = common.SyncRun.model_validate({"rows": 3, "fromTheFuture": True})
    assert run.rows == 3
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        common.ObjectRef.model_validate({"name": "x", "namespace": "other"})


def test_cel_string_escapes_backslashes_and_quotes() -> None:
    assert base.cel_string(r"a\.b'c") == r"'a\\.b\'c'"
    assert base.matches(r"^x\d$") == r"self.matches('^x\\d$')"


def test_cel_rule_rendering() -> None:
    rule = base.Cel("self > 0", "must be positive", field_path=".size", reason="FieldValueInvalid")
    assert rule.to_schema() == {
        "rule": "self > 0",
        "message": "must be positive",
        "fieldPath": ".size",
        "reason": "FieldValueInvalid",
    }
    assert base.Cel("self > 0", "m").to_schema() == {"rule": "self > 0", "message": "m"}


def test_api_version_constants_agree() -> None:
    assert f"{base.GROUP}/{base.VERSION}" == base.API_VERSION
