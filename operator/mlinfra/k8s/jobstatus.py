"""What the newest sync Job of a resource says: a Job that failed before it could record a run (it could
not start, its image was wrong, its deadline passed) is reported from the Job itself."""

from __future__ import annotations

from collections.abc import Mapping

from mlinfra.k8s import objects


def newest_failure(kube: objects.Kube, namespace: str, labels: Mapping[str, str]) -> str | None:
    """``Job <name> failed: <reason> <message>`` when the newest Job with ``labels`` failed, else None."""
    items = kube.list_("Job", namespace, labels)
    if not items:
        return None
    newest = max(items, key=lambda j: j["metadata"].get("creationTimestamp", ""))
    for cond in (newest.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            why = f"{cond.get('reason', '')} {cond.get('message', '')}".strip()
            return f"Job {newest['metadata']['name']} failed: {why}"
    return None
