"""The server of a volume backup target: one Deployment, Service and token Secret per claim and namespace,
shared by everything that uses the claim.

Backups on a PersistentVolumeClaim are read and written by pods on any node (the backup Jobs, the WAL
archiver, a restore container) and by the operator itself (status, pruning, bootstrap checks). Mounting the
claim into each of them would need ReadWriteMany storage and would leave the operator blind, so one pod,
``mlinfra backup-volume serve`` in the operator's image, mounts the claim and serves it over a small HTTP
object API (:mod:`mlinfra.backup.volume_server`); the others reach it through its Service with the token of
the Secret, which the operator generates and nobody else holds.

The server is shared: every DataStore whose ``spec.backup`` names the claim, every Backup kept on it and
every store bootstrapping from it puts an owner reference on its Deployment (never a controller reference),
so the garbage collector removes the server when the last of them is gone, and not before: Backups outlive
their store, and they stay restorable. The Service, its NetworkPolicy and the token Secret are the
Deployment's. The claim itself is the user's; nothing here creates, changes or deletes it.
An object of one of these names that the operator did not make is never touched (ChildConflict).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from mlinfra.backup import configured
from mlinfra.context import Context
from mlinfra.engines import names
from mlinfra.k8s import objects
from mlinfra.problems import Problem, ProblemError
from mlinfra.stores import connsecret, credentials

log = logging.getLogger(__name__)

LABEL = "mlinfra.io/backup-volume"  # value: the server's name (the claim's may be longer than a label value)
CLAIM_ANNOTATION = "mlinfra.io/backup-volume-claim"
COMPONENT = "backup-volume"
MOUNT_PATH = "/var/lib/mlinfra/backups"
TOKEN_DIR = "/var/run/mlinfra/token"  # noqa: S105 - a mount path
TOKEN_FILE_ENV = "MLINFRA_VOLUME_TOKEN_FILE"  # noqa: S105 - the variable's name
ROOT_ENV = "MLINFRA_VOLUME_ROOT"
CHILD_CONFLICT = "ChildConflict"
KINDS = ("Deployment", "Service", "NetworkPolicy", "Secret")
MANAGED_BY = {"app.kubernetes.io/managed-by": "mlinfra-operator"}


def _labels(claim: str) -> dict[str, str]:
    server = configured.volume_server(claim)
    return {
        LABEL: server,
        "app.kubernetes.io/name": "mlinfra-backup-volume",
        "app.kubernetes.io/component": COMPONENT,
        **MANAGED_BY,
    }


def _metadata(namespace: str, name: str, claim: str, owners: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": _labels(claim),
        "annotations": {CLAIM_ANNOTATION: claim},
        "ownerReferences": owners,
    }


def build(namespace: str, claim: str, image: str, owners: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployment and the Service serving ``claim`` (pure: the owners are given)."""
    server = configured.volume_server(claim)
    selector = {LABEL: server, "app.kubernetes.io/component": COMPONENT}
    port = configured.VOLUME_PORT
    container = {
        "name": "server",
        "image": image,
        "args": ["backup-volume", "serve", "--port", str(port)],
        "env": [
            {"name": ROOT_ENV, "value": MOUNT_PATH},
            {"name": TOKEN_FILE_ENV, "value": f"{TOKEN_DIR}/{configured.VOLUME_TOKEN_KEY}"},
            {"name": "MLINFRA_LOG_FORMAT", "value": "json"},
        ],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 5},
        "volumeMounts": [
            {"name": "backups", "mountPath": MOUNT_PATH},
            {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir: the root filesystem is read-only
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod = {
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "fsGroup": 10001,  # the claim's files are the server's on storage that honours fsGroup
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "backups", "persistentVolumeClaim": {"claimName": claim}},
            {"name": "token", "secret": {"secretName": configured.volume_token_secret(claim)}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    labels = _labels(claim)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(namespace, server, claim, owners),
        "spec": {
            "replicas": 1,
            # Never two servers on one claim: a ReadWriteOnce claim on another node would hang the new pod.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(namespace, server, claim, owners),
        "spec": {"selector": selector, "ports": [{"name": "http", "port": port, "targetPort": port}]},
    }
    return [deployment, service]


def network_policy(namespace: str, claim: str, operator_namespace: str | None) -> dict[str, Any]:
    """Only pods of the namespace (its backup Jobs, archiver, restore containers) and the operator's pods reach
    the server; the token is needed as well. The operator's namespace is named by its immutable
    ``kubernetes.io/metadata.name`` label, as in the stores' policies (a pod label alone any tenant can copy)."""
    sources: list[dict[str, Any]] = [{"podSelector": {}}]
    if operator_namespace:
        sources.append(
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}},
                "podSelector": {"matchLabels": dict(names.OPERATOR_POD_LABELS)},
            }
        )
    server = configured.volume_server(claim)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(namespace, server, claim, []),
        "spec": {
            "podSelector": {"matchLabels": {LABEL: server, "app.kubernetes.io/component": COMPONENT}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": sources, "ports": [{"port": configured.VOLUME_PORT, "protocol": "TCP"}]}],
        },
    }


def _ours(obj: Mapping[str, Any], claim: str) -> bool:
    meta = obj.get("metadata") or {}
    return (meta.get("labels") or {}).get(LABEL) == configured.volume_server(claim) and (
        meta.get("annotations") or {}
    ).get(CLAIM_ANNOTATION) == claim


def _conflict(kind: str, namespace: str, name: str, claim: str) -> ProblemError:
    return ProblemError(
        Problem(
            CHILD_CONFLICT,
            f"{kind} {namespace}/{name} exists and was not made by mlinfra for backup volume {claim!r}: "
            "rename or delete it so the operator can serve the claim",
            stalled=True,
        )
    )


def _with_owner(existing: Mapping[str, Any] | None, ref: dict[str, Any]) -> list[dict[str, Any]]:
    refs = [dict(r) for r in ((existing or {}).get("metadata") or {}).get("ownerReferences") or []]
    if all(r.get("uid") != ref["uid"] for r in refs):
        refs.append(ref)
    return refs


def _token(kube: objects.Kube, namespace: str, claim: str, deployment: Mapping[str, Any]) -> None:
    """The token Secret, owned by the Deployment (it goes with the server; the operator never deletes a
    Secret itself): created once with a new token, then only read."""
    name = configured.volume_token_secret(claim)
    ref = objects.owner_reference(deployment)
    existing = kube.get_or_none("Secret", namespace, name)
    if existing is None:
        kube.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": _metadata(namespace, name, claim, [ref]),
                "stringData": {configured.VOLUME_TOKEN_KEY: credentials.new_password()},
            }
        )
        return
    if configured.VOLUME_TOKEN_KEY not in connsecret.values(existing):
        raise ProblemError(
            Problem(
                "SecretNotFound",
                f"Secret {namespace}/{name} lacks the key {configured.VOLUME_TOKEN_KEY!r}; delete it to have a "
                "new token generated",
                stalled=True,
            )
        )
    if existing["metadata"].get("ownerReferences") != [ref]:  # left by a server deleted and made again
        kube.merge_patch("Secret", namespace, name, {"metadata": {"ownerReferences": [ref]}})


def ensure(ctx: Context, namespace: str, claim: str, owner: Mapping[str, Any]) -> None:
    """Serve ``claim`` with ``owner`` (a DataStore or Backup body) among the server's owners: the Deployment
    (the only object with those owners), then its Service, NetworkPolicy and token Secret, which it owns.
    ProblemError when a name is taken by an object the operator did not make."""
    server = configured.volume_server(claim)
    token = configured.volume_token_secret(claim)
    found = {kind: ctx.kube.get_or_none(kind, namespace, token if kind == "Secret" else server) for kind in KINDS}
    for kind, obj in found.items():
        if obj is not None and not _ours(obj, claim):
            name = obj["metadata"]["name"]
            raise _conflict(kind, namespace, name, claim)
    owners = _with_owner(found["Deployment"], objects.owner_reference(owner, controller=False))
    deployment, service = build(namespace, claim, ctx.settings.job_image, owners)
    existing = found["Deployment"]
    if existing is not None and owners != existing["metadata"].get("ownerReferences"):
        # The owners are applied whole: two owners adding themselves at once must not drop one another (the
        # second apply fails on the changed version, and its reconcile is retried). Only then: the Deployment
        # controller moves the version with every status change, which must not fail a plain re-apply.
        deployment["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
    stored = ctx.kube.apply(deployment)
    service["metadata"]["ownerReferences"] = [objects.owner_reference(stored)]
    ctx.kube.apply(service)
    policy = network_policy(namespace, claim, ctx.settings.operator_namespace)
    policy["metadata"]["ownerReferences"] = [objects.owner_reference(stored)]
    ctx.kube.apply(policy)
    _token(ctx.kube, namespace, claim, stored)


def release(ctx: Context, namespace: str, owner: Mapping[str, Any], keep: Collection[str] = ()) -> None:
    """Take ``owner`` off every server of the namespace but those of the claims in ``keep`` (a store whose
    policy moved to another target, or dropped it); a server left without owners is deleted, and its Service
    and token go with it."""
    uid = owner["metadata"]["uid"]
    for deployment in ctx.kube.list_("Deployment", namespace, {"app.kubernetes.io/component": COMPONENT}):
        meta = deployment.get("metadata") or {}
        claim = (meta.get("annotations") or {}).get(CLAIM_ANNOTATION)
        if not claim or claim in keep or not _ours(deployment, claim):
            continue
        refs = meta.get("ownerReferences") or []
        left = [r for r in refs if r.get("uid") != uid]
        if len(left) == len(refs):
            continue
        if left:
            patch = {"metadata": {"ownerReferences": left, "resourceVersion": meta["resourceVersion"]}}
            ctx.kube.merge_patch("Deployment", namespace, meta["name"], patch)
        else:
            log.info("backup volume %r in %s has no user left: deleting its server", claim, namespace)
            ctx.kube.delete("Deployment", namespace, meta["name"], uid=meta.get("uid"))


def claim_of(target: Mapping[str, Any] | None) -> str | None:
    """The claim a target (as JSON: spec.backup.target, a Backup's status.target) names, or None."""
    volume = (target or {}).get("volume") or {}
    claim = volume.get("claimName")
    return str(claim) if claim else None


STARTING = "BackupVolumeStarting"


def wait_ready(ctx: Context, namespace: str, claim: str) -> None:
    """A non-stalled ProblemError while the server of ``claim`` has no ready pod (just created, the claim not
    bound yet, rescheduled): the caller looks again shortly instead of reporting an unreachable target."""
    server = configured.volume_server(claim)
    found = ctx.kube.get_or_none("Deployment", namespace, server)
    if found is not None and int((found.get("status") or {}).get("availableReplicas") or 0) >= 1:
        return
    why = "does not exist yet" if found is None else "has no ready pod yet (is the claim bound?)"
    raise ProblemError(
        Problem(STARTING, f"the server of backup volume {claim!r} ({server}) {why}", stalled=False, recheck=5.0)
    )
