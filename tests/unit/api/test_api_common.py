"""Shared API types: durations, cron schedules, quantities, names, conditions and the CEL helpers."""

from __future__ import annotations

import datetime
import decimal
import re
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


@pytest.mark.parametrize(
    "value", ["0 0 * jan-mar mon", "59 23 31 12 6", "0 0 * * 0", "5/15 * * * *", "0 9-17/2 * * 1-5"]
)
def test_cron_schedules_within_bounds(value: str) -> None:
    assert _valid(schedule=value)


@pytest.mark.parametrize(
    "value",
    [
        "60 * * * *",  # minute 0-59
        "* 24 * * *",  # hour 0-23
        "* * 0 * *",  # day of month 1-31
        "* * 32 * *",
        "* * * 13 *",  # month 1-12
        "* * * * 7",  # day of week 0-6
        "*/0 * * * *",  # a step of 0
        "0 0 * * FOO",
        "0 0 * JUNE *",
    ],
)
def test_cron_values_out_of_bounds_are_refused(value: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="minute 0-59, hour 0-23"):
        _Holder.model_validate({"schedule": value})


@pytest.mark.parametrize("value", ["17-9 * * * *", "0 0 * DEC-JAN *", "0 0 * * FRI-MON"])
def test_cron_ranges_that_run_backwards_are_refused(value: str) -> None:
    # The CEL rule cannot see this one: the model refuses it, so the operator says InvalidSpec.
    assert re.search(common.CRON_RE, value)  # the regex (the CEL rule) alone lets it through
    with pytest.raises(pydantic.ValidationError, match="runs backwards: write the smaller value first"):
        _Holder.model_validate({"schedule": value})


class _Positive(base.SpecModel):
    duration: common.PositiveDuration = pydantic.Field(description="d")


@pytest.mark.parametrize(
    ("value", "ok"), [("1s", True), ("250ms", True), ("0h1m", True), ("0s", False), ("0m0s", False)]
)
def test_positive_durations(value: str, ok: bool) -> None:
    if ok:
        _Positive.model_validate({"duration": value})
    else:
        with pytest.raises(pydantic.ValidationError, match="must be longer than 0"):
            _Positive.model_validate({"duration": value})


class _Storage(base.SpecModel):
    size: common.StorageSize = pydantic.Field(description="s")


@pytest.mark.parametrize(("value", "ok"), [("10Gi", True), ("0.5Ti", True), (1073741824, True), ("500M", True),
                                           ("0", False), ("0Gi", False), (0, False), ("-1Gi", False),
                                           ("500m", False), ("1e9", False), ("ten", False)])  # fmt: skip
def test_storage_sizes(value: int | str, ok: bool) -> None:
    if ok:
        _Storage.model_validate({"size": value})
    else:
        with pytest.raises(pydantic.ValidationError, match="positive size in bytes"):
            _Storage.model_validate({"size": value})


@pytest.mark.parametrize(
    ("text", "value"),
    [("1.5Gi", 1610612736), ("500m", 0.5), ("2", 2), ("1e3", 1000), ("100k", 100000), (".5", 0.5), (-3, -3)],
)
def test_quantity_value(text: int | str, value: float) -> None:
    assert common.quantity_value(text) == decimal.Decimal(str(value))


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"requests": {"cpus": 1}}, "resource names must be cpu, memory, ephemeral-storage"),
        ({"limits": {"gpu": 1}}, "limits: resource names"),
        ({"limits": {"cpu": "-1"}}, "limits: resource quantities must not be negative"),
        ({"requests": {"memory": -5}}, "requests: resource quantities must not be negative"),
        ({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}, r"requests <= limits\): memory"),
        ({"requests": {"cpu": 2}, "limits": {"cpu": "1500m"}}, r"requests <= limits\): cpu"),
    ],
)
def test_resources_the_pod_api_would_refuse(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        common.ResourceRequirements.model_validate(resources)


def test_resources_the_pod_api_accepts() -> None:
    common.ResourceRequirements.model_validate(
        {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 1, "memory": "1024Mi"}}
    )
    common.ResourceRequirements.model_validate({"requests": {"ephemeral-storage": "1Gi"}, "limits": {"memory": "1Gi"}})
