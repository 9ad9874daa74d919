"""Writing the children of any kind (DataStore, FeatureView, VectorIndex, ModelRegistry) only where they are
the owner's: ``mlinfra.k8s.ownership`` decides, this module turns its refusal into the Problem every kind
reports (it lives here, not in ``k8s``, because the ``k8s`` layer does not know Problems).

A conflict is Stalled (the user acts: deletes or renames the other object, or renames this one) with a
recheck: the fix happens outside this object's spec, so no spec change would ever trigger a retry. Every
``RECHECK`` seconds the reconcile looks again (a few GETs) and the object heals once the name is free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from mlinfra.k8s import objects, ownership
from mlinfra.problems import Problem, ProblemError

CHILD_CONFLICT = "ChildConflict"
RECHECK = 30.0  # seconds between looks at a name someone else holds


def problem(conflict: ownership.Conflict) -> Problem:
    return Problem(CHILD_CONFLICT, str(conflict), stalled=True, recheck=RECHECK)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Raise an :class:`ownership.Conflict` met inside as ProblemError(ChildConflict)."""
    try:
        yield
    except ownership.Conflict as exc:
        raise ProblemError(problem(exc)) from None


def check(kube: objects.Kube, owner: Mapping[str, Any], kind: str, namespace: str, name: str) -> None:
    with reported():
        ownership.check(kube, owner, kind, namespace, name)


def apply(kube: objects.Kube, obj: Mapping[str, Any]) -> dict[str, Any]:
    with reported():
        return ownership.apply_owned(kube, obj)


def claim_all(kube: objects.Kube, objs: Iterable[Mapping[str, Any]]) -> list[ownership.Claimed]:
    """Check all of ``objs`` before writing any (then :func:`write_all`): a conflicted owner starts nothing."""
    with reported():
        return ownership.claim_all(kube, objs)


def write_all(kube: objects.Kube, claimed: Iterable[ownership.Claimed]) -> list[dict[str, Any]]:
    return ownership.write_all(kube, claimed)


def apply_all(kube: objects.Kube, objs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    with reported():
        return ownership.apply_all_owned(kube, objs)


def create(kube: objects.Kube, obj: Mapping[str, Any]) -> dict[str, Any]:
    with reported():
        return ownership.create_owned(kube, obj)


def create_retained(kube: objects.Kube, obj: Mapping[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    with reported():
        return ownership.create_retained(kube, obj, owner)


def delete(kube: objects.Kube, owner: Mapping[str, Any], kind: str, namespace: str, name: str) -> bool:
    """Delete the owner's ``kind/name``; anything else of that name is left alone (not a conflict: the owner
    wants no such child)."""
    return ownership.delete_owned(kube, owner, kind, namespace, name)
