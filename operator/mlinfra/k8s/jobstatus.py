"""What a resource's Jobs say: the newest sync Job that failed before it could record a run (it could not
start, its image was wrong, its deadline passed) is reported from the Job itself; a Job's end and, from its
pod, why its container ended (``OOMKilled``, the exit code, the termination message)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlinfra.k8s import objects

# Set by the Job controller on the pods of a Job (the older ``job-name`` label is still set beside it).
JOB_NAME_LABEL = "job-name"


def newest_failure(kube: objects.Kube, namespace: str, labels: Mapping[str, str]) -> str | None:
    """``Job <name> failed: <reason> <message>`` when the newest Job with ``labels`` failed, else None.
    ``labels`` must single out one kind of Job (a component): a failed rebuild Job is not a failed sync."""
    items = kube.list_("Job", namespace, labels)
    if not items:
        return None
    newest = max(items, key=lambda j: j["metadata"].get("creationTimestamp", ""))
    failed = condition(newest, "Failed")
    if failed is not None:
        why = f"{failed.get('reason', '')} {failed.get('message', '')}".strip()
        return f"Job {newest['metadata']['name']} failed: {why}"
    return None


def condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """The Job's condition ``type_`` (Complete, Failed) when it is True, else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def finished(job: Mapping[str, Any]) -> bool:
    """Whether the Job ended (Complete or Failed); a Job just created, with no pod yet, has not."""
    return condition(job, "Complete") is not None or condition(job, "Failed") is not None


def terminated(kube: objects.Kube, namespace: str, job_name: str) -> str | None:
    """How the Job's (newest) pod's container ended, e.g. ``OOMKilled (exit code 137)`` or ``Error (exit code 1):
    <termination message>``; None when no pod says (gone, never started, or no container status: kwok)."""
    pods = kube.list_("Pod", namespace, {JOB_NAME_LABEL: job_name})
    if not pods:
        return None
    pod = max(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        ended = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
        if not ended:
            continue
        text = f"{ended.get('reason') or 'Terminated'} (exit code {ended.get('exitCode')})"
        message = " ".join(str(ended.get("message") or "").split())
        return f"{text}: {message}" if message else text
    return None
