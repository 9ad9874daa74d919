"""The one path every status write takes: only the fields a kind owns that changed, nothing when idle.

Most writes go into Kopf's patch (applied when the handler returns); ``write_now`` is for progress that must
show while a long handler still runs (a rebuild).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import kopf

from mlinfra import problems
from mlinfra.k8s import objects, patches
from mlinfra.problems import Problem


def write_status(body: kopf.Body, patch: kopf.Patch, new: Mapping[str, Any], owned: Iterable[str]) -> bool:
    """Patch the ``owned`` status fields that differ from the stored ones; False when nothing changed."""
    diff = patches.status_patch(body.get("status"), new, owned)
    for key, value in diff.items():
        patch.status[key] = value
    return bool(diff)


def write_now(kube: objects.Kube, body: Mapping[str, Any], new: Mapping[str, Any], owned: Iterable[str]) -> None:
    """Write the changed ``owned`` fields of ``new`` at once, through the status subresource."""
    diff = patches.status_patch(body.get("status"), new, owned)
    if diff:
        meta = body["metadata"]
        kube.merge_patch(body["kind"], meta["namespace"], meta["name"], {"status": diff}, subresource="status")


def fail(
    body: kopf.Body,
    patch: kopf.Patch,
    problem: Problem,
    problem_status: Mapping[str, Any],
    owned: Iterable[str],
    retry_delay: float,
    retries: int = 0,
) -> NoReturn:
    """Report ``problem`` (status, and a Warning event unless a retry finds it shown already) and end the
    handler the way Kopf should treat it:
    a spec only the user can fix is not retried; one that names its recheck is looked at again then; anything
    else is retried after ``retry_delay``, doubled per earlier failed attempt (``retries``, Kopf's count)."""
    changed = write_status(body, patch, problem_status, owned)
    # A retry meeting the problem its status already shows says nothing new: one Warning event per problem, not
    # one per retry (a rebuild waited for, or a store down for an hour, would post hundreds).
    if changed or retries == 0:
        kopf.warn(body, reason=problem.reason, message=problem.message)
    if problem.stalled and problem.recheck is None:
        raise kopf.PermanentError(problem.message)
    raise kopf.TemporaryError(problem.message, delay=problem.recheck or problems.retry_delay(retry_delay, retries))


def announce(body: kopf.Body, reason: str, message: str) -> None:
    """A Normal Event for something the operator *did* (created, repaired, rebuilt). kopf.info would be
    dropped: posting.level is WARNING so that Kopf's own INFO log lines do not become Events."""
    kopf.event(body, type="Normal", reason=reason, message=message)
