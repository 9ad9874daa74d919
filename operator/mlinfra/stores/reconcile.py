"""Bring a DataStore's children to their desired state and publish its connection Secret.

Idempotent: deterministic names, server-side apply, create-once credentials. ``kubectl replace`` or an
Argo CD ``Replace=true`` sync wipes Kopf's annotations and makes the object look new; running this again
changes nothing but what drifted. Every child is written through ``stores.children``: an object of a child's
name that is not this DataStore's (a user's Service, another DataStore's child) is reported as ChildConflict
and left alone, checked before the first write so that a conflicted store starts nothing.
"""

from __future__ import annotations

import time
from typing import Any

from mlinfra.api import datastore as api
from mlinfra.context import Context, Obj
from mlinfra.engines import connection, names, render
from mlinfra.k8s import objects, ownership
from mlinfra.problems import INVALID_SPEC, Problem, ProblemError
from mlinfra.stores import (
    backuprecovery,
    bootstrap,
    children,
    connsecret,
    credentials,
    ha,
    primaryrecord,
    versions,
    volumeserver,
    walarchiver,
)


def _managed(ctx: Context, obj: Obj[api.DataStore]) -> connection.ConnectionInfo:
    """Apply the managed store's children; its credentials are generated once in ``<name>-credentials`` and
    adopted if that Secret was left by an earlier DataStore of this name (a store re-created after a Retain
    deletion finds its data and password again). A store with ``spec.managed.bootstrap`` has its source checked
    and fixed in ``status.restoredFrom`` first, and its pods restore from it (``stores.bootstrap``)."""
    ds = obj.model
    engine = ds.spec.engine
    keys = names.credentials_keys(engine)
    default_username = connection.DEFAULT_USERNAMES[engine]
    owner = obj.owner_reference()
    # The version the data on the volumes was written with decides, not only the spec (stores/versions.py).
    # A StatefulSet of that name that is not this store's says nothing about its data (claim_all reports it).
    sts = ctx.kube.get_or_none("StatefulSet", obj.namespace, names.statefulset(obj.name))
    ours = sts is not None and ownership.labelled_for(sts, owner)
    was = versions.recorded(sts if ours else None, engine, ctx.settings.engine_images)
    ds = versions.pinned(ds, versions.effective(ds, was))
    # A store bootstrapped from a Backup: its source fixed in status before any child exists (stores/bootstrap.py).
    restored = bootstrap.restored_from(ctx, obj, ds, sts if ours else None)
    first_init = bootstrap.first_init(ds, obj.namespace, restored, ctx.settings.job_image) if restored else None
    # The pod the primary record names is the one the client Service selects (stores.primaryrecord).
    recorded = primaryrecord.read(ctx.kube, obj.namespace, obj.name) if render.PROFILES[engine].primary_only else None
    primary = recorded.primary if recorded else None
    primaryrecord.check_kept(recorded, ds)
    rendered = render.render_managed(
        ds, ctx.settings.engine_images, ctx.settings.operator_namespace, first_init, primary
    )
    for child in rendered:
        child.setdefault("metadata", {})["ownerReferences"] = [owner]
    claimed = children.claim_all(ctx.kube, rendered)  # before the credentials are made: a conflict makes nothing
    found = credentials.ensure(
        ctx.kube,
        obj.namespace,
        names.credentials_secret(obj.name),
        fixed={names.USERNAME_KEY: default_username} if names.USERNAME_KEY in keys else {},
        generated=tuple(key for key in keys if key != names.USERNAME_KEY),
        labels=names.labels(ds),
        owner=owner,
        retained=ds.spec.deletion_policy == "Retain",
    )
    if render.PROFILES[engine].primary_only:  # created naming pod 0, or checked to be this store's
        primaryrecord.ensure(ctx.kube, obj.body, names.labels(ds), retained=ds.spec.deletion_policy == "Retain")
    children.write_all(ctx.kube, claimed)
    read_only = render.has_read_only_service(ds)
    if not read_only:  # scaled down to one member: its replicas' Service goes
        children.delete(ctx.kube, owner, "Service", obj.namespace, names.read_only_service(obj.name))
    return connection.ConnectionInfo(
        engine=engine,
        host=names.service_host(ds),
        port=connection.default_port(engine),
        username=found.get(names.USERNAME_KEY) or default_username,
        password=found[names.PASSWORD_KEY],
        database=connection.DEFAULT_DATABASES[engine],
        tls=False,
        read_only_host=names.read_only_host(ds) if read_only else None,
    )


def _external(ctx: Context, obj: Obj[api.DataStore]) -> connection.ConnectionInfo:
    ds = obj.model
    ext = ds.spec.external
    assert ext is not None
    ns = obj.namespace
    ref = ext.credentials_secret_ref
    what = "spec.external.credentialsSecretRef"
    username = connsecret.read_key(ctx.kube, ns, ref.name, ref.username_key, what)
    password = connsecret.read_key(ctx.kube, ns, ref.name, ref.password_key, what)
    # Every TLS setting travels into the published Secret, so sync Jobs and the SDK verify as the operator does;
    # none of them means anything when TLS is off.
    tls = ext.tls if ext.tls and ext.tls.enabled else None
    ca = None
    if tls and tls.ca_secret_ref:
        ca_ref = tls.ca_secret_ref
        ca = connsecret.read_key(ctx.kube, ns, ca_ref.name, ca_ref.key, "spec.external.tls.caSecretRef")
    engine = ds.spec.engine
    try:
        host, port = connection.split_endpoint(ext.endpoint, connection.default_port(engine))
        return connection.ConnectionInfo(
            engine=engine,
            host=host,
            port=port,
            username=username,
            password=password,
            database=ext.database or connection.DEFAULT_DATABASES[engine],
            tls=tls is not None,
            ca_cert=ca,
            server_name=tls.server_name if tls else None,
            insecure_skip_verify=bool(tls and tls.insecure_skip_verify),
        )
    except ValueError as exc:
        # What the schema cannot say (a port above 65535): the message names the field, never a secret.
        raise ProblemError(
            Problem(INVALID_SPEC, f"spec.external.endpoint {ext.endpoint!r}: {exc}", stalled=True)
        ) from None


def apply(ctx: Context, obj: Obj[api.DataStore]) -> connection.ConnectionInfo:
    """Apply the desired state of the DataStore and publish ``<name>-conn``; the connection published.
    Raises ProblemError for what the user must fix."""
    ds = obj.model
    owner = obj.owner_reference()
    conn_secret = names.connection_secret(obj.name)
    # Written last (it needs the password) but checked first: a conflicted DataStore starts nothing.
    children.check(ctx.kube, owner, "Secret", obj.namespace, conn_secret)
    conn = _managed(ctx, obj) if ds.spec.managed is not None else _external(ctx, obj)
    children.apply(
        ctx.kube,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": conn_secret,
                "namespace": obj.namespace,
                "labels": names.labels(ds),
                "ownerReferences": [owner],
            },
            "data": conn.to_secret_base64(),  # not stringData: a key the store no longer has must leave
        },
    )
    return conn


ARCHIVER_STOPPING = "ArchiverStopping"


def _has_archiver(ctx: Context, obj: Obj[api.DataStore]) -> bool:
    """The store's WAL archiver Deployment exists (it may outlive spec.backup until its slot is dropped)."""
    try:
        return ctx.kube.get_or_none("Deployment", obj.namespace, walarchiver.deployment_name(obj.name)) is not None
    except objects.ApiError as exc:
        # An operator whose RBAC has no Deployments (a chart older than backups, docs/upgrade.md) never made
        # an archiver: a store without spec.backup must not stop being reconciled for want of the permission.
        if exc.status != 403:
            raise
        return False


def archive_wal(ctx: Context, obj: Obj[api.DataStore]) -> None:
    """A PostgreSQL store with spec.backup runs its WAL archiver (``stores.walarchiver``); one whose backups
    were turned off stops it and drops its replication slot (or the server would keep WAL for ever)."""
    if obj.model.spec.engine != "postgres":
        return
    if walarchiver.wants_archiver(obj.body).wanted:
        walarchiver.ensure_archiver(ctx, obj.body)
        return
    if not _has_archiver(ctx, obj):
        return
    if not walarchiver.drop(ctx, obj.body):
        raise ProblemError(
            Problem(
                ARCHIVER_STOPPING,
                "the WAL archiver is stopping: its replication slot is dropped once its pod has ended",
                stalled=False,
            )
        )


def serve_backup_volumes(ctx: Context, obj: Obj[api.DataStore]) -> None:
    """The servers of the volume claims the store uses (its ``spec.backup`` target, the target it bootstraps
    from) have it among their owners; servers of claims it no longer uses do not
    (:mod:`mlinfra.stores.volumeserver`). First, so a restore's target is being served when it is checked."""
    ds = obj.model
    claims = set()
    if ds.spec.backup is not None and ds.spec.backup.target.volume is not None:
        claims.add(ds.spec.backup.target.volume.claim_name)
    claims.update(bootstrap.source_claims(ctx, obj))
    for claim in sorted(claims):
        volumeserver.ensure(ctx, obj.namespace, claim, obj.body)
    try:
        volumeserver.release(ctx, obj.namespace, obj.body, keep=claims)
    except objects.ApiError as exc:
        if exc.status != 403:  # as _has_archiver: an older chart's RBAC without Deployments
            raise


def reconcile(ctx: Context, obj: Obj[api.DataStore]) -> None:
    """The kind's reconcile step (see :func:`apply`) after the backup volumes' servers, then the WAL archiver
    (:func:`archive_wal`)."""
    serve_backup_volumes(ctx, obj)
    apply(ctx, obj)
    archive_wal(ctx, obj)


def _claim_of(pvc: str, store: str) -> bool:
    """``pvc`` is one of the claims the store's StatefulSet makes (``data-<store>-<ordinal>``)."""
    ordinal = pvc.rpartition("-")[2]
    return ordinal.isascii() and ordinal.isdigit() and names.pvc(store, int(ordinal)) == pvc


SLOT_DROP_WAIT = 75.0  # seconds: the archiver pod's grace period (60 s) and a little more


def _drop_archiver_slot(ctx: Context, obj: Obj[api.DataStore]) -> None:
    """An external server outlives the store; the archiver's replication slot must not (the server would keep
    WAL for ever). The slot is busy until the archiver's pod has ended: tried for a while, then left with a
    Warning naming it (an unreachable server must not keep the store from being deleted)."""
    ds = obj.model
    if ds.spec.engine != "postgres" or (ds.spec.backup is None and not _has_archiver(ctx, obj)):
        return
    deadline = time.monotonic() + SLOT_DROP_WAIT
    while not walarchiver.drop(ctx, obj.body):
        if time.monotonic() > deadline:
            slot = walarchiver.slot_for(obj.namespace, obj.name, str(obj.body["metadata"]["uid"]))
            obj.report.warning(
                "ReplicationSlotLeft",
                f"the WAL archiver's replication slot {slot} could not be dropped on the external server: drop it "
                f"there (SELECT pg_drop_replication_slot('{slot}')) or the server keeps WAL for it",
            )
            return
        time.sleep(5)


def delete(ctx: Context, obj: Obj[api.DataStore]) -> None:
    """Honour ``deletionPolicy`` for what garbage collection would otherwise decide.

    Retain: the credentials Secret is orphaned (not garbage-collected with the store) and PVCs, which the
    StatefulSet never deletes, stay. Delete: the store's PVCs are deleted — those of its StatefulSet's claim
    template (``data-<name>-<ordinal>`` with its labels), never another claim that merely carries the labels;
    everything else it owns goes with it through owner references.
    """
    ds = obj.model
    ns, name = obj.namespace, obj.name
    backuprecovery.forget(str(obj.body["metadata"].get("uid")))
    ha.forget(str(obj.body["metadata"].get("uid")))
    if ds.spec.managed is None:
        _drop_archiver_slot(ctx, obj)
        return
    if ds.spec.deletion_policy == "Retain":
        secret_name = names.credentials_secret(name)
        secret = ctx.kube.get_or_none("Secret", ns, secret_name)
        uid = obj.body["metadata"]["uid"]
        held: list[Any] = (secret or {}).get("metadata", {}).get("ownerReferences") or []
        if any(r.get("uid") == uid for r in held):  # a Secret of that name that is not ours is not touched
            refs = [r for r in held if r.get("uid") != uid]
            ctx.kube.merge_patch("Secret", ns, secret_name, {"metadata": {"ownerReferences": refs or None}})
        return
    for pvc in ctx.kube.list_("PersistentVolumeClaim", ns, names.selector_labels(ds)):
        meta = pvc["metadata"]
        if _claim_of(meta["name"], name):
            ctx.kube.delete("PersistentVolumeClaim", ns, meta["name"], uid=meta.get("uid"))
