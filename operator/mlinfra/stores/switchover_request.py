"""``mlinfra promote NAMESPACE/STORE MEMBER``: ask the operator for a switchover (the ``mlinfra.io/promote``
annotation) and follow it to its outcome (``mlinfra.io/promote-result``, written by the operator)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from mlinfra.k8s import objects
from mlinfra.stores import ha, sync_command


class RequestError(Exception):
    """The request could not be made; the message says why."""


def promote(target: str, member: str, *, timeout: float, echo: Callable[[str], None], poll: float = 1.0) -> int:
    """0 when ``member`` is the primary at the end, 1 when the operator refused or the wait timed out."""
    try:
        namespace, store = sync_command.parse_target(target)
    except sync_command.Unusable as exc:
        raise RequestError(str(exc)) from None
    kube = objects.Kube()
    found = kube.get_or_none("DataStore", namespace, store)
    if found is None:
        raise RequestError(f"DataStore {namespace}/{store} not found")
    result_key = f"{ha.PROMOTE_ANNOTATION}-result"
    before = (found["metadata"].get("annotations") or {}).get(result_key)
    try:
        # Cleared first: asking for the same member twice is a change the operator sees.
        kube.merge_patch("DataStore", namespace, store, {"metadata": {"annotations": {ha.PROMOTE_ANNOTATION: None}}})
        kube.merge_patch("DataStore", namespace, store, {"metadata": {"annotations": {ha.PROMOTE_ANNOTATION: member}}})
    except objects.ApiError as exc:
        raise RequestError(f"annotating DataStore {namespace}/{store}: {exc}") from None
    echo(f"datastore.mlinfra.io/{store}: switchover to {member} requested")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = kube.get_or_none("DataStore", namespace, store) or {}
        raw = (body.get("metadata", {}).get("annotations") or {}).get(result_key)
        if raw and raw != before:
            result = json.loads(raw)
            echo(f"{result.get('outcome')}: {result.get('message')}")
            return 0 if result.get("outcome") == "done" else 1
        time.sleep(poll)
    echo(
        f"no answer from the operator after {timeout:.0f} s: is it running? "
        f"(kubectl get datastore -n {namespace} {store})"
    )
    return 1
