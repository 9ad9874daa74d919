"""The role label of a managed redis or postgres store's pods (``names.ROLE_LABEL``), from what the members
reported at the last observation: ``primary``; ``replica`` for a replica that streams (the read-only Service
``<name>-ro`` selects these, so readers never land on a replica that lost its primary or is still copying it);
no label for a member that is neither.

Labels change only on an observation that reached the store: when the primary does not answer nothing is
known of its replicas, and the replicas that were serving reads keep serving them (a read-only endpoint that
empties whenever the primary blips would be worse than one that lags).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from mlinfra.engines import names
from mlinfra.k8s import objects

log = logging.getLogger(__name__)

_refused_once: list[bool] = []  # the patch was refused (RBAC of a chart older than the label): said once


def wanted(members: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    """The label each member's pod should carry, by pod name (None: no label)."""
    out: dict[str, str | None] = {}
    for member in members:
        role = member.get("role")
        if role == "primary":
            out[str(member["name"])] = names.PRIMARY_ROLE
        elif role == "replica" and member.get("ready"):
            out[str(member["name"])] = names.REPLICA_ROLE
        else:
            out[str(member["name"])] = None
    return out


def changes(current: Mapping[str, str | None], members: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    """The labels to write: pods (of ``current``, the store's pods and their label now) whose label differs."""
    want = wanted(members)
    return {pod: want.get(pod) for pod, label in sorted(current.items()) if want.get(pod) != label}


def current(pods: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    """Each pod's role label now, by pod name."""
    return {str(pod["metadata"]["name"]): ((pod["metadata"].get("labels") or {}).get(names.ROLE_LABEL)) for pod in pods}


def relabel(
    kube: objects.Kube, namespace: str, now: Mapping[str, str | None], members: Iterable[Mapping[str, Any]]
) -> dict[str, str | None]:
    """Write the labels that changed; what was written. A pod gone meanwhile is skipped (its successor is
    labelled at the next observation); a refusal of the API server is logged and leaves the labels as they are."""
    written: dict[str, str | None] = {}
    for pod, label in changes(now, members).items():
        try:
            kube.merge_patch("Pod", namespace, pod, {"metadata": {"labels": {names.ROLE_LABEL: label}}})
        except objects.NotFound:
            continue
        except objects.ApiError as exc:
            if exc.status != 403:
                raise
            if not _refused_once:
                _refused_once.append(True)
                log.warning(
                    "cannot label pods with their role (%s): the read-only Services stay empty until the "
                    "operator may patch pods (upgrade the chart's ClusterRole)",
                    exc,
                )
            return written
        written[pod] = label
    return written
