"""Base classes of the API models, and the CRD facts (names, printer columns, CEL rules) that crdgen reads.

Every kind module builds on these: ``SpecModel`` for user-written objects (unknown fields are errors),
``StatusModel`` for what the operator writes, ``Resource`` for a whole custom resource body, and
``Cel`` to attach a ``x-kubernetes-validations`` rule to a type, a field or a model. Nothing here talks to
Kubernetes; ``mlinfra.build.crdgen`` turns the models into CRDs and the handlers parse bodies with them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal

import pydantic
from pydantic import alias_generators, json_schema
from pydantic_core import core_schema as cs

GROUP: Final = "mlinfra.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "mlinfra.io/v1alpha1"
CATEGORY: Final = "mlinfra"


@dataclasses.dataclass(frozen=True)
class Cel:
    """One CEL validation rule, rendered into the schema node it annotates.

    Use it as ``Annotated`` metadata on a type or field, or list it in a model's ``cel_rules``. The
    ``message`` is what the API server shows a user whose object breaks the rule, so it says what to fix.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired"] | None = None

    def to_schema(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry for this rule."""
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        if self.reason is not None:
            entry["reason"] = self.reason
        return entry

    def __get_pydantic_json_schema__(
        self, core_schema: cs.CoreSchema, handler: pydantic.GetJsonSchemaHandler
    ) -> json_schema.JsonSchemaValue:
        # Added next to a $ref (not inside the shared definition): the rule belongs to this use only.
        schema = handler(core_schema)
        schema.setdefault("x-kubernetes-validations", []).append(self.to_schema())
        return schema


def cel_string(value: str) -> str:
    """Quote ``value`` as a CEL single-quoted string literal (regexes keep their backslashes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def matches(regex: str) -> str:
    """A CEL rule that holds when the string matches ``regex`` (RE2 syntax; keep it Python-compatible)."""
    return f"self.matches({cel_string(regex)})"


def regex_check(regex: str, message: str) -> pydantic.AfterValidator:
    """The Python side of a ``matches`` rule, so the operator refuses what the API server would."""
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.search(value):
            raise ValueError(message)
        return value

    return pydantic.AfterValidator(check)


def list_map(*keys: str) -> dict[str, Any]:
    """Schema extras for a list merged by key under server-side apply (``x-kubernetes-list-type: map``)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


LIST_SET: dict[str, Any] = {"x-kubernetes-list-type": "set"}
LIST_ATOMIC: dict[str, Any] = {"x-kubernetes-list-type": "atomic"}


class CamelModel(pydantic.BaseModel):
    """camelCase on the wire, snake_case in Python; both accepted when parsing."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    # Model-level CEL rules (cross-field checks); each model that has them mirrors them in a validator.
    cel_rules: ClassVar[tuple[Cel, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: cs.CoreSchema, handler: pydantic.GetJsonSchemaHandler
    ) -> json_schema.JsonSchemaValue:
        schema = handler(core_schema)
        if cls.cel_rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [rule.to_schema() for rule in cls.cel_rules]
        return schema


class SpecModel(CamelModel):
    """A part of ``spec``: written by users, so a misspelt field is an error rather than silently lost."""

    model_config = pydantic.ConfigDict(extra="forbid")


class StatusModel(CamelModel):
    """A part of ``status``: written by the operator; fields from a newer operator version are ignored."""

    model_config = pydantic.ConfigDict(extra="ignore")


class ObjectMeta(StatusModel):
    """The parts of ``metadata`` the operator reads (the API server owns the schema of the rest)."""

    name: str = pydantic.Field(description="Object name.")
    namespace: str | None = pydantic.Field(default=None, description="Object namespace.")
    uid: str | None = pydantic.Field(default=None, description="Object UID.")
    generation: int | None = pydantic.Field(default=None, description="Spec generation.")
    resource_version: str | None = pydantic.Field(default=None, description="Resource version.")
    labels: dict[str, str] = pydantic.Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = pydantic.Field(default_factory=dict, description="Annotations.")


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry (what ``kubectl get`` shows)."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


# Columns every kind shows: the kstatus summary and why, then Age last (kubectl convention).
READY_COLUMN = PrinterColumn(
    "Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Whether the object is Ready."
)
REASON_COLUMN = PrinterColumn(
    "Reason", "string", '.status.conditions[?(@.type=="Ready")].reason', "Why it is (not) Ready."
)
AGE_COLUMN = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation.")


# --- names --------------------------------------------------------------------------------------------

# A DNS-1035 label: what a Service name must be (it starts with a letter; no dots, unlike object names).
DNS_LABEL_RE: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Label values are at most 63 characters: every kind's name is a label value on what the operator creates.
MAX_LABEL_VALUE: Final = 63


@dataclasses.dataclass(frozen=True)
class NameRule:
    """A limit on ``metadata.name`` that the names derived from it impose, as a root CEL rule and its mirror.

    ``when`` is a CEL condition on the object (e.g. ``has(self.spec.managed)``) and ``applies`` its Python
    twin; ``max_length`` and ``regex`` are the limits; ``message`` says why and what to do.
    """

    message: str
    max_length: int | None = None
    regex: str | None = None
    when: str | None = None
    applies: Callable[[Resource], bool] | None = None

    def cel(self) -> Cel:
        checks = []
        if self.max_length is not None:
            checks.append(f"size(self.metadata.name) <= {self.max_length}")
        if self.regex is not None:
            checks.append(f"self.metadata.name.matches({cel_string(self.regex)})")
        rule = " && ".join(checks)
        if self.when is not None:
            rule = f"!({self.when}) || ({rule})"
        # No fieldPath: the schema does not describe metadata, so the API server could not resolve one.
        return Cel(rule, self.message)

    def check(self, resource: Resource) -> None:
        if self.applies is not None and not self.applies(resource):
            return
        name = resource.metadata.name
        if (self.max_length is not None and len(name) > self.max_length) or (
            self.regex is not None and not re.search(self.regex, name)
        ):
            raise ValueError(f"metadata.name {name!r}: {self.message}")


def label_value_name_rule(kind: str) -> NameRule:
    """Names of the kinds whose name labels what the operator creates for them (sync Jobs, Secrets)."""
    return NameRule(
        f"the name of a {kind} must be at most {MAX_LABEL_VALUE} characters: it is the value of labels on the "
        "objects the operator creates for it (Kubernetes limits label values to 63)",
        max_length=MAX_LABEL_VALUE,
    )


@dataclasses.dataclass(frozen=True)
class CRDInfo:
    """The names and columns of one kind's CRD; the schema itself comes from the model."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    printer_columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = (CATEGORY,)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


class Resource(StatusModel):
    """A whole custom resource body as the API server returns it; subclasses set ``spec`` and ``status``.

    Each kind declares ``crd_info`` (used by crdgen) and the types of ``spec``/``status`` (used by crdgen
    through ``spec_model``/``status_model``, and by handlers to parse a body).
    """

    crd_info: ClassVar[CRDInfo]
    # Limits on metadata.name (rendered as root CEL rules by crdgen, checked here on every parse).
    name_rules: ClassVar[tuple[NameRule, ...]] = ()

    api_version: Literal["mlinfra.io/v1alpha1"] = pydantic.Field(
        default=API_VERSION, description="API version of the object."
    )
    metadata: ObjectMeta = pydantic.Field(description="Standard object metadata.")

    @pydantic.model_validator(mode="after")
    def _check_name(self) -> Resource:
        # Mirrors the root rules: an object created before they existed is refused with their message.
        for rule in self.name_rules:
            rule.check(self)
        return self

    @classmethod
    def root_rules(cls) -> tuple[Cel, ...]:
        """The CEL rules at the root of the kind's schema (the only place a rule sees metadata.name)."""
        return tuple(rule.cel() for rule in cls.name_rules)

    @classmethod
    def spec_model(cls) -> type[SpecModel]:
        annotation = cls.model_fields["spec"].annotation
        assert isinstance(annotation, type) and issubclass(annotation, SpecModel)
        return annotation

    @classmethod
    def status_model(cls) -> type[StatusModel]:
        # ``status`` is declared ``XStatus | None``; take the model out of the union.
        annotation = cls.model_fields["status"].annotation
        for arg in getattr(annotation, "__args__", (annotation,)):
            if isinstance(arg, type) and issubclass(arg, StatusModel):
                return arg
        raise TypeError(f"{cls.__name__}.status is not a StatusModel")
