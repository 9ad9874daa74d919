"""Why an object cannot be served, and the kstatus summary every kind's status starts with.

A reconcile or an observation that meets something the user must act on raises :class:`ProblemError`
carrying a :class:`Problem`; each kind's status module turns it into ``Ready``/``Reconciling``/``Stalled``
(:func:`summary`) followed by the kind's own conditions. Reasons shared by several kinds live here, so that
tests, docs and the Argo CD health checks agree on them; a reason only one kind uses lives with that kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic

from mlinfra.k8s import objects
from mlinfra.k8s.conditions import Cond

READY = "Ready"
INVALID_SPEC = "InvalidSpec"
SECRET_NOT_FOUND = "SecretNotFound"  # noqa: S105 - a reason, not a secret
STORE_NOT_FOUND = "StoreNotFound"
STORE_NOT_READY = "StoreNotReady"
WRONG_ENGINE = "WrongEngine"
IMMUTABLE_FIELD_CHANGE = "ImmutableFieldChange"
DEADLINE_EXCEEDED = "DeadlineExceeded"
NAMESPACE_TERMINATING = objects.NAMESPACE_TERMINATING
REFUSED_BY_KUBERNETES_RECHECK = 300.0  # seconds: the refusal may depend on something outside the spec
MAX_RETRY_DELAY = 600.0  # seconds: the longest a temporary problem waits between two attempts


@dataclass(frozen=True)
class Problem:
    """Why the object cannot be served: a reason constant, a message for the user, and whether only a
    spec change can fix it (Stalled) or it may resolve by itself (a Secret created later)."""

    reason: str
    message: str
    stalled: bool
    # Stalled on something outside the spec that the user fixes elsewhere (a source table's columns): looked
    # at again every ``recheck`` seconds instead of waiting for a spec change.
    recheck: float | None = None


class ProblemError(Exception):
    """An object cannot be served as specified; carries the Problem its status will show."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def invalid_spec(exc: pydantic.ValidationError) -> Problem:
    """What the API server let through but the model refuses: InvalidSpec, naming each field."""
    details = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
    )
    return Problem(INVALID_SPEC, f"invalid spec: {details}", stalled=True)


def deadline_exceeded(exc: TimeoutError) -> Problem:
    """A call that missed its deadline (a database that is stuck, slow or unreachable, a lock held by
    another transaction): this object is degraded and retried; nothing waits for ever. The engines' errors
    name the endpoint and the timeout and never a secret."""
    message = " ".join(str(exc).split()) or "a call did not finish in time"
    return Problem(DEADLINE_EXCEEDED, message[:1024], stalled=False)


def refused_by_kubernetes(exc: objects.ApiError) -> Problem:
    """The API server refused (422: invalid) a child the operator rendered from the spec: what the CRD's
    rules let through but Kubernetes does not take. Stalled (retrying the same write changes nothing), looked
    at again now and then (an admission webhook or quota may change), and the message is the API server's
    own, which names the field."""
    return Problem(
        INVALID_SPEC,
        f"Kubernetes refused what the spec asks for: {exc}"[:1024],
        stalled=True,
        recheck=REFUSED_BY_KUBERNETES_RECHECK,
    )


def namespace_terminating(exc: objects.ApiError) -> Problem:
    """A child could not be created because the object's namespace is being deleted: the object goes with it,
    so nothing is retried (Stalled, never rechecked) and it is not a crash of the handler."""
    return Problem(
        NAMESPACE_TERMINATING,
        f"the namespace is being deleted, nothing new can be created in it: {exc}"[:1024],
        stalled=True,
    )


Model = TypeVar("Model", bound=pydantic.BaseModel)


def parse(model: type[Model], body: Mapping[str, Any]) -> Model:
    """``body`` as ``model``; a body the model refuses raises ProblemError(InvalidSpec)."""
    try:
        return model.model_validate(dict(body))
    except pydantic.ValidationError as exc:
        raise ProblemError(invalid_spec(exc)) from None


def summary(problem: Problem) -> list[Cond]:
    """The kstatus triple for an object with a problem: Stalled when only the user can fix it, else
    Reconciling (the operator keeps trying)."""
    p = problem
    return [
        Cond("Ready", "False", p.reason, p.message),
        Cond("Reconciling", "False" if p.stalled else "True", p.reason, "" if p.stalled else p.message),
        Cond(
            "Stalled",
            "True" if p.stalled else "False",
            p.reason if p.stalled else READY,
            p.message if p.stalled else "",
        ),
    ]


def settled(ready: Cond, reconciling: Cond | None = None) -> list[Cond]:
    """The kstatus triple without a problem: ``ready`` as observed, not stalled, and reconciling only when
    the caller says the operator is still converging (pods starting)."""
    return [ready, reconciling or Cond("Reconciling", "False", READY, ""), Cond("Stalled", "False", READY, "")]


def retry_delay(base: float, retries: int) -> float:
    """How long a temporary problem waits before attempt ``retries + 1``: ``base`` doubled per failed attempt,
    at most :data:`MAX_RETRY_DELAY`. A failure that keeps coming back (a rebuild whose backfill keeps failing
    recopies the whole source table each time) then costs a few attempts an hour, not four a minute."""
    return float(min(MAX_RETRY_DELAY, base * 2 ** min(max(retries, 0), 16)))
