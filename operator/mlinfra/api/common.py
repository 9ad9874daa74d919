"""Types shared by the four kinds: names, references, durations, cron schedules, quantities, conditions.

Each string type carries its bounds (``maxLength`` keeps CEL rules within the API server's cost budget)
and, where a user can get it wrong, a CEL rule whose message says what a valid value looks like. The same
regex is checked on the Python side, so the operator refuses what the API server would refuse.
"""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Literal

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


def parse_duration(text: str) -> datetime.timedelta:
    """Parse a ``Duration`` string (already validated) into a timedelta."""
    if not re.fullmatch(DURATION_RE.strip("^$"), text):
        raise ValueError(f"{text!r} {DURATION_MESSAGE}")
    seconds = sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    return datetime.timedelta(seconds=seconds)


# One cron field: `*`, `?`, a number or a 3-letter name (JAN, MON), an optional range, an optional step,
# comma-separated. Five of them, or one of the macros Kubernetes CronJobs accept.
_CRON_ITEM = r"([*?]|[0-9A-Za-z]{1,3}(-[0-9A-Za-z]{1,3})?)(/[0-9]{1,2})?"
_CRON_FIELD = f"{_CRON_ITEM}(,{_CRON_ITEM})*"
CRON_RE = f"^(@(annually|yearly|monthly|weekly|daily|midnight|hourly)|{_CRON_FIELD}( +{_CRON_FIELD}){{4}})$"
CRON_MESSAGE = (
    "must be a cron schedule of 5 fields (minute hour day-of-month month day-of-week, e.g. '*/5 * * * *') "
    "or a macro such as @hourly or @daily"
)

CronSchedule = Annotated[
    str,
    pydantic.Field(min_length=1, max_length=128, description="A cron schedule, e.g. '*/5 * * * *' or @hourly."),
    base.regex_check(CRON_RE, CRON_MESSAGE),
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


class ResourceRequirements(base.SpecModel):
    """CPU and memory for the database containers, as in a Pod's ``resources``."""

    requests: dict[str, Quantity] | None = pydantic.Field(
        default=None, max_length=8, description="Minimum resources, e.g. {cpu: 500m, memory: 1Gi}."
    )
    limits: dict[str, Quantity] | None = pydantic.Field(
        default=None, max_length=8, description="Maximum resources, e.g. {memory: 2Gi}."
    )


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
