"""``mlinfra backup NAMESPACE/STORE``: create a Backup of a store now, and optionally follow it to its end."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from mlinfra.api import base
from mlinfra.k8s import conditions, objects
from mlinfra.stores import sync_command


class RequestError(Exception):
    """The Backup could not be created or followed; the message says why."""


def backup_now(
    target: str, *, name: str | None, wait: bool, timeout: float, echo: Callable[[str], None], poll: float = 2.0
) -> int:
    """Create the Backup; 0 when created (or, with ``wait``, complete), 1 when it failed or the wait timed out."""
    try:
        namespace, store = sync_command.parse_target(target)
    except sync_command.Unusable as exc:
        raise RequestError(str(exc)) from None
    kube = objects.Kube()
    if kube.get_or_none("DataStore", namespace, store) is None:
        raise RequestError(f"DataStore {namespace}/{store} not found")
    name = name or f"{store[:40]}-{datetime.datetime.now(datetime.UTC):%Y%m%d%H%M%S}"
    body = {
        "apiVersion": base.API_VERSION,
        "kind": "Backup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"dataStoreRef": {"name": store}},
    }
    try:
        if kube.create(body) is None:
            raise RequestError(f"Backup {namespace}/{name} exists already: choose another --name")
    except objects.ApiError as exc:
        raise RequestError(f"creating Backup {namespace}/{name}: {exc}") from None
    echo(f"backup.mlinfra.io/{name} created")
    if not wait:
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = kube.get_or_none("Backup", namespace, name) or {}
        conds = (found.get("status") or {}).get("conditions")
        ready, stalled = conditions.get(conds, "Ready"), conditions.get(conds, "Stalled")
        if ready is not None and ready.get("status") == "True":
            st = found["status"]
            echo(f"complete: {st.get('location')} ({st.get('sizeBytes')} bytes, completed {st.get('completedAt')})")
            return 0
        if stalled is not None and stalled.get("status") == "True":
            echo(f"failed: {stalled.get('reason')}: {stalled.get('message')}")
            return 1
        time.sleep(poll)
    echo(f"still not complete after {timeout:.0f} s: kubectl get backup -n {namespace} {name}")
    return 1
