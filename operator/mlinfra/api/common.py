"""Types shared by the four kinds: names, references, durations, cron schedules, quantities, conditions.

Each string type carries its bounds (``maxLength`` keeps CEL rules within the API server's cost budget)
and, where a user can get it wrong, a CEL rule whose message says what a valid value looks like. The same
regex is checked on the Python side, so the operator refuses what the API server would refuse.
"""

from __future__ import annotations

import datetime
import decimal
import re
from typing import Annotated, ClassVar, Literal

import pydantic

from mlinfra.api import base

# --- names ----------------------------------------------------------------------------------------------

DNS_SUBDOMAIN_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DATA_KEY_RE = r"^[-._a-zA-Z0-9]+$"
# Lower-case SQL identifiers need no quoting anywhere; 63 bytes is PostgreSQL's NAMEDATALEN limit.
SQL_IDENTIFIER_RE = r"^[a-z_][a-z0-9_]*$"

ObjectName = Annotated[
    str,
    pydantic.Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_RE,
        description="Name of a Kubernetes object (DNS subdomain).",
    ),
]
SecretKey = Annotated[
    str,
    pydantic.Field(min_length=1, max_length=253, pattern=DATA_KEY_RE, description="Key in a Secret."),
]
SqlIdentifier = Annotated[
    str,
    pydantic.Field(
        min_length=1,
        max_length=63,
        pattern=SQL_IDENTIFIER_RE,
        description="Lower-case SQL identifier: letters, digits and underscores, not starting with a digit.",
    ),
]

# --- durations and schedules ----------------------------------------------------------------------------

DURATION_RE = r"^([0-9]{1,6}(ms|s|m|h))+$"
DURATION_MESSAGE = "must be a duration made of whole numbers with units ms, s, m or h, such as 30s, 5m or 1h30m"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Duration = Annotated[
    str,
    pydantic.Field(min_length=2, max_length=32, description="A duration such as 30s, 5m or 1h30m."),
    base.regex_check(DURATION_RE, DURATION_MESSAGE),
    base.Cel(base.matches(DURATION_RE), DURATION_MESSAGE),
]


POSITIVE_DURATION_MESSAGE = "must be longer than 0 (a duration such as 30s, 5m or 1h30m)"


def _check_positive_duration(value: str) -> str:
    if not re.search("[1-9]", value):
        raise ValueError(POSITIVE_DURATION_MESSAGE)
    return value


# A duration that means nothing at 0 (a TTL that expires everything, an SLO no store can meet, a sync loop
# without pause): 0s, 0m0s and the like are refused. A digit 1-9 anywhere makes the sum positive.
PositiveDuration = Annotated[
    Duration,
    pydantic.AfterValidator(_check_positive_duration),
    base.Cel("self.matches('[1-9]')", POSITIVE_DURATION_MESSAGE),
]


def parse_duration(text: str) -> datetime.timedelta:
    """Parse a ``Duration`` string (already validated) into a timedelta."""
    if not re.fullmatch(DURATION_RE.strip("^$"), text):
        raise ValueError(f"{text!r} {DURATION_MESSAGE}")
    seconds = sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    return datetime.timedelta(seconds=seconds)


# Cron schedules as Kubernetes checks them (robfig/cron's standard parser): five fields, each a list of
# `*`, `?` or a value with an optional range, each with an optional step >= 1, values within the field's
# bounds (month and weekday names in any case); or one of the macros. A schedule the API server accepted
# but the CronJob then refused would be retried forever, so the bounds are checked here. A range that runs
# backwards (17-9) is not something a regex can see: the model refuses it (the operator says InvalidSpec).
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_VALUES = (
    r"[0-5]?[0-9]",  # minute 0-59
    r"[01]?[0-9]|2[0-3]",  # hour 0-23
    r"0?[1-9]|[12][0-9]|3[01]",  # day of month 1-31
    rf"0?[1-9]|1[0-2]|(?i:{'|'.join(_MONTHS)})",  # month 1-12
    rf"0?[0-6]|(?i:{'|'.join(_WEEKDAYS)})",  # day of week 0-6 (Sunday is 0)
)


def _cron_field(value: str) -> str:
    item = rf"([*?]|({value})(-({value}))?)(/[1-9][0-9]{{0,2}})?"
    return rf"{item}(,{item})*"


CRON_RE = (
    "^(@(annually|yearly|monthly|weekly|daily|midnight|hourly)|"
    + " +".join(f"({_cron_field(value)})" for value in _CRON_VALUES)
    + ")$"
)
CRON_MESSAGE = (
    "must be a cron schedule of 5 fields (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, "
    "day of week 0-6 or SUN-SAT; e.g. '*/5 * * * *') or a macro such as @hourly or @daily"
)
_CRON_RANGE = re.compile(r"([0-9A-Za-z]+)-([0-9A-Za-z]+)")
_CRON_NAMES = {name: n for names, first in ((_MONTHS, 1), (_WEEKDAYS, 0)) for n, name in enumerate(names, first)}


def _check_cron_ranges(value: str) -> str:
    # What the regex cannot see: robfig/cron refuses a range whose start is after its end.
    if value.startswith("@"):
        return value
    for start, end in _CRON_RANGE.findall(value):
        low, high = (_CRON_NAMES.get(v.lower()) if not v.isdigit() else int(v) for v in (start, end))
        if low is not None and high is not None and low > high:
            raise ValueError(f"the cron range {start}-{end} runs backwards: write the smaller value first")
    return value


CronSchedule = Annotated[
    str,
    pydantic.Field(min_length=1, max_length=128, description="A cron schedule, e.g. '*/5 * * * *' or @hourly."),
    base.regex_check(CRON_RE, CRON_MESSAGE),
    pydantic.AfterValidator(_check_cron_ranges),
    base.Cel(base.matches(CRON_RE), CRON_MESSAGE),
]

# --- quantities and resources ---------------------------------------------------------------------------

# The API server's own pattern for resource.Quantity (k8s.io/apimachinery); users write `1` or `500m`.
QUANTITY_RE = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
QUANTITY_MESSAGE = "must be a Kubernetes quantity such as 500m, 2, 512Mi or 10Gi"


def _check_quantity(value: int | str) -> int | str:
    if not re.search(QUANTITY_RE, str(value)):
        raise ValueError(QUANTITY_MESSAGE)
    return value


Quantity = Annotated[
    int | str,
    pydantic.AfterValidator(_check_quantity),
    # int-or-string, exactly the way the API server declares resource.Quantity in its own schemas.
    pydantic.WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_RE,
            "maxLength": 64,
            "description": "A Kubernetes quantity such as 500m, 2, 512Mi or 10Gi.",
        }
    ),
]


_QUANTITY_PART = re.compile(r"^([+-]?)([0-9]*\.?[0-9]*)(([KMGTPE]i)|[numkMGTPE]|[eE]([+-]?[0-9.]+))?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def quantity_value(value: int | str) -> decimal.Decimal:
    """The number a (valid) Kubernetes quantity stands for, e.g. 1.5Gi -> 1610612736, 500m -> 0.5."""
    match = _QUANTITY_PART.match(str(value))
    if match is None or not re.search(QUANTITY_RE, str(value)):
        raise ValueError(f"{value!r} {QUANTITY_MESSAGE}")
    sign, number, suffix, binary, exponent = match.groups()
    amount = decimal.Decimal(number) * (-1 if sign == "-" else 1)
    if binary:
        return amount * _BINARY[binary]
    if exponent is not None:
        return amount.scaleb(int(decimal.Decimal(exponent)))
    return amount.scaleb(_DECIMAL[suffix or ""])


# Storage sizes: a positive number of bytes with an optional unit; no sign, exponent or sub-unit suffix
# (500m would be half a byte: almost certainly meant as 500Mi).
STORAGE_SIZE_RE = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))([KMGTPE]i|[kMGTPE])?$"
STORAGE_SIZE_MESSAGE = "must be a positive size in bytes with an optional unit, such as 512Mi, 10Gi or 1Ti"


def _check_storage_size(value: int | str) -> int | str:
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(STORAGE_SIZE_MESSAGE)
    elif not re.search(STORAGE_SIZE_RE, value) or not re.search("[1-9]", value):
        raise ValueError(STORAGE_SIZE_MESSAGE)
    return value


StorageSize = Annotated[
    int | str,
    pydantic.AfterValidator(_check_storage_size),
    pydantic.WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": 64,
            "description": "A storage size such as 512Mi, 10Gi or 1Ti.",
            "x-kubernetes-validations": [
                {
                    "rule": f"type(self) == int ? self > 0 : "
                    f"({base.matches(STORAGE_SIZE_RE)} && self.matches('[1-9]'))",
                    "message": STORAGE_SIZE_MESSAGE,
                }
            ],
        }
    ),
]

# The resources a database container may ask for: what the Pod API accepts without an extended-resource
# device plugin. Anything else (`cpus`, `mem`) makes the API server refuse the StatefulSet.
RESOURCE_NAMES: tuple[str, ...] = ("cpu", "memory", "ephemeral-storage")
_RESOURCE_NAMES_CEL = ", ".join(base.cel_string(name) for name in RESOURCE_NAMES)
RESOURCE_NAMES_MESSAGE = f"resource names must be {', '.join(RESOURCE_NAMES)}"
NEGATIVE_RESOURCE_MESSAGE = "resource quantities must not be negative"
REQUEST_OVER_LIMIT_MESSAGE = "each request must be at most the limit of the same resource (requests <= limits)"


def _map_rules(field: str) -> tuple[base.Cel, ...]:
    return (
        base.Cel(
            f"!has(self.{field}) || self.{field}.all(k, k in [{_RESOURCE_NAMES_CEL}])",
            f"{field}: {RESOURCE_NAMES_MESSAGE}",
            field_path=f".{field}",
        ),
        base.Cel(
            f"!has(self.{field}) || self.{field}.all(k, type(self.{field}[k]) == int ? self.{field}[k] >= 0 "
            f": !string(self.{field}[k]).startsWith('-'))",
            f"{field}: {NEGATIVE_RESOURCE_MESSAGE}",
            field_path=f".{field}",
        ),
    )


REQUESTS_WITHIN_LIMITS = base.Cel(
    "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || "
    "!isQuantity(string(self.requests[k])) || !isQuantity(string(self.limits[k])) || "
    "quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
    REQUEST_OVER_LIMIT_MESSAGE,
    field_path=".requests",
)


class ResourceRequirements(base.SpecModel):
    """CPU and memory for the database containers, as in a Pod's ``resources``."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (*_map_rules("requests"), *_map_rules("limits"), REQUESTS_WITHIN_LIMITS)

    requests: dict[str, Quantity] | None = pydantic.Field(
        default=None, max_length=8, description="Minimum resources, e.g. {cpu: 500m, memory: 1Gi}."
    )
    limits: dict[str, Quantity] | None = pydantic.Field(
        default=None, max_length=8, description="Maximum resources, e.g. {memory: 2Gi}."
    )

    @pydantic.model_validator(mode="after")
    def _check(self) -> ResourceRequirements:
        # Mirrors cel_rules: what the Pod API would refuse in the StatefulSet the operator renders.
        for field, values in (("requests", self.requests or {}), ("limits", self.limits or {})):
            unknown = sorted(set(values) - set(RESOURCE_NAMES))
            if unknown:
                raise ValueError(f"{field}: {RESOURCE_NAMES_MESSAGE} (not {', '.join(unknown)})")
            if any(quantity_value(v) < 0 for v in values.values()):
                raise ValueError(f"{field}: {NEGATIVE_RESOURCE_MESSAGE}")
        limits = self.limits or {}
        requests = self.requests or {}
        over = sorted(k for k, v in requests.items() if k in limits and quantity_value(v) > quantity_value(limits[k]))
        if over:
            raise ValueError(f"{REQUEST_OVER_LIMIT_MESSAGE}: {', '.join(over)}")
        return self


# --- references -----------------------------------------------------------------------------------------


class ObjectRef(base.SpecModel):
    """A reference to an object in the same namespace as the referring one."""

    name: ObjectName = pydantic.Field(description="Name of the referenced object.")


class SecretKeyRef(base.SpecModel):
    """One key of a Secret in the same namespace."""

    name: ObjectName = pydantic.Field(description="Name of the Secret.")
    key: SecretKey = pydantic.Field(description="Key within the Secret.")


# --- status ---------------------------------------------------------------------------------------------

CONDITION_TYPE_RE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_RE = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
MAX_CONDITIONS = 16

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(base.StatusModel):
    """One observation of the object's state, in the shape of metav1.Condition."""

    type: str = pydantic.Field(
        max_length=316, pattern=CONDITION_TYPE_RE, description="Condition type in CamelCase, e.g. Ready."
    )
    status: ConditionStatus = pydantic.Field(description="True, False or Unknown.")
    observed_generation: int | None = pydantic.Field(
        default=None, ge=0, description="The .metadata.generation the condition was computed from."
    )
    last_transition_time: pydantic.AwareDatetime = pydantic.Field(
        description="When status last changed (not when the condition was last checked)."
    )
    reason: str = pydantic.Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_RE,
        description="Machine-readable CamelCase reason for the condition's last transition.",
    )
    message: str = pydantic.Field(max_length=32768, description="Human-readable details; may be empty.")


# status.conditions: a list merged by `type` (server-side apply, kstatus), bounded. Give each use a
# description naming the kind's condition types.
Conditions = Annotated[
    list[Condition] | None,
    pydantic.Field(max_length=MAX_CONDITIONS, json_schema_extra=base.list_map("type")),
]
# status.observedGeneration: kstatus compares it with metadata.generation.
ObservedGeneration = Annotated[
    int | None, pydantic.Field(ge=0, description="The .metadata.generation the operator last acted on.")
]


def conditions_description(types: str) -> str:
    """Description of a kind's ``status.conditions``, naming its condition types."""
    return f"Latest observations of the object's state. Types: {types}."


SyncOutcome = Literal["Running", "Succeeded", "Failed"]


class SyncRun(base.StatusModel):
    """One run of a sync job (materialization or index sync)."""

    start_time: pydantic.AwareDatetime | None = pydantic.Field(default=None, description="When it started.")
    end_time: pydantic.AwareDatetime | None = pydantic.Field(default=None, description="When it finished.")
    rows: int | None = pydantic.Field(default=None, ge=0, description="Rows written by the run.")
    watermark: pydantic.AwareDatetime | None = pydantic.Field(
        default=None, description="Source watermark committed by the run (only after its writes succeeded)."
    )
    outcome: SyncOutcome | None = pydantic.Field(default=None, description="Running, Succeeded or Failed.")
    message: str | None = pydantic.Field(
        default=None, max_length=1024, description="Error summary of a failed run; empty otherwise."
    )
