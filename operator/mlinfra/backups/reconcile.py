"""Backup reconcile, observation and deletion. Reconcile: resolve the plan (the store and its ``spec.backup``), check
that the target's Secrets are there and usable, and start the Job once — unless the manifest is already on the
target (the backup is complete: a Backup is taken once). Observe: the manifest on the target decides (the operator
reads it, with the same Secrets; once found complete, again only every COMPLETE_RECHECK seconds); without it, the
Job's state. Delete: the backup's objects go with it, by its manifest (only what the manifest lists; a foreign
manifest is never touched); the Job goes with its owner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from mlinfra import metrics
from mlinfra.api import backup as api
from mlinfra.backup import catalog
from mlinfra.backup.target import NotFound, Target, TargetError
from mlinfra.backups import job, status
from mlinfra.backups.plan import Plan, resolve
from mlinfra.context import Context, Obj
from mlinfra.k8s import conditions, jobstatus
from mlinfra.problems import Problem, ProblemError
from mlinfra.stores import backupaccess as access
from mlinfra.stores import children, volumeserver

log = logging.getLogger(__name__)

TARGET_UNREACHABLE = "TargetUnreachable"
TARGET_RECHECK = 60.0
# Seconds between reads of a complete backup's manifest. A complete backup changes only if someone deletes it
# from the target outside the operator; reading every manifest at every observation (15 s) would cost one GET
# per Backup per look, hundreds a minute with a long retention, to notice that a little sooner.
COMPLETE_RECHECK = 600.0

_lock = threading.Lock()
_checked: dict[str, float] = {}  # Backup uid -> when its manifest was last found complete (monotonic)


def _recently_checked(obj: Obj[api.Backup]) -> bool:
    """The Backup was found complete at its observed generation less than COMPLETE_RECHECK ago here."""
    previous = obj.status or {}
    if previous.get("observedGeneration") != obj.generation or not conditions.is_true(
        previous.get("conditions"), "Ready"
    ):
        return False
    with _lock:
        when = _checked.get(str(obj.body["metadata"].get("uid")))
    return when is not None and time.monotonic() - when < COMPLETE_RECHECK


def _plan(ctx: Context, obj: Obj[api.Backup]) -> Plan:
    store = ctx.kube.get_or_none("DataStore", obj.namespace, obj.model.spec.data_store_ref.name)
    return resolve(obj.body, store)


def _target(ctx: Context, plan: Plan) -> Target:
    if plan.target.volume is not None:
        volumeserver.wait_ready(ctx, plan.namespace, plan.target.volume.claim_name)
    reader = access.api_reader(ctx, plan.namespace)
    access.key(plan.encryption, reader)  # a missing or malformed key is reported before any Job runs
    return access.target(plan.target, reader, plan.namespace)


def _manifest(target: Target, plan: Plan) -> catalog.Manifest | None:
    """The backup's manifest, None when it is not (yet) there; an unusable target is a Problem naming it."""
    try:
        return catalog.read_manifest(target, plan.store_prefix, plan.backup_id)
    except NotFound:
        return None
    except (TargetError, catalog.CatalogError) as exc:
        raise ProblemError(
            Problem(TARGET_UNREACHABLE, f"spec.backup.target: {exc}", stalled=True, recheck=TARGET_RECHECK)
        ) from None


def reconcile(ctx: Context, obj: Obj[api.Backup]) -> None:
    plan = _plan(ctx, obj)
    if plan.target.volume is not None:  # the Backup keeps its volume served, also when its store is gone
        volumeserver.ensure(ctx, plan.namespace, plan.target.volume.claim_name, obj.body)
    target = _target(ctx, plan)
    if _manifest(target, plan) is not None:
        return
    if status.was_complete(obj.status):
        return  # it was complete and is gone from the target: taking it again would be another backup
    with children.reported():
        children.create(ctx.kube, job.build(plan, ctx.settings.job_image, obj.owner_reference()))


def _job_state(ctx: Context, plan: Plan) -> tuple[str | None, int | None]:
    found = ctx.kube.get_or_none("Job", plan.namespace, job.job_name(plan.backup))
    if found is None:
        return None, None
    st: Mapping[str, Any] = found.get("status") or {}
    attempts = int(st.get("failed") or 0) + int(st.get("succeeded") or 0) + int(st.get("active") or 0)
    failed = jobstatus.condition(found, "Failed")
    if failed is None:
        return None, attempts
    how = jobstatus.terminated(ctx.kube, plan.namespace, found["metadata"]["name"])
    why = how or f"{failed.get('reason', '')} {failed.get('message', '')}".strip()
    return f"Job {found['metadata']['name']} failed after {attempts} attempts: {why}", attempts


def observe(ctx: Context, obj: Obj[api.Backup]) -> Mapping[str, Any]:
    if _recently_checked(obj):
        return obj.status
    plan = _plan(ctx, obj)
    manifest = _manifest(_target(ctx, plan), plan)
    failed, attempts = _job_state(ctx, plan) if manifest is None else (None, None)
    uid = str(obj.body["metadata"].get("uid"))
    with _lock:
        if manifest is not None:
            _checked[uid] = time.monotonic()
        else:
            _checked.pop(uid, None)
    if manifest is not None:
        metrics.backup_completed(plan.namespace, plan.store, manifest.completed.timestamp())
    facts = status.Facts(
        generation=obj.generation,
        plan=plan,
        manifest=manifest,
        job_failed=failed,
        attempts=attempts if attempts is not None else (obj.status or {}).get("attempts"),
        was_complete=status.was_complete(obj.status),
    )
    return status.compute(facts, obj.status)


def delete(ctx: Context, obj: Obj[api.Backup]) -> None:
    """The backup's objects on the target go with the Backup (by its manifest, only when it is ours and of this
    store). A target that cannot be reached keeps the Backup (Kopf retries the deletion); Secrets that are
    gone let it go with a warning: the objects stay, and the message says where."""
    with _lock:
        _checked.pop(str(obj.body["metadata"].get("uid")), None)
    try:
        plan = _plan(ctx, obj)
        target = _target(ctx, plan)
    except ProblemError as exc:
        obj.report.warning("BackupObjectsLeft", f"the backup's objects were not deleted: {exc.problem.message}")
        return
    manifest = _manifest(target, plan)
    if manifest is None:
        return
    if manifest.store.uid != plan.store_uid:
        obj.report.warning(
            "BackupObjectsLeft", f"{plan.location} belongs to another store (uid {manifest.store.uid}): left alone"
        )
        return
    catalog.delete_backup(target, plan.store_prefix, plan.backup_id)
    log.info("deleted backup %s at %s", plan.backup_id, plan.location)
