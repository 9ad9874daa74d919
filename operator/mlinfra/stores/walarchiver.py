"""The WAL archiver of a PostgreSQL DataStore with ``spec.backup``: a pure builder of its Deployment, the
decision whether a store wants one, and the two calls a DataStore reconcile makes (:func:`ensure_archiver`,
:func:`drop`).

The Deployment ``<store>-wal-archiver`` runs ``mlinfra archive wal NAMESPACE/STORE`` in the operator's image
(like the backup Job: the plan as JSON in an environment variable, each Secret mounted read-only, no
Kubernetes API access). One replica with the ``Recreate`` strategy: two ``pg_receivewal`` on one slot must
never run, and a rolling update would start the new pod before the old one ended. The spool is an emptyDir:
it survives a container restart (pg_receivewal resumes after the last segment in it); on a new pod it is
empty and pg_receivewal starts at the slot's restart position (PostgreSQL 15 and newer read it: older
servers restart at the current position, and the WAL between is a gap that ``walGaps`` reports).

The slot is per store: ``mlinfra_<namespace>_<name>_…`` with a hash of the uid in it
(:func:`slot_for`), so two stores of one name in two namespaces, or a store deleted and created again, on
one external server never share a slot. An external store's user needs the REPLICATION attribute (and
``pg_switch_wal`` — superuser or ``GRANT EXECUTE`` — for the marks that time the archive).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import pydantic

from mlinfra.api import backup as api
from mlinfra.api import datastore as ds_api
from mlinfra.backup import catalog, configured
from mlinfra.context import Context
from mlinfra.k8s import objects, syncjobs
from mlinfra.stores import backupaccess, children, connsecret

log = logging.getLogger(__name__)

LABEL = "mlinfra.io/wal-archiver"
COMPONENT = "wal-archiver"
PLAN_ENV = "MLINFRA_ARCHIVE_PLAN"
SPOOL_ENV = "MLINFRA_ARCHIVE_SPOOL"
STATUS_ENV = "MLINFRA_ARCHIVE_STATUS"
SECRETS_ROOT = "/var/run/mlinfra/secrets"
SPOOL_PATH = "/var/lib/mlinfra/wal-spool"
DEFAULT_MARK_INTERVAL = 60.0  # seconds: bounds how far the archive's reach in time lags (the RPO)
# Room for stop(): pg_receivewal flushes, the last complete segments and marks are uploaded.
TERMINATION_GRACE_SECONDS = 60
REPLICATION_NOTE = (
    "the WAL archiver connects with the store's user over the replication protocol: an external server's user "
    "needs the REPLICATION attribute, and EXECUTE on pg_switch_wal (or superuser) for the marks"
)


class ArchivePlan(pydantic.BaseModel):
    """What the archiver process needs, built by the operator from the DataStore and read back by the pod."""

    namespace: str
    store: str
    store_uid: str
    target: api.Target
    encryption: api.Encryption | None = None
    slot: str
    mark_interval: float = DEFAULT_MARK_INTERVAL

    @property
    def store_prefix(self) -> str:
        return configured.store_prefix(self.namespace, self.store, self.store_uid)

    @property
    def store_ref(self) -> catalog.StoreRef:
        return catalog.StoreRef(self.namespace, self.store, self.store_uid)


def slot_for(namespace: str, name: str, uid: str) -> str:
    """The store's replication slot: readable (namespace and name first) and unique (the hash that
    :func:`postgres.slot_name` appends covers the uid)."""
    from mlinfra.backup import postgres  # the PostgreSQL tools load only where PostgreSQL is archived

    return postgres.slot_name(f"{namespace}_{name}_{uid}")


@dataclasses.dataclass(frozen=True)
class Wanted:
    """Whether a store wants an archiver; ``note`` says what it needs from the user (external stores)."""

    wanted: bool
    reason: str
    note: str | None = None


def wants_archiver(store_body: Mapping[str, Any]) -> Wanted:
    """A PostgreSQL store with ``spec.backup``, managed or external, not being deleted. ``spec.backup.suspend``
    pauses the schedule and retention, not archiving: the WAL since the last backup stays recoverable."""
    spec = store_body.get("spec") or {}
    if store_body.get("metadata", {}).get("deletionTimestamp"):
        return Wanted(False, "the store is being deleted")
    if spec.get("engine") != "postgres":
        return Wanted(False, "only PostgreSQL stores archive WAL")
    if not spec.get("backup"):
        return Wanted(False, "the store has no spec.backup")
    if spec.get("external"):
        return Wanted(True, "external PostgreSQL store with spec.backup", REPLICATION_NOTE)
    return Wanted(True, "managed PostgreSQL store with spec.backup")


def plan_for(store_body: Mapping[str, Any], mark_interval: float = DEFAULT_MARK_INTERVAL) -> ArchivePlan:
    """The plan of a store that :func:`wants_archiver` (ValueError otherwise)."""
    if not wants_archiver(store_body).wanted:
        raise ValueError(f"DataStore {store_body['metadata']['name']!r} wants no WAL archiver")
    policy = api.BackupPolicy.model_validate(store_body["spec"]["backup"])
    meta = store_body["metadata"]
    namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
    return ArchivePlan(
        namespace=namespace,
        store=name,
        store_uid=uid,
        target=policy.target,
        encryption=policy.encryption,
        slot=slot_for(namespace, name, uid),
        mark_interval=mark_interval,
    )


def deployment_name(store: str) -> str:
    return syncjobs.bounded_name(store, "wal-archiver", 63)


SECRET_DIR_ENV = "MLINFRA_ARCHIVE_SECRET"  # noqa: S105 - MLINFRA_ARCHIVE_SECRET_<n>: the n-th Secret's directory


def build(plan: ArchivePlan, image: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    """The Deployment (``owner``: the DataStore's owner reference, so it goes with the store)."""
    job = syncjobs.SyncJob(
        kind_label=LABEL,
        owner_name=plan.store,
        namespace=plan.namespace,
        args=["archive", "wal", f"{plan.namespace}/{plan.store}"],
        spec_env=PLAN_ENV,
        spec=backupaccess.pod_spec_of(plan, SECRET_DIR_ENV),
        mounts=backupaccess.mounts(plan, SECRET_DIR_ENV, SECRETS_ROOT),
        component=COMPONENT,
        memory_limit="512Mi",
    )
    # The backup Job's pod (same security context, read-only Secrets, no API token), long-running: restarted
    # in place when it exits, with an emptyDir spool that outlives a container restart.
    pod = syncjobs.pod_spec(job, image)
    pod["restartPolicy"] = "Always"
    pod["terminationGracePeriodSeconds"] = TERMINATION_GRACE_SECONDS
    container = pod["containers"][0]
    container["name"] = "wal-archiver"
    container["env"] += [
        {"name": SPOOL_ENV, "value": SPOOL_PATH},
        {"name": STATUS_ENV, "value": f"{SPOOL_PATH}/status.json"},
    ]
    container["volumeMounts"].append({"name": "spool", "mountPath": SPOOL_PATH})
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    pod["volumes"].append({"name": "spool", "emptyDir": {}})
    labels = syncjobs.labels(job)
    selector = {LABEL: plan.store, "app.kubernetes.io/component": COMPONENT}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(plan.store),
            "namespace": plan.namespace,
            "labels": labels,
            "ownerReferences": [dict(owner)],
        },
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def ensure_archiver(ctx: Context, store_body: Mapping[str, Any]) -> Wanted:
    """Apply the store's archiver Deployment when it wants one; otherwise remove it (:func:`drop`). Returns
    the decision (its ``note`` is for the store's events: what an external server's user needs)."""
    wanted = wants_archiver(store_body)
    if not wanted.wanted:
        drop(ctx, store_body)
        return wanted
    try:
        ds_api.DataStore.model_validate(store_body)
    except pydantic.ValidationError:
        return Wanted(False, "the DataStore is invalid")
    plan = plan_for(store_body)
    children.apply(ctx.kube, build(plan, ctx.settings.job_image, objects.owner_reference(store_body)))
    return wanted


def drop(ctx: Context, store_body: Mapping[str, Any]) -> bool:
    """Delete the archiver's Deployment and drop its slot (or the server keeps WAL for ever). True when the
    slot is gone (or there is no server to drop it on: no connection Secret, a managed store going away);
    False while the archiver's pod still holds it (the slot is active): call again later."""
    meta = store_body["metadata"]
    namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
    children.delete(ctx.kube, objects.owner_reference(store_body), "Deployment", namespace, deployment_name(name))
    spec = store_body.get("spec") or {}
    if spec.get("engine") != "postgres":
        return True
    if meta.get("deletionTimestamp") and "managed" in spec:  # `managed: {}` is managed with every default
        return True  # the server and its slots go with the store
    info = connsecret.read_connection(ctx.kube, namespace, name)
    if info is None:
        return True
    from mlinfra.backup import postgres

    info = ctx.reach(info, namespace, name)
    slot = slot_for(namespace, name, uid)
    try:
        postgres.drop_slot(info, slot)
    except (postgres.PostgresBackupError, TimeoutError) as exc:
        # Most often "is active": the pod is still ending. The message names no password (postgres scrubs).
        log.warning("dropping WAL slot %s of %s/%s failed (will retry): %s", slot, namespace, name, exc)
        return False
    return True
